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

__all__ = ["KEEP_RECENT", "clear_shared_engines", "engine_key", "shared_engine"]

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


def engine_key(model: Any = None, **load_kwargs: Any) -> tuple:
    """What identifies a loaded engine: the resolved model location and the load options."""
    load_kwargs = {k: v for k, v in load_kwargs.items() if v is not None}
    if "dtype" in load_kwargs:
        load_kwargs["dtype"] = torch_dtype(load_kwargs["dtype"])  # "bfloat16" and torch.bfloat16 share an engine
    # Key on what is actually loaded, so "default" and the embedded GGUF's path share one engine.
    location = resolve_model(model, load_kwargs.pop("gguf_file", None))
    return (location, tuple(sorted((k, repr(v)) for k, v in load_kwargs.items())))


def shared_engine(model: Any = None, **load_kwargs: Any) -> GuideEngine:
    """One :class:`GuideEngine` per model and load options, shared by every wrapper that asks.

    ``model`` may also be a ready :class:`GuideEngine`, returned as is. Per-request settings
    (``delta_mid``, ``layers``, sampling) travel with each call, so sharing is safe. An engine
    stays loaded while it is among the :data:`KEEP_RECENT` most recently used or held elsewhere.
    """
    if isinstance(model, GuideEngine):
        return model
    key = engine_key(model, **load_kwargs)
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
            (folder, gguf), options = key[0], {k: v for k, v in load_kwargs.items() if v is not None}
            options.pop("gguf_file", None)
            engine = GuideEngine.from_pretrained(folder, gguf_file=gguf, **options)
        with _registry_lock:
            _touch(key, engine)
            _load_locks.pop(key, None)
        return engine
