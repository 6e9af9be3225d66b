"""Tests of the tag language: parsing, errors, escaping (guide_engine.tags)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guide_engine.errors import (
    ContextLengthError,
    GuideError,
    MissingDependencyError,
    ModelNotSupportedError,
    TagError,
)
from guide_engine.tags import MARKERS, ParsedText, Span, escape_tags, parse_tags, strip_tags

# (opener, closer, kind, level, delta factor on delta_mid or None for influence)
KINDS = [
    ("<!->", "<-!>", "emphasis", 1, 0.5),
    ("<!!->", "<-!!>", "emphasis", 2, 1.0),
    ("<!!!->", "<-!!!>", "emphasis", 3, 2.0),
    ("<?->", "<-?>", "influence", 0, None),
]
OPENERS = [k[0] for k in KINDS]
CLOSERS = [k[1] for k in KINDS]
CLOSER_OF = {k[0]: k[1] for k in KINDS}
KIND_OF = {k[0]: (k[2], k[3]) for k in KINDS}
BODIES = tuple(m[1:] for m in OPENERS + CLOSERS)

# pieces that random "tag soups" are made of: markers, escaped markers, marker fragments
FRAGMENTS = [
    *OPENERS,
    *CLOSERS,
    *("<\\" + m[1:] for m in OPENERS + CLOSERS),
    "\\",
    "\\\\",
    "<",
    "<\\",
    "-",
    "!",
    "?",
    ">",
    "->",
    "<-",
    "<!",
    "a",
    " ",
    "\n",
    "é",
]
soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
mixed_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join)


def quiet_parse(text: str) -> ParsedText:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return parse_tags(text)


def reference_parse(text: str) -> tuple:
    """A naive character-by-character parser, written from the module docstring's rules.

    Returns ("ok", visible_text, ((start, end, kind, level), ...)) or ("error", tag, position).
    """
    out: list[str] = []
    n = 0
    spans = []
    open_ = None  # (opener, visible start, position in text)
    i = 0
    while i < len(text):
        if text[i] == "<":
            j = i + 1
            while j < len(text) and text[j] == "\\":
                j += 1
            body = next((b for b in BODIES if text.startswith(b, j)), None)
            if body is not None:
                backslashes = j - i - 1
                if backslashes:  # escaped: one backslash fewer, literal
                    lit = "<" + "\\" * (backslashes - 1) + body
                    out.append(lit)
                    n += len(lit)
                else:
                    tag = "<" + body
                    if tag in CLOSER_OF:
                        if open_ is not None:
                            return ("error", tag, i)
                        open_ = (tag, n, i)
                    else:
                        if open_ is None or CLOSER_OF[open_[0]] != tag:
                            return ("error", tag, i)
                        visible = "".join(out)[open_[1] : n]
                        if visible.strip():
                            spans.append((open_[1], n) + KIND_OF[open_[0]])
                        open_ = None
                i = j + len(body)
                continue
        out.append(text[i])
        n += 1
        i += 1
    if open_ is not None:
        return ("error", open_[0], open_[2])
    return ("ok", "".join(out), tuple(spans))


def check_invariants(parsed: ParsedText) -> None:
    last_end = 0
    for span in parsed.spans:
        assert last_end <= span.start < span.end <= len(parsed.text)
        assert parsed.text[span.start : span.end] == span.text
        assert span.text.strip()
        last_end = span.end


# --- every tag kind and level -------------------------------------------------------------


@pytest.mark.parametrize(("opener", "closer", "kind", "level", "factor"), KINDS)
def test_each_kind_gives_one_span_with_exact_offsets(opener, closer, kind, level, factor):
    parsed = parse_tags(f"say {opener}hello world{closer} now")
    assert parsed.text == "say hello world now"
    assert parsed.spans == (Span(4, 15, kind, level, "hello world"),)
    assert parsed.text[4:15] == "hello world"


@pytest.mark.parametrize(("opener", "closer", "kind", "level", "factor"), KINDS)
@pytest.mark.parametrize("delta_mid", [1.0, 3.0, -2.0, 0.0])
def test_span_delta_follows_the_level(opener, closer, kind, level, factor, delta_mid):
    (span,) = parse_tags(f"{opener}x{closer}").spans
    if factor is None:
        assert span.delta(delta_mid) == 0.0
        assert span.delta(delta_mid, delta_influence=0.7) == 0.7
    else:
        assert span.delta(delta_mid) == factor * delta_mid
        assert span.delta(delta_mid, delta_influence=0.7) == factor * delta_mid


def test_default_delta_mid_gives_levels_half_one_two():
    parsed = parse_tags("<!->a<-!> <!!->b<-!!> <!!!->c<-!!!> <?->d<-?>")
    assert [s.delta(1.0) for s in parsed.spans] == [0.5, 1.0, 2.0, 0.0]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_delta_rejects_non_finite_values(bad):
    emphasis, influence = parse_tags("<!!->a<-!!> <?->b<-?>").spans
    with pytest.raises(ValueError, match="delta_mid must be a finite number"):
        emphasis.delta(bad)
    with pytest.raises(ValueError, match="delta_influence must be a finite number"):
        influence.delta(1.0, bad)
    assert influence.delta(bad) == 0.0  # delta_mid does not apply to an influence span


def test_span_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="level"):
        Span(0, 1, "emphasis", 0, "a")
    with pytest.raises(ValueError, match="level"):
        Span(0, 1, "influence", 2, "a")
    with pytest.raises(ValueError, match="kind"):
        Span(0, 1, "bold", 1, "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="characters"):
        Span(0, 2, "emphasis", 1, "a")


def test_tags_module_imports_without_torch_or_transformers():
    # Load guide_engine.tags without running the package __init__ (which needs torch), with
    # torch and transformers made unimportable.
    package_dir = Path(__file__).resolve().parents[1] / "guide_engine"
    code = (
        "import sys, types\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['transformers'] = None\n"
        "pkg = types.ModuleType('guide_engine')\n"
        f"pkg.__path__ = [{str(package_dir)!r}]\n"
        "sys.modules['guide_engine'] = pkg\n"
        "import guide_engine.tags as tags\n"
        "assert tags.parse_tags('a<!->b<-!>').spans[0].text == 'b'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_markers_constant_lists_all_eight():
    assert tuple(OPENERS + CLOSERS) == MARKERS


# --- text and offsets -----------------------------------------------------------------------


def test_whitespace_inside_a_span_is_kept_verbatim():
    parsed = parse_tags("<!-> a <-!>")
    assert parsed.text == " a "
    assert parsed.spans == (Span(0, 3, "emphasis", 1, " a "),)


def test_multiple_and_adjacent_spans_have_exact_offsets():
    text = "A <?->bb<-?>cc<!!!->ddd<-!!!><!->e\nf<-!> tail <!!->g<-!!>"
    parsed = parse_tags(text)
    assert parsed.text == "A bbccddde\nf tail g"
    assert parsed.spans == (
        Span(2, 4, "influence", 0, "bb"),
        Span(6, 9, "emphasis", 3, "ddd"),
        Span(9, 12, "emphasis", 1, "e\nf"),
        Span(18, 19, "emphasis", 2, "g"),
    )
    for span in parsed.spans:
        assert parsed.text[span.start : span.end] == span.text
    assert strip_tags(text) == parsed.text


def test_offsets_count_unescaped_markers_as_their_visible_length():
    parsed = parse_tags("<\\!-> <!!->x<\\-!!>y<-!!>")
    assert parsed.text == "<!-> x<-!!>y"
    assert parsed.spans == (Span(5, 12, "emphasis", 2, "x<-!!>y"),)


@pytest.mark.parametrize(
    "plain",
    [
        "",
        "no tags at all",
        "C:\\new\\file.txt",
        "\\frac{a}{b} + \\\\ newline",
        "a \\<b> \\\\<c>",
        "ends with a backslash \\",
        "\\<!",
        "<\\ <- <! <!- <-! <? <-? ->! -!> !->",
        "<!!!!-> and <-!!!!> are not markers",
        "<<<>>> <-> <!> <!-!> <?!->",
        "<\\\\!- no body end",
    ],
)
def test_text_without_markers_parses_to_itself(plain):
    assert parse_tags(plain) == ParsedText(plain, ())
    assert strip_tags(plain) == plain
    assert escape_tags(plain) == plain


# --- malformed tags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tag", "position", "message"),
    [
        ("abc <!!-> def", "<!!->", 4, "unclosed tag '<!!->' at position 4"),
        ("<!->a<-!> xyz <?-> tail", "<?->", 14, "unclosed tag '<?->' at position 14"),
        ("abc <-!> def", "<-!>", 4, "closing tag '<-!>' at position 4 has no opening tag '<!->'"),
        ("<!->a<-!><-!>", "<-!>", 9, "closing tag '<-!>' at position 9 has no opening tag"),
        (
            "<!->a<-?>",
            "<-?>",
            5,
            "closing tag '<-?>' at position 5 does not match the open tag '<!->' at position 0 (expected '<-!>')",
        ),
        ("x <!!!->a<-!!>", "<-!!>", 9, "closing tag '<-!!>' at position 9 does not match"),
        (
            "<!->a<!!->b<-!!><-!>",
            "<!!->",
            5,
            "tag '<!!->' at position 5 opens a span inside the span opened by '<!->' at position 0",
        ),
        ("<?->a<?->b<-?>", "<?->", 5, "tag '<?->' at position 5 opens a span inside"),
        # positions count characters of the original input, escapes included
        ("<\\!-> <-!>", "<-!>", 6, "closing tag '<-!>' at position 6"),
        ("\\\\\\<!->", "<!->", 3, "unclosed tag '<!->' at position 3"),
    ],
)
def test_malformed_tags_raise_tag_error_with_tag_and_position(text, tag, position, message):
    with pytest.raises(TagError, match=re.escape(message)) as info:
        parse_tags(text)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, GuideError)
    assert err.tag == tag
    assert err.position == position
    assert text[position:].startswith(tag)
    assert tag in err.snippet
    assert str(err).endswith(f": '{err.snippet}'")
    with pytest.raises(TagError, match=re.escape(message)):
        strip_tags(text)


def test_unclosed_tag_message_says_how_to_close_or_escape_it():
    with pytest.raises(TagError, match=re.escape("close it with '<-!!!>', or write '<\\!!!->'")):
        parse_tags("<!!!-> oops")


def test_snippet_is_short_and_on_one_line():
    text = "x" * 100 + "\nline <-?> two\n" + "y" * 100
    with pytest.raises(TagError) as info:
        parse_tags(text)
    snippet = info.value.snippet
    assert snippet.startswith("...") and snippet.endswith("...")
    assert "<-?>" in snippet and "line" in snippet
    assert "\n" not in snippet and "\n" not in str(info.value)
    assert len(snippet) < 60
    assert info.value.position == 106


def test_tag_error_survives_pickling():
    with pytest.raises(TagError) as info:
        parse_tags("ab <!-> c")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.tag, clone.position, clone.snippet, str(clone)) == (
        "<!->",
        3,
        info.value.snippet,
        str(info.value),
    )


@pytest.mark.parametrize("func", [parse_tags, strip_tags, escape_tags])
@pytest.mark.parametrize(("value", "type_name"), [(b"<!->a<-!>", "bytes"), (None, "NoneType"), (3, "int")])
def test_non_str_input_raises_type_error_naming_the_type(func, value, type_name):
    with pytest.raises(TypeError, match=rf"{func.__name__}\(\) expects a str, got {type_name}"):
        func(value)


def test_error_hierarchy():
    assert issubclass(TagError, GuideError) and issubclass(TagError, ValueError)
    assert issubclass(ContextLengthError, GuideError) and issubclass(ContextLengthError, ValueError)
    assert issubclass(MissingDependencyError, GuideError)
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(ModelNotSupportedError, GuideError)
    assert not issubclass(ModelNotSupportedError, ValueError)


# --- empty spans ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "opener", "position", "visible", "spans"),
    [
        ("a<!-><-!>b", "<!->", 1, "ab", ()),
        ("a<?->  \n\t<-?>b", "<?->", 1, "a  \n\tb", ()),
        (
            "<!!->x<-!!> <!!!->\u3000<-!!!>",
            "<!!!->",
            12,
            "x \u3000",
            (Span(0, 1, "emphasis", 2, "x"),),
        ),
    ],
)
def test_span_without_visible_text_is_dropped_with_a_warning(text, opener, position, visible, spans):
    with pytest.warns(UserWarning, match=re.escape(f"span opened by '{opener}' at position {position}")):
        parsed = parse_tags(text)
    assert parsed == ParsedText(visible, spans)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert strip_tags(text) == visible  # strip_tags returns no spans, so it does not warn


def test_span_of_only_an_escaped_marker_is_not_empty():
    parsed = parse_tags("<!-><\\?-><-!>")
    assert parsed.text == "<?->"
    assert parsed.spans == (Span(0, 4, "emphasis", 1, "<?->"),)


# --- escaping -------------------------------------------------------------------------------


def test_escape_adds_one_backslash_after_the_less_than_sign():
    assert escape_tags("<!-> x <-!>") == "<\\!-> x <\\-!>"
    assert escape_tags("<\\?->") == "<\\\\?->"
    assert escape_tags("\\<!!!->") == "\\<\\!!!->"


def test_escaped_markers_parse_to_literal_markers():
    assert parse_tags("<\\!->") == ParsedText("<!->", ())
    assert parse_tags("<\\\\!->") == ParsedText("<\\!->", ())
    assert parse_tags("<\\\\\\-?>") == ParsedText("<\\\\-?>", ())


@pytest.mark.parametrize("doc", ["C:\\dir\\", "ends <", "ends <\\", "ends <!-", "\\\\", "<-!> <!->"])
def test_escaped_text_next_to_template_tags_keeps_the_tags_active(doc):
    # The case an escape *before* the '<' would get wrong: a document ending in a backslash.
    parsed = parse_tags(f"Context: {escape_tags(doc)}<!->{escape_tags(doc)}<-!> end")
    start = len("Context: ") + len(doc)
    assert parsed.text == f"Context: {doc}{doc} end"
    assert parsed.spans == (Span(start, start + len(doc), "emphasis", 1, doc),)


@pytest.mark.parametrize(
    "text", ["<", "<!-", "a <\\!-> b", "<-?>", "<<!!->>", "\\<?->", "<!-> x <-!> <?-> y <-?>", "plain"]
)
def test_escaped_edge_cases_read_verbatim_and_make_no_span(text):
    """The one contract every wrapper's escaping relies on (they all end in ``escape_tags``)."""
    assert parse_tags(escape_tags(text)) == ParsedText(text, ())


