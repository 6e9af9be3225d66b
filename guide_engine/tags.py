r"""The tag language: parse emphasis and influence tags out of a prompt.

Tags mark spans of a prompt; they are removed from the text the model sees::

    <!-> ... <-!>        emphasis level 1   (delta = delta_mid / 2)
    <!!-> ... <-!!>      emphasis level 2   (delta = delta_mid)
    <!!!-> ... <-!!!>    emphasis level 3   (delta = 2 * delta_mid)
    <?-> ... <-?>        influence span     (delta = delta_influence, default 0)

The text between an opening and a closing tag is kept verbatim, whitespace included. Spans
may not nest or overlap. Malformed tags raise :class:`~guide_engine.errors.TagError`; a span
whose visible text is empty or whitespace only is dropped with a ``UserWarning``.

Escaping
--------
A marker is ``<`` followed by one of the eight *bodies* ``!->``, ``!!->``, ``!!!->``, ``?->``,
``-!>``, ``-!!>``, ``-!!!>``, ``-?>``. A backslash placed right after the ``<`` disarms it::

    <\!->     is the literal text  <!->
    <\\!->    is the literal text  <\!->      (and so on: k backslashes become k - 1)

That is the whole rule. The parser looks only at ``<``, then zero or more backslashes, then a
body; every other character, every other backslash included, is plain text. So text without
such a sequence parses to itself (``C:\new\file``, ``\frac{a}{b}``, ``a \<b``), and
:func:`escape_tags` only adds one backslash after the ``<`` of each such sequence. Hence
``parse_tags(escape_tags(x)).text == x`` with no spans, for every string ``x``.

Why inside the marker rather than before it (``\<!->``): an escape in front of the marker
would make the characters *before* a tag part of the tag's meaning, so an escaped document
that happens to end in a backslash would silently disarm the developer's tag that follows it
(``escape_tags(doc) + "<!->"``). Here a sequence starts at its own ``<`` and neither looks at
what precedes it nor can run into a following tag (bodies contain no ``<``), so
``template_before + escape_tags(x) + template_after`` parses to exactly ``x`` between the
template's tags. The one caveat: escape each untrusted string as a whole. Two escaped pieces
joined without a tag between them can complete a marker across the seam (``"<"`` + ``"!->"``),
and so can a piece followed directly by template text such as ``"->"``.

Markers never overlap (each contains exactly one ``<``, at its start), so one compiled regex
finds them all in a single linear scan.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Literal

from .errors import GuideValueError, TagError, require_finite

__all__ = ["MARKERS", "ParsedText", "Span", "escape_tags", "parse_tags", "strip_tags"]

SpanKind = Literal["emphasis", "influence"]

# opening marker -> (closing marker, kind, level)
_OPENERS: dict[str, tuple[str, SpanKind, int]] = {
    "<!->": ("<-!>", "emphasis", 1),
    "<!!->": ("<-!!>", "emphasis", 2),
    "<!!!->": ("<-!!!>", "emphasis", 3),
    "<?->": ("<-?>", "influence", 0),
}
# closing marker -> opening marker
_CLOSERS: dict[str, str] = {closer: opener for opener, (closer, _, _) in _OPENERS.items()}

MARKERS: tuple[str, ...] = (*_OPENERS, *_CLOSERS)
"""The eight tag markers: four openers, then their closers in the same order."""

# group 1: the backslashes after '<' (escape count); group 2: the body of the marker.
# '\\*' only runs over backslashes that directly follow a '<', and runs after different '<'
# are disjoint, so matching is linear in the input.
_MARKER_RE = re.compile(r"<(\\*)((?:!{1,3}-|\?-|-!{1,3}|-\?)>)")
_ESCAPE_REPL = r"<\\\1\2"  # one more backslash after the '<'

_EMPHASIS_FACTOR = {1: 0.5, 2: 1.0, 3: 2.0}
_SNIPPET_WIDTH = 20
_ONE_LINE = str.maketrans("\n\r\t\v\f\x85\u2028\u2029", " " * 8)  # snippets stay on one line
_LEVELS: dict[str, tuple[int, ...]] = {"emphasis": (1, 2, 3), "influence": (0,)}


@dataclass(frozen=True)
class Span:
    """A tagged span of the visible text.

    Attributes:
        start: Offset of the first character in :attr:`ParsedText.text` (inclusive).
        end: Offset after the last character (exclusive).
        kind: ``"emphasis"`` or ``"influence"``.
        level: 1, 2 or 3 for emphasis; 0 for influence.
        text: The visible text of the span, ``parsed.text[start:end]``.
    """

    start: int
    end: int
    kind: SpanKind
    level: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise GuideValueError(f"Span needs 0 <= start <= end, got start={self.start}, end={self.end}")
        if self.end - self.start != len(self.text):
            raise GuideValueError(f"Span text has {len(self.text)} characters but start={self.start}, end={self.end}")
        if self.kind not in _LEVELS:
            raise GuideValueError(f"Span kind must be 'emphasis' or 'influence', got {self.kind!r}")
        if self.level not in _LEVELS[self.kind]:
            raise GuideValueError(
                f"Span level for kind {self.kind!r} must be one of {_LEVELS[self.kind]}, got {self.level!r}"
            )

    def delta(self, delta_mid: float, delta_influence: float = 0.0) -> float:
        """The attention bias of this span's tokens.

        Args:
            delta_mid: The level-2 emphasis bias; level 1 gets half, level 3 twice.
            delta_influence: The bias of an influence span.

        Returns:
            ``delta_mid / 2``, ``delta_mid`` or ``2 * delta_mid`` for emphasis levels 1 to 3;
            ``delta_influence`` for an influence span.

        Raises:
            GuideValueError: If the bias that applies is not finite.
        """
        if self.kind == "influence":
            return require_finite("delta_influence", delta_influence)
        return _EMPHASIS_FACTOR[self.level] * require_finite("delta_mid", delta_mid)


@dataclass(frozen=True)
class ParsedText:
    """A prompt with its tags removed.

    Attributes:
        text: The text the model sees: tags removed, escaped markers unescaped.
        spans: The non-empty spans, in order of ``start``; they never overlap.
    """

    text: str
    spans: tuple[Span, ...] = ()


def parse_tags(text: str) -> ParsedText:
    """Remove the tags from ``text`` and return the visible text with its spans.

    Args:
        text: A prompt that may contain tags and escaped markers (see the module docstring).

    Returns:
        The visible text and its spans. Spans with no visible text are dropped with a
        ``UserWarning``.

    Raises:
        TypeError: If ``text`` is not a ``str``.
        TagError: On an unclosed opening tag, a closing tag with no opening tag, a closing tag
            of another kind than the open span, or an opening tag inside an open span.
    """
    return _parse(text, "parse_tags", warn_empty=True)


def strip_tags(text: str) -> str:
    """Return ``parse_tags(text).text``: the text the model sees.

    Empty spans are dropped silently here, since no span is returned.

    Raises:
        TypeError: If ``text`` is not a ``str``.
        TagError: If the tags are malformed, as in :func:`parse_tags`.
    """
    return _parse(text, "strip_tags", warn_empty=False).text


def escape_tags(text: str) -> str:
    r"""Neutralize every tag marker in ``text``.

    Use it on untrusted text (retrieved documents, tool output, end-user input) before placing
    it into a tagged template: ``parse_tags(escape_tags(x))`` gives exactly ``x`` and no span,
    for every string ``x``. Only sequences ``<`` + backslashes + marker body change (one
    backslash is added after the ``<``); everything else is returned as is.

    Raises:
        TypeError: If ``text`` is not a ``str``.
    """
    _check_str(text, "escape_tags")
    return _MARKER_RE.sub(_ESCAPE_REPL, text)


def _parse(text: str, caller: str, *, warn_empty: bool) -> ParsedText:
    _check_str(text, caller)
    pieces: list[str] = []  # slices of `text` that stay visible, in order
    pos = 0  # first character of `text` not yet copied into `pieces`
    removed = 0  # characters of `text` before `pos` that are not visible
    # closed spans: (opener, its position in `text`, start and end in the visible text)
    closed: list[tuple[str, int, int, int]] = []
    open_span: tuple[str, int, int] | None = None  # (opener, position in `text`, visible start)

    for match in _MARKER_RE.finditer(text):
        start, end = match.span()
        if match.group(1):  # escaped: drop the first backslash after the '<', keep the rest
            pieces.append(text[pos : start + 1])
            pos = start + 2
            removed += 1
            continue

        tag = match.group(0)
        pieces.append(text[pos:start])
        visible = start - removed
        pos = end
        removed += end - start

        if tag in _OPENERS:
            if open_span is not None:
                open_tag, open_pos, _ = open_span
                raise _tag_error(
                    f"tag '{tag}' at position {start} opens a span inside the span opened by "
                    f"'{open_tag}' at position {open_pos}; spans may not nest or overlap",
                    text,
                    tag,
                    start,
                )
            open_span = (tag, start, visible)
            continue

        if open_span is None:
            raise _tag_error(
                f"closing tag '{tag}' at position {start} has no opening tag '{_CLOSERS[tag]}'",
                text,
                tag,
                start,
            )
        open_tag, open_pos, span_start = open_span
        closer = _OPENERS[open_tag][0]
        if tag != closer:
            raise _tag_error(
                f"closing tag '{tag}' at position {start} does not match the open tag "
                f"'{open_tag}' at position {open_pos} (expected '{closer}')",
                text,
                tag,
                start,
            )
        closed.append((open_tag, open_pos, span_start, visible))
        open_span = None

    if open_span is not None:
        open_tag, open_pos, _ = open_span
        raise _tag_error(
            f"unclosed tag '{open_tag}' at position {open_pos} (close it with "
            f"'{_OPENERS[open_tag][0]}', or write '<\\{open_tag[1:]}' for the literal text)",
            text,
            open_tag,
            open_pos,
        )

    pieces.append(text[pos:])
    visible_text = "".join(pieces)
    spans: list[Span] = []
    for open_tag, open_pos, span_start, span_end in closed:
        span_text = visible_text[span_start:span_end]  # spans are disjoint: linear in total
        if span_text.strip():
            _, kind, level = _OPENERS[open_tag]
            spans.append(Span(span_start, span_end, kind, level, span_text))
        elif warn_empty:
            warnings.warn(
                f"ignoring the span opened by '{open_tag}' at position {open_pos}: its text "
                f"{span_text!r} has no visible characters",
                UserWarning,
                stacklevel=3,
            )
    return ParsedText(visible_text, tuple(spans))


def _tag_error(message: str, text: str, tag: str, position: int) -> TagError:
    lo = max(0, position - _SNIPPET_WIDTH)
    hi = min(len(text), position + len(tag) + _SNIPPET_WIDTH)
    snippet = ("..." if lo > 0 else "") + text[lo:hi] + ("..." if hi < len(text) else "")
    snippet = snippet.translate(_ONE_LINE)
    return TagError(f"{message}: '{snippet}'", tag=tag, position=position, snippet=snippet)


def _check_str(text: object, caller: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{caller}() expects a str, got {type(text).__name__}")
