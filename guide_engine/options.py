"""Request options: their names, their defaults, and the one validator every entry point uses.

The engine, the pipeline, the CLI and both integrations take the same option names (see
:data:`REQUEST_OPTIONS`); each value is checked here, once, and a bad one raises a
:class:`~guide_engine.errors.GuideValueError` that names it and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import GuideValueError, require_finite
from .tools import ToolSpec, check_tool_choice, check_tools

__all__ = [
    "AUTO_CONTRAST",
    "AUTO_CONTRAST_DISTANCE",
    "AUTO_MASKED_CONTRAST",
    "AUTO_REFERENCE",
    "AUTO_PLAUSIBILITY",
    "CONTRAST_REFERENCES",
    "ContrastReference",
    "DELTA_QUERIES",
    "METRICS",
    "MODEL_FREE_OPTIONS",
    "REQUEST_OPTIONS",
    "Contrast",
    "EngineDefaults",
    "FinishReason",
    "DeltaQueries",
    "Layers",
    "Metric",
    "RequestOptions",
    "ResponseFormat",
    "SamplingConfig",
    "check_contrast",
    "check_contrast_reference",
    "check_delta_queries",
    "check_heads",
    "check_layers",
    "check_metric",
    "check_option",
    "check_positive_int",
    "check_response_format",
    "request_options",
]

Metric = Literal["influence", "attention_rollout"]
METRICS: tuple[str, ...] = get_args(Metric)
"""The measurements a request may ask for with ``metric=``."""

DeltaQueries = Literal["all", "output"]
DELTA_QUERIES: tuple[str, ...] = get_args(DeltaQueries)
"""Which queries get Δ: ``"all"`` (the paper's GUIDE) or ``"output"`` (those that produce a token)."""
Contrast = float | Literal["auto"]

AUTO_CONTRAST = 4.0
"""γ that ``contrast="auto", contrast_reference="plain"`` uses for far emphasis (0.3's rule)."""
AUTO_CONTRAST_DISTANCE = 512
"""Tokens between the last emphasized token and the prompt's end from which ``"auto"`` contrasts.

Chosen on the tuning half of the steering evaluation (docs/choosing-delta.md): contrast helped an
instruction 1024 tokens before the end, was even at 256 and hurt an instruction at the end.
"""

ContrastReference = Literal["plain", "masked"]
CONTRAST_REFERENCES: tuple[str, ...] = get_args(ContrastReference)
"""What contrast pushes away from: the prompt without Δ (``"plain"``), or the prompt with the
emphasized tokens hidden from attention (``"masked"``: classifier-free guidance on the span)."""
AUTO_REFERENCE: ContrastReference = "masked"
"""The reference ``contrast="auto"`` uses unless the request names one: against plain, contrast
lost every far question of the evaluation (needle 3/12 against 11/12 without emphasis at 512
tokens); against masked it never lost more than two answers in twelve (docs/choosing-delta.md)."""
AUTO_MASKED_CONTRAST = 1.0
"""γ of ``contrast="auto"`` for far emphasis against the ``"masked"`` reference (γ = 2 lost the
needle on the tuning half: 2/12 against 12/12 at γ = 1)."""
AUTO_PLAUSIBILITY = 0.0
"""Research setting, not an option: α of a plausibility constraint on ``"auto"``'s contrasted rows,
which may then only pick tokens whose emphasized probability is ≥ α × the largest (0 = none). It
was tried at α = 0.1 (Li et al. 2023) and lost on both tasks (docs/choosing-delta.md)."""

FinishReason = Literal["stop", "length", "tool_calls", "timeout"]
Layers = Literal["all"] | Sequence[int]

REQUEST_OPTIONS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "delta_mid",
    "delta_influence",
    "layers",
    "heads",
    "metric",
    "response_format",
    "tools",
    "tool_choice",
    "repetition_penalty",
    "timeout",
    "delta_queries",
    "contrast",
    "contrast_reference",
)
"""Keyword arguments of ``GuideEngine.generate``, ``stream`` and ``generate_batch``."""


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always taken."""
        return self.temperature == 0.0


@dataclass(frozen=True)
class ResponseFormat:
    """A checked ``response_format`` that constrains the output (``{"type": "text"}`` is ``None``).

    Attributes:
        type: ``"json_object"`` (any JSON object) or ``"json_schema"``.
        schema: the JSON schema the output validates against (``{"type": "object"}`` for json_object).
        name: the schema's name, when given.
    """

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any]
    name: str | None = None


@dataclass(frozen=True)
class RequestOptions:
    """Validated settings of one request (unset ones filled from :class:`EngineDefaults`).

    ``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or the name of the one tool to call;
    ``timeout`` is in seconds (``None``: no limit). ``delta_queries`` says which queries get Δ:
    ``"all"`` (every query of every layer, the paper's GUIDE) or ``"output"`` (only the queries that
    produce a token: the last prompt position and every generated one). ``contrast`` = γ > 0 picks
    each token from ``l_Δ + γ (l_Δ − l_ref)``, the emphasized and a reference pass's logits (0 = off);
    ``contrast_reference`` names the reference: ``"plain"`` (the prompt without Δ, the default for a
    fixed γ) or ``"masked"`` (the emphasized text hidden; :data:`AUTO_REFERENCE`, the default of
    ``"auto"``). ``"auto"`` contrasts the prompts whose last emphasized token lies at least
    :data:`AUTO_CONTRAST_DISTANCE` tokens before their end (γ = :data:`AUTO_MASKED_CONTRAST` against
    masked, :data:`AUTO_CONTRAST` against plain) and decodes the others with their Δ, uncontrasted.
    """

    max_new_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...]
    delta_mid: float
    delta_influence: float
    layers: frozenset[int] | None
    heads: tuple[int, ...] | None
    metric: Metric | None
    response_format: ResponseFormat | None = None
    tools: tuple[ToolSpec, ...] = field(default=())
    tool_choice: str = "none"
    repetition_penalty: float = 1.0
    timeout: float | None = None
    delta_queries: DeltaQueries = "all"
    contrast: Contrast = 0.0
    contrast_reference: ContrastReference | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the model may answer with tool calls."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def constrained(self) -> bool:
        """Whether decoding follows a grammar (a JSON response format or tool calls)."""
        return self.response_format is not None or self.calls_tools


@dataclass(frozen=True)
class EngineDefaults:
    """What a request gets when it does not say, and the model's sizes to check indices against.

    Attributes:
        num_layers: decoder layers of the model.
        num_heads: query heads per layer.
        delta_mid: Δ of level-2 emphasis.
        layers: biased layers (``None``: all).
        heads: biased query heads (``None``: all).
        max_new_tokens: generation length.
    """

    num_layers: int
    num_heads: int
    delta_mid: float = 1.0
    layers: frozenset[int] | None = None
    heads: tuple[int, ...] | None = None
    max_new_tokens: int = 256


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is an ``int`` ≥ 1, else a :class:`GuideValueError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GuideValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_metric(metric: Any) -> Metric | None:
    """``metric`` if it is one of :data:`METRICS` or ``None``."""
    if metric is not None and metric not in METRICS:
        raise GuideValueError(f"metric must be one of {METRICS} or None, got {metric!r}")
    return metric


def check_layers(layers: Layers, num_layers: int) -> frozenset[int] | None:
    """``"all"`` → ``None``; a list of (possibly negative) indices → the set of layer indices."""
    if isinstance(layers, str):
        if layers != "all":
            raise GuideValueError(f"layers must be 'all' or a list of layer indices, got {layers!r}")
        return None
    chosen = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -num_layers <= layer < num_layers:
            raise GuideValueError(f"layer {layer!r} is out of range: this model has layers 0..{num_layers - 1}")
        chosen.add(layer % num_layers)
    return frozenset(chosen)


def check_heads(heads: Sequence[int] | None, num_heads: int) -> tuple[int, ...] | None:
    """``None`` (all heads) or the sorted query-head indices."""
    if heads is None:
        return None
    for head in heads:
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < num_heads:
            raise GuideValueError(f"head {head!r} is out of range: this model has query heads 0..{num_heads - 1}")
    return tuple(sorted(set(heads)))


def check_delta_queries(delta_queries: Any) -> DeltaQueries:
    """``delta_queries`` if it is one of :data:`DELTA_QUERIES`."""
    if delta_queries not in DELTA_QUERIES:
        raise GuideValueError(f"delta_queries must be one of {DELTA_QUERIES}, got {delta_queries!r}")
    return delta_queries


def check_contrast(contrast: Any) -> Contrast:
    """γ ≥ 0 of contrastive emphasis (0 = off), or ``"auto"`` (γ chosen per prompt, see :data:`AUTO_CONTRAST`)."""
    if contrast == "auto":
        return "auto"
    if isinstance(contrast, str):
        raise GuideValueError(f"contrast must be a number >= 0 or 'auto', got {contrast!r}")
    number = require_finite("contrast", contrast)
    if number < 0:
        raise GuideValueError(f"contrast must be >= 0 (0 = off, e.g. 1 or 4) or 'auto', got {contrast!r}")
    return number


def check_contrast_reference(reference: Any) -> ContrastReference | None:
    """``reference`` if it is one of :data:`CONTRAST_REFERENCES`, or ``None`` (the mode's own)."""
    if reference is not None and reference not in CONTRAST_REFERENCES:
        raise GuideValueError(
            f"contrast_reference must be one of {CONTRAST_REFERENCES} (what contrast pushes away from: "
            f"the prompt without Δ, or without the emphasized text), got {reference!r}"
        )
    return reference


def _check_stop(stop: Any) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stops):
        raise GuideValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def check_response_format(response_format: Any) -> ResponseFormat | None:
    """An OpenAI-style ``response_format`` as a :class:`ResponseFormat` (``None`` for plain text)."""
    allowed = (
        'None, {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {"name": str, "schema": dict}}'
    )
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object", {"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise GuideValueError(
                f"response_format json_schema needs a 'schema' dict: {allowed}; got {response_format!r:.160}"
            )
        name = spec.get("name") if isinstance(spec, Mapping) else None
        return ResponseFormat("json_schema", dict(schema), name if isinstance(name, str) else None)
    raise GuideValueError(f"response_format must be {allowed}, got {response_format!r:.160}")


