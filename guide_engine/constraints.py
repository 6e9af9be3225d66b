"""Constrained decoding: a grammar per row becomes a token mask on the logits.

The grammar library is llguidance (a 3 MB wheel without dependencies that runs on the CPU and
computes a mask in well under a millisecond); it is imported only when a request asks for a JSON
``response_format`` or tool calls. A JSON schema becomes a grammar through llguidance's own
compiler; tool calls are a Lark grammar with one ``%json`` sub-grammar per tool (see
:func:`tool_call_grammar`). Each row of a batch gets its own matcher, so rows may follow different
grammars, or none.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import GuideError, GuideValueError, MissingDependencyError
from .options import RequestOptions
from .schema_errors import unsupported_schema_message
from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolSpec

__all__ = [
    "JSON_STYLE",
    "GrammarCompiler",
    "TokenMasks",
    "is_closed_json",
    "json_schema_grammar",
    "request_grammar",
    "tool_call_grammar",
]

JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is laid out: ``{"a": 1, "b": [2, 3]}``, one line, no free whitespace
(a small model cannot run away in blanks, and the layout is the one models are trained on)."""

INSTALL = "pip install 'guide-attention[structured]'"


def load_llguidance() -> Any:
    """The ``llguidance`` module, or a :class:`MissingDependencyError` with the pip command."""
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch  # fill_next_token_bitmask (importing it took 0.85 s, once)
    except ImportError as missing:
        raise MissingDependencyError(
            f"constrained decoding (response_format, tools) needs llguidance: {INSTALL}"
        ) from missing
    return llguidance


def closed_objects(schema: Any) -> Any:
    """``schema`` with ``"additionalProperties": false`` on each object schema that lists
    ``properties`` and says nothing about other keys.

    JSON Schema allows unlisted keys by default, and a small model then fills them with noise (or
    repeats keys) until ``max_new_tokens`` cuts the JSON short. Output of the closed schema still
    validates against the schema as given; it only never adds keys the schema does not name.
    """
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    closed = {key: closed_objects(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), Mapping) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


def _checked(grammar: str, what: str) -> str:
    error = load_llguidance().LLMatcher.validate_grammar(grammar)
    if error:
        raise GuideValueError(f"{what} cannot be enforced: {' '.join(error.split())}")
    return grammar


def _compiled(schema: Mapping[str, Any]) -> tuple[str, str]:
    """``schema``'s grammar and llguidance's complaint about it (``""`` when none).

    Raises:
        ValueError, TypeError: from llguidance, when ``schema`` is not a JSON schema.
    """
    llguidance = load_llguidance()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=JSON_STYLE)
    return grammar, llguidance.LLMatcher.validate_grammar(grammar)


def _schema_error(schema: Mapping[str, Any]) -> str | None:
    """llguidance's error for ``schema``, or ``None`` when it compiles."""
    try:
        return _compiled(schema)[1] or None
    except (ValueError, TypeError) as error:
        return str(error)


def is_closed_json(value: Any) -> bool:
    """Whether strict JSON for ``value`` proves its own end: it closes (``}``, ``]``, ``"``) or is a literal.

    A number does not: ``12`` may be the start of ``12345``, so a number that stopped at a limit
    (``max_new_tokens``, the timeout) is cut short.
    """
    return not isinstance(value, (int, float)) or isinstance(value, bool)


def json_schema_grammar(schema: Mapping[str, Any], what: str = "response_format schema") -> str:
    """The grammar of JSON values that validate against ``schema`` (laid out as :data:`JSON_STYLE`).

    Raises:
        GuideValueError: when llguidance cannot compile the schema; the message names ``what``, the
            field and the keyword it cannot enforce, and what to do (:mod:`.schema_errors`).
    """
    try:
        grammar, unsupported = _compiled(schema)
    except (ValueError, TypeError) as error:
        raise GuideValueError(f"{what} is not a JSON schema: {error}") from None
    if unsupported:
        raise GuideValueError(unsupported_schema_message(schema, what, unsupported, _schema_error))
    return grammar


def tool_call_grammar(tools: Sequence[ToolSpec], tool_choice: str) -> str:
    """The grammar of an answer under ``tool_choice`` (``"auto"``, ``"required"`` or a tool name).

    A call is ``<tool_call>{"name": <tool>, "arguments": <its parameters>}</tool_call>``.
    ``"required"``: one or more calls, back to back. A name: exactly one call of that tool.
    ``"auto"``: the same calls, or text that contains no ``<tool_call>`` at all.
    """
    chosen = [t for t in tools if t.name == tool_choice] or list(tools)
    rules = []
    for i, tool in enumerate(chosen):
        json_schema_grammar(tool.parameters, f"tool {tool.name!r} parameters")  # names the bad tool
        arguments = dict(closed_objects(tool.parameters))
        # `#/$defs/...` references point at the root of the schema: the definitions move up with them.
        definitions = {key: arguments.pop(key) for key in ("$defs", "definitions") if key in arguments}
        body = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": JSON_STYLE,
            **definitions,
        }
        rules.append(f"tool_{i}: %json {json.dumps(body)}")
    alternatives = " | ".join(f"tool_{i}" for i in range(len(chosen)))
    start = {"auto": "TEXT | calls", "required": "calls"}.get(tool_choice, "call")
    lark = "\n".join(
        [
            f"start: {start}",
            "calls: call+",
            f"call: {json.dumps(TOOL_CALL_OPEN)} ({alternatives}) {json.dumps(TOOL_CALL_CLOSE)}",
            *rules,
            f"TEXT: /(.|\\n)+/ & ~/(.|\\n)*{TOOL_CALL_OPEN}(.|\\n)*/",
        ]
    )
    return _checked(load_llguidance().LLMatcher.grammar_from_lark(lark), "the tool-call grammar")


