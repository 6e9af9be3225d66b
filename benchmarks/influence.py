"""Time and memory of an Influence pass against a plain forward pass (issue 3).

* **Time** (embedded SmolLM2-135M-Instruct, fp32 CPU): for each length, each repetition runs a
  plain forward (``"guide"`` attention without state, i.e. stock SDPA) and an Influence pass
  (``guide_engine.influence.compute_influence``: one forward with an ``InfluenceTracker`` and the
  norm hooks), alternating which goes first; medians and their ratio are reported.
* **Peak memory**: every measurement runs in a fresh subprocess, which loads the model, warms up,
  then records the peak RSS of one pass above the RSS just before it (kernel high-water mark
  ``VmHWM``, reset through ``/proc/self/clear_refs``). Beside it, the memory the reference way
  needs for its attention maps alone: every layer's head-averaged ``n × n`` map in fp32,
  ``L · n² · 4`` bytes.
* **Memory line**: the same subprocess measurement on a tiny random Llama (hidden 64, grouped-query
  attention, 70 000 positions) up to 64k tokens.

    python benchmarks/influence.py --lengths 1024 4096 8192 --tiny-lengths 8192 16384 32768 65536 \\
        --out benchmarks/results/influence
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from typing import Any

import torch
from common import (
    BenchPrompt,
    PeakRSS,
    build_prompt,
    machine_info,
    markdown_table,
    median,
    set_threads,
    timed,
    write_report,
)

from guide_engine.attention import GuideAttentionState
from guide_engine.influence import InfluenceTracker, attach_hooks, compute_influence

TINY = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    max_position_embeddings=70_000,
)
SPAN = (20, 30)  # the tiny model's influence span (token positions)


def reference_maps_bytes(layers: int, length: int) -> int:
    """Bytes of the reference way's stored attention maps: one fp32 ``n × n`` map per layer."""
    return layers * length * length * 4


def tiny_model() -> torch.nn.Module:
    """A tiny random Llama with ``"guide"`` attention (seeded, built in-process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import guide_engine  # noqa: F401  (registers "guide")

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    model.set_attn_implementation("guide")
    return model


# ------------------------------------------------------------------------------------ passes


@torch.inference_mode()
def plain_pass(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """A plain forward pass over the whole sequence, as stock SDPA computes it."""
    model(input_ids=ids, use_cache=False, logits_to_keep=1)


@torch.inference_mode()
def tracker_pass(model: torch.nn.Module, ids: torch.Tensor, indicator: torch.Tensor) -> dict[int, torch.Tensor]:
    """An Influence pass driven directly (what ``compute_influence`` does, without a tokenizer)."""
    attach_hooks(model)  # once per model, however often it is asked
    tracker = InfluenceTracker(indicator, "influence")
    model(input_ids=ids, use_cache=False, logits_to_keep=1, guide=GuideAttentionState(influence=tracker))
    return tracker.layers


def engine_pass(engine: Any, prompt: Any) -> Any:
    """The engine's own Influence pass over a prompt (no generated tokens)."""
    return compute_influence(
        engine.model, engine.tokenizer, prompt.encoded, [], engine.request_options(metric="influence")
    )


# ------------------------------------------------------------------------------------ worker


