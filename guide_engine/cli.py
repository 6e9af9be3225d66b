"""The engine's commands of the ``guide`` console script: ``guide generate …`` and ``guide influence …``.

Everything that can be checked without the model is checked before it loads (which takes tens of
seconds on a small CPU): tags and an empty prompt, numbers, layer indices against the model's
config (read alone, see :func:`read_model_sizes`), output paths, the plots extra, and
``--max-new-tokens`` against the context. Models load through :func:`guide_engine.shared_engine`,
so repeated in-process calls (tests, a notebook driving the CLI) reuse one loaded model. Bad input
prints one line to stderr and exits with status 2, without a traceback.

This module imports no torch at its top (nor do the modules it imports there: errors, tags,
options, loading), so the console script checks a command line before importing torch and
transformers (seconds): :func:`load_engine` imports them, once the input has passed.

The installed ``guide`` command is :mod:`guide_integrations.cli`: these commands, ``guide serve``
and ``--version``, with ``guide --help`` answered without importing torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import GuideError, GuideValueError, MissingDependencyError, ModelLoadError, require_finite

try:
    import typer
except ImportError as missing:  # the console script is installed even without the extra
    raise MissingDependencyError(
        "the guide command needs typer and rich: pip install 'guide-attention[cli]'"
    ) from missing
from .loading import load_error, resolve_model
from .options import CONTRAST_REFERENCES, DELTA_QUERIES, METRICS, EngineDefaults, check_option, request_options
from .tags import Span, parse_tags

app = typer.Typer(
    name="guide",
    help="Emphasize parts of a prompt with GUIDE tags and measure their influence on a local LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wrapped, not cut off; and no rich import for --help
)

USAGE_ERROR = 2


Metric = Enum("Metric", {name: name for name in METRICS}, type=str)  # type: ignore[misc]
"""What ``guide influence`` measures: the choices are the engine's own metric names."""

DeltaQueriesChoice = Enum("DeltaQueriesChoice", {name: name for name in DELTA_QUERIES}, type=str)  # type: ignore[misc]
"""``guide generate --delta-queries``: the engine's own names."""
ReferenceChoice = Enum("ReferenceChoice", {name: name for name in CONTRAST_REFERENCES}, type=str)  # type: ignore[misc]
"""``guide generate --contrast-reference``: the engine's own names."""


# ------------------------------------------------------------------------------------ helpers


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr; return the exit to raise."""
    typer.echo("error: " + " ".join(str(message).splitlines()), err=True)
    return typer.Exit(USAGE_ERROR)


def number(text: str) -> float:
    """A float option's value (typer's own message for a bad one does not show the value)."""
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None


def whole_number(text: str) -> int:
    """An integer option's value, named when it is not one."""
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None


def positive_whole_number(text: str) -> int:
    """An integer option's value that must be at least 1."""
    value = whole_number(text)
    if value < 1:
        raise typer.BadParameter(f"{text!r} is not a whole number >= 1")
    return value


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


def check_layer_range(option: str, layers: list[int] | str | None, allowed: range, described: str) -> None:
    """Every index of ``layers`` (a parsed layer list) is in ``allowed``; else name the first that is not."""
    bad = [k for k in layers if k not in allowed] if isinstance(layers, list) else []
    if bad:
        raise GuideValueError(f"{option}: layer {bad[0]} is out of range; this model has layers {described}")


