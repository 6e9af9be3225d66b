"""The ``guide`` console script: ``guide generate …`` and ``guide influence …``.

Models load through :func:`guide_engine.shared_engine`, so repeated in-process calls (tests, a
notebook driving the CLI) reuse one loaded model. Bad input — malformed tags, a non-finite Δ, an
unknown model — prints one line to stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from enum import Enum
from typing import Any

from .errors import GuideError, GuideValueError, MissingDependencyError, require_finite

try:
    import typer
except ImportError as missing:  # the console script is installed even without the extra
    raise MissingDependencyError(
        "the guide command needs typer and rich: pip install 'guide-attention[cli]'"
    ) from missing
from .options import DELTA_QUERIES, METRICS
from .registry import shared_engine
from .tags import parse_tags

app = typer.Typer(
    name="guide",
    help="Emphasize parts of a prompt with GUIDE tags and measure their influence on a local LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

USAGE_ERROR = 2


Metric = Enum("Metric", {name: name for name in METRICS}, type=str)  # type: ignore[misc]
"""What ``guide influence`` measures: the choices are the engine's own metric names."""

DeltaQueriesChoice = Enum("DeltaQueriesChoice", {name: name for name in DELTA_QUERIES}, type=str)  # type: ignore[misc]
"""``guide generate --delta-queries``: the engine's own names."""


# ------------------------------------------------------------------------------------ helpers


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr; return the exit to raise."""
    typer.echo("error: " + " ".join(str(message).splitlines()), err=True)
    return typer.Exit(USAGE_ERROR)


def parse_layer_list(text: str | None, option: str, *, allow_all: bool = False) -> list[int] | str | None:
    """``"0,1,2"`` → ``[0, 1, 2]``; ``"all"`` when allowed; ``None`` stays ``None``."""
    if text is None:
        return None
    if allow_all and text.strip().lower() == "all":
        return "all"
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers:
        allowed = "'all' or " if allow_all else ""
        raise GuideValueError(f"{option} must be {allowed}comma-separated layer indices such as 0,1,2; got {text!r}")
    return layers


def parse_contrast(text: str) -> float | str:
    """``"auto"`` stays a word, anything else must be a number (the engine checks its range)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise GuideValueError(f"--contrast must be a number >= 0 or 'auto', got {text!r}") from None


def read_prompt(prompt: str | None) -> str:
    """The PROMPT argument, or stdin when it is ``-`` or omitted and stdin is not a terminal."""
    if prompt is not None and prompt != "-":
        return prompt
    stdin = sys.stdin
    if prompt is None and (stdin is None or stdin.isatty()):
        raise GuideValueError("no prompt: pass PROMPT as an argument, or pipe it on stdin (PROMPT omitted or '-')")
    text = stdin.read().rstrip("\r\n")
    if not text.strip():
        raise GuideValueError("the prompt read from stdin is empty")
    return text


def build_prompt(prompt: str, system: str | None, *, needs_influence_span: bool = False) -> str | list[dict[str, str]]:
    """A plain string, or system + user messages; tags are checked here, before the model loads."""
    texts = [prompt] if system is None else [system, prompt]
    with warnings.catch_warnings():  # the engine warns about empty spans itself
        warnings.simplefilter("ignore")
        spans = [span for text in texts for span in parse_tags(text).spans]
    if needs_influence_span and not any(span.kind == "influence" for span in spans):
        raise GuideValueError("guide influence needs an influence span: wrap the text to measure in <?-> … <-?>")
    if system is None:
        return prompt
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def load_engine(model: str, gguf_file: str | None) -> Any:
    """The shared engine for ``model`` (only options the user set become load keywords)."""
    load_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return shared_engine(None if model == "default" else model, **load_kwargs)