def worker(model_name: str, mode: str, length: int, threads: int) -> dict[str, Any]:
    """Measure one pass in this (fresh) process: peak RSS above the warmed-up, loaded model."""
    set_threads(threads)
    if model_name == "embedded":
        from guide_engine import GuideEngine

        engine = GuideEngine.from_pretrained()
        model, layers = engine.model, engine.num_layers
        prompt, warm = (
            build_prompt(engine, length, tag="influence", follow=0),
            build_prompt(engine, 64, tag="influence", follow=0),
        )
        run = {"plain": lambda p: plain_pass(model, p.input_ids), "influence": lambda p: engine_pass(engine, p)}[mode]
    else:
        model, layers = tiny_model(), TINY["num_hidden_layers"]
        ids = torch.randint(0, TINY["vocab_size"], (1, length), generator=torch.Generator().manual_seed(1))
        indicator = torch.zeros(1, length)
        indicator[0, SPAN[0] : SPAN[1]] = 1.0

        def cut(n: int) -> BenchPrompt:
            return BenchPrompt(ids[:, :n], torch.zeros(1, n), indicator[:, :n], following=[], span=SPAN)

        prompt, warm = cut(length), cut(64)
        run = {
            "plain": lambda p: plain_pass(model, p.input_ids),
            "influence": lambda p: tracker_pass(model, p.input_ids, p.influence_mask),
        }[mode]
    run(warm)  # lazy initializations (thread pools, hooks) are not part of the pass
    gc.collect()
    with PeakRSS() as peak:
        timing, _ = timed(lambda: run(prompt))
    return {
        "model": model_name,
        "mode": mode,
        "length": length,
        "layers": layers,
        "seconds": timing.wall,
        "cpu_seconds": timing.cpu,
        "baseline_mib": peak.baseline_mib,
        "peak_above_mib": peak.above_mib,
        "method": peak.method,
    }