def parse_contrast(text: str) -> float | str:
    """``"auto"`` stays a word, anything else must be a finite number >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise GuideValueError(f"--contrast must be a number >= 0 or 'auto', got {text!r}")
    return value


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
    """A plain string, or system + user messages; tags and empty texts are checked here, before the model loads."""
    hints = {
        "PROMPT": "give the text to send, or '-' to read it from stdin",
        "--system": "give its text or leave it out",
    }
    texts = {"PROMPT": prompt} if system is None else {"--system": system, "PROMPT": prompt}
    spans: list[Span] = []
    for name, text in texts.items():
        with warnings.catch_warnings():  # the engine warns about empty spans itself
            warnings.simplefilter("ignore")
            parsed = parse_tags(text)
        if not parsed.text.strip():
            what = "has no text besides its tags" if text.strip() else "is empty"
            raise GuideValueError(f"{name} {what}: {hints[name]}")
        spans.extend(parsed.spans)
    if needs_influence_span and not any(span.kind == "influence" for span in spans):
        raise GuideValueError("guide influence needs an influence span: wrap the text to measure in <?-> … <-?>")
    if system is None:
        return prompt
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def check_stops(stop: list[str] | None) -> list[str] | None:
    """``--stop`` values (repeatable), each a non-empty string."""
    for value in stop or ():
        if not value:
            raise GuideValueError(f"--stop needs a non-empty string, got {value!r}")
    return list(stop) if stop else None


def check_output_path(option: str, path: str | None) -> None:
    """Fail now if ``path`` cannot be written, rather than after generating: its folder must exist and be writable."""
    if path is None:
        return
    if not path.strip():
        raise GuideValueError(f"{option} needs a file name, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise GuideValueError(f"{option} {path!r} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise GuideValueError(f"{option} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise GuideValueError(f"{option} {path!r}: no permission to write there")


def cap_max_new_tokens(max_new_tokens: int, context_length: int | None) -> int:
    """``max_new_tokens``, or the context length with a warning on stderr when the answer cannot be that long."""
    if context_length is None or max_new_tokens < context_length:
        return max_new_tokens
    typer.echo(
        f"warning: --max-new-tokens {max_new_tokens} is more than the model's context of {context_length} tokens "
        "allows; the answer stops where prompt and answer fill the context",
        err=True,
    )
    return context_length


# ------------------------------------------------------------------- the model's config, read alone


@dataclass(frozen=True)
class ModelSizes:
    """A model's sizes that requests are checked against, read from its config without loading it.

    Attributes:
        num_layers: decoder layers.
        num_heads: query heads per layer.
        context_length: the most tokens (prompt and answer together); ``None`` when the config does not say.
    """

    num_layers: int
    num_heads: int
    context_length: int | None

    def defaults(self) -> EngineDefaults:
        """The engine's defaults for a model of these sizes (to run its request checks before loading)."""
        return EngineDefaults(num_layers=self.num_layers, num_heads=self.num_heads)


def read_model_sizes(model: str, gguf_file: str | None) -> ModelSizes:
    """Layers, heads and context of ``model`` from its config alone, without loading weights.

    A GGUF file (the embedded SmolLM2 included) by reading the start of its header
    (:func:`read_gguf_metadata`, milliseconds); a folder or a cached hub id through
    ``AutoConfig.from_pretrained``.

    Raises:
        ModelLoadError: the config cannot be read (no such folder, a hub id not in the cache offline), with
            the engine's own message (:func:`guide_engine.loading.load_error`).
        MissingDependencyError: the embedded model is not installed.
    """
    name, gguf = resolve_model(model, gguf_file)
    if gguf is not None:
        return gguf_sizes(model, gguf_path(model, name, gguf))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name).get_text_config()
    except (OSError, ValueError) as error:
        raise load_error(model, error) from None
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise ModelLoadError(f"model {model!r}: its config has no num_hidden_layers or num_attention_heads")
    context = getattr(config, "max_position_embeddings", None)
    return ModelSizes(layers, heads, context if isinstance(context, int) and context > 0 else None)


def gguf_path(model: str, folder_or_repo: str, file: str) -> str:
    """The local path of GGUF ``file`` in a folder, or in the cache of a hub repository."""
    if os.path.isdir(folder_or_repo):
        path = os.path.join(folder_or_repo, file)
        if not os.path.isfile(path):
            raise GuideValueError(f"--gguf-file {file!r} is not in the folder {folder_or_repo!r}")
        return path
    from transformers.utils import cached_file

    try:
        found = cached_file(folder_or_repo, file)
    except (OSError, ValueError) as error:
        raise load_error(model, error) from None
    if found is None:
        raise load_error(model, FileNotFoundError(file))
    return found


GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
"""struct formats of GGUF's scalar value types (8 is a string, 9 an array)."""
GGUF_STRING, GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The scalar and string values at the start of a GGUF header, read until ``done(values)`` holds.

    A GGUF file starts with typed key/value pairs; llama.cpp writes ``general.*`` and the model's
    sizes first and the tokenizer's long arrays last, so this usually stops after a few hundred
    bytes. (gguf's ``GGUFReader`` parses every array item, the vocabulary included: about 7 s for
    the embedded SmolLM2 on a small CPU.) Arrays are skipped, not returned.

    Raises:
        ValueError: not a GGUF file of version 2 or 3, or a header cut short.
    """
    values: dict[str, Any] = {}
    with open(path, "rb") as handle:

        def unpack(fmt: str) -> Any:
            data = handle.read(struct.calcsize(fmt))
            if len(data) < struct.calcsize(fmt):
                raise ValueError("the file ends inside its GGUF header")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            size = unpack("<Q")
            if size > 1 << 20:
                raise ValueError(f"a {size}-byte string in the GGUF header; the file is damaged")
            return handle.read(size).decode("utf-8", errors="replace")

        def skip(kind: int, count: int = 1) -> None:
            if kind in GGUF_SCALARS:
                handle.seek(struct.calcsize(GGUF_SCALARS[kind]) * count, os.SEEK_CUR)
            elif kind == GGUF_STRING:
                for _ in range(count):
                    handle.seek(unpack("<Q"), os.SEEK_CUR)
            elif kind == GGUF_ARRAY:
                for _ in range(count):
                    item = unpack("<I")
                    skip(item, unpack("<Q"))
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if handle.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (it does not start with 'GGUF')")
        version = unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        unpack("<Q")  # the number of tensors
        for _ in range(unpack("<Q")):
            key, kind = string(), unpack("<I")
            if kind in GGUF_SCALARS:
                values[key] = unpack(GGUF_SCALARS[kind])
            elif kind == GGUF_STRING:
                values[key] = string()
            else:
                skip(kind)
            if done(values):
                break
    return values


def gguf_sizes(model: str, path: str) -> ModelSizes:
    """:class:`ModelSizes` from a GGUF header (``<arch>.block_count``, ``.attention.head_count``, …)."""
    names = ("block_count", "attention.head_count", "context_length")

    def found_all(values: dict[str, Any]) -> bool:
        arch = values.get("general.architecture")
        return arch is not None and all(f"{arch}.{name}" in values for name in names)

    try:
        values = read_gguf_metadata(path, found_all)
    except (OSError, ValueError) as error:
        raise load_error(model, error) from None
    arch = values.get("general.architecture")
    layers, heads, context = (values.get(f"{arch}.{name}") for name in names)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise ModelLoadError(f"model {model!r}: {path} names no {arch}.block_count or {arch}.attention.head_count")
    return ModelSizes(layers, heads, context if isinstance(context, int) and context > 0 else None)


# ------------------------------------------------------------------------------- loading, output


def load_engine(model: str, gguf_file: str | None, *, threads: int | None = None, verbose: bool = False) -> Any:
    """The shared engine for ``model`` (only options the user set become load keywords).

    The first call imports torch, transformers and the rest of :mod:`guide_engine`. ``threads`` sets
    torch's CPU threads for the whole process; transformers' progress bars ("Loading weights") show
    only when ``verbose``.
    """
    package = sys.modules[__package__]
    if not hasattr(package, "shared_engine"):  # the console script imported this module before the package's
        importlib.reload(package)  # __init__ ran (guide_integrations.cli.engine_commands): run it now
    import torch
    from transformers.utils import logging as transformers_logging

    from .registry import shared_engine

    if threads is not None:
        torch.set_num_threads(threads)
    load_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    bars = transformers_logging.is_progress_bar_enabled()
    if not verbose:
        transformers_logging.disable_progress_bar()
    try:
        return shared_engine(None if model == "default" else model, **load_kwargs)
    finally:
        if bars and not verbose:
            transformers_logging.enable_progress_bar()


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
    """What ``--json`` prints: the result, and ``influence`` (``InfluenceResult.to_dict()``) when measured."""
    data = {
        "model": model,
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "spans": [s.to_dict() for s in result.spans],
        "token_ids": list(result.token_ids),
    }
    if result.influence is not None:
        data["influence"] = result.influence.to_dict()
    return data


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
    from .constraints import load_llguidance

    load_llguidance()  # missing llguidance: say so now, not after loading the model
    return {"type": "json_schema", "json_schema": {"name": "cli", "schema": schema}}


def checked_options(options: dict[str, Any], sizes: ModelSizes) -> dict[str, Any]:
    """``options`` with ``max_new_tokens`` capped to the context, after the engine's own checks of the request."""
    capped = {**options, "max_new_tokens": cap_max_new_tokens(options["max_new_tokens"], sizes.context_length)}
    request_options(sizes.defaults(), **capped)
    return capped


