"""A safetensors folder for vLLM: the embedded GGUF model converted once and cached.

vLLM loads a folder of safetensors weights. The embedded SmolLM2 ships as a GGUF file, and a
transformers model loaded from GGUF refuses ``save_pretrained`` ("quantized with gguf … not
serializable"), so the dequantized ``state_dict`` is written with safetensors next to the config
(without ``quantization_config``), the tokenizer and the generation config. The folder is keyed by
the GGUF file's content hash, so a changed model is converted again and the same file installed in two
environments (the main one and vLLM's) is converted once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from guide_engine.loading import DEFAULT_MODEL_NAMES, embedded_model_location, resolve_model

__all__ = ["cache_root", "model_folder"]


def cache_root() -> Path:
    """Where converted folders live: ``$GUIDE_CACHE`` or ``~/.cache/guide``, then ``vllm/``."""
    base = os.environ.get("GUIDE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "guide")
    return Path(base) / "vllm"


def model_folder(model: str | None = None) -> str:
    """A model location vLLM can load: a hub id or folder as given, a GGUF file converted (cached).

    Args:
        model: ``None``/``"default"`` for the embedded model, a ``.gguf`` path, a folder or a hub id.

    Returns:
        A folder (or hub id) holding safetensors weights, a config, the tokenizer and its chat template.
    """
    folder: str
    gguf: str | None
    if model in DEFAULT_MODEL_NAMES:
        folder, gguf = embedded_model_location()
    else:
        folder, gguf = resolve_model(model, None)
    if gguf is None:
        return str(folder)
    target = cache_root() / f"{Path(gguf).stem}-{_content_hash(os.path.join(folder, gguf))}"
    if not (target / "config.json").is_file():
        _convert(folder, gguf, target)
    return str(target)


def _content_hash(path: str) -> str:
    """The file's SHA-256 (16 hex digits): the same GGUF in two environments shares one folder."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _convert(folder: str, gguf: str, target: Path) -> None:
    """Dequantize ``folder/gguf`` into a safetensors folder at ``target`` (written atomically)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    # Tied embeddings share storage; safetensors stores each tensor once, so drop the alias.
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(staging)
    try:
        GenerationConfig.from_pretrained(folder, gguf_file=gguf).save_pretrained(staging)
    except (OSError, ValueError):
        GenerationConfig.from_model_config(model.config).save_pretrained(staging)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, target)