def measure_in_subprocess(model_name: str, mode: str, length: int, threads: int, timeout: float) -> dict[str, Any]:
    """Run :func:`worker` in a fresh Python process and parse its JSON line."""
    command = [sys.executable, __file__, "--worker", model_name, mode, str(length), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {model_name} {mode} {length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ main


def time_engine(lengths: list[int], repeats: int, long_repeats: int | None, long_from: int) -> list[dict[str, Any]]:
    """Interleaved timings of plain forward vs Influence pass on the embedded model."""
    from guide_engine import GuideEngine

    engine = GuideEngine.from_pretrained()
    model = engine.model
    warm = build_prompt(engine, 64, tag="influence", follow=0)
    plain_pass(model, warm.input_ids)
    engine_pass(engine, warm)
    rows = []
    for length in lengths:
        prompt = build_prompt(engine, length, tag="influence", follow=0)
        count = long_repeats if long_repeats and length >= long_from else repeats
        times: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": []} for m in ("plain", "influence")}
        for rep in range(count):
            order = ("plain", "influence") if rep % 2 == 0 else ("influence", "plain")
            for mode in order:
                gc.collect()
                if mode == "plain":
                    timing, _ = timed(lambda prompt=prompt: plain_pass(model, prompt.input_ids))
                else:
                    timing, result = timed(lambda prompt=prompt: engine_pass(engine, prompt))
                    if len(result) != engine.num_layers + 1:
                        raise RuntimeError(f"influence result has {len(result)} layers")
                times[mode]["wall"].append(timing.wall)
                times[mode]["cpu"].append(timing.cpu)
                print(
                    f"  n={length} rep {rep + 1}/{count} {mode:9s} {timing.wall:.3f} s (cpu {timing.cpu:.3f} s)",
                    flush=True,
                )
        row: dict[str, Any] = {"length": length, "repeats": count, "raw": times}
        for clock in ("wall", "cpu"):
            plain, influence = median(times["plain"][clock]), median(times["influence"][clock])
            row[clock] = {"plain_s": plain, "influence_s": influence, "ratio": influence / plain}
        row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        rows.append(row)
        print(
            f"n={length}: plain {row['wall']['plain_s']:.3f} s, influence {row['wall']['influence_s']:.3f} s, "
            f"ratio {row['wall']['ratio']:.3f} (cpu-time ratio {row['cpu']['ratio']:.3f}); "
            f"load {row['load_average_after']}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192], help="embedded-model lengths")
    parser.add_argument(
        "--tiny-lengths",
        type=int,
        nargs="*",
        default=[8192, 16384, 32768, 65536],
        help="tiny-model lengths for the memory line (none to skip)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions per length (median reported)")
    parser.add_argument(
        "--long-repeats",
        type=int,
        default=None,
        help="timing repetitions for lengths >= --long-from (default: --repeats)",
    )
    parser.add_argument("--long-from", type=int, default=8192, help="where --long-repeats starts")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--skip-timing", action="store_true", help="only the memory measurements")
    parser.add_argument("--skip-memory", action="store_true", help="only the timings")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per memory subprocess")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        model_name, mode, length = args.worker
        print(json.dumps(worker(model_name, mode, int(length), args.threads)))
        return 0

    set_threads(args.threads)
    info = machine_info(args.threads)
    print(
        f"# Influence cost — {info['date']}, {info['cpu']}, torch {info['torch']}, "
        f"transformers {info['transformers']}, {args.threads} torch threads, load {info['load_average_at_start']}"
    )
    data: dict[str, Any] = {"machine": info, "args": vars(args)}
    sections = []

    if not args.skip_timing:
        rows = time_engine(args.lengths, args.repeats, args.long_repeats, args.long_from)
        data["timing"] = rows
        table = markdown_table(
            [
                "tokens",
                "reps",
                "plain forward s",
                "influence pass s",
                "influence / plain",
                "plain CPU s",
                "influence CPU s",
                "CPU-time ratio",
            ],
            [
                [
                    r["length"],
                    r["repeats"],
                    f"{r['wall']['plain_s']:.3f}",
                    f"{r['wall']['influence_s']:.3f}",
                    f"{r['wall']['ratio']:.3f}",
                    f"{r['cpu']['plain_s']:.3f}",
                    f"{r['cpu']['influence_s']:.3f}",
                    f"{r['cpu']['ratio']:.3f}",
                ]
                for r in rows
            ],
        )
        sections.append("Time, embedded model (medians, same run, interleaved):\n\n" + table)
        print("\n" + sections[-1] + "\n")

    if not args.skip_memory:
        memory = []
        for model_name, lengths in (("embedded", args.lengths), ("tiny", args.tiny_lengths)):
            for length in lengths:
                row: dict[str, Any] = {"model": model_name, "length": length}
                for mode in ("plain", "influence"):
                    result = measure_in_subprocess(model_name, mode, length, args.threads, args.timeout)
                    row[mode] = result
                    print(
                        f"  {model_name} n={length} {mode:9s}: peak +{result['peak_above_mib']:.0f} MiB "
                        f"over {result['baseline_mib']:.0f} MiB ({result['seconds']:.2f} s, {result['method']})",
                        flush=True,
                    )
                row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                row["reference_maps_bytes"] = reference_maps_bytes(row["plain"]["layers"], length)
                memory.append(row)
        data["memory"] = memory
        for model_name, title in (
            ("embedded", "embedded model (30 layers)"),
            ("tiny", "tiny random Llama (hidden 64, 2 layers, GQA)"),
        ):
            rows = [r for r in memory if r["model"] == model_name]
            if not rows:
                continue
            table = markdown_table(
                [
                    "tokens",
                    "plain: peak above model MiB",
                    "influence: peak above model MiB",
                    "influence MiB per 1k tokens",
                    "reference maps alone (L·n²·4) MiB",
                    "plain s",
                    "influence s",
                ],
                [
                    [
                        r["length"],
                        f"{r['plain']['peak_above_mib']:.0f}",
                        f"{r['influence']['peak_above_mib']:.0f}",
                        f"{r['influence']['peak_above_mib'] / r['length'] * 1000:.1f}",
                        f"{r['reference_maps_bytes'] / 2**20:,.0f}",
                        f"{r['plain']['seconds']:.2f}",
                        f"{r['influence']['seconds']:.2f}",
                    ]
                    for r in rows
                ],
            )
            sections.append(f"Peak memory, {title} (fresh process per cell):\n\n" + table)
            print("\n" + sections[-1] + "\n")

    write_report(args.out, data, "\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
