"""vLLM in-process (``LLM.chat``), without the HTTP server: plain vs GUIDE on the same batch.

    .venv-vllm/bin/python benchmarks/serving_offline.py plain
    .venv-vllm/bin/python benchmarks/serving_offline.py guide

Run it in the vLLM environment, one engine per process (run it twice). 16 chat requests of the
≈300-token prompts of ``serving.py`` in one ``chat`` call, 64 new tokens each (EOS ignored), fp32,
greedy, two repetitions with fresh texts. It separates vLLM's own compute from the server's
processes, which share the same 2 cores here.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from serving import make_prompts
    from vllm import LLM, SamplingParams

    from guide_integrations.vllm.model_files import model_folder

    mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
    guide = mode == "guide"
    extra = {"tokenizer_mode": "guide", "hf_overrides": {"architectures": ["GuideLlamaForCausalLM"]}} if guide else {}
    llm = LLM(model=model_folder(), dtype="float32", enforce_eager=True, max_model_len=2048, **extra)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    for repetition in range(2):
        prompts = make_prompts(16, 1200, guide, 500 + 16 * repetition)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        kwargs = {"delta_mid": 2.0} if guide else None
        start = time.perf_counter()
        replies = llm.chat(conversations, params, chat_template_kwargs=kwargs, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(r.outputs[0].token_ids) for r in replies)
        print(f"{mode} repetition {repetition}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
