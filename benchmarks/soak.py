"""Soak: many mixed requests on one engine; resident memory, threads and file handles over time.

    python benchmarks/soak.py --requests 500 --out soak.json

Requests cycle through generate, stream (some abandoned after two pieces), batch, influence and
rollout, with different spans and Δ, and a failing request (a prompt over the context) every 50.
Resident memory is sampled every ``--every`` requests; after warm-up it should stay flat.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time

import psutil
import torch

from guide_engine import ContextLengthError, GuideEngine

PROMPTS = [
    "<!!-> Answer in French. <-!!> What is the capital of Italy?",
    "<!-> Be short. <-!> Name three colours.",
    "<?-> Measure me. <-?> Tell a story about a fox.",
    "No tags at all: what is two plus two?",
    [{"role": "system", "content": "<!!!-> Only numbers. <-!!!>"}, {"role": "user", "content": "Count to five."}],
]


def one_request(engine: GuideEngine, i: int, max_new_tokens: int) -> str:
    prompt = PROMPTS[i % len(PROMPTS)]
    kind = i % 6
    delta = 0.5 * (i % 7) - 1.0
    if i % 50 == 49:
        try:
            engine.generate("word " * (engine.context_length or 10_000))
        except ContextLengthError:
            return "fault"
        raise AssertionError("over-long prompt was accepted")
    if kind == 0:
        engine.generate(prompt, max_new_tokens=max_new_tokens, delta_mid=delta)
    elif kind == 1:
        stream = engine.stream(prompt, max_new_tokens=max_new_tokens, delta_mid=delta)
        for n, _ in enumerate(stream):
            if n == 1 and (i // 6) % 2:  # every other stream (i % 2 is always 1 here)
                stream.close()  # abandoned
                break
    elif kind == 2:
        engine.generate_batch([prompt, PROMPTS[(i + 1) % len(PROMPTS)]], max_new_tokens=max_new_tokens)
    elif kind in (3, 4) and "<?->" in str(prompt):
        metric = "influence" if kind == 3 else "attention_rollout"
        engine.generate(prompt, max_new_tokens=max_new_tokens, metric=metric, delta_influence=delta)
    else:  # kind 5, and kinds 3-4 on a prompt without an influence span
        engine.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.9, seed=i)
        return "sample"
    return ["generate", "stream", "batch", "influence", "rollout"][kind]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.set_num_threads(2)
    process = psutil.Process()
    engine = GuideEngine.from_pretrained()
    threads0, fds0 = threading.active_count(), process.num_fds()
    curve, counts, started = [], {}, time.perf_counter()
    for i in range(args.requests):
        kind = one_request(engine, i, args.max_new_tokens)
        counts[kind] = counts.get(kind, 0) + 1
        if (i + 1) % args.every == 0:
            gc.collect()
            rss = process.memory_info().rss / 2**20
            curve.append(
                {
                    "requests": i + 1,
                    "rss_mib": round(rss, 1),
                    "threads": threading.active_count(),
                    "fds": process.num_fds(),
                }
            )
            print(
                f"{i + 1:5d} requests  rss {rss:8.1f} MiB  threads {curve[-1]['threads']}  fds {curve[-1]['fds']}",
                flush=True,
            )
    elapsed = time.perf_counter() - started
    warm = curve[len(curve) // 5]["rss_mib"] if curve else 0.0
    report = {
        "requests": args.requests,
        "by_kind": counts,
        "seconds": round(elapsed, 1),
        "curve": curve,
        "rss_growth_after_warmup_mib": round(curve[-1]["rss_mib"] - warm, 1) if curve else None,
        "threads_before_after": [threads0, threading.active_count()],
        "fds_before_after": [fds0, process.num_fds()],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