def stream_text(engine: Any, prompt: Any, **options: Any) -> Any:
    """Write text pieces to stdout as they come; return the GenerationResult."""
    stream = engine.stream(prompt, **options)
    out = sys.stdout
    try:
        for piece in stream:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        stream.close()
        out.write("\n")
        raise typer.Exit(130) from None
    text = stream.result.text
    if not text.endswith("\n"):
        out.write("\n")
    out.flush()
    return stream.result


def result_json(result: Any, model: str) -> dict[str, Any]:
    """What ``guide generate --json`` prints."""
    return {
        "model": model,
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "spans": [s.to_dict() for s in result.spans],
        "token_ids": list(result.token_ids),
    }


def summary_table(influence: Any) -> Any:
    """A rich table: per decoder layer, mean and max of the metric over the generated tokens."""
    from rich.table import Table

    start = influence.generation_start
    label = "influence" if influence.metric == "influence" else "rollout"
    table = Table(title=f"{label} over {len(influence.tokens) - start} generated tokens")
    table.add_column("layer", justify="right")
    table.add_column(f"mean {label}", justify="right")
    table.add_column(f"max {label}", justify="right")
    for layer in sorted(k for k in influence.layers if k >= 0):
        generated = influence[layer][start:].float()
        if generated.numel() == 0:
            table.add_row(str(layer), "-", "-")
        else:
            table.add_row(str(layer), f"{generated.mean().item():.4g}", f"{generated.max().item():.4g}")
    return table


# ------------------------------------------------------------------------------------ commands

PromptArg = typer.Argument(
    None, help="The prompt, with GUIDE tags; '-' or omitted: read from stdin.", show_default=False
)
ModelOpt = typer.Option(
    "default",
    "--model",
    "-m",
    help="'default' (embedded SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file.",
)
GgufOpt = typer.Option(None, "--gguf-file", help="GGUF file name inside --model (a folder or hub repository).")
SystemOpt = typer.Option(None, "--system", help="A system message (tags allowed) sent before the prompt.")
PenaltyOpt = typer.Option(1.0, "--repetition-penalty", help="Above 1 discourages repeats (transformers' own); 1 = off.")


