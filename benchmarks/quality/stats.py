"""Statistics of the report: Wilson intervals for rates, ROC AUC for a score against success."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default).

    Unlike the normal interval it stays inside [0, 1] and is not degenerate at 0 or n successes.
    ``n == 0`` gives the uninformative ``(0, 1)``.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A proportion with its count and 95 % Wilson interval."""

    successes: int
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def __str__(self) -> str:
        """``41.7% (5/12, 19.3–68.0)``."""
        if not self.n:
            return "– (0/0)"
        lo, hi = self.interval
        return f"{100 * self.value:.1f}% ({self.successes}/{self.n}, {100 * lo:.1f}–{100 * hi:.1f})"


def rate(flags: Sequence[bool]) -> Rate:
    """The rate of ``True`` among ``flags``."""
    return Rate(sum(bool(f) for f in flags), len(flags))


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` as a predictor of ``labels`` (scikit-learn).

    ``None`` when only one class is present (the AUC is undefined there). 0.5 is chance; below
    0.5 the score predicts failure.
    """
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length: {len(scores)} != {len(labels)}")
    positives = sum(bool(y) for y in labels)
    if positives == 0 or positives == len(labels):
        return None
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'the quality benchmark needs scikit-learn; install it with `pip install -e ".[quality]"`'
        ) from error
    return float(roc_auc_score([int(bool(y)) for y in labels], [float(s) for s in scores]))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty sequence."""
    return sum(values) / len(values) if values else float("nan")


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired successes (binomial test on discordant pairs).

    Args:
        only_first: pairs where the first condition succeeded and the second failed.
        only_second: pairs where the second succeeded and the first failed.

    Returns 1.0 when there are no discordant pairs.
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"counts must be >= 0, got {only_first!r} and {only_second!r}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)
