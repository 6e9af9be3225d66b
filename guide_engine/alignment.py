"""From a tagged prompt to token ids and a per-token Δ.

Tags are parsed out of each message *before* the chat template runs, so the model gets the token
ids of the untagged prompt. Each span's characters are then located in the rendered text and a
token belongs to the span when its character range overlaps the span's.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import GuideValueError, ModelNotSupportedError, TagError
from .tags import ParsedText, Span, parse_tags

__all__ = [
    "ROLES",
    "AppliedSpan",
    "EncodedPrompt",
    "Message",
    "Prompt",
    "encode_prompt",
    "normalize_prompt",
    "parse_message_tags",
]

Message = Mapping[str, Any]
Prompt = str | Sequence[Message]

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
"""The message roles a prompt may use: those every supported chat template renders."""


@dataclass(frozen=True)
class AppliedSpan:
    """A tagged span as it reached the model.

    Attributes:
        kind: ``"emphasis"`` or ``"influence"``.
        level: 1, 2 or 3 for emphasis, 0 for influence.
        delta: the bias added to the attention logits of its tokens.
        text: the span's visible text.
        message_index: index of the message it was written in (``None`` for a raw string prompt).
        token_start: first prompt token of the span.
        token_end: one past its last prompt token.
    """

    kind: str
    level: int
    delta: float
    text: str
    message_index: int | None
    token_start: int
    token_end: int

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serializable form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt ready for the model.

    Attributes:
        input_ids: token ids, identical to those of the untagged prompt.
        text: the rendered prompt text the ids come from.
        spans: spans with the tokens they cover and their Δ.
        token_deltas: Δ per prompt token (0 outside spans).
        influence_mask: ``True`` on the tokens of the influence span(s).
    """

    input_ids: list[int]
    text: str
    spans: tuple[AppliedSpan, ...]
    token_deltas: list[float]
    influence_mask: list[bool]

    @property
    def has_bias(self) -> bool:
        """Whether any token gets a non-zero Δ."""
        return any(d != 0.0 for d in self.token_deltas)


