"""One engine per loaded model, shared by every wrapper that asks for the same model.

Engines are held weakly: an engine lives as long as some wrapper (or user) holds it, and the next
request after that loads the model again. A slow load blocks only the callers that wait for the
same model; lookups of other models go on.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .engine import GuideEngine
from .loading import resolve_model, torch_dtype

__all__ = ["shared_engine"]

_engines: weakref.WeakValueDictionary[tuple, GuideEngine] = weakref.WeakValueDictionary()
_load_locks: dict[tuple, threading.Lock] = {}
_registry_lock = threading.Lock()  # guards the two dicts above, never held during a load


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
    (``delta_mid``, ``layers``, sampling) travel with each call, so sharing is safe. The engine is
    released when no caller holds it any more.
    """
    if isinstance(model, GuideEngine):
        return model
    key = engine_key(model, **load_kwargs)
    with _registry_lock:
        engine = _engines.get(key)
        if engine is not None:
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
                _engines[key] = engine
        with _registry_lock:
            _load_locks.pop(key, None)
        return engine
