"""The shared-engine registry: one load per model, no lock held across loads, bounded memory."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from guide_engine import registry


class FakeEngine:
    """Stands in for a loaded GuideEngine (weak-referenceable, records what was loaded)."""

    def __init__(self, folder):
        self.folder = folder


@pytest.fixture
def loads(monkeypatch):
    """Replace the model load with a recorder; ``gates[name]`` (an Event) makes that load wait."""
    calls: list[str] = []
    gates: dict[str, threading.Event] = {}

    def fake_from_pretrained(folder, gguf_file=None, **options):
        calls.append(folder)
        if folder in gates:
            assert gates[folder].wait(10), "test gate never opened"
        return FakeEngine(folder)

    monkeypatch.setattr(registry.GuideEngine, "from_pretrained", staticmethod(fake_from_pretrained))
    registry.clear_shared_engines()
    yield calls, gates
    registry.clear_shared_engines()


def test_a_slow_load_does_not_block_other_models(loads):
    calls, gates = loads
    gates["org/slow"] = threading.Event()
    slow = threading.Thread(target=registry.shared_engine, args=("org/slow",))
    slow.start()
    while "org/slow" not in calls:
        time.sleep(0.01)
    started = time.perf_counter()
    fast = registry.shared_engine("org/fast")
    assert time.perf_counter() - started < 1.0 and fast.folder == "org/fast"
    gates["org/slow"].set()
    slow.join(10)
    assert calls == ["org/slow", "org/fast"]


def test_concurrent_callers_share_one_load(loads):
    calls, gates = loads
    gates["org/model"] = threading.Event()
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.shared_engine("org/model"))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gates["org/model"].set()
    for t in threads:
        t.join(10)
    assert calls == ["org/model"]
    assert len(results) == 4 and all(r is results[0] for r in results)


def test_engines_beyond_the_recent_ones_are_freed_when_nobody_holds_them(loads):
    calls, _ = loads
    held = registry.shared_engine("org/held")
    for i in range(registry.KEEP_RECENT + 1):
        registry.shared_engine(f"org/other-{i}")
    gc.collect()
    assert registry.shared_engine("org/held") is held  # still held by us: still shared
    registry.shared_engine("org/other-0")  # least recent, not held: loaded again
    assert calls.count("org/other-0") == 2
    assert calls.count("org/held") == 1


def test_compile_reaches_the_engine_and_keys_it(monkeypatch):
    """``shared_engine(model, compile=True)`` (ChatGuide's ``load_kwargs``) loads a compiled engine of its own."""
    seen: list[dict] = []

    def fake_from_pretrained(folder, gguf_file=None, **options):
        seen.append(options)
        return FakeEngine(folder)

    monkeypatch.setattr(registry.GuideEngine, "from_pretrained", staticmethod(fake_from_pretrained))
    registry.clear_shared_engines()
    try:
        compiled = registry.shared_engine("org/model", compile=True)
        eager = registry.shared_engine("org/model")
        assert compiled is not eager
        assert seen == [{"compile": True}, {}]
        assert registry.shared_engine("org/model", compile=True) is compiled
    finally:
        registry.clear_shared_engines()
