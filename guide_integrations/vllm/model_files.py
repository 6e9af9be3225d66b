"""A safetensors folder for vLLM: a GGUF model converted once and cached, by the engine.

vLLM loads a folder of safetensors weights. The embedded SmolLM2 ships as a GGUF file, which the
engine already converts into a folder cached by content hash
(:func:`guide_engine.loading.converted_gguf_folder`), so vLLM serves the very folder the engine
loads, and the same file installed in two environments (the main one and vLLM's) is converted once.
"""

from __future__ import annotations

from guide_engine.loading import converted_gguf_folder, resolve_model

__all__ = ["model_folder"]


def model_folder(model: str | None = None) -> str:
    """A model location vLLM can load: a hub id or folder as given, a GGUF file converted (cached).

    Args:
        model: ``None``/``"default"`` for the embedded model, a ``.gguf`` path, a folder or a hub id.

    Returns:
        A folder (or hub id) holding safetensors weights, a config, the tokenizer and its chat template.
    """
    folder, gguf = resolve_model(model, None)
    return folder if gguf is None else converted_gguf_folder(folder, gguf)
