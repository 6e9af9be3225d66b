"""The installed ``guide`` command: the engine's commands plus ``guide serve`` (GUIDE on vLLM).

``guide generate`` and ``guide influence`` live in :mod:`guide_engine.cli`; the engine may not
import the integrations, so the command that serves through vLLM is added here, on the same
Typer app, and ``[project.scripts]`` points at this module.
"""

from __future__ import annotations

import importlib.util

import typer

from guide_engine.cli import app, fail
from guide_engine.errors import GuideError, MissingDependencyError

__all__ = ["app"]

VLLM_SETUP = "bash scripts/setup-vllm.sh (vLLM needs its own environment; see docs/vllm.md)"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    context: typer.Context,
    model: str = typer.Argument(
        "default", help="'default' (the embedded SmolLM2), a .gguf file, a model folder or a hub id."
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    delta_mid: float | None = typer.Option(
        None, "--delta-mid", help="The server's default Δ for <!!-> (requests may send their own)."
    ),
) -> None:
    """Serve MODEL with GUIDE through vLLM's OpenAI-compatible server (listens on 127.0.0.1 unless --host).

    Every further option is vLLM's and passes through: --host, --max-model-len, --dtype,
    --kv-cache-memory-bytes (on a CPU guide serve picks a budget that fits), --tensor-parallel-size …
    Require a key with VLLM_API_KEY in the environment (--api-key works too; it is moved there and
    never printed).
    """
    extra = list(context.args)
    if model.startswith("-"):  # no MODEL given: click took the first vLLM option for it
        model, extra = "default", [model, *extra]
    try:
        if importlib.util.find_spec("vllm") is None:
            raise MissingDependencyError(f"guide serve needs vLLM in this environment: {VLLM_SETUP}")
        from .vllm.serve import serve as start_server

        start_server(model, port=port, delta_mid=delta_mid, extra=extra)
    except GuideError as error:
        raise fail(str(error)) from None


if __name__ == "__main__":
    app()
