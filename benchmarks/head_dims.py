"""What the extra coordinate's width costs in SDPA on this device: head_dim, +1, and padded widths.

``guide_engine.attention.kernel_head_dim`` keeps ``head_dim + 1`` on CPU and pads on CUDA. This
measures the reason on the device at hand: scaled_dot_product_attention alone (the same kernel
the models call), causal and with a boolean mask (a padded batch), float32 and bfloat16, at the
embedded model's head layout (9 heads of 64) and Llama-3-8B's (32 heads of 128, keys repeated).
Every width of one case runs interleaved, best of ``--repeats``; ratios are to ``head_dim``.

    python benchmarks/head_dims.py --out benchmarks/results/head_dims
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from common import machine_info, markdown_table, set_threads, write_report

LAYOUTS = {"SmolLM2 (9 × 64)": (9, 64), "Llama-3-8B (32 × 128)": (32, 128)}


def best_time(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, repeats: int) -> float:
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    info = machine_info(args.threads)
    torch.manual_seed(0)
    n, rows = args.tokens, []
    for layout, (heads, dim) in LAYOUTS.items():
        widths = [dim, dim + 1, dim + 4, dim + 8]
        for dtype in (torch.float32, torch.bfloat16):
            for masked in (False, True):
                mask = torch.ones(1, 1, n, n, dtype=torch.bool).tril() if masked else None
                tensors = {w: [torch.randn(1, heads, n, w, dtype=dtype) for _ in range(3)] for w in widths}
                times = {w: best_time(*tensors[w], mask, args.repeats) for w in widths}
                row = [layout, str(dtype).removeprefix("torch."), "bool mask" if masked else "causal"]
                row += [f"{times[w] * 1000:.1f}" for w in widths]
                row += [f"{times[w] / times[dim]:.3f}" for w in widths[1:]]
                rows.append(row)
                print(" | ".join(row), flush=True)
    headers = ["layout", "dtype", "mask", "d ms", "d+1 ms", "d+4 ms", "d+8 ms", "d+1 / d", "d+4 / d", "d+8 / d"]
    markdown = f"{args.tokens} tokens, {args.threads} threads, {info['cpu']}, torch {info['torch']}\n\n"
    markdown += markdown_table(headers, rows)
    print(markdown)
    write_report(args.out, {"machine": info, "args": vars(args), "rows": rows}, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