# ------------------------------------------------------------------------------------ commands

PromptArg = typer.Argument(
    None, metavar="PROMPT", help="The prompt, with GUIDE tags; '-' or omitted: read from stdin.", show_default=False
)
ModelOpt = typer.Option(
    "default",
    "--model",
    "-m",
    metavar="<model>",
    help="'default' (embedded SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file.",
)
GgufOpt = typer.Option(
    None, "--gguf-file", metavar="<file>", help="GGUF file name inside --model (a folder or hub repository)."
)
SystemOpt = typer.Option(
    None, "--system", metavar="<text>", help="A system message (tags allowed) sent before the prompt."
)
PenaltyOpt = typer.Option(
    1.0, "--repetition-penalty", parser=number, help="Above 1 discourages repeats (transformers' own); 1 = off."
)
ThreadsOpt = typer.Option(
    None,
    "--threads",
    parser=positive_whole_number,
    metavar="<n>",
    help="CPU threads for torch (default: torch's own, one per core). On a shared or busy machine 1 can be "
    "many times faster; see docs/engine.md.",
    show_default=False,
)
VerboseOpt = typer.Option(False, "--verbose", help="Show transformers' progress bars while the model loads.")
JsonOpt = typer.Option(
    False,
    "--json",
    help="Print the result as one JSON object on stdout (text, token counts, finish_reason, spans, token ids; "
    "for influence also 'influence', as InfluenceResult.to_dict()) instead of the text as it streams.",
)


