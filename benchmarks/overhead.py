"""Overhead of GUIDE's attention against stock SDPA, and against the dense-mask way (issue 2).

Three variants on the same model weights, interleaved in one run:

* ``sdpa``  (a): stock transformers SDPA, no guide state.
* ``guide`` (b): the ``"guide"`` attention with ``guide=GuideAttentionState(key_bias=Δ)``:
  the extra head-dim coordinate in prefill, an O(kv) additive row mask when decoding.
* ``dense`` (c): the reference package's way: transformers' ``eager_attention_forward`` with Δ
  added to the dense float mask, ``mask (b, 1, q, kv) + Δ[:, None, None, :]``.

For each prompt length, each repetition runs every variant once (the order rotates from one
repetition to the next so drift and order effects hit all alike): a prefill of the whole
prompt into a fresh ``DynamicCache`` (``logits_to_keep=1``), then ``--steps`` single-token
decoding steps, teacher-forced with the text's next tokens so all variants do identical work.
Reported: medians over repetitions and ratios to (a). The logits of (b) and (c) are compared
in every run (they compute the same function); at Δ = 0 all three are checked equal first.

    python benchmarks/overhead.py --lengths 512 2048 8000 --repeats 3 --out benchmarks/results/overhead

``--shape llama3-8b`` runs Llama-3-8B's attention layout instead (random weights, hidden 4096,
32 query and 8 key/value heads of dimension 128, ``--layers`` layers; the MLP is shrunk to 1024
so two CPU cores can run 8k tokens, which overstates GUIDE's share, since GUIDE only touches
attention), and its third variant is not the dense mask (32 × 8k² floats) but:

* ``padded`` (c): GUIDE with q′, k′, v′ padded as on CUDA in half precision (129 → 136), to
  see what that padding costs where it is not needed (on CPU ``kernel_head_dim`` keeps 129).

    python benchmarks/overhead.py --shape llama3-8b --lengths 2048 8192 \
        --out benchmarks/results/overhead_llama3_8b_shape
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from common import BenchPrompt, build_prompt, machine_info, markdown_table, median, set_threads, timed, write_report
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from guide_engine import GuideEngine, attention
from guide_engine.attention import GuideAttentionState
from guide_engine.kv_cache import cache_keyword

VARIANTS = ("sdpa", "guide", "dense")
SHAPE_VARIANTS = {"smollm2": VARIANTS, "llama3-8b": ("sdpa", "guide", "padded")}
LABELS = {
    "sdpa": "(a) stock SDPA",
    "guide": "(b) GUIDE",
    "dense": "(c) dense mask (eager)",
    "padded": "(c) GUIDE padded to CUDA's width",
}
DENSE = "dense_bias"
CLOCKS = ("wall", "cpu")
MEASURES = tuple(f"{phase}_{clock}" for phase in ("prefill", "step") for clock in CLOCKS)


def dense_bias_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, q_len, head_dim)
    key: torch.Tensor,  # (batch, kv_heads, kv_len, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # float (batch, 1, q_len, kv_len) from eager_mask
    scaling: float | None = None,
    dropout: float = 0.0,
    dense_bias: torch.Tensor | None = None,  # (batch, >= kv_len) Δ per absolute key position
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with Δ added to the dense float mask (full cache: key j = position j)."""
    if dense_bias is not None:
        bias = dense_bias[:, None, None, : key.shape[2]].to(query.dtype)  # (batch, 1, 1, kv_len)
        attention_mask = bias if attention_mask is None else attention_mask + bias  # (batch, 1, q_len, kv_len)
    return eager_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


AttentionInterface.register(DENSE, dense_bias_attention)
AttentionMaskInterface.register(DENSE, eager_mask)


def forward_kwargs(variant: str, bias: torch.Tensor, steps: int) -> dict[str, Any]:
    """The per-call keyword that carries Δ for ``variant`` (built once, outside the timings)."""
    if variant in ("guide", "padded"):
        return {"guide": GuideAttentionState(key_bias=bias)}
    if variant == "dense":
        return {"dense_bias": torch.nn.functional.pad(bias, (0, steps))}  # generated keys: Δ = 0
    return {}


def set_variant(model: torch.nn.Module, variant: str) -> None:
    model.set_attn_implementation({"sdpa": "sdpa", "guide": "guide", "dense": DENSE, "padded": "guide"}[variant])


@contextlib.contextmanager
def kernel_width(variant: str) -> Iterator[None]:
    """For ``padded``: q′, k′, v′ as wide as on CUDA in bfloat16 (a multiple of 8), on this CPU."""
    if variant != "padded":
        yield
        return
    real = attention.kernel_head_dim
    with mock.patch.object(attention, "kernel_head_dim", lambda d, device, dtype: real(d, "cuda", torch.bfloat16)):
        yield