@given(st.text())
def test_escape_round_trips_any_text(text):
    parsed = parse_tags(escape_tags(text))
    assert parsed == ParsedText(text, ())


@settings(max_examples=500)
@given(mixed_text)
def test_escape_round_trips_text_full_of_marker_fragments(text):
    escaped = escape_tags(text)
    assert parse_tags(escaped) == ParsedText(text, ())
    assert strip_tags(escaped) == text
    assert parse_tags(escape_tags(escaped)) == ParsedText(escaped, ())


@given(st.text(alphabet=st.characters(blacklist_characters="<")))
def test_escape_is_the_identity_without_a_less_than_sign(text):
    assert escape_tags(text) == text
    assert parse_tags(text) == ParsedText(text, ())


# --- random tag soups -----------------------------------------------------------------------


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(soup, mixed_text))
def test_tag_soup_parses_like_the_reference_or_raises_tag_error(text):
    expected = reference_parse(text)
    try:
        parsed = quiet_parse(text)
    except TagError as err:
        assert expected == ("error", err.tag, err.position)
        assert text[err.position :].startswith(err.tag)
        return
    check_invariants(parsed)
    assert expected == (
        "ok",
        parsed.text,
        tuple((s.start, s.end, s.kind, s.level) for s in parsed.spans),
    )
    assert strip_tags(text) == parsed.text