def _check_positive(name: str, value: Any, meaning: str) -> float:
    number = require_finite(name, value)
    if number <= 0:
        raise GuideValueError(f"{name} must be > 0 ({meaning}), got {value!r}")
    return number


def request_options(defaults: EngineDefaults, **options: Any) -> RequestOptions:
    """Check one request's options and fill in the defaults.

    Args:
        defaults: the engine's defaults and model sizes.
        **options: any of :data:`REQUEST_OPTIONS`; ``None`` means "the default".

    Raises:
        GuideValueError: for an unknown option or a bad value (the message names both).
    """
    unknown = sorted(set(options) - set(REQUEST_OPTIONS))
    if unknown:
        raise GuideValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(REQUEST_OPTIONS)}"
        )
    given = {name: value for name, value in options.items() if value is not None}
    temperature = require_finite("temperature", given.get("temperature", 0.0))
    if temperature < 0:
        raise GuideValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    top_p = require_finite("top_p", given.get("top_p", 1.0))
    if not 0 < top_p <= 1:
        raise GuideValueError(f"top_p must be in (0, 1], got {top_p}")
    top_k = given.get("top_k", 0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise GuideValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    seed = given.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise GuideValueError(f"seed must be an integer or None, got {seed!r}")
    response_format = check_response_format(given.get("response_format"))
    tools = check_tools(given.get("tools"))
    tool_choice = check_tool_choice(given.get("tool_choice"), tools)
    if response_format is not None and tools and tool_choice != "none":
        raise GuideValueError(
            f"response_format={response_format.type!r} and tools with tool_choice={tool_choice!r} cannot be combined: "
            "the answer is either JSON or tool calls; pass tool_choice='none' or drop one of them"
        )
    timeout = given.get("timeout")
    return RequestOptions(
        max_new_tokens=check_positive_int("max_new_tokens", given.get("max_new_tokens", defaults.max_new_tokens)),
        sampling=SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed),
        stop=_check_stop(given.get("stop")),
        delta_mid=require_finite("delta_mid", given.get("delta_mid", defaults.delta_mid)),
        delta_influence=require_finite("delta_influence", given.get("delta_influence", 0.0)),
        layers=check_layers(given["layers"], defaults.num_layers) if "layers" in given else defaults.layers,
        heads=check_heads(given["heads"], defaults.num_heads) if "heads" in given else defaults.heads,
        metric=check_metric(given.get("metric")),
        response_format=response_format,
        tools=tools,
        tool_choice=tool_choice,
        repetition_penalty=_check_positive(
            "repetition_penalty", given.get("repetition_penalty", 1.0), "1 = off, above 1 discourages repeats"
        ),
        timeout=None if timeout is None else _check_positive("timeout", timeout, "seconds of wall-clock time"),
        delta_queries=check_delta_queries(given.get("delta_queries", "all")),
        contrast=check_contrast(given.get("contrast", 0.0)),
        contrast_reference=check_contrast_reference(given.get("contrast_reference")),
    )


MODEL_FREE_OPTIONS = frozenset(REQUEST_OPTIONS) - {"layers", "heads", "tools", "tool_choice", "response_format"}
"""Request options whose check needs no model (layer and head indices, tools and formats do)."""


def check_option(name: str, value: Any, shown_as: str | None = None) -> Any:
    """``value`` if :func:`request_options` accepts it as the option ``name``; else its error, said as ``shown_as``.

    For an option of :data:`MODEL_FREE_OPTIONS`, checked before any model is loaded: the ``guide``
    command's flags (``shown_as="--top-p"``) and the wrappers' settings (``shown_as="max_tokens"``)
    get the engine's own bounds and message under the name their user typed.

    Raises:
        GuideValueError: e.g. ``--top-p must be in (0, 1], got 1.5``.
    """
    try:
        request_options(EngineDefaults(num_layers=1, num_heads=1), **{name: value})
    except GuideValueError as error:
        if shown_as is None or shown_as == name:
            raise
        raise GuideValueError(str(error).replace(name, shown_as, 1)) from None
    return value
