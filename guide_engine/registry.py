"""One engine per loaded model, shared by every wrapper that asks for the same model.

The registry keeps the most recently used engines (:data:`KEEP_RECENT`) alive by itself; older
ones stay shared only while some wrapper or user still holds them, and are freed after that. A
slow load blocks only the callers that wait for the same model; lookups of other models go on.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

from .engine import GuideEngine
from .loading import resolve_model, torch_dtype

__all__ = ["KEEP_RECENT", "clear_shared_engines", "shared_engine"]

KEEP_RECENT = 2
"""How many recently used engines the registry itself keeps loaded."""

_engines: weakref.WeakValueDictionary[tuple, GuideEngine] = weakref.WeakValueDictionary()
_recent: OrderedDict[tuple, GuideEngine] = OrderedDict()  # strong references, most recent last
_load_locks: dict[tuple, threading.Lock] = {}
_registry_lock = threading.Lock()  # guards the dicts above; never held during a load


def _touch(key: tuple, engine: GuideEngine) -> None:
    """Mark ``engine`` as just used (caller holds ``_registry_lock``)."""
    _engines[key] = engine
    _recent[key] = engine
    _recent.move_to_end(key)
    while len(_recent) > KEEP_RECENT:
        _recent.popitem(last=False)


def clear_shared_engines() -> None:
    """Forget every shared engine; models still held elsewhere stay alive there."""
    with _registry_lock:
        _recent.clear()
        _engines.clear()


def _load_options(model: Any, load_kwargs: dict[str, Any]) -> tuple[tuple[str, str | None], dict[str, Any]]:
    """The resolved model location and the load options that matter (``None`` dropped, dtype normalized)."""
    options = {k: v for k, v in load_kwargs.items() if v is not None}
    if "dtype" in options:
        options["dtype"] = torch_dtype(options["dtype"])  # "bfloat16" and torch.bfloat16 share an engine
    # Key on what is actually loaded, so "default" and the embedded GGUF's path share one engine.
    return resolve_model(model, options.pop("gguf_file", None)), options


def _engine_key(location: tuple[str, str | None], options: dict[str, Any]) -> tuple:
    """What identifies a loaded engine: the resolved model location and the load options."""
    return (location, tuple(sorted((k, repr(v)) for k, v in options.items())))


def shared_engine(model: Any = None, **load_kwargs: Any) -> GuideEngine:
    """One :class:`GuideEngine` per model and load options, shared by every wrapper that asks.

    ``model`` may also be a ready :class:`GuideEngine`, returned as is. Per-request settings
    (``delta_mid``, ``layers``, sampling) travel with each call, so sharing is safe. An engine
    stays loaded while it is among the :data:`KEEP_RECENT` most recently used or held elsewhere.
    """
    if isinstance(model, GuideEngine):
        return model
    (folder, gguf), options = _load_options(model, load_kwargs)
    key = _engine_key((folder, gguf), options)
    with _registry_lock:
        engine = _engines.get(key)
        if engine is not None:
            _touch(key, engine)
            return engine
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:  # one load per key; other keys are not blocked
        with _registry_lock:
            engine = _engines.get(key)
        if engine is None:
            engine = GuideEngine.from_pretrained(folder, gguf_file=gguf, **options)
        with _registry_lock:
            _touch(key, engine)
            _load_locks.pop(key, None)
        return engine
