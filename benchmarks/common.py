"""Shared helpers of the benchmarks: a real-text prompt, threads, timing, peak memory, reports.

Every benchmark compares variants *in the same run*, interleaved, and reports ratios to stock
SDPA: absolute times on a shared 2-core machine are noise, ratios measured side by side are not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

EMPHASIS_START_CHARS = 60  # the emphasis span starts this many characters into the text
EMPHASIS_CHARS = 45  # about 10 tokens of English/Python documentation


@dataclass(frozen=True)
class BenchPrompt:
    """A prompt cut to an exact token length, with the engine's Δ per token.

    Attributes:
        input_ids: ``(1, length)`` token ids.
        key_bias: ``(1, length)`` Δ per token, as ``GuideEngine`` computes it from the tags.
        influence_mask: ``(1, length)`` 1.0 on the ``<?->`` span, else 0.
        following: the ids that follow the cut in the same text (teacher-forced decoding).
        span: first and one-past-last token of the tagged span.
        encoded: the engine's ``EncodedPrompt``, cut to ``length`` tokens.
    """

    input_ids: torch.Tensor
    key_bias: torch.Tensor
    influence_mask: torch.Tensor
    following: list[int]
    span: tuple[int, int]
    encoded: Any = None


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (and one inter-op thread) so every variant runs alike."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def source_text() -> str:
    """Real text: the CPython documentation topics shipped with the standard library."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def build_prompt(engine: Any, length: int, *, tag: str = "emphasis", follow: int = 16) -> BenchPrompt:
    """A prompt of exactly ``length`` tokens with one ~10-token span near the start.

    The span is written as a tag (``<!!->`` for emphasis, Δ = delta_mid; ``<?->`` for influence)
    in escaped real text, sent through ``engine.encode`` (chat template, span alignment) and the
    result is cut to ``length`` tokens.

    Args:
        engine: a :class:`guide_engine.GuideEngine`.
        length: number of prompt tokens.
        tag: ``"emphasis"`` or ``"influence"``.
        follow: how many ids after the cut to keep for teacher-forced decoding.
    """
    from guide_engine import escape_tags

    opener, closer = {"emphasis": ("<!!->", "<-!!>"), "influence": ("<?->", "<-?>")}[tag]
    text = source_text()
    chars = min(len(text), (length + follow) * 6 + 1000)  # ~4 characters per token here
    while True:
        piece = text[:chars]
        a, b = EMPHASIS_START_CHARS, EMPHASIS_START_CHARS + EMPHASIS_CHARS
        tagged = escape_tags(piece[:a]) + opener + escape_tags(piece[a:b]) + closer + escape_tags(piece[b:])
        encoded = engine.encode(tagged)
        if len(encoded.input_ids) >= length + follow or chars >= len(text):
            break
        chars = min(len(text), chars * 2)
    if len(encoded.input_ids) < length + follow:
        raise ValueError(f"the source text has only {len(encoded.input_ids)} tokens; asked for {length} + {follow}")
    (span,) = encoded.spans
    ids = encoded.input_ids
    cut = dataclasses.replace(
        encoded,
        input_ids=ids[:length],
        token_deltas=encoded.token_deltas[:length],
        influence_mask=encoded.influence_mask[:length],
    )
    return BenchPrompt(
        input_ids=torch.tensor([ids[:length]]),
        key_bias=torch.tensor([encoded.token_deltas[:length]], dtype=torch.float32),
        influence_mask=torch.tensor([encoded.influence_mask[:length]], dtype=torch.float32),
        following=list(ids[length : length + follow]),
        span=(span.token_start, span.token_end),
        encoded=cut,
    )


@dataclass(frozen=True)
class Timing:
    """Seconds one call took: wall clock, and CPU time of this process (all its threads).

    On a machine shared with other jobs the wall clock includes the time spent waiting for a
    core; the process CPU time does not, so with one torch thread it measures the work done.
    """

    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``fn`` once; return its :class:`Timing` and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


# ------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakRSS:
    """Peak resident memory of this process during a ``with`` block, in MiB above its start.

    On Linux the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``
    and read back afterwards: exact, no sampling. Where that is not allowed, a thread samples
    the RSS with psutil every millisecond (may miss very short peaks).
    """

    def __enter__(self) -> PeakRSS:
        self.method = "VmHWM"
        self.baseline_mib = self.peak_mib = 0.0
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.baseline_kib = _status_kib("VmRSS")
        except OSError:
            import psutil

            self.method = "psutil sampling"
            self._process = psutil.Process()
            self.baseline_kib = self._process.memory_info().rss // 1024
            self._sampled = self.baseline_kib
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, self._process.memory_info().rss // 1024)

    def __exit__(self, *exc: Any) -> None:
        if self.method == "VmHWM":
            peak = _status_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = self._sampled
        self.baseline_mib = self.baseline_kib / 1024
        self.peak_mib = peak / 1024
        self.above_mib = max(0.0, (peak - self.baseline_kib) / 1024)


# ------------------------------------------------------------------------------------ reports


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (numbers already formatted by the caller)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(" ---: " if i else " --- " for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out: str | None, data: dict[str, Any], markdown: str) -> None:
    """Write ``<out>.json`` and ``<out>.md`` (``out`` without extension); nothing when ``out`` is None."""
    if not out:
        return
    base = out[: -len(".json")] if out.endswith(".json") else out[: -len(".md")] if out.endswith(".md") else out
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    with open(base + ".json", "w") as handle:
        json.dump(data, handle, indent=2)
    with open(base + ".md", "w") as handle:
        handle.write(markdown + "\n")
    print(f"wrote {base}.json and {base}.md")
