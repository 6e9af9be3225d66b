"""Serving: throughput and p50/p95 latency at 1, 4, 16 and 32 concurrent chat requests, one run.

    python benchmarks/serving.py --out benchmarks/results/serving

Run with the main environment's python (GuideEngine needs transformers >= 5.20); the vLLM servers
run in the vLLM environment (``scripts/setup-vllm.sh``, ``--vllm-venv``). Engines, one at a time:

* **plain vLLM**: stock ``LlamaForCausalLM``, prompts without tags;
* **vLLM-GUIDE, tags**: ``guide serve``, the instruction in ``<!!->`` (Δ = 2);
* **vLLM-GUIDE, no tags**: the same server, the same prompts without tags. Against plain vLLM this
  isolates what GUIDE costs when nothing is emphasized: the padded heads (64 → 80) and the renderer;
* **GuideEngine**: ``generate_batch`` on each wave of ``c`` requests (its own batching), tags on.

Every request is a ≈300-token chat prompt (real text, a different slice per request, so no engine
gains from prefix caching) asking for a summary; vLLM requests ignore EOS and produce exactly
``--tokens`` tokens, GuideEngine's stop at EOS (tokens counted as generated). All fp32, greedy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, markdown_table, set_threads, source_text, write_report  # noqa: E402

INSTRUCTION = "Summarize the text above in French, in detail."
SERVER_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"]
SERVER_FLAGS += ["--gpu-memory-utilization", "0.3", "--disable-uvicorn-access-log"]


def make_prompts(count: int, chars: int, tagged: bool, offset: int) -> list[str]:
    """``count`` prompts: a distinct slice of real text, then the (tagged) instruction."""
    from guide_engine import escape_tags

    text = source_text()
    step = chars + 97
    slices = [text[(offset + i) * step : (offset + i) * step + chars] for i in range(count)]
    instruction = f"<!!->{INSTRUCTION}<-!!>" if tagged else INSTRUCTION
    return [escape_tags(s) + "\n\n" + instruction for s in slices]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(latencies: list[float], tokens: int, wall: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
    }


# ------------------------------------------------------------------------------------- vLLM


class Server:
    """A vLLM OpenAI server in a subprocess, on a free port; stopped on exit."""

    def __init__(self, command: list[str], port: int, log: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
        self.log = open(log, "w")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(2)
        raise RuntimeError(f"the server did not start in 600 s; see {self.log.name}")

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def chat(self, prompt: str, tokens: int, extra: dict[str, Any]) -> int:
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            **extra,
        }
        request = urllib.request.Request(
            self.base + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=900) as reply:
            return int(json.load(reply)["usage"]["completion_tokens"])


def run_concurrent(call: Callable[[str], int], prompts: list[str], concurrency: int) -> dict[str, float]:
    """Send ``prompts`` with ``concurrency`` in flight at a time; latency per request, tokens/s overall."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(prompt: str) -> int:
        start = time.perf_counter()
        produced = call(prompt)
        with lock:
            latencies.append(time.perf_counter() - start)
        return produced

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, prompts))
    return summarize(latencies, tokens, time.perf_counter() - start)


# ------------------------------------------------------------------------------ GuideEngine