def request_grammar(request: RequestOptions) -> str | None:
    """The grammar a request's output must follow, or ``None`` when it is free text."""
    if request.response_format is not None:
        return json_schema_grammar(request.response_format.schema)
    if request.calls_tools:
        return tool_call_grammar(request.tools, request.tool_choice)
    return None


class GrammarCompiler:
    """llguidance's view of one tokenizer's vocabulary, built on first use (once, thread-safe).

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        eos_ids: the ids that end a sequence; a finished grammar allows only these.
    """

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = sorted(eos_ids)
        self._lltokenizer: Any = None
        self._lock = threading.Lock()

    def lltokenizer(self) -> Any:
        """The ``llguidance.LLTokenizer`` (about a second to build for a 50k vocabulary)."""
        if self._lltokenizer is None:
            with self._lock:
                if self._lltokenizer is None:
                    llguidance = load_llguidance()
                    eos = self.eos_ids or None
                    self._lltokenizer = llguidance.hf.from_tokenizer(self.tokenizer, eos_token=eos)
        return self._lltokenizer

    def matcher(self, grammar: str) -> Any:
        """A fresh ``llguidance.LLMatcher`` at the start of ``grammar``."""
        llguidance = load_llguidance()
        matcher = llguidance.LLMatcher(self.lltokenizer(), grammar)
        if matcher.is_error():
            raise GuideValueError(f"the grammar cannot be used: {matcher.get_error().strip().splitlines()[0]}")
        return matcher

    def masks(self, matchers: Sequence[Any]) -> TokenMasks:
        """Masks for one decoding loop, one matcher (or ``None``: unconstrained) per row."""
        return TokenMasks(matchers, self.lltokenizer().vocab_size, self.eos_ids)


class TokenMasks:
    """The grammar state of every row of one decoding loop: a mask over the vocabulary per row.

    Each step :meth:`apply` sets the logits of tokens a row's grammar forbids to ``-inf`` (a row
    whose grammar is complete may only end: end-of-sequence), then :meth:`advance` moves each
    matcher past the token that was chosen. (Not the attention mask, which hides padding from the
    model: this one hides tokens from the sampler.)

    Args:
        matchers: one ``llguidance.LLMatcher`` per row, ``None`` for a row without a grammar.
        vocab_size: llguidance's vocabulary size (the model's logits may be wider).
        eos_ids: the end-of-sequence ids.
    """

    def __init__(self, matchers: Sequence[Any], vocab_size: int, eos_ids: Sequence[int]) -> None:
        self.matchers = list(matchers)
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        words = (vocab_size + 31) // 32
        self.bitmask = torch.zeros((len(self.matchers), words), dtype=torch.int32)  # (batch, words), 1 bit per token
        self._fill_bitmask = load_llguidance().torch.fill_next_token_bitmask  # (matcher, bitmask, row)

    def apply(self, logits: torch.Tensor, rows_done: torch.Tensor) -> None:
        """Mask ``logits`` ``(batch, vocab)`` in place on the rows that have a grammar and are not done."""
        rows, ending = [], []
        for row, matcher in enumerate(self.matchers):
            if matcher is None or bool(rows_done[row]):
                continue
            rows.append(row)
            if matcher.is_stopped():  # the grammar is complete: only end-of-sequence
                ending.append(len(rows) - 1)
            else:
                self._fill_bitmask(matcher, self.bitmask, row)
        if not rows:
            return
        width = logits.shape[-1]
        # Not llguidance's `apply_token_bitmask_inplace`: it runs a `torch.compile`d kernel (a compile
        # on first use, graphs beside the engine's own `compile=True` step); unpacking with numpy
        # took 30 µs for 4 rows of a 49k vocabulary. Little-endian int32 words: bit j of word i is
        # token 32 * i + j.
        unpacked = np.unpackbits(self.bitmask[rows].numpy().view(np.uint8), axis=-1, bitorder="little")
        allowed = torch.from_numpy(unpacked[:, :width]).view(torch.bool)  # (rows, vocab)
        if allowed.shape[1] < width:  # model vocabulary wider than the tokenizer's: never allowed
            allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]), value=False)
        if ending:
            eos = [e for e in self.eos_ids if e < width]
            allowed[ending] = False
            allowed[torch.tensor(ending)[:, None], torch.tensor(eos)[None, :]] = True
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, next_ids: torch.Tensor, rows_done: torch.Tensor) -> None:
        """Feed each constrained row that is not done its chosen token."""
        for row, matcher in enumerate(self.matchers):
            if matcher is None or bool(rows_done[row]) or matcher.is_stopped():
                continue
            token = int(next_ids[row])
            if not matcher.consume_token(token):
                raise GuideError(f"internal error: the grammar refused token {token}: {matcher.get_error()[:200]}")
