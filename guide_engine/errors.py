"""The error hierarchy of the guide packages.

Every error raised on purpose by ``guide_engine`` or ``guide_integrations`` is a
:class:`GuideError`. Errors about bad values are also ``ValueError`` and a missing optional
dependency is also an ``ImportError``, so callers that catch the built-in kinds keep working.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ContextLengthError",
    "GenerationTimeoutError",
    "GuideError",
    "GuideValueError",
    "MissingDependencyError",
    "InfluenceError",
    "ModelLoadError",
    "ModelNotSupportedError",
    "TagError",
    "require_finite",
]


class GuideError(Exception):
    """Base error of the guide package."""


class GuideValueError(GuideError, ValueError):
    """A bad value: an option out of range, a non-finite number, a malformed prompt or message."""


class TagError(GuideValueError):
    """Malformed emphasis or influence tags in a prompt.

    Attributes:
        tag: The offending tag marker, e.g. ``'<!!->'``.
        position: Character index of the tag's ``<`` in the original input.
        snippet: A short one-line excerpt of the input around the tag.
    """

    def __init__(self, message: str, *, tag: str = "", position: int = -1, snippet: str = "") -> None:
        # Defaults keep the error picklable: pickle calls ``TagError(message)`` and then
        # restores the attributes from ``__dict__``.
        super().__init__(message)
        self.tag = tag
        self.position = position
        self.snippet = snippet


class ModelNotSupportedError(GuideError):
    """The model cannot run with the guide attention implementation."""


class ContextLengthError(GuideValueError):
    """The prompt (plus requested new tokens) is longer than the model's context."""


class GenerationTimeoutError(GuideError, TimeoutError):
    """A request ran past its ``timeout``.

    Attributes:
        partial: what was generated until then: a ``GenerationResult`` with finish_reason
            ``"timeout"`` (a list of them, one per row, for ``generate_batch``); ``None`` when the
            error was rebuilt without it (unpickled).
    """

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class MissingDependencyError(GuideError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class ModelLoadError(GuideError):
    """A model or tokenizer could not be loaded from the given location."""


class InfluenceError(GuideError):
    """Influence could not be measured on this forward pass (an internal invariant failed)."""


def require_finite(name: str, value: Any) -> float:
    """``value`` as a finite float, or a :class:`GuideValueError` that names ``name`` and the value.

    The one finite-number check of the package: tags, request options and the CLI all use it.
    """
    if isinstance(value, bool):
        raise GuideValueError(f"{name} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GuideValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise GuideValueError(f"{name} must be a finite number, got {value!r}")
    return number