def run_engine_waves(engine: Any, prompts: list[str], concurrency: int, tokens: int) -> dict[str, float]:
    """GuideEngine's best loop at ``concurrency``: ``generate_batch`` on each wave of ``concurrency``."""
    latencies: list[float] = []
    produced = 0
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        wave = prompts[first : first + concurrency]
        wave_start = time.perf_counter()
        results = engine.generate_batch(wave, max_new_tokens=tokens, delta_mid=2.0)
        latencies += [time.perf_counter() - wave_start] * len(wave)
        produced += sum(len(r.token_ids) for r in results)
    return summarize(latencies, produced, time.perf_counter() - start)


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--chars", type=int, default=1200, help="characters of text per prompt (≈300 tokens)")
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level: max(this, 2 × level)")
    parser.add_argument("--vllm-venv", default=os.environ.get("GUIDE_VLLM_VENV", ".venv-vllm"))
    parser.add_argument("--skip-engine", action="store_true", help="measure the vLLM servers only")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()

    from guide_integrations.vllm.model_files import model_folder

    folder = model_folder()
    vllm_python = os.path.join(args.vllm_venv, "bin", "python")
    guide_command = os.path.join(args.vllm_venv, "bin", "guide")
    port = 8765
    levels = args.concurrency
    counts = {c: max(args.min_requests, 2 * c) for c in levels}
    offsets: dict[tuple[str, int], int] = {}
    next_offset = 0
    for name in ("plain vLLM", "vLLM-GUIDE, tags", "vLLM-GUIDE, no tags", "GuideEngine"):
        for c in levels:
            offsets[name, c] = next_offset
            next_offset += counts[c]
    info = machine_info(threads=2)
    results: dict[str, dict[int, dict[str, float]]] = {}

    def measure_server(server: Server, name: str, tagged: bool, extra: dict[str, Any]) -> None:
        server.chat(make_prompts(1, args.chars, tagged, next_offset)[0], 4, extra)  # warm-up
        results[name] = {}
        for c in levels:
            prompts = make_prompts(counts[c], args.chars, tagged, offsets[name, c])
            results[name][c] = run_concurrent(lambda p: server.chat(p, args.tokens, extra), prompts, c)
            print(name, c, results[name][c], flush=True)

    plain = [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder]
    plain += ["--served-model-name", "default", "--host", "127.0.0.1", "--port", str(port), *SERVER_FLAGS]
    with Server(plain, port, "/tmp/serving-plain.log") as server:
        measure_server(server, "plain vLLM", False, {})
    with Server([guide_command, "serve", "--port", str(port), *SERVER_FLAGS], port, "/tmp/serving-guide.log") as server:
        measure_server(server, "vLLM-GUIDE, tags", True, {"delta_mid": 2.0})
        measure_server(server, "vLLM-GUIDE, no tags", False, {})
    if not args.skip_engine:
        from guide_engine import GuideEngine

        set_threads(2)
        engine = GuideEngine.from_pretrained("default")
        engine.generate_batch(make_prompts(2, args.chars, True, next_offset), max_new_tokens=4)  # warm-up
        results["GuideEngine"] = {}
        for c in levels:
            prompts = make_prompts(counts[c], args.chars, True, offsets["GuideEngine", c])
            results["GuideEngine"][c] = run_engine_waves(engine, prompts, c, args.tokens)
            print("GuideEngine", c, results["GuideEngine"][c], flush=True)

    rows = []
    for name, by_level in results.items():
        for c, r in by_level.items():
            rows.append([name, c, r["requests"], r["tokens"], f"{r['tokens_per_s']:.1f}", r["p50_s"], r["p95_s"]])
    table = markdown_table(["engine", "concurrent", "requests", "tokens", "tokens/s", "p50 s", "p95 s"], rows)
    ratios = []
    for c in levels:
        plain_tps = results["plain vLLM"][c]["tokens_per_s"]
        tags_tps = results["vLLM-GUIDE, tags"][c]["tokens_per_s"]
        bare_tps = results["vLLM-GUIDE, no tags"][c]["tokens_per_s"]
        cost, bare_cost = plain_tps / tags_tps, plain_tps / bare_tps
        share = (bare_cost - 1) / (cost - 1) if cost > 1 else float("nan")
        engine_tps = results.get("GuideEngine", {}).get(c, {}).get("tokens_per_s")
        speedup = f"{tags_tps / engine_tps:.2f}" if engine_tps else "n/a"
        ratios.append([c, f"{cost:.3f}", f"{bare_cost:.3f}", f"{share:.2f}", speedup])
    ratio_table = markdown_table(
        [
            "concurrent",
            "cost: plain / GUIDE-tags time",
            "cost without tags (padding + renderer)",
            "share of the cost without tags",
            "vLLM-GUIDE / GuideEngine throughput",
        ],
        ratios,
    )
    markdown = (
        f"Command: `python benchmarks/serving.py {' '.join(sys.argv[1:])}`\n\n"
        f"Machine: {info['cpu']}, {info['cpu_count']} cores, load at start {info['load_average_at_start']}. "
        f"{args.tokens} new tokens per request, ≈300-token prompts, fp32, greedy.\n\n"
        f"{table}\n\nRatios (cost = plain vLLM throughput / vLLM-GUIDE throughput; goal ≤ 1.15; "
        f"goal at 16: vLLM-GUIDE ≥ 3 × GuideEngine):\n\n{ratio_table}\n"
    )
    print(markdown)
    write_report(args.out, {"machine": info, "args": vars(args), "results": results}, markdown)


if __name__ == "__main__":
    main()
