"""The device check: GUIDE on the fused kernels, eager = compiled = reference, and its cost at realistic shapes.

    python benchmarks/gpu_check.py                     # on one GPU, in a few minutes
    python benchmarks/gpu_check.py --device cpu        # the same checks at CPU size (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --out results/gpu   # also writes results/gpu.json and results/gpu.md

Everything runs on random-weight models built in-process (no download, no tokenizer): the
embedded model's shape (SmolLM2-135M: head dim 64, 9/3 heads), a Llama-3-8B-shaped model (head
dim 128, 32 query and 8 key/value heads; fewer layers, ``--big-layers``), a tiny sliding-window
Mistral and a tiny Gemma 3 with 256-dim heads.

Checks (a failure exits 1):

* **fused** — tagged prefill (one row, and a left-padded batch of 4), eager decoding steps and an
  Influence pass run inside ``sdpa_kernel([FLASH, EFFICIENT, CUDNN])``: a fall to the math
  kernel raises instead of passing.
* **exact** — in float32 (TF32 off), the greedy tokens of eager decoding, compiled decoding
  (``compile=True``'s static cache + ``torch.compile``) and the dense reference (full
  recomputation with Δ in a dense score bias, ``tests/reference.py``) agree.

Measures (goals from issue 18, reported met or missed; ``--strict`` makes a miss exit 1):

* peak memory and prefill time of GUIDE against stock SDPA, on the Llama-3-8B shape: a padded
  batch of 4 at ``--batch-len`` tokens and one row at ``--row-len`` tokens (goals ≤ 1.2× memory,
  ≤ 1.15× time);
* decode ms/token of GUIDE eager, GUIDE compiled and stock ``generate`` with a static cache
  (which transformers compiles on accelerators): goals compiled ≤ 1.10× stock, ≥ 2× eager.

The vLLM step (issue 29; on CUDA, where vLLM and this package's plugin are installed —
``pip install --no-deps -e .`` — otherwise named as skipped; ``--skip-vllm`` leaves it out): ``guide
serve`` on the embedded model, then plain vLLM on the same ``--gpu-memory-utilization``, each a
server of its own whose log is kept beside ``--out``:

* **vLLM fp32** — greedy tokens of a few tagged prompts equal GuideEngine's (agreement 1.000), where
  a backend of the installed vLLM runs fp32 (FlashAttention and FlashInfer do not; vLLM's selector
  then picks another, or refuses, and the check says which);
* **vLLM bf16** — GuideEngine's agreement with the server is at most ``BF16_MARGIN`` (0.10) below
  plain vLLM's with plain transformers on the untagged prompts;
* measured: the backend and padded head size (GUIDE's start-up line), and the KV cache capacity in
  tokens of both servers (vLLM's "KV cache size" line), and their ratio.

CUDA graphs stay on (``--vllm-eager`` turns them off), so the step also checks that Δ's fixed buffer
replays under them.

On CPU the timings are printed but the goals are not judged (two shared cores measure noise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the device machine runs the checkout without installing it
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from transformers import (  # noqa: E402
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

import guide_engine  # noqa: E402, F401  (registers "guide")
from guide_engine.attention import GuideAttentionState  # noqa: E402
from guide_engine.decoding import decode_steps  # noqa: E402
from guide_engine.influence import InfluenceTracker, attach_hooks  # noqa: E402
from guide_engine.kv_cache import CompiledDecoding  # noqa: E402
from guide_engine.options import SamplingConfig  # noqa: E402
from tests.reference import REFERENCE, Recorder  # noqa: E402

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
GREEDY = SamplingConfig()
PAD = 0
GOALS = {"memory": 1.2, "prefill": 1.15, "compiled_vs_stock": 1.10, "eager_vs_compiled": 2.0}


# ------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Size:
    """How big each part of the check is on a device."""

    fused_len: int  # prompt tokens of the fused-kernel checks
    batch_len: int  # longest row of the padded batch of 4 (measures)
    row_len: int  # the single long row (measures)
    decode_prompt: int
    decode_tokens: int
    exact_tokens: int
    small_layers: int  # layers of the SmolLM2-shaped model
    big_layers: int  # layers of the Llama-3-8B-shaped model
    big_hidden: int  # 4096 on a GPU; the CPU keeps head dim 128 with fewer heads
    big_heads: int
    big_kv_heads: int
    big_intermediate: int
    big_vocab: int


SIZES = {
    "cuda": Size(256, 8192, 32768, 512, 64, 16, 30, 8, 4096, 32, 8, 14336, 128256),
    "cpu": Size(48, 192, 384, 32, 6, 6, 2, 2, 512, 4, 1, 1024, 4096),
}


def smollm2_shape(size: Size) -> LlamaForCausalLM:
    """SmolLM2-135M-Instruct's layout (the embedded model), random weights."""
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=size.small_layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        initializer_range=0.08,
    )
    return LlamaForCausalLM(config)


