"""KV caches for the decoding loop: the installed transformers' keyword, a check, and compiled steps.

* **The keyword.** transformers renamed the forward's cache argument from ``past_key_values`` to
  ``cache`` (5.20); an older release drops the unknown name without a word and every step then
  runs without its cache. :func:`cache_keyword` reads the name off the model's signature, and
  :func:`check_prefill` refuses to go on when the cache does not hold the prompt after prefill.
* **Compiled decoding** (``GuideEngine(..., compile=True)``): transformers' own fast path, a
  :class:`~transformers.StaticCache` and ``torch.compile`` of the model's forward (CUDA graphs on
  a GPU). Shapes are fixed per (rows, cache length); cache lengths are rounded up to a power of
  two, so requests of other lengths reuse what was compiled. Static caches are pooled per shape,
  because CUDA graphs replay on fixed addresses; each request takes its own from the pool.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers
from transformers import StaticCache

from .errors import GuideValueError, ModelNotSupportedError

__all__ = [
    "MIN_STATIC_CACHE",
    "RECOMPILE_LIMIT",
    "CompiledDecoding",
    "cache_keyword",
    "check_prefill",
    "static_cache_length",
]

MIN_STATIC_CACHE = 256
"""The shortest static cache: shorter requests share this one compiled shape."""


RECOMPILE_LIMIT = 64
"""dynamo's recompile limit is raised to at least this when an engine compiles."""


def cache_keyword(model: Any) -> str:
    """The forward keyword that takes the KV cache in the installed transformers.

    ``"cache"`` from transformers 5.20 on, ``"past_key_values"`` before (and for remote code).
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def check_prefill(model: Any, cache: Any, prompt_len: int) -> None:
    """Raise :class:`ModelNotSupportedError` unless ``cache`` holds the ``prompt_len`` prompt tokens.

    A forward that ignored the cache keyword would otherwise make every decoding step see one
    token and generate garbage.
    """
    held = int(cache.get_seq_length())
    if held != prompt_len:
        raise ModelNotSupportedError(
            f"{type(model).__name__} did not fill the KV cache passed as {cache_keyword(model)!r} "
            f"(it holds {held} tokens after a {prompt_len}-token prefill) with transformers "
            f"{transformers.__version__}; this combination cannot decode, upgrade transformers or report it"
        )


def static_cache_length(needed: int, context_length: int | None) -> int:
    """The static cache length for ``needed`` positions: the next power of two ≥ :data:`MIN_STATIC_CACHE`,
    capped at the model's context."""
    length = max(MIN_STATIC_CACHE, 1 << max(needed - 1, 0).bit_length())
    if context_length is not None:
        length = min(length, max(context_length, needed))
    return length


def _has_sliding_layers(config: Any) -> bool:
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    return any(t != "full_attention" for t in layer_types) or (not layer_types and bool(window))


class CompiledDecoding:
    """One engine's compiled decoding step and its pool of static caches.

    Args:
        model: the causal LM; its ``forward`` is compiled once, lazily, per (rows, cache length).
        options: ``torch.compile`` keyword arguments; default ``dynamic=False`` plus
            ``mode="reduce-overhead"`` (CUDA graphs) on CUDA.
    """

    def __init__(self, model: Any, options: Mapping[str, Any] | None = None) -> None:
        if _has_sliding_layers(model.config):
            raise ModelNotSupportedError(
                f"compile=True needs full-attention layers; {type(model).__name__} has sliding-window "
                "layers, whose static cache is a ring buffer. Use compile=False for this model"
            )
        # dynamo compiles a code object at most `recompile_limit` times (8 by default) and then runs
        # new shapes eagerly, without a word; an engine may need more (rows × cache lengths × tagged).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        options = dict(options or {})
        options.setdefault("dynamic", False)
        if model.device.type == "cuda":
            options.setdefault("mode", "reduce-overhead")
        try:
            self.forward: Callable[..., Any] = torch.compile(model.forward, **options)
        except TypeError as error:
            raise GuideValueError(f"compile options {options!r} are not torch.compile's: {error}") from error
        self.model = model
        self.shapes: set[tuple[int, int]] = set()
        """The (rows, cache length) pairs decoded so far: one compiled graph each."""
        self._pool: dict[tuple[int, int], list[StaticCache]] = {}
        self._lock = threading.Lock()
        self.step_lock = threading.Lock()
        """Held around each compiled step: compiled graphs (and CUDA graphs) are not re-entrant."""

    def acquire(self, rows: int, length: int) -> StaticCache:
        """An empty static cache for ``rows`` × ``length`` positions, this request's own."""
        with self._lock:
            self.shapes.add((rows, length))
            free = self._pool.get((rows, length))
            cache = free.pop() if free else None
        if cache is None:
            return StaticCache(config=self.model.config, max_cache_len=length)
        cache.reset()
        return cache

    def release(self, cache: StaticCache, rows: int, length: int) -> None:
        """Give a cache back to the pool once its request is done."""
        with self._lock:
            self._pool.setdefault((rows, length), []).append(cache)