def normalize_prompt(prompt: Prompt) -> list[dict[str, Any]] | str:
    """Validate a prompt: a non-empty string or a non-empty list of role/content messages, one of them with text.

    A blank string, or messages that are all blank (and call no tools), is refused: the same rule on
    every surface, since ``ChatGuide.invoke("")`` reaches here as one blank user message.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise GuideValueError("prompt is empty; pass a non-empty string or a list of messages")
        return prompt
    if not isinstance(prompt, Sequence) or not prompt:
        raise GuideValueError(
            f"prompt must be a non-empty string or a non-empty list of {{'role', 'content'}} messages, "
            f"got {type(prompt).__name__}"
        )
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise GuideValueError(f"message {i} must be a mapping with 'role' and 'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise GuideValueError(f"message {i} has role {message['role']!r}; allowed: {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise GuideValueError(f"message {i} content must be a string, got {type(message['content']).__name__}")
        messages.append(dict(message))
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        # One rule on every surface (engine, ChatGuide, GuideLLM, the CLI): nothing to answer is refused.
        raise GuideValueError(
            f"prompt is empty: all {len(messages)} message(s) have blank content; pass a message with text"
        )
    return messages


def parse_message_tags(messages: Sequence[Message]) -> list[ParsedText]:
    """Each message's content parsed for tags (:func:`~guide_engine.tags.parse_tags`).

    Raises:
        TagError: for malformed tags; the message starts with the message's index and role
            (``"message 1 (user): closing tag '<-!>' at position 44 has no opening tag: …"``), the
            position counts from the start of that message's content.
    """
    parsed = []
    for index, message in enumerate(messages):
        try:
            parsed.append(parse_tags(str(message["content"])))
        except TagError as error:
            raise TagError(
                f"message {index} ({message.get('role')}): {error}",
                tag=error.tag,
                position=error.position,
                snippet=error.snippet,
            ) from None
    return parsed


def _locate_contents(
    tokenizer: Any, messages: list[dict[str, Any]], rendered: str, template_kwargs: dict[str, Any]
) -> list[int]:
    """Character offset of each message's content in the rendered template.

    The template is rendered once more with a unique placeholder in place of each content, so a
    content that also occurs in the template's own text (a role header, a default system prompt)
    cannot be mistaken for the message.
    """
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
    marked = tokenizer.apply_chat_template(
        [{**m, "content": mark} for m, mark in zip(messages, marks)],
        tokenize=False,
        add_generation_prompt=True,
        **template_kwargs,
    )
    positions = []
    for i, mark in enumerate(marks):
        if marked.count(mark) != 1:
            raise ModelNotSupportedError(
                f"the chat template does not insert message {i} exactly once, so its tags cannot be placed"
            )
        positions.append((marked.index(mark), i))
    offsets, shift, rebuilt, cursor = [0] * len(messages), 0, [], 0
    for at, i in sorted(positions):
        content = messages[i]["content"]
        offsets[i] = at + shift
        rebuilt.append(marked[cursor:at] + content)
        cursor = at + len(marks[i])
        shift += len(content) - len(marks[i])
    if "".join(rebuilt) + marked[cursor:] != rendered:
        raise ModelNotSupportedError(
            "the chat template changes the text of the messages (or depends on it), so tags cannot be placed; "
            "use a template that inserts message content verbatim"
        )
    return offsets


def _char_spans(
    prompt: list[dict[str, Any]] | str, tokenizer: Any, tools: list[dict[str, Any]] | None = None
) -> tuple[str, bool, list[tuple[int, int, Span, int | None]]]:
    """Render the prompt; return the text, whether to add special tokens, and absolute span ranges."""
    if isinstance(prompt, str) and not getattr(tokenizer, "chat_template", None):
        plain = parse_tags(prompt)
        return plain.text, True, [(s.start, s.end, s, None) for s in plain.spans]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not getattr(tokenizer, "chat_template", None):
        raise GuideValueError("a list of messages needs a tokenizer with a chat template; pass a plain string instead")
    parsed = [parse_tags(prompt)] if isinstance(prompt, str) else parse_message_tags(messages)
    clean = [{**m, "content": p.text} for m, p in zip(messages, parsed)]
    template_kwargs = {"tools": tools} if tools else {}
    rendered = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True, **template_kwargs)
    spans: list[tuple[int, int, Span, int | None]] = []
    if any(p.spans for p in parsed):
        bases = _locate_contents(tokenizer, clean, rendered, template_kwargs)
        for index, (base, p) in enumerate(zip(bases, parsed)):
            spans.extend((base + s.start, base + s.end, s, index) for s in p.spans)
    return rendered, False, spans


def encode_prompt(
    prompt: Prompt,
    tokenizer: Any,
    *,
    delta_mid: float,
    delta_influence: float = 0.0,
    tools: list[dict[str, Any]] | None = None,
) -> EncodedPrompt:
    """Tokenize a tagged prompt and assign each token its Δ.

    Args:
        prompt: a string (sent as a user message when the tokenizer has a chat template) or a
            list of ``{"role", "content"}`` messages, tags allowed in any of them.
        tokenizer: a fast Hugging Face tokenizer (character offsets are needed for spans).
        delta_mid: Δ of level-2 emphasis; level 1 gets half, level 3 double.
        delta_influence: Δ applied to influence spans.
        tools: OpenAI-style tools passed to the chat template's ``tools=`` (tool definitions are
            rendered by the template, outside any message, so they never hold spans).
    """
    text, add_special, char_spans = _char_spans(normalize_prompt(prompt), tokenizer, tools)
    if not char_spans:
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return EncodedPrompt(list(ids), text, (), [0.0] * len(ids), [False] * len(ids))
    if not getattr(tokenizer, "is_fast", False):
        raise ModelNotSupportedError(
            f"tagged prompts need a fast tokenizer with character offsets; {type(tokenizer).__name__} has none"
        )
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    deltas, influence = [0.0] * len(ids), [False] * len(ids)
    applied = []
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    ordered = all(x <= y for x, y in zip(starts, starts[1:])) and all(x <= y for x, y in zip(ends, ends[1:]))
    for start, end, span, message_index in char_spans:
        if ordered:  # offsets grow with the token index: look the span up in O(log n)
            window = range(bisect.bisect_right(ends, start), bisect.bisect_left(starts, end))
        else:
            window = range(len(offsets))
        tokens = [t for t in window if offsets[t][1] > offsets[t][0] and offsets[t][0] < end and offsets[t][1] > start]
        delta = span.delta(delta_mid, delta_influence)
        for t in tokens:
            # Adjacent spans may share a merged token: keep the stronger bias.
            if abs(delta) > abs(deltas[t]):
                deltas[t] = delta
            influence[t] = influence[t] or span.kind == "influence"
        first, last = (tokens[0], tokens[-1] + 1) if tokens else (0, 0)
        applied.append(AppliedSpan(span.kind, span.level, delta, span.text, message_index, first, last))
    return EncodedPrompt(ids, text, tuple(applied), deltas, influence)