def read_json_schema(value: str | None) -> dict[str, Any] | None:
    """``--json-schema``: inline JSON, or the path of a JSON file, as an OpenAI-style response_format."""
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        try:
            with open(value, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise GuideValueError(f"--json-schema {value!r} is neither inline JSON nor a readable file: {error}") from (
                None
            )
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as error:
        raise GuideValueError(f"--json-schema is not valid JSON: {error}") from None
    return {"type": "json_schema", "json_schema": {"name": "cli", "schema": schema}}


@app.command()
def generate(
    prompt: str | None = PromptArg,
    delta_mid: float = typer.Option(
        1.0, "--delta-mid", help="Δ of <!!-> emphasis (<!-> gets half, <!!!-> double); may be negative."
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Most tokens to generate."),
    model: str = ModelOpt,
    gguf_file: str | None = GgufOpt,
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass, in (0, 1]."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
    stop: list[str] | None = typer.Option(None, "--stop", help="Stop before this string (repeatable)."),
    layers: str | None = typer.Option(None, "--layers", help="Layers that get the bias: 'all' or e.g. 0,1,2."),
    system: str | None = SystemOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of streaming the text."),
    repetition_penalty: float = PenaltyOpt,
    json_schema: str | None = typer.Option(
        None, "--json-schema", help="Constrain the output to this JSON schema (inline JSON or a file path)."
    ),
    delta_queries: DeltaQueriesChoice = typer.Option(
        DeltaQueriesChoice["all"],
        "--delta-queries",
        help="Queries that get Δ: all (the paper's GUIDE) or output (the last prompt position and new tokens).",
    ),
    contrast: str = typer.Option(
        "0",
        "--contrast",
        metavar="γ|auto",
        help="γ of contrastive emphasis: l_Δ + γ (l_Δ − l_0); 0 = off; auto = 4 for far emphasis.",
    ),
) -> None:
    """Generate a completion of a tagged prompt, streaming the text to stdout."""
    try:
        text = build_prompt(read_prompt(prompt), system)
        options = {
            "max_new_tokens": max_new_tokens,
            "delta_mid": require_finite("--delta-mid", delta_mid),
            "temperature": require_finite("--temperature", temperature),
            "top_p": require_finite("--top-p", top_p),
            "seed": seed,
            "stop": list(stop) if stop else None,
            "layers": parse_layer_list(layers, "--layers", allow_all=True),
            "repetition_penalty": require_finite("--repetition-penalty", repetition_penalty),
            "response_format": read_json_schema(json_schema),
            "delta_queries": delta_queries.value,
            "contrast": parse_contrast(contrast),
        }
        engine = load_engine(model, gguf_file)
        if as_json:
            result = engine.generate(text, **options)
            typer.echo(json.dumps(result_json(result, model), ensure_ascii=False, indent=2))
        else:
            stream_text(engine, text, **options)
    except GuideError as error:
        raise fail(str(error)) from None


@app.command()
def influence(
    prompt: str | None = PromptArg,
    metric: Metric = typer.Option(Metric["influence"], "--metric", help="What to measure."),
    delta_influence: float = typer.Option(0.0, "--delta-influence", help="Δ applied to the <?-> span while measuring."),
    delta_mid: float = typer.Option(1.0, "--delta-mid", help="Δ of <!!-> emphasis elsewhere in the prompt."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", min=1, help="Most tokens to generate."),
    plot: str | None = typer.Option(None, "--plot", help="Write the log-influence figure to this PNG."),
    html_path: str | None = typer.Option(None, "--html", help="Write the token heatmap to this HTML file."),
    json_path: str | None = typer.Option(
        None, "--json", help="Write the influence (InfluenceResult.to_dict) to this JSON file."
    ),
    layers_to_plot: str | None = typer.Option(
        None, "--layers-to-plot", help="Layers in the PNG, e.g. 0,15,29 (default first, middle, last)."
    ),
    window: int = typer.Option(5, "--window", min=1, help="Tokens in the rolling mean of the PNG."),
    model: str = ModelOpt,
    gguf_file: str | None = GgufOpt,
    system: str | None = SystemOpt,
    repetition_penalty: float = PenaltyOpt,
) -> None:
    """Generate, then measure how much the <?-> … <-?> span influences every token and layer."""
    try:
        text = build_prompt(read_prompt(prompt), system, needs_influence_span=True)
        plot_layers = parse_layer_list(layers_to_plot, "--layers-to-plot")
        options = {
            "max_new_tokens": max_new_tokens,
            "delta_mid": require_finite("--delta-mid", delta_mid),
            "delta_influence": require_finite("--delta-influence", delta_influence),
            "metric": metric.value,
            "repetition_penalty": require_finite("--repetition-penalty", repetition_penalty),
        }
        engine = load_engine(model, gguf_file)
        if plot_layers is not None:
            bad = [k for k in plot_layers if not isinstance(k, int) or not -1 <= k < engine.num_layers]
            if bad:
                raise GuideValueError(
                    f"--layers-to-plot: layer {bad[0]} is out of range; "
                    f"this model has layers -1..{engine.num_layers - 1}"
                )
        result = stream_text(engine, text, **options)
        measured = result.influence
        from rich.console import Console

        Console(file=sys.stdout, soft_wrap=False).print(summary_table(measured))
        if plot:
            typer.echo(f"wrote {measured.plot(plot, layers=plot_layers, window=window)}", err=True)
        if html_path:
            typer.echo(f"wrote {measured.to_html(html_path)}", err=True)
        if json_path:
            try:
                with open(json_path, "w", encoding="utf-8") as handle:
                    json.dump(measured.to_dict(), handle)
            except OSError as error:
                raise GuideError(f"cannot write the JSON file {json_path!r}: {error}") from error
            typer.echo(f"wrote {json_path}", err=True)
    except GuideError as error:
        raise fail(str(error)) from None


if __name__ == "__main__":
    app()