@app.command()
def generate(
    prompt: str | None = PromptArg,
    delta_mid: float = typer.Option(
        1.0, "--delta-mid", parser=number, help="Δ of <!!-> emphasis (<!-> gets half, <!!!-> double); may be negative."
    ),
    max_new_tokens: int = typer.Option(
        128, "--max-new-tokens", parser=positive_whole_number, help="Most tokens to generate."
    ),
    model: str = ModelOpt,
    gguf_file: str | None = GgufOpt,
    temperature: float = typer.Option(0.0, "--temperature", parser=number, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", parser=number, help="Nucleus sampling mass, in (0, 1]."),
    seed: int | None = typer.Option(None, "--seed", parser=whole_number, help="Random seed for sampling."),
    stop: list[str] | None = typer.Option(
        None, "--stop", metavar="<text>", help="Stop before this string (repeatable)."
    ),
    layers: str | None = typer.Option(
        None, "--layers", metavar="<layers>", help="Layers that get the bias: 'all' or e.g. 0,1,2."
    ),
    system: str | None = SystemOpt,
    as_json: bool = JsonOpt,
    repetition_penalty: float = PenaltyOpt,
    json_schema: str | None = typer.Option(
        None,
        "--json-schema",
        metavar="<json|file>",
        help="Constrain the output to this JSON schema (inline JSON or a file path).",
    ),
    delta_queries: DeltaQueriesChoice = typer.Option(
        DeltaQueriesChoice["all"],
        "--delta-queries",
        help="Queries that get Δ: all (the paper's GUIDE) or output (the last prompt position and new tokens).",
    ),
    contrast: str = typer.Option(
        "0",
        "--contrast",
        metavar="<γ|auto>",
        help="γ of contrastive emphasis: l_Δ + γ (l_Δ − l_ref); 0 = off; auto = only for far emphasis.",
    ),
    contrast_reference: ReferenceChoice | None = typer.Option(
        None,
        "--contrast-reference",
        help="What contrast pushes away from: plain (the prompt without Δ; a fixed γ's default) or masked "
        "(without the emphasized text; auto's default).",
    ),
    threads: int | None = ThreadsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Generate a completion of a tagged prompt, streaming the text to stdout."""
    try:
        text = build_prompt(read_prompt(prompt), system)
        layer_list = parse_layer_list(layers, "--layers", allow_all=True)
        options = {
            "max_new_tokens": max_new_tokens,
            "delta_mid": require_finite("--delta-mid", delta_mid),
            "temperature": check_option("temperature", temperature, "--temperature"),
            "top_p": check_option("top_p", top_p, "--top-p"),
            "seed": seed,
            "stop": check_stops(stop),
            "layers": layer_list,
            "repetition_penalty": check_option("repetition_penalty", repetition_penalty, "--repetition-penalty"),
            "response_format": read_json_schema(json_schema),
            "delta_queries": delta_queries.value,
            "contrast": parse_contrast(contrast),
            "contrast_reference": None if contrast_reference is None else contrast_reference.value,
        }
        sizes = read_model_sizes(model, gguf_file)
        n = sizes.num_layers
        check_layer_range("--layers", layer_list, range(-n, n), f"0..{n - 1} (negative indices count from the end)")
        options = checked_options(options, sizes)
        engine = load_engine(model, gguf_file, threads=threads, verbose=verbose)
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
    delta_influence: float = typer.Option(
        0.0, "--delta-influence", parser=number, help="Δ applied to the <?-> span while measuring."
    ),
    delta_mid: float = typer.Option(
        1.0, "--delta-mid", parser=number, help="Δ of <!!-> emphasis elsewhere in the prompt."
    ),
    max_new_tokens: int = typer.Option(
        40, "--max-new-tokens", parser=positive_whole_number, help="Most tokens to generate."
    ),
    plot: str | None = typer.Option(
        None, "--plot", metavar="<file.png>", help="Write the log-influence figure to this PNG."
    ),
    html_path: str | None = typer.Option(
        None, "--html", metavar="<file.html>", help="Write the token heatmap to this HTML file."
    ),
    as_json: bool = JsonOpt,
    layers_to_plot: str | None = typer.Option(
        None,
        "--layers-to-plot",
        metavar="<layers>",
        help="Layers in the PNG, e.g. 0,15,29 (default first, middle, last).",
    ),
    window: int = typer.Option(
        5, "--window", parser=positive_whole_number, help="Tokens in the rolling mean of the PNG."
    ),
    model: str = ModelOpt,
    gguf_file: str | None = GgufOpt,
    system: str | None = SystemOpt,
    repetition_penalty: float = PenaltyOpt,
    threads: int | None = ThreadsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Generate, then measure how much the <?-> span influences each token.

    Streams the text, then prints the mean and maximum over the generated tokens per layer (or, with
    --json, everything as JSON), and writes the files asked for.
    """
    try:
        text = build_prompt(read_prompt(prompt), system, needs_influence_span=True)
        plot_layers = parse_layer_list(layers_to_plot, "--layers-to-plot")
        check_output_path("--plot", plot)
        check_output_path("--html", html_path)
        if plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise MissingDependencyError("--plot needs matplotlib: pip install 'guide-attention[plots]'")
        options = {
            "max_new_tokens": max_new_tokens,
            "delta_mid": require_finite("--delta-mid", delta_mid),
            "delta_influence": require_finite("--delta-influence", delta_influence),
            "metric": metric.value,
            "repetition_penalty": check_option("repetition_penalty", repetition_penalty, "--repetition-penalty"),
        }
        sizes = read_model_sizes(model, gguf_file)
        n = sizes.num_layers
        check_layer_range("--layers-to-plot", plot_layers, range(-1, n), f"-1..{n - 1}")
        options = checked_options(options, sizes)
        engine = load_engine(model, gguf_file, threads=threads, verbose=verbose)
        if as_json:
            result = engine.generate(text, **options)
            typer.echo(json.dumps(result_json(result, model), ensure_ascii=False, indent=2))
        else:
            result = stream_text(engine, text, **options)
            from rich.console import Console

            Console(file=sys.stdout, soft_wrap=False).print(summary_table(result.influence))
        if plot is not None:
            typer.echo(f"wrote {result.influence.plot(plot, layers=plot_layers, window=window)}", err=True)
        if html_path is not None:
            typer.echo(f"wrote {result.influence.to_html(html_path)}", err=True)
    except GuideError as error:
        raise fail(str(error)) from None


if __name__ == "__main__":
    app()
