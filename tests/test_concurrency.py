"""One engine, many threads and tasks: every request gets exactly what it gets alone."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from guide_engine import ContextLengthError, GuideEngine
from tests.reference import tiny_model

REQUESTS = [
    ("<!!-> Answer in French. <-!!> What is the capital of Italy?", {"delta_mid": 3.0}),
    ("<!-> Be short. <-!> Name three colours.", {"delta_mid": -2.0}),
    ("<!!!-> Only numbers. <-!!!> Count to five.", {"delta_mid": 1.0, "layers": [0, 2]}),
    ("No tags here, just a question about dogs.", {}),
    ("<?-> Measure me. <-?> And tell a story.", {"metric": "influence", "delta_influence": 1.0}),
    ("<?-> Roll me out. <-?> <!!-> Loudly. <-!!> Go.", {"metric": "attention_rollout", "delta_mid": 2.0}),
    ("<!!-> Heads only. <-!!> Describe the sea.", {"delta_mid": 4.0, "heads": [1, 3]}),
    ([{"role": "system", "content": "<!-> Cats. <-!>"}, {"role": "user", "content": "Hello"}], {"delta_mid": 2.5}),
]


@pytest.fixture(scope="module")
def engine(smol_tokenizer):
    torch.manual_seed(0)
    return GuideEngine(tiny_model("gemma3"), smol_tokenizer, max_new_tokens=12)


@pytest.fixture(scope="module")
def alone(engine):
    return [engine.generate(p, **o) for p, o in REQUESTS]


def _same(result, expected):
    assert result.token_ids == expected.token_ids
    assert result.spans == expected.spans
    if expected.influence is not None:
        for layer in expected.influence:
            torch.testing.assert_close(result.influence[layer], expected.influence[layer])


def test_eight_threads_get_what_each_gets_alone(engine, alone):
    barrier = threading.Barrier(len(REQUESTS))

    def run(i):
        barrier.wait()
        prompt, options = REQUESTS[i]
        return engine.generate(prompt, **options)

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        results = list(pool.map(run, range(len(REQUESTS))))
    for result, expected in zip(results, alone):
        _same(result, expected)


async def test_eight_asyncio_tasks_get_what_each_gets_alone(engine, alone):
    async def run(prompt, options):
        stream = engine.stream(prompt, **options)
        pieces = []
        while (piece := await asyncio.to_thread(next, stream, None)) is not None:
            pieces.append(piece)
        assert "".join(pieces) == stream.result.text
        return stream.result

    results = await asyncio.gather(*(run(p, o) for p, o in REQUESTS))
    for result, expected in zip(results, alone):
        _same(result, expected)


def test_failures_leave_the_engine_usable(engine, alone):
    prompt, options = REQUESTS[0]
    # An exception raised by the consumer in the middle of a stream.
    with pytest.raises(RuntimeError, match="consumer failed"):
        for i, _ in enumerate(engine.stream(prompt, **options)):
            if i == 2:
                raise RuntimeError("consumer failed")
    # A KeyboardInterrupt-style stop.
    stream = engine.stream(prompt, **options)
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            raise KeyboardInterrupt
    stream.close()
    # A prompt over the context window.
    with pytest.raises(ContextLengthError):
        engine.generate("word " * 600)
    _same(engine.generate(prompt, **options), alone[0])