# --- well-formed inputs built from pieces ---------------------------------------------------

piece = st.one_of(
    st.tuples(st.none(), mixed_text),
    st.tuples(st.sampled_from(OPENERS), mixed_text.filter(lambda s: s.strip() != "")),
)


@settings(max_examples=300)
@given(st.lists(piece, max_size=8))
def test_well_formed_input_strips_to_the_joined_pieces(pieces):
    source: list[str] = []
    visible: list[str] = []
    expected_spans = []
    pending_plain = ""
    n = 0
    for opener, content in pieces:
        if opener is None:  # escape adjacent plain pieces as one string
            pending_plain += content
            n += len(content)
            visible.append(content)
            continue
        source.append(escape_tags(pending_plain))
        pending_plain = ""
        source.append(opener + escape_tags(content) + CLOSER_OF[opener])
        visible.append(content)
        expected_spans.append(Span(n, n + len(content), *KIND_OF[opener], content))
        n += len(content)
    source.append(escape_tags(pending_plain))
    text = "".join(source)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no span is empty, so no warning
        parsed = parse_tags(text)
    assert parsed.text == "".join(visible)
    assert parsed.spans == tuple(expected_spans)
    assert strip_tags(text) == "".join(visible)
    check_invariants(parsed)


# --- performance ----------------------------------------------------------------------------

MB = 1_000_000


@pytest.mark.parametrize(
    "unit",
    [
        "plain text without any tag at all, just words. ",
        "<!->ab<-!> ",  # dense spans: 200k markers
        "<\\?->",  # dense escaped markers
        "\\",  # one long backslash run
        "<\\\\\\\\\\\\\\\\",  # '<' + backslash runs that never reach a body
        "<!-",  # partial markers
    ],
)
def test_one_megabyte_parses_and_escapes_quickly(unit):
    text = unit * (MB // len(unit) + 1)
    started = time.perf_counter()
    parsed = parse_tags(text)
    escaped = escape_tags(text)
    round_trip = parse_tags(escaped).text
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"{elapsed:.2f} s for a 1 MB input of {unit!r}"
    assert round_trip == text
    assert len(parsed.text) <= len(text)