def llama3_8b_shape(size: Size) -> LlamaForCausalLM:
    """Llama-3-8B's attention layout (head dim 128, 4 query heads per key/value head), random weights."""
    config = LlamaConfig(
        vocab_size=size.big_vocab,
        hidden_size=size.big_hidden,
        intermediate_size=size.big_intermediate,
        num_hidden_layers=size.big_layers,
        num_attention_heads=size.big_heads,
        num_key_value_heads=size.big_kv_heads,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        initializer_range=0.08,
    )
    return LlamaForCausalLM(config)


def sliding_mistral(size: Size) -> MistralForCausalLM:
    """A tiny Mistral whose every layer has a sliding window shorter than the prompt."""
    config = MistralConfig(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
        max_position_embeddings=4096,
    )
    return MistralForCausalLM(config)


def gemma3_256(size: Size) -> Gemma3ForCausalLM:
    """A tiny Gemma 3 with 256-dim heads (257 with the extra coordinate: past flash's limit)."""
    config = Gemma3TextConfig(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=256,
        max_position_embeddings=4096,
    )
    return Gemma3ForCausalLM(config)


MODELS: dict[str, Callable[[Size], torch.nn.Module]] = {
    "smollm2-shape": smollm2_shape,
    "llama3-8b-shape": llama3_8b_shape,
    "mistral-sliding": sliding_mistral,
    "gemma3-256": gemma3_256,
}


def build(name: str, size: Size, device: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):  # initialized where it runs: seconds, not minutes, for billions of weights
        model = MODELS[name](size)
    model = model.to(dtype=dtype).eval()
    model.set_attn_implementation("guide")
    return model


# ------------------------------------------------------------------------------------- inputs


@dataclass
class Batch:
    """Left-padded rows with their Δ: what the engine hands the model."""

    ids: torch.Tensor  # (batch, width)
    mask: torch.Tensor  # (batch, width)
    bias: torch.Tensor  # (batch, width) Δ per key
    pads: torch.Tensor  # (batch,)

    @property
    def positions(self) -> torch.Tensor:
        return (self.mask.cumsum(-1) - 1).clamp(min=0)

    def state(self, **kwargs: Any) -> GuideAttentionState:
        pads = self.pads if bool(self.pads.any()) else None
        return GuideAttentionState(key_bias=self.bias, pad_offsets=pads, **kwargs)


def make_batch(lengths: list[int], vocab: int, device: str, seed: int = 1) -> Batch:
    """Rows of random ids, each with an emphasized span (Δ = 2) near its start and one de-emphasis."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    bias = torch.zeros(len(lengths), width)
    for row, n in enumerate(lengths):
        start = width - n
        ids[row, start:] = torch.randint(3, vocab, (n,), generator=generator)
        mask[row, start:] = 1
        bias[row, start + n // 8 : start + n // 8 + max(n // 16, 2)] = 2.0
        bias[row, start + n // 2 : start + n // 2 + 2] = -1.0
    pads = torch.tensor([width - n for n in lengths])
    return Batch(ids.to(device), mask.to(device), bias.to(device), pads.to(device))


# ------------------------------------------------------------------------------------- report


@dataclass
class Report:
    device: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    measures: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, fn: Callable[[], str]) -> None:
        """Run one check; a raised error is its failure, printed with its first line."""
        started = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as error:  # noqa: BLE001 - every failure is reported, then the run goes on
            detail, ok = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}", False
            traceback.print_exc()
        seconds = time.perf_counter() - started
        self.checks.append({"check": name, "ok": ok, "detail": detail, "seconds": round(seconds, 1)})
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({seconds:.1f} s): {detail}", flush=True)

    def skip(self, name: str, reason: str) -> None:
        self.checks.append({"check": name, "ok": None, "detail": f"skipped: {reason}", "seconds": 0})
        print(f"[SKIP] {name}: {reason}", flush=True)

    def measure(self, name: str, value: float, unit: str, goal: str = "", met: bool | None = None) -> None:
        self.measures.append({"measure": name, "value": value, "unit": unit, "goal": goal, "met": met})
        verdict = "" if met is None else (" — goal met" if met else " — goal MISSED")
        print(f"  {name}: {value:.3f} {unit} {goal}{verdict}", flush=True)

    def markdown(self) -> str:
        lines = ["| check | result | detail | s |", "| --- | --- | --- | ---: |"]
        lines += [
            f"| {c['check']} | {'skipped' if c['ok'] is None else 'pass' if c['ok'] else '**FAIL**'} "
            f"| {c['detail']} | {c['seconds']} |"
            for c in self.checks
        ]
        lines += ["", "| measure | value | goal | met |", "| --- | ---: | --- | --- |"]
        for m in self.measures:
            met = "" if m["met"] is None else ("yes" if m["met"] else "**no**")
            lines.append(f"| {m['measure']} | {m['value']:.3f} {m['unit']} | {m['goal']} | {met} |")
        return "\n".join(lines)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Run ``model`` with another attention implementation (same weights), then back to ``"guide"``."""
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation("guide")


