"""The installed ``guide`` command: the engine's ``generate`` and ``influence``, ``guide serve`` and ``--version``.

``guide generate`` and ``guide influence`` live in :mod:`guide_engine.cli`; the engine may not
import the integrations, so the command that serves through vLLM is added here and
``[project.scripts]`` points at this module.

Importing :mod:`guide_engine` imports torch and transformers (seconds), so this module does not:
the engine's commands are looked up when one of them runs (or its own ``--help`` is asked for),
and ``guide --help`` lists them from :data:`ENGINE_COMMANDS`. ``guide --help`` and
``guide --version`` thus cost about as much as importing typer. The engine's commands check their
command line before torch is imported too (:func:`engine_commands`), so bad input is answered at
once.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["ENGINE_COMMANDS", "app"]

VLLM_SETUP = "bash scripts/setup-vllm.sh (vLLM needs its own environment; see docs/vllm.md)"

ENGINE_COMMANDS = {
    "generate": "Generate a completion of a tagged prompt, streaming the text to stdout.",
    "influence": "Generate, then measure how much the <?-> span influences each token.",
}
"""The commands of :mod:`guide_engine.cli` and their one-line help, as ``guide --help`` lists them
(``tests/test_cli.py`` checks them against the commands' own docstrings)."""


@functools.cache
def engine_commands() -> dict[str, Any]:
    """The click commands of :mod:`guide_engine.cli`, imported without torch.

    :mod:`guide_engine`'s ``__init__`` imports torch and transformers (seconds, to register its
    attention on import), but its command module and the modules it imports at its top (errors,
    tags, options, loading) need neither. When :mod:`guide_engine` is not imported yet, its package
    is therefore created from its spec without running ``__init__``: the commands check the command
    line first, and :func:`guide_engine.cli.load_engine` runs ``__init__`` before it loads a model.
    """
    if "guide_engine" not in sys.modules:
        spec = importlib.util.find_spec("guide_engine")
        if spec is not None:
            sys.modules["guide_engine"] = importlib.util.module_from_spec(spec)
    engine_app = importlib.import_module("guide_engine.cli").app
    return dict(typer.main.get_group(engine_app).commands)


class GuideCommands(TyperGroup):
    """``guide``'s command group: ``serve`` is its own, the engine's commands are imported when used."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*ENGINE_COMMANDS, *super().list_commands(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in ENGINE_COMMANDS:
            return engine_commands()[cmd_name]
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The "Commands" section of ``guide --help``, written without importing the engine."""
        own = {name: self.commands[name] for name in super().list_commands(ctx) if not self.commands[name].hidden}
        limit = formatter.width - 6 - max(map(len, [*ENGINE_COMMANDS, *own]))
        rows = [*ENGINE_COMMANDS.items(), *((name, command.get_short_help_str(limit)) for name, command in own.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def print_version(value: bool) -> None:
    """``--version``: print the installed version of guide-attention and exit."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("guide-attention")
    except PackageNotFoundError:
        installed = "unknown (not installed; run `pip install -e .`)"
    typer.echo(f"guide-attention {installed}")
    raise typer.Exit()


app = typer.Typer(
    name="guide",
    cls=GuideCommands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help and errors: nothing cut off, and no rich to import
)


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Emphasize parts of a prompt with GUIDE tags and measure their influence on a local LLM."""


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    short_help="Serve MODEL with GUIDE through vLLM's OpenAI-compatible server.",
)
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

    Every further option is vLLM's and passes through unchanged: --host, --api-key, --max-model-len,
    --tensor-parallel-size, --gpu-memory-utilization …
    """
    from guide_engine.cli import fail  # the engine's one-line errors (torch comes with vLLM anyway)
    from guide_engine.errors import GuideError, MissingDependencyError

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
