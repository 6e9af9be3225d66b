"""``guide serve``: vLLM's OpenAI-compatible server with GUIDE.

It builds a plain ``vllm serve`` command line — the same one a user can type (see ``docs/vllm.md``)
— and replaces the current process with it:

* the model folder (the embedded GGUF model is converted to safetensors once and cached);
* ``--hf-overrides`` selecting the GUIDE model class, ``--tokenizer-mode guide`` for the renderer;
* ``--middleware`` for ``delta_mid`` and ``delta_influence`` at the top level of the request body;
* ``--default-chat-template-kwargs '{"delta_mid": X}'`` for the server-wide default;
* ``--host 127.0.0.1`` unless the caller passes ``--host`` (vLLM itself listens everywhere);
* on a CPU, ``--dtype`` from the model's config (vLLM would downcast fp32 weights to bf16) and a
  KV-cache budget that fits in the free memory (``--kv-cache-memory-bytes``, see
  :func:`cpu_kv_cache_bytes`), unless the caller sets them.

Every other option (``--max-model-len``, ``--tensor-parallel-size`` …) passes through. A single
``--api-key`` moves into the server's environment (``VLLM_API_KEY``), so ``ps`` does not show it,
and secrets are masked in what ``guide serve`` prints.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from guide_engine.errors import ModelLoadError, ModelNotSupportedError, require_finite

from . import ARCHITECTURES, RENDERER_MODE
from .model_files import model_folder

__all__ = [
    "DEFAULT_HOST",
    "MIDDLEWARE",
    "cpu_kv_cache_bytes",
    "mask_secrets",
    "move_api_key_to_env",
    "serve",
    "vllm_serve_args",
]

DEFAULT_HOST = "127.0.0.1"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
MIDDLEWARE = "guide_integrations.vllm.middleware.GuideBodyMiddleware"
API_KEY_ENV = "VLLM_API_KEY"
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
SECRET_OPTIONS = ("--api-key", "--hf-token")
"""vLLM options whose values are secrets: masked as ``***`` in everything ``guide serve`` prints."""
MASK = "***"
GIB = 1 << 30
MIB = 1 << 20
KV_CACHE_SHARE = 4
"""On a CPU the KV cache gets 1/KV_CACHE_SHARE of the available memory …"""
KV_CACHE_MAX = 4 * GIB
"""… and at most this much (vLLM's own CPU default before 0.32 was 4 GiB)."""
DTYPES = ("float32", "bfloat16", "float16")


def _config(folder: str) -> dict[str, Any]:
    """The ``config.json`` of ``folder`` (a local folder or a hub id) as a dict."""
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(folder)
    except OSError as error:
        raise ModelLoadError(f"cannot read the config of {folder!r}: {error}") from error
    return config


def _architecture(config: dict[str, Any], folder: str) -> str:
    """The GUIDE class serving ``folder``, from its config's architectures."""
    architectures = config.get("architectures") or []
    for name in architectures:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ModelNotSupportedError(
        f"GUIDE on vLLM serves {sorted(ARCHITECTURES)} models; {folder!r} is {architectures}. "
        "Use GuideEngine for other families"
    )


def _option(arg: str) -> str:
    """The option an argument names (``--api_key=K`` → ``--api-key``; vLLM accepts underscores), or ``""``."""
    if not arg.startswith("--"):
        return ""
    return arg.split("=", 1)[0].replace("_", "-")


def _has_option(args: Sequence[str], *names: str) -> bool:
    return any(_option(arg) in names for arg in args)


def cpu_kv_cache_bytes(available: int) -> int:
    """The KV-cache budget ``guide serve`` gives vLLM on a CPU: a quarter of ``available``, at most 4 GiB.

    vLLM's CPU default reserves ``--gpu-memory-utilization`` (0.92) of *all* memory and refuses to
    start when less is free. The rest of the available memory stays for the weights, the three
    server processes and everything else on the machine.

    Args:
        available: bytes of memory available now (vLLM's own measure: free + page cache + reclaimable).

    Returns:
        Bytes, rounded down to whole MiB.
    """
    return min(available // KV_CACHE_SHARE, KV_CACHE_MAX) // MIB * MIB


def vllm_serve_args(
    model: str | None = None,
    *,
    port: int = 8000,
    delta_mid: float | None = None,
    extra: Sequence[str] = (),
    cpu_available: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The server arguments that serve ``model`` with GUIDE (``vllm serve`` takes the same, the model first).

    Args:
        model: ``None``/``"default"`` for the embedded model, a ``.gguf`` file or a local folder.
        port: TCP port.
        delta_mid: the server's default ``delta_mid``; requests may override it.
        extra: further ``vllm serve`` options, passed through unchanged.
        cpu_available: on a CPU, the bytes of memory available now; ``None`` on a GPU. On a CPU
            the weights keep their config's dtype unless ``extra`` has ``--dtype``, and the KV
            cache gets :func:`cpu_kv_cache_bytes` unless ``extra`` sets ``--kv-cache-memory-bytes``
            or ``--gpu-memory-utilization``, or ``env`` sets ``VLLM_CPU_KVCACHE_SPACE``.
        env: the server's environment (default: this process's).
    """
    env = os.environ if env is None else env
    folder = model_folder(model)
    config = _config(folder)
    args = [
        "--model",
        folder,
        "--port",
        str(port),
        "--tokenizer-mode",
        RENDERER_MODE,
        "--hf-overrides",
        json.dumps({"architectures": [_architecture(config, folder)]}),
        "--middleware",
        MIDDLEWARE,
    ]
    if not _has_option(extra, "--host"):
        args += ["--host", DEFAULT_HOST]
    if not _has_option(extra, "--served-model-name"):
        args += ["--served-model-name", "default" if model in (None, "default", "smollm2") else str(model)]
    if delta_mid is not None:
        args += ["--default-chat-template-kwargs", json.dumps({"delta_mid": require_finite("--delta-mid", delta_mid)})]
    if cpu_available is not None:
        dtype = config.get("dtype") or config.get("torch_dtype")
        if dtype in DTYPES and not _has_option(extra, "--dtype"):
            args += ["--dtype", dtype]
        budget_set = _has_option(extra, "--kv-cache-memory-bytes", "--gpu-memory-utilization")
        if not budget_set and not env.get(KV_CACHE_ENV):
            args += ["--kv-cache-memory-bytes", f"{cpu_kv_cache_bytes(cpu_available) // MIB}M"]
    return args + list(extra)


def _option_values(args: Sequence[str], index: int) -> list[str]:
    """The values of the option at ``args[index]``: after ``=``, or the following non-option arguments."""
    if "=" in args[index]:
        return [args[index].split("=", 1)[1]]
    values = []
    for arg in args[index + 1 :]:
        if arg.startswith("-"):
            break
        values.append(arg)
    return values


def move_api_key_to_env(args: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """``args`` without a single ``--api-key K``, and ``env`` with ``VLLM_API_KEY=K`` instead.

    vLLM reads ``VLLM_API_KEY`` when no ``--api-key`` is given; in the environment the key is not in
    the server's command line, which ``ps`` shows to every local user. Several keys
    (``--api-key K1 K2``, which vLLM also accepts) cannot go into the one variable and stay.
    """
    args, env = list(args), dict(env)
    found = [i for i, arg in enumerate(args) if _option(arg) == "--api-key"]
    keys = [value for i in found for value in _option_values(args, i)]
    if len(keys) != 1:
        return args, env
    index = found[0]
    del args[index : index + (1 if "=" in args[index] else 2)]
    env[API_KEY_ENV] = keys[0]
    return args, env


def mask_secrets(args: Sequence[str]) -> list[str]:
    """``args`` with the values of ``--api-key`` and ``--hf-token`` replaced by ``***`` (for printing)."""
    masked = list(args)
    for index, arg in enumerate(args):
        if _option(arg) not in SECRET_OPTIONS:
            continue
        if "=" in arg:
            masked[index] = arg.split("=", 1)[0] + "=" + MASK
            continue
        for value_index, _ in enumerate(_option_values(args, index), start=index + 1):
            masked[value_index] = MASK
    return masked


def _command_line(args: Sequence[str], env: Mapping[str, str]) -> str:
    """The command ``guide serve`` runs, as a shell line with secrets masked."""
    prefix = f"{API_KEY_ENV}={MASK} " if env.get(API_KEY_ENV) else ""
    return prefix + "python -m " + " ".join([SERVER_MODULE, *mask_secrets(args)])


def _cpu_available() -> int | None:
    """Bytes of memory available to vLLM's CPU worker (vLLM's own measure), or ``None`` on a GPU."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

    return int(get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory)


def serve(
    model: str | None = None, *, port: int = 8000, delta_mid: float | None = None, extra: Sequence[str] = ()
) -> None:
    """Replace this process with vLLM's OpenAI server for ``model`` with GUIDE (never returns).

    The server module is run directly: the ``vllm`` command of vllm-cpu 0.32.0 fails at start-up
    (it asks for the version of a distribution named ``vllm``; the CPU build's is ``vllm-cpu``).
    """
    available = _cpu_available()
    args = vllm_serve_args(model, port=port, delta_mid=delta_mid, extra=extra, cpu_available=available)
    budget_chosen = "--kv-cache-memory-bytes" in args[: len(args) - len(extra)]  # by guide serve, not the caller
    args, env = move_api_key_to_env(args, os.environ)
    if available is not None and budget_chosen:
        budget = cpu_kv_cache_bytes(available) / GIB
        print(
            f"guide serve: CPU KV cache {budget:.2f} GiB (a quarter of the {available / GIB:.2f} GiB available, "
            f"at most {KV_CACHE_MAX // GIB} GiB); --kv-cache-memory-bytes or {KV_CACHE_ENV} sets it",
            file=sys.stderr,
            flush=True,
        )
    print("guide serve: " + _command_line(args, env), file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, "-m", SERVER_MODULE, *args], env)
