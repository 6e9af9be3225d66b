"""What ``compile=True`` gives on this machine: decode ms/token, eager against compiled, beside stock ``generate``.

On the embedded model, with a tagged prompt of ``--prompt`` tokens, one row, greedy:

* GUIDE eager: ``GuideEngine`` (``DynamicCache``, eager forward);
* GUIDE compiled: ``GuideEngine(compile=True)`` (``StaticCache``, ``torch.compile``, inductor);
* stock ``generate`` with a dynamic cache and with ``cache_implementation="static"`` (which
  transformers compiles only on accelerators), on the same weights with SDPA.

ms/token is the slope between two generation lengths, so the prefill cancels; every variant runs
interleaved, best of ``--repeats``. The tokens of GUIDE eager and compiled are checked equal.

    python benchmarks/compiled.py --out benchmarks/results/compiled
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from common import build_prompt, machine_info, markdown_table, set_threads, write_report

from guide_engine import GuideEngine
from guide_engine.attention import GuideAttentionState
from guide_engine.decoding import decode_steps
from guide_engine.options import SamplingConfig


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    parser.add_argument("--short", type=int, default=8, help="the shorter generation length")
    parser.add_argument("--long", type=int, default=40, help="the longer generation length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    info = machine_info(args.threads)
    eager = GuideEngine.from_pretrained()
    compiled = GuideEngine(eager.model, eager.tokenizer, compile=True)
    prompt = build_prompt(eager, args.prompt, follow=0)
    model, ids = eager.model, prompt.input_ids

    def guide(engine: GuideEngine, tokens: int) -> list[int]:
        """The engine's own loop on the tagged prompt's ids (the same call generate makes)."""
        state = GuideAttentionState(key_bias=prompt.key_bias)
        mask = torch.ones_like(ids)
        steps = decode_steps(model, ids, mask, state, SamplingConfig(), tokens, eager.pad_id, compiled=engine.compiled)
        return [int(t) for t in steps]

    def stock(tokens: int, cache: str | None) -> None:
        model.set_attn_implementation("sdpa")
        try:
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                cache_implementation=cache,
                pad_token_id=eager.pad_id,
            )
        finally:
            model.set_attn_implementation("guide")

    variants: dict[str, Callable[[int], object]] = {
        "GUIDE eager": lambda t: guide(eager, t),
        "GUIDE compile=True": lambda t: guide(compiled, t),
        "stock generate (dynamic cache)": lambda t: stock(t, None),
        "stock generate (static cache)": lambda t: stock(t, "static"),
    }
    started = time.perf_counter()
    same = guide(eager, args.long) == guide(compiled, args.long)  # also the compilation
    compile_seconds = time.perf_counter() - started
    print(f"eager and compiled tokens equal: {same}; first compiled call (with compilation) {compile_seconds:.1f} s")
    for fn in variants.values():
        fn(args.short)  # warm-up
    times: dict[str, dict[int, float]] = {name: {} for name in variants}
    with torch.inference_mode():
        for tokens in (args.short, args.long):
            for name, fn in variants.items():
                times[name][tokens] = best(lambda fn=fn, tokens=tokens: fn(tokens), args.repeats)
    per_token = {name: (t[args.long] - t[args.short]) / (args.long - args.short) for name, t in times.items()}
    reference = per_token["GUIDE eager"]
    rows = [[name, f"{ms * 1000:.1f}", f"{ms / reference:.3f}"] for name, ms in per_token.items()]
    markdown = (
        f"{args.prompt}-token tagged prompt, one row, greedy; {info['cpu']}, {args.threads} threads, "
        f"torch {info['torch']}, transformers {info['transformers']}. Eager and compiled tokens equal: "
        f"{'yes' if same else 'NO'}. First compiled call, compilation included: {compile_seconds:.0f} s.\n\n"
        + markdown_table(["variant", "ms/token", "÷ GUIDE eager"], rows)
    )
    print(markdown)
    write_report(args.out, {"machine": info, "args": vars(args), "per_token": per_token, "same": same}, markdown)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