@contextlib.contextmanager
def fused_only() -> Iterator[None]:
    """Only the fused SDPA kernels may run: the math fallback raises."""
    with sdpa_kernel(FUSED):
        yield


# ------------------------------------------------------------------------------------- checks


@torch.inference_mode()
def fused_checks(report: Report, name: str, size: Size, device: str, dtype: torch.dtype) -> None:
    model = build(name, size, device, dtype)
    vocab = model.config.vocab_size
    n = size.fused_len
    one = make_batch([n], vocab, device)
    padded = make_batch([n, n - 7, n - 20, n // 2], vocab, device, seed=2)

    def prefill(batch: Batch) -> Callable[[], str]:
        def run() -> str:
            with fused_only():
                out = model(
                    input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions, guide=batch.state()
                )
            plain = model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions).logits
            moved = float((out.logits.float() - plain.float()).abs().max())
            if not moved > 0:
                raise AssertionError("Δ did not change the logits")
            return f"{tuple(batch.ids.shape)} tokens, Δ moves logits by up to {moved:.3g}"

        return run

    def decoding() -> str:
        with fused_only():
            steps = decode_steps(
                model, padded.ids, padded.mask, padded.state(), GREEDY, 4, PAD, torch.zeros(4, dtype=torch.bool)
            )
            tokens = [next_ids for next_ids in steps]
        return f"{len(tokens)} steps × 4 rows"

    def influence() -> str:
        hooks = attach_hooks(model)
        try:
            indicator = torch.zeros(1, n, device=device)
            indicator[0, n // 8 : n // 8 + n // 16] = 1
            tracker = InfluenceTracker(indicator, "influence")
            with fused_only():
                model(input_ids=one.ids, use_cache=False, logits_to_keep=1, guide=one.state(influence=tracker))
            last = tracker.layers[max(tracker.layers)]
            if not bool(torch.isfinite(last).all()):
                raise AssertionError("Influence is not finite")
            return f"{len(tracker.layers) - 1} layers, I ∈ [{float(last.min()):.3f}, {float(last.max()):.3f}]"
        finally:
            if hooks is not None:
                hooks.release()

    label = f"fused {name} ({str(dtype).removeprefix('torch.')})"
    report.check(f"{label}: tagged prefill, 1 row", prefill(one))
    report.check(f"{label}: tagged prefill, padded batch of 4", prefill(padded))
    report.check(f"{label}: decoding steps, padded batch of 4", decoding)
    report.check(f"{label}: Influence pass", influence)


@torch.inference_mode()
def reference_tokens(model: torch.nn.Module, batch: Batch, steps: int) -> list[list[int]]:
    """Greedy tokens of each row alone, by full recomputation with Δ in a dense score bias."""
    rows = []
    for row in range(batch.ids.shape[0]):
        start = int(batch.pads[row])
        ids, bias = batch.ids[row : row + 1, start:], batch.bias[row : row + 1, start:]
        out = []
        for _ in range(steps):
            with attention_implementation(model, REFERENCE):
                token = int(model(ids, reference=Recorder(bias)).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=-1)
        rows.append(out)
    return rows


def engine_tokens(
    model: torch.nn.Module, batch: Batch, steps: int, compiled: CompiledDecoding | None
) -> list[list[int]]:
    generated = decode_steps(
        model,
        batch.ids,
        batch.mask,
        batch.state(),
        GREEDY,
        steps,
        PAD,
        torch.zeros(batch.ids.shape[0], dtype=torch.bool),
        compiled=compiled,
    )
    return torch.stack(list(generated), dim=1).tolist()


def exactness_check(report: Report, name: str, size: Size, device: str, backend: str | None) -> None:
    def run() -> str:
        model = build(name, size, device, torch.float32)
        batch = make_batch([size.fused_len, size.fused_len - 9], model.config.vocab_size, device, seed=3)
        options = {"backend": backend} if backend else None
        eager = engine_tokens(model, batch, size.exact_tokens, None)
        compiled = engine_tokens(model, batch, size.exact_tokens, CompiledDecoding(model, options))
        reference = reference_tokens(model, batch, size.exact_tokens)
        if not eager == compiled == reference:
            raise AssertionError(f"eager {eager} / compiled {compiled} / reference {reference}")
        plain = GuideAttentionState()
        unbiased = decode_steps(model, batch.ids, batch.mask, plain, GREEDY, size.exact_tokens, PAD)
        if torch.stack(list(unbiased), dim=1).tolist() == eager:
            raise AssertionError("Δ did not change any token: the check would prove nothing")
        return f"{len(eager)} rows × {size.exact_tokens} tokens agree; Δ changes them"

    report.check(f"exact {name} (float32): eager = compiled = dense reference", run)


# ------------------------------------------------------------------------------------- measures


def timed(device: str, fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """Best wall time (s) of ``repeats`` calls, and the peak memory of one (GiB; 0 off CUDA)."""
    fn()  # warm-up
    best = float("inf")
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return best, peak


@torch.inference_mode()
def prefill_measures(report: Report, size: Size, device: str, dtype: torch.dtype) -> None:
    model = build("llama3-8b-shape", size, device, dtype)
    vocab = model.config.vocab_size
    cases = {
        f"padded batch of 4 at {size.batch_len}": make_batch(
            [size.batch_len, size.batch_len * 7 // 8, size.batch_len * 3 // 4, size.batch_len // 2], vocab, device
        ),
        f"one row at {size.row_len}": make_batch([size.row_len], vocab, device),
    }
    judge = device == "cuda"
    for label, batch in cases.items():
        results = {}
        for variant in ("sdpa", "guide"):
            state = {"guide": batch.state()} if variant == "guide" else {}

            def run(state: dict[str, Any] = state, batch: Batch = batch) -> Any:
                with fused_only():
                    return model(
                        input_ids=batch.ids,
                        attention_mask=batch.mask,
                        position_ids=batch.positions,
                        logits_to_keep=1,
                        **state,
                    )

            with attention_implementation(model, variant):
                results[variant] = timed(device, run)
        (stock_s, stock_mem), (guide_s, guide_mem) = results["sdpa"], results["guide"]
        report.measure(f"prefill {label}: stock SDPA", stock_s * 1000, "ms")
        report.measure(f"prefill {label}: GUIDE", guide_s * 1000, "ms")
        ratio = guide_s / stock_s
        report.measure(
            f"prefill {label}: GUIDE / stock time",
            ratio,
            "×",
            f"≤ {GOALS['prefill']}",
            ratio <= GOALS["prefill"] if judge else None,
        )
        if device == "cuda":
            report.measure(f"prefill {label}: stock peak memory", stock_mem, "GiB")
            report.measure(f"prefill {label}: GUIDE peak memory", guide_mem, "GiB")
            mem = guide_mem / stock_mem
            report.measure(
                f"prefill {label}: GUIDE / stock memory", mem, "×", f"≤ {GOALS['memory']}", mem <= GOALS["memory"]
            )


def per_token(device: str, run: Callable[[int], Any], short: int, long: int) -> float:
    """Seconds per generated token: the slope between two generation lengths (the prefill cancels)."""
    run(long)  # warm-up (and compilation)
    times = {}
    for tokens in (short, long):
        best = float("inf")
        for _ in range(3):
            sync(device)
            started = time.perf_counter()
            run(tokens)
            sync(device)
            best = min(best, time.perf_counter() - started)
        times[tokens] = best
    return (times[long] - times[short]) / (long - short)


@torch.inference_mode()
def decode_measures(report: Report, size: Size, device: str, dtype: torch.dtype, backend: str | None) -> None:
    model = build("llama3-8b-shape", size, device, dtype)
    batch = make_batch([size.decode_prompt], model.config.vocab_size, device)
    compiled = CompiledDecoding(model, {"backend": backend} if backend else None)
    short, long = max(size.decode_tokens // 4, 2), size.decode_tokens

    def guide(tokens: int, compiled: CompiledDecoding | None = None) -> None:
        for _ in decode_steps(model, batch.ids, batch.mask, batch.state(), GREEDY, tokens, PAD, compiled=compiled):
            pass

    eager_s = per_token(device, guide, short, long)
    compiled_s = per_token(device, lambda t: guide(t, compiled), short, long)

    def stock_generate(tokens: int) -> None:
        with attention_implementation(model, "sdpa"):
            model.generate(
                batch.ids,
                attention_mask=batch.mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                cache_implementation="static",
                pad_token_id=PAD,
            )

    stock_s = per_token(device, stock_generate, short, long)
    judge = device == "cuda"
    report.measure("decode GUIDE eager", eager_s * 1000, "ms/token")
    report.measure("decode GUIDE compiled", compiled_s * 1000, "ms/token")
    report.measure("decode stock generate (static cache)", stock_s * 1000, "ms/token")
    vs_stock, vs_eager = compiled_s / stock_s, eager_s / compiled_s
    goal = GOALS["compiled_vs_stock"]
    report.measure("decode compiled / stock", vs_stock, "×", f"≤ {goal}", vs_stock <= goal if judge else None)
    goal = GOALS["eager_vs_compiled"]
    report.measure("decode eager / compiled", vs_eager, "×", f"≥ {goal}", vs_eager >= goal if judge else None)


VLLM_PROMPTS = [
    "<!!->Answer in French.<-!!> What is the capital of Italy?",
    "<!!->Be very brief.<-!!> Explain photosynthesis.",
    "<!!->Use a list.<-!!> Name three fruits.",
    "<!!->Talk like a pirate.<-!!> Greet me.",
    "<!!->Mention the ocean.<-!!> Describe a sunny day.",
    "<!!->Use numbers.<-!!> How many legs does a spider have?",
]
"""Tagged prompts of the vLLM step (a few of tests/test_vllm.py's exactness prompts)."""
VLLM_TOKENS = 32
VLLM_DELTA = 2.0
VLLM_MEMORY = "0.5"
"""--gpu-memory-utilization of every server in the step: the same budget, so KV cache capacities compare."""
BF16_MARGIN = 0.10
"""bf16 tolerance: vLLM-GUIDE's agreement with GuideEngine may be this much below plain vLLM's with transformers."""
VLLM_START_S = 900
VLLM_EOS = 2  # SmolLM2's <|im_end|>: vLLM returns it, GuideEngine does not


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> float:
    """Mean share of the generated tokens before the first disagreement (tests/test_vllm.py's measure)."""
    shares = []
    for a, b in zip(ours, theirs):
        a, b = [t for t in a if t != VLLM_EOS], [t for t in b if t != VLLM_EOS]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), len(b), 1))
    return sum(shares) / len(shares)


def _strip_tags(prompt: str) -> str:
    from guide_engine import strip_tags

    return str(strip_tags(prompt))


@dataclass
class Server:
    """One vLLM server of the step: what it answered and what its log says."""

    log: str
    started: bool
    tokens: list[list[int]] = field(default_factory=list)

    def kv_tokens(self) -> int | None:
        import re

        found = re.findall(r"KV cache size: ([\d,]+) tokens", self.log)
        return int(found[-1].replace(",", "")) if found else None

    def backend(self) -> str:
        import re

        guide = re.findall(r"GUIDE attention heads: (.*)", self.log)
        if guide:
            return guide[-1].strip()
        plain = re.findall(r"Using (\w+) (?:attention )?backend", self.log)
        return plain[-1] if plain else "a backend its log does not name (vLLM's CPU platform names none)"


def run_server(command: list[str], prompts: list[str], body: dict[str, Any], out: Path) -> Server:
    """Start a vLLM server, send each prompt greedily, stop it; its log is kept in ``out``."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_API_KEY", None)
    with open(out, "w") as log:
        process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    server = Server("", started=False)
    try:
        deadline = time.monotonic() + VLLM_START_S
        while process.poll() is None and time.monotonic() < deadline and not server.started:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as reply:
                    server.started = reply.status == 200
            except OSError:
                pass
            time.sleep(0 if server.started else 2)
        for prompt in prompts if server.started else []:
            request = {
                "model": "default",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": VLLM_TOKENS,
                "temperature": 0,
                "return_token_ids": True,
                **body,
            }
            data = json.dumps(request).encode()
            headers = {"Content-Type": "application/json"}
            call = urllib.request.Request(base + "/v1/chat/completions", data=data, headers=headers)
            with urllib.request.urlopen(call, timeout=120) as reply:
                server.tokens.append(json.loads(reply.read())["choices"][0]["token_ids"])
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        server.log = out.read_text()
    return server


def vllm_references(
    folder: str, dtype: torch.dtype, prompts: list[str], device: str
) -> tuple[list[list[int]], list[list[int]]]:
    """GuideEngine's greedy tokens for the tagged prompts, plain transformers' for the untagged ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guide_engine import GuideEngine

    engine = GuideEngine.from_pretrained(folder, dtype=dtype, device_map=device)
    guided = [engine.generate(p, max_new_tokens=VLLM_TOKENS, delta_mid=VLLM_DELTA).token_ids for p in prompts]
    del engine
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device)
    plain = []
    for prompt in prompts:
        messages = [{"role": "user", "content": _strip_tags(prompt)}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(device) for k, v in ids.items()}
        out = model.generate(**ids, max_new_tokens=VLLM_TOKENS, do_sample=False)
        plain.append(out[0, ids["input_ids"].shape[1] :].tolist())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return guided, plain


def vllm_unavailable(device: str, on_cpu: bool = False) -> str | None:
    """Why the vLLM step cannot run here, or ``None``."""
    import importlib.metadata
    import importlib.util

    if device != "cuda" and not on_cpu:
        return "vLLM's GPU path needs CUDA (--vllm-cpu runs the step on a CPU, slowly)"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in this environment (pip install vllm, then pip install --no-deps -e .)"
    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    if not any(plugin.value.startswith("guide_integrations.vllm") for plugin in plugins):
        return "GUIDE's vLLM plugin is not installed: pip install --no-deps -e . (vLLM finds it by its entry point)"
    return None


def vllm_step(report: Report, device: str, out_dir: Path, eager: bool, on_cpu: bool = False) -> None:
    """``guide serve`` on the embedded model against GuideEngine (fp32 exact, bf16 within BF16_MARGIN), and its
    KV cache capacity against plain vLLM's on the same memory budget."""
    names = ("vLLM fp32: guide serve = GuideEngine", "vLLM bf16: guide serve ≈ GuideEngine")
    reason = vllm_unavailable(device, on_cpu)
    if reason is not None:
        for name in names:
            report.skip(name, reason)
        return
    from guide_integrations.vllm.model_files import model_folder

    folder = model_folder()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The same KV cache budget for every server: a share of the GPU, or (vLLM's CPU backend reads that
    # share of all RAM, and refuses to start when less is free) 1 GiB on a CPU.
    budget = ["--gpu-memory-utilization", VLLM_MEMORY] if device == "cuda" else ["--kv-cache-memory-bytes", "1G"]
    common = ["--max-model-len", "2048", *budget, "--served-model-name", "default"]
    common += ["--enforce-eager"] if eager else []
    guide = [sys.executable, "-c", "from guide_integrations.cli import app; app()", "serve", "default", *common]
    plain = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, *common]
    untagged = [_strip_tags(p) for p in VLLM_PROMPTS]
    body = {"delta_mid": VLLM_DELTA}
    servers: dict[str, Server] = {}

    def fp32() -> str:
        guided, _ = vllm_references(folder, torch.float32, VLLM_PROMPTS, device)
        server = servers["guide fp32"] = run_server(
            [*guide, "--dtype", "float32"], VLLM_PROMPTS, body, out_dir / "vllm-guide-fp32.log"
        )
        if not server.started and "No valid attention backend" in server.log:
            return f"no backend of this vLLM runs fp32 here: {server.log.strip().splitlines()[-1][:160]}"
        if not server.started:
            raise AssertionError(f"guide serve --dtype float32 did not start; log: {out_dir / 'vllm-guide-fp32.log'}")
        rate = agreement(server.tokens, guided)
        if rate != 1.0:
            raise AssertionError(f"greedy agreement {rate:.3f}, not 1.000 ({server.backend()})")
        return f"{len(guided)} prompts × {VLLM_TOKENS} tokens equal; {server.backend()}"

    def bf16() -> str:
        guided, reference = vllm_references(folder, torch.bfloat16, VLLM_PROMPTS, device)
        server = servers["guide bf16"] = run_server(
            [*guide, "--dtype", "bfloat16"], VLLM_PROMPTS, body, out_dir / "vllm-guide-bf16.log"
        )
        stock = servers["plain bf16"] = run_server(
            [*plain, "--dtype", "bfloat16"], untagged, {}, out_dir / "vllm-plain-bf16.log"
        )
        for label, each in (("guide serve", server), ("plain vLLM", stock)):
            if not each.started:
                raise AssertionError(f"{label} (bf16) did not start; logs in {out_dir}")
        guide_rate, plain_rate = agreement(server.tokens, guided), agreement(stock.tokens, reference)
        report.measure("vLLM bf16 agreement: guide serve / GuideEngine", guide_rate, "")
        report.measure("vLLM bf16 agreement: plain vLLM / transformers", plain_rate, "")
        if guide_rate < plain_rate - BF16_MARGIN:
            raise AssertionError(f"agreement {guide_rate:.3f} < plain vLLM's {plain_rate:.3f} − {BF16_MARGIN}")
        return (
            f"agreement {guide_rate:.3f} (plain vLLM with transformers {plain_rate:.3f}, tolerance {BF16_MARGIN}); "
            f"{server.backend()}; plain vLLM on {stock.backend()}"
        )

    report.check(names[0], fp32)
    report.check(names[1], bf16)
    guide_kv, plain_kv = (servers[k].kv_tokens() if k in servers else None for k in ("guide bf16", "plain bf16"))
    if guide_kv and plain_kv:
        report.measure("vLLM bf16 KV cache capacity: guide serve", guide_kv, "tokens")
        report.measure("vLLM bf16 KV cache capacity: plain vLLM", plain_kv, "tokens")
        report.measure("vLLM bf16 KV cache capacity: guide serve / plain", guide_kv / plain_kv, "×")


# ------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--big-layers", type=int, default=None, help="layers of the Llama-3-8B-shaped model")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor)")
    parser.add_argument("--skip-measures", action="store_true", help="only the fused and exactness checks")
    parser.add_argument("--strict", action="store_true", help="a missed goal also exits 1")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out the vLLM step")
    parser.add_argument("--vllm-eager", action="store_true", help="vLLM servers with --enforce-eager (no CUDA graphs)")
    parser.add_argument("--vllm-cpu", action="store_true", help="run the vLLM step with --device cpu too (slow)")
    args = parser.parse_args(argv)

    device = args.device
    size = SIZES[device]
    if args.big_layers:
        size = Size(**{**size.__dict__, "big_layers": args.big_layers})
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 exactness means float32
        torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    header = (
        f"# GUIDE device check — {time.strftime('%Y-%m-%d %H:%M')}, {device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ' (' + platform.processor() + ')'}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"
    )
    print(header, flush=True)
    report = Report(device)
    low = torch.bfloat16
    for name in MODELS:
        fused_checks(report, name, size, device, low)
    if device == "cuda":
        fused_checks(report, "smollm2-shape", size, device, torch.float32)  # memory-efficient's 4-alignment
    exactness_check(report, "smollm2-shape", Size(**{**size.__dict__, "small_layers": 4}), device, args.compile_backend)
    exactness_check(report, "llama3-8b-shape", Size(**{**size.__dict__, "big_layers": 2}), device, args.compile_backend)
    if args.skip_vllm:
        report.skip("vLLM step", "--skip-vllm")
    else:
        logs = Path(args.out).parent if args.out else Path("gpu-check-vllm")
        vllm_step(report, device, logs, args.vllm_eager, args.vllm_cpu)
    if not args.skip_measures:
        prefill_measures(report, size, device, low)
        decode_measures(report, size, device, low, args.compile_backend)
    markdown = f"{header}\n\nTotal {time.perf_counter() - started:.0f} s.\n\n{report.markdown()}"
    print()
    print(markdown)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(markdown + "\n")
        Path(f"{args.out}.json").write_text(json.dumps({"header": header, **report.__dict__}, indent=2) + "\n")
    failed = [c["check"] for c in report.checks if c["ok"] is False]
    missed = [m["measure"] for m in report.measures if m["met"] is False]
    if failed:
        print(f"FAILED checks: {failed}")
    if missed:
        print(f"missed goals: {missed}")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