def llama3_8b_shape(layers: int) -> GuideEngine:
    """Random weights in Llama-3-8B's attention layout, with the embedded model's tokenizer (for real text)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = GuideEngine.from_pretrained().tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4096,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    )
    torch.manual_seed(0)
    return GuideEngine(LlamaForCausalLM(config), tokenizer)


@torch.inference_mode()
def run_variant(model: torch.nn.Module, prompt: BenchPrompt, kwargs: dict[str, Any], steps: int) -> dict[str, Any]:
    """One prefill into a fresh cache, then ``steps`` teacher-forced decoding steps.

    Returns seconds per clock (``wall``, ``cpu``) for the prefill and per decoding step (the mean
    over the steps), and the logits of the last prompt position and of every step.
    """
    ids = prompt.input_ids
    n = ids.shape[1]
    cache = DynamicCache(config=model.config)
    prefill, out = timed(
        lambda: model(
            input_ids=ids,
            position_ids=torch.arange(n)[None],
            **{cache_keyword(model): cache},
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
    )
    logits = [out.logits[0, -1].clone()]
    step_times = []
    for i, token in enumerate(prompt.following[:steps]):
        step = torch.tensor([[token]])
        timing, out = timed(
            lambda step=step, i=i: model(
                input_ids=step,
                position_ids=torch.tensor([[n + i]]),
                **{cache_keyword(model): cache},
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        )
        step_times.append(timing)
        logits.append(out.logits[0, -1].clone())
    cache = out = None  # free this variant's cache before the next one runs
    result: dict[str, Any] = {"logits": torch.stack(logits)}
    for clock in CLOCKS:
        result[f"prefill_{clock}"] = getattr(prefill, clock)
        result[f"step_{clock}"] = sum(getattr(t, clock) for t in step_times) / len(step_times)
    return result


def check_zero_delta(model: torch.nn.Module, prompt: BenchPrompt, steps: int, variants: tuple[str, ...]) -> float:
    """At Δ = 0 the three variants compute the same logits: return the largest difference to (a)."""
    zero = torch.zeros_like(prompt.key_bias)
    logits = {}
    for variant in variants:
        set_variant(model, variant)
        with kernel_width(variant):
            logits[variant] = run_variant(model, prompt, forward_kwargs(variant, zero, steps), steps)["logits"]
    return max(float((logits[v] - logits["sdpa"]).abs().max()) for v in variants[1:])


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


CLOCK_TITLES = {"wall": "Wall clock (medians)", "cpu": "Process CPU time (medians)"}


def ratio_table(rows: list[dict[str, Any]], clock: str, variants: tuple[str, ...] = VARIANTS) -> str:
    """Medians (ms) and ratios to stock SDPA, for one clock; (a), (b), (c) are ``variants`` in order."""
    third = variants[2]
    headers = [
        "tokens",
        "reps",
        "prefill (a) ms",
        "prefill (b) ms",
        "prefill (c) ms",
        "prefill b/a",
        "prefill c/a",
        "step (a) ms",
        "step (b) ms",
        "step (c) ms",
        "step b/a",
        "step c/a",
        "max abs b−c",
        "max abs a−b",
    ]
    table = []
    for row in rows:
        m = row["median"]
        p, st = f"prefill_{clock}", f"step_{clock}"
        table.append(
            [
                row["length"],
                row["repeats"],
                *(fmt_ms(m[v][p]) for v in variants),
                f"{m['guide'][p] / m['sdpa'][p]:.3f}",
                f"{m[third][p] / m['sdpa'][p]:.3f}",
                *(fmt_ms(m[v][st]) for v in variants),
                f"{m['guide'][st] / m['sdpa'][st]:.3f}",
                f"{m[third][st] / m['sdpa'][st]:.3f}",
                f"{row['max_abs_b_minus_c']:.1e}",
                f"{row['max_abs_a_minus_b']:.1e}",
            ]
        )
    return markdown_table(headers, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8000], help="prompt lengths in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per length (median reported)")
    parser.add_argument(
        "--long-repeats", type=int, default=None, help="repetitions for lengths >= --long-from (default: --repeats)"
    )
    parser.add_argument("--long-from", type=int, default=4096, help="where --long-repeats starts")
    parser.add_argument("--steps", type=int, default=16, help="decoding steps per repetition")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |logits(b) - logits(c)| allowed")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--shape", choices=sorted(SHAPE_VARIANTS), default="smollm2", help="the model (see above)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of --shape llama3-8b")
    args = parser.parse_args(argv)
    variants = SHAPE_VARIANTS[args.shape]

    set_threads(args.threads)
    info = machine_info(args.threads)
    print(
        f"# GUIDE overhead — {info['date']}, {info['cpu']}, torch {info['torch']}, "
        f"transformers {info['transformers']}, {args.threads} torch threads, load {info['load_average_at_start']}"
    )
    # The embedded SmolLM2-135M-Instruct, or Llama-3-8B's attention layout; fp32 on the CPU.
    engine = GuideEngine.from_pretrained() if args.shape == "smollm2" else llama3_8b_shape(args.layers)
    model = engine.model
    print(f"model: {type(model).__name__}, {engine.num_layers} layers, dtype {model.dtype}")

    # Warm-up, and the Δ = 0 equality of all three variants.
    small = build_prompt(engine, 128, follow=args.steps)
    zero_diff = check_zero_delta(model, small, args.steps, variants)
    print(f"Δ = 0, 128 tokens: max |logits - logits(a)| over (b), (c) = {zero_diff:.2e}")

    rows, checks = [], []
    for length in args.lengths:
        prompt = build_prompt(engine, length, follow=args.steps)
        repeats = args.long_repeats if args.long_repeats and length >= args.long_from else args.repeats
        kwargs = {v: forward_kwargs(v, prompt.key_bias, args.steps) for v in variants}
        times: dict[str, dict[str, list[float]]] = {v: {m: [] for m in MEASURES} for v in variants}
        for rep in range(repeats):
            order = variants[rep % 3 :] + variants[: rep % 3]
            logits = {}
            for variant in order:
                set_variant(model, variant)
                gc.collect()
                with kernel_width(variant):
                    result = run_variant(model, prompt, kwargs[variant], args.steps)
                for measure in MEASURES:
                    times[variant][measure].append(result[measure])
                logits[variant] = result.pop("logits")
                print(
                    f"  n={length} rep {rep + 1}/{repeats} {variant:5s} prefill {fmt_ms(result['prefill_wall'])} ms "
                    f"(cpu {fmt_ms(result['prefill_cpu'])}), step {fmt_ms(result['step_wall'])} ms "
                    f"(cpu {fmt_ms(result['step_cpu'])})",
                    flush=True,
                )
            check = {
                "length": length,
                "repetition": rep,
                "max_abs_b_minus_c": float((logits["guide"] - logits[variants[2]]).abs().max()),
                "max_abs_a_minus_b": float((logits["sdpa"] - logits["guide"]).abs().max()),
            }
            checks.append(check)
            del logits
        med = {v: {k: median(t) for k, t in times[v].items()} for v in variants}
        worst = max(c["max_abs_b_minus_c"] for c in checks if c["length"] == length)
        effect = max(c["max_abs_a_minus_b"] for c in checks if c["length"] == length)
        rows.append(
            {
                "length": length,
                "repeats": repeats,
                "span": list(prompt.span),
                "median": med,
                "raw": times,
                "max_abs_b_minus_c": worst,
                "max_abs_a_minus_b": effect,
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
        ratio = {
            v: (med[v]["prefill_wall"] / med["sdpa"]["prefill_wall"], med[v]["step_wall"] / med["sdpa"]["step_wall"])
            for v in variants
        }
        print(
            f"n={length}: prefill b/a {ratio['guide'][0]:.3f}, c/a {ratio[variants[2]][0]:.3f}; "
            f"step b/a {ratio['guide'][1]:.3f}, c/a {ratio[variants[2]][1]:.3f}; "
            f"|b-c| {worst:.2e}, |a-b| {effect:.2e}; load {rows[-1]['load_average_after']}",
            flush=True,
        )
        set_variant(model, "guide")

    legend = ", ".join(LABELS[v] for v in variants)
    tables = (f"{CLOCK_TITLES[clock]}:\n\n" + ratio_table(rows, clock, variants) for clock in CLOCKS)
    markdown = f"Model: {args.shape}, {engine.num_layers} layers. Variants: {legend}.\n\n" + "\n\n".join(tables)
    ok = all(row["max_abs_b_minus_c"] <= args.tolerance for row in rows) and zero_diff <= args.tolerance
    print()
    print(markdown)
    print(f"\n(b) = (c) within {args.tolerance:g}: {'yes' if ok else 'NO'}; Δ = 0 check {zero_diff:.1e}")
    data = {
        "machine": info,
        "args": vars(args),
        "zero_delta_max_abs_diff": zero_diff,
        "rows": rows,
        "checks": checks,
        "labels": {v: LABELS[v] for v in variants},
        "shape": args.shape,
        "equal_within_tolerance": ok,
    }
    write_report(args.out, data, markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
