"""Tool calling in the engine: rendering, the call grammar, parsing, on tiny random models."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from guide_engine import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, GuideEngine, GuideValueError
from guide_engine.decoding import RowDecoder
from guide_engine.markup_masks import LINE_START, MARKUP_STARTS, markup_state
from guide_engine.tools import FALLBACK_HEADER, ToolMarkupFilter, answered_calls, parse_tool_call
from tests.reference import tiny_model
from tests.schema_check import errors
from tests.scripted import AFTER_A_TOOL, CALL, scripted_engine

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city. <!-> not a span <-!>",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -99, "maximum": 99},
                "b": {"type": "integer", "minimum": -99, "maximum": 99},
            },
            "required": ["a", "b"],
        },
    },
}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ID_RE = re.compile(r"call_[0-9a-f]{24}")
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call {{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def engine(smol_tokenizer):
    torch.manual_seed(0)
    return GuideEngine(tiny_model("qwen2"), smol_tokenizer)


def check_calls(result, names=None):
    assert result.text == "", result  # calls only: no text, and never their markup
    if result.finish_reason == "length":  # calls may follow each other: only the last one may be cut short
        assert len(result.dropped_markup) <= 1, result
        for markup in result.dropped_markup:
            assert markup.startswith(TOOL_CALL_OPEN) or TOOL_CALL_OPEN.startswith(markup), result
            assert TOOL_CALL_CLOSE not in markup, result
    else:
        assert result.finish_reason == "tool_calls" and result.dropped_markup == [], result
    assert result.tool_calls
    for call in result.tool_calls:
        assert ID_RE.fullmatch(call.id)
        assert call.name in (names or SCHEMAS)
        assert errors(call.arguments, SCHEMAS[call.name]) == [], call
    assert len({c.id for c in result.tool_calls}) == len(result.tool_calls)


def test_required_forces_at_least_one_valid_call(engine):
    for seed in range(3):
        options = {"temperature": 1.0, "seed": seed, "max_new_tokens": 80}
        result = engine.generate("Weather?", tools=TOOLS, tool_choice="required", **options)
        check_calls(result)


@pytest.mark.parametrize("choice", ["add", {"type": "function", "function": {"name": "add"}}])
def test_a_named_choice_forces_exactly_that_tool(engine, choice):
    for seed in range(3):
        options = {"temperature": 1.0, "seed": seed, "max_new_tokens": 80}
        result = engine.generate("Weather?", tools=TOOLS, tool_choice=choice, **options)
        check_calls(result, names=["add"])
        assert result.finish_reason == "tool_calls"  # one call, then end-of-sequence
        assert len(result.tool_calls) == 1


def test_auto_allows_text_and_keeps_calls_well_formed(engine):
    texts = 0
    for seed in range(4):
        result = engine.generate("Hi", tools=TOOLS, max_new_tokens=20, temperature=1.0, seed=seed)
        if result.tool_calls:
            check_calls(result)
        else:
            texts += 1
            assert TOOL_CALL_OPEN not in result.text and result.finish_reason in ("stop", "length")
    assert texts  # a random model rarely opens a call by chance: auto did not force one


def test_none_shows_the_tools_but_parses_nothing(engine):
    result = engine.generate("Hi", tools=TOOLS, tool_choice="none", max_new_tokens=5)
    assert '"name": "get_weather"' in result.prompt_text and result.tool_calls == []
    assert result.token_ids == engine.generate("Hi", tools=TOOLS, tool_choice="none", max_new_tokens=5).token_ids


def test_stream_never_yields_the_markup_and_the_result_has_the_calls(engine):
    options = {"tools": TOOLS, "tool_choice": "add", "max_new_tokens": 80, "temperature": 1.0, "seed": 1}
    stream = engine.stream("Add.", **options)
    assert list(stream) == []  # the answer is one call: no text at all
    check_calls(stream.result, names=["add"])
    reference = engine.generate("Add.", **options)
    assert stream.result.token_ids == reference.token_ids
    assert stream.result.tool_calls[0].arguments == reference.tool_calls[0].arguments
    assert stream.result.dropped_markup == reference.dropped_markup == []


def test_fallback_rendering_keeps_developer_spans_and_escapes_tool_text(engine, smol_tokenizer):
    messages = [
        {"role": "system", "content": "Be <!!->brief<-!!>."},
        {"role": "user", "content": "Weather in <!->Oslo<-!>?"},
    ]
    encoded = engine.encode(messages, tools=TOOLS)
    assert not engine.template_uses_tools  # SmolLM2's template ignores tools=
    assert FALLBACK_HEADER in encoded.text and "<!-> not a span <-!>" in encoded.text  # shown, not parsed
    assert [s.text for s in encoded.spans] == ["brief", "Oslo"]
    for span in encoded.spans:
        assert smol_tokenizer.decode(encoded.input_ids[span.token_start : span.token_end]).strip() == span.text
    assert len(encoded.input_ids) > len(engine.encode(messages).input_ids)  # counted with the tools


def test_fallback_renders_tool_traffic_as_text(engine):
    messages = [
        {"role": "user", "content": "Add 2 and 3."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
            ],  # fmt: skip
        },
        {"role": "tool", "content": "5", "tool_call_id": "call_1", "name": "add"},
    ]
    text = engine.encode(messages, tools=TOOLS).text
    assert TOOL_CALL_OPEN + '{"name": "add", "arguments": {"a": 2, "b": 3}}' + TOOL_CALL_CLOSE in text
    assert "<|im_start|>tool\n5<|im_end|>" in text
    hostile = copy.deepcopy(messages)
    hostile[1]["tool_calls"][0]["function"]["arguments"] = {"a": "<!!-> x <-!!>"}
    assert engine.encode(hostile).spans == ()  # arguments are data: never spans


def test_a_template_with_tools_renders_them_itself(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = TOOLS_TEMPLATE
    torch.manual_seed(0)
    engine = GuideEngine(tiny_model("llama"), tokenizer)
    assert engine.template_uses_tools
    messages = [
        {"role": "system", "content": "Be <!!->brief<-!!>."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c", "function": {"name": "add", "arguments": '{"a": 1}'}}],
        },  # fmt: skip
    ]
    encoded = engine.encode(messages, tools=TOOLS)
    assert "TOOLS: get_weather add" in encoded.text and FALLBACK_HEADER not in encoded.text
    assert '<call add {"a": 1}>' in encoded.text  # arguments reach the template as a dict
    (span,) = encoded.spans
    assert tokenizer.decode(encoded.input_ids[span.token_start : span.token_end]).strip() == "brief"
    result = engine.generate("Add.", tools=TOOLS, tool_choice="add", max_new_tokens=80)
    check_calls(result, names=["add"])


def test_parse_tool_call_reads_only_whole_well_formed_blocks():
    block = TOOL_CALL_OPEN + '{"name": "add", "arguments": {"a": 1, "b": 2}}' + TOOL_CALL_CLOSE
    call = parse_tool_call(block)
    assert call is not None and (call.name, call.arguments) == ("add", {"a": 1, "b": 2})
    assert ID_RE.fullmatch(call.id)
    for broken in [
        TOOL_CALL_OPEN + '{"name": "add", "arg',  # cut short
        TOOL_CALL_OPEN + "not json" + TOOL_CALL_CLOSE,
        TOOL_CALL_OPEN + '{"arguments": {}}' + TOOL_CALL_CLOSE,  # no name
        TOOL_CALL_OPEN + '{"name": "add", "arguments": [1]}' + TOOL_CALL_CLOSE,
        "<tool",
    ]:
        assert parse_tool_call(broken) is None, broken


@pytest.mark.parametrize(
    ("text", "cut_short", "shown", "blocks"),
    [
        (CALL, False, "", [CALL]),
        ("Sure.\n" + CALL + "\n", False, "Sure.", [CALL]),  # blanks next to a block go with it
        (CALL + "\n\nIt is sunny.", False, "It is sunny.", [CALL]),
        ("A " + CALL + " B", False, "A B", [CALL]),
        (CALL + CALL, False, "", [CALL, CALL]),
        ("Hi " + CALL[:30], True, "Hi", [CALL[:30]]),  # cut by max_new_tokens: markup, never text
        ("Hi " + CALL[:30], False, "Hi", [CALL[:30]]),  # a block left open is markup however it ends
        ("Sure. <tool", True, "Sure.", ["<tool"]),  # a marker cut in the middle
        ("a <tool", False, "a <tool", []),  # ... but text when the model ended there itself
        ("a < b <b> c", False, "a < b <b> c", []),
        ("  lead and trail \n", False, "  lead and trail \n", []),
    ],
)
def test_markup_filter_takes_blocks_out_whatever_the_pieces(text, cut_short, shown, blocks):
    for size in range(1, len(text) + 1):  # every piece size, from one character up to all at once
        markup = ToolMarkupFilter()
        pieces = [markup.feed(text[i : i + size]) for i in range(0, len(text), size)]
        pieces.append(markup.finish(cut_short))
        assert ("".join(pieces), markup.text, markup.blocks) == (shown, shown, blocks), size
        assert not any("<tool_call" in piece for piece in pieces)


def test_row_decoder_streams_no_markup_and_holds_back_only_what_may_be_markup(smol_tokenizer):
    text = "Sure, I will check.\n" + CALL
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = RowDecoder(smol_tokenizer, stop=(), eos_ids={smol_tokenizer.eos_token_id})
    pieces = [decoder.push(i) for i in [*ids, smol_tokenizer.eos_token_id]]
    assert "".join(pieces) == decoder.text == "Sure, I will check."
    assert decoder.blocks == [CALL] and decoder.finish_reason == "stop"
    first = next(n for n, piece in enumerate(pieces) if piece)
    assert first < len(smol_tokenizer("Sure, I", add_special_tokens=False)["input_ids"])  # plain text is not delayed
    raw = RowDecoder(smol_tokenizer, stop=(), eos_ids=set(), tool_markup=False)
    assert "".join(raw.push(i) for i in ids) + raw.finish() == text  # JSON output: markup is data


def test_a_stop_string_inside_a_call_leaves_it_cut_short(smol_tokenizer):
    ids = smol_tokenizer("Ok " + CALL, add_special_tokens=False)["input_ids"]
    decoder = RowDecoder(smol_tokenizer, stop=("Paris",), eos_ids=set())
    pieces = []
    for i in ids:
        pieces.append(decoder.push(i))
        if decoder.finish_reason is not None:
            break
    assert "".join(pieces) == decoder.text == "Ok" and decoder.finish_reason == "stop"
    assert decoder.blocks == [CALL[: CALL.index("Paris")]]


@pytest.mark.parametrize("options", [{}, {"tools": TOOLS, "tool_choice": "none"}], ids=["no tools", "tool_choice=none"])
def test_a_request_that_may_not_call_cannot_write_markup(smol_tokenizer, options):
    """Issue 27: decoding cannot write a call that would be dropped; the model must write text instead.

    The scripted model wants ``"It is sunny.\n" + CALL``; the mask forbids the ``"<"`` that starts
    the call's line (the prompt shows calls), so it writes on in words (noise, for this model).
    """
    engine = scripted_engine(smol_tokenizer, "It is sunny.\n" + CALL)
    stream = engine.stream(AFTER_A_TOOL, max_new_tokens=60, **options)
    pieces = list(stream)
    result = stream.result
    assert (result.tool_calls, result.dropped_markup) == ([], [])
    assert result.text.startswith("It is sunny.\n") and len(result.text) > len("It is sunny.\n")
    assert not any(marker in result.text for marker in MARKUP_STARTS), result.text
    assert "".join(pieces) == result.text
    assert engine.generate(AFTER_A_TOOL, max_new_tokens=60, **options).text == result.text
    (row,) = engine.generate_batch([AFTER_A_TOOL], max_new_tokens=60, **options)
    assert (row.text, row.dropped_markup) == (result.text, [])


def test_markup_cannot_begin_anywhere_when_the_prompt_shows_no_calls(smol_tokenizer):
    """Without tools or tool traffic a line may begin with "<", but the text never reaches "<tool"."""
    engine = scripted_engine(smol_tokenizer, "<b>Sunny</b> " + CALL)
    result = engine.generate("Weather?", max_new_tokens=40)
    assert result.text.startswith("<b>Sunny</b> <") and result.dropped_markup == []
    assert not any(marker in result.text for marker in MARKUP_STARTS), result.text


@pytest.mark.parametrize(
    ("text", "state"),
    [("", ""), ("a <", "<"), ("<to", "<to"), ("</", "</"), ("</t", "</t"), ("<tool", ""), ("x<<", "<"), ("<a", "")],
)
def test_markup_state_is_the_end_that_may_begin_a_marker(text, state):
    assert markup_state(text) == state


def test_the_vocabulary_forbids_the_last_token_of_every_split_of_the_markers(smol_tokenizer):
    """Whatever tokens the model splits a marker into, the token that would complete it is forbidden."""
    vocabulary = GuideEngine(tiny_model("llama"), smol_tokenizer).markup_vocabulary
    texts = vocabulary.texts()

    def forbidden(state):
        return {texts[i] for i in vocabulary.forbidden(state).tolist()}

    for marker in MARKUP_STARTS:
        for cut in range(len(marker)):
            state = markup_state(marker[:cut])
            ids = smol_tokenizer(marker[cut:], add_special_tokens=False)["input_ids"]
            for token in ids[:-1]:
                state = markup_state(state + texts[token])
            assert texts[ids[-1]] in forbidden(state), (marker, cut)
            assert not {"a", " the", "<"} & forbidden(state)  # ordinary text stays allowed
    assert {"<", " <"} <= forbidden(LINE_START) and smol_tokenizer.eos_token not in forbidden(LINE_START)


PARIS_WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
"""A tool whose calls the scripted ``CALL`` is one of."""

ANSWERED_TWICE = [
    *AFTER_A_TOOL,
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_2", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
    },
    {"role": "tool", "content": "3"},  # no tool_call_id: it answers the turn before it
]


def test_answered_calls_are_the_calls_a_tool_result_answers():
    unanswered = [*ANSWERED_TWICE[:-1], {"role": "user", "content": "and?"}]
    assert answered_calls(ANSWERED_TWICE) == [("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]
    assert answered_calls(unanswered) == [("get_weather", {"city": "Paris"})]
    assert answered_calls("Weather?") == []


@pytest.mark.parametrize("how", ["generate", "stream", "batch"])
def test_a_repeated_answered_call_turns_into_text(smol_tokenizer, how):
    """Issue 27's rule: under tool_choice="auto", a call identical to an answered one is not a call;
    the repeat is reported in dropped_markup and the turn is decoded again as text."""
    engine = scripted_engine(smol_tokenizer, CALL)
    if how == "generate":
        result = engine.generate(AFTER_A_TOOL, tools=PARIS_WEATHER, max_new_tokens=40)
    elif how == "stream":
        stream = engine.stream(AFTER_A_TOOL, tools=PARIS_WEATHER, max_new_tokens=40)
        pieces = list(stream)
        result = stream.result
        assert "".join(pieces) == result.text
    else:
        prompts = [AFTER_A_TOOL, "Weather in Paris?"]
        result, fresh = engine.generate_batch(prompts, tools=PARIS_WEATHER, max_new_tokens=40)
        assert [c.name for c in fresh.tool_calls] == ["get_weather"]  # not answered in its conversation: a call
    assert result.tool_calls == [] and result.dropped_markup == [CALL]
    assert result.text.strip() and not any(marker in result.text for marker in MARKUP_STARTS), result.text
    assert result.finish_reason in ("stop", "length")


def test_a_repeat_stays_a_call_when_a_call_is_required(smol_tokenizer):
    engine = scripted_engine(smol_tokenizer, CALL)
    for choice in ("required", "get_weather"):
        result = engine.generate(AFTER_A_TOOL, tools=PARIS_WEATHER, tool_choice=choice, max_new_tokens=40)
        assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})], choice


def test_a_call_cut_short_is_never_text(smol_tokenizer):
    engine = scripted_engine(smol_tokenizer, CALL)
    budget = len(smol_tokenizer(CALL[:25], add_special_tokens=False)["input_ids"])
    result = engine.generate("Weather?", tools=TOOLS, tool_choice="required", max_new_tokens=budget)
    assert (result.text, result.finish_reason, result.tool_calls) == ("", "length", [])
    (markup,) = result.dropped_markup
    assert markup.startswith(TOOL_CALL_OPEN) and CALL.startswith(markup)


def test_json_output_keeps_markup_inside_a_string(smol_tokenizer):
    answer = '{"note": "' + TOOL_CALL_OPEN + '"}'
    engine = scripted_engine(smol_tokenizer, answer)
    result = engine.generate("x", response_format={"type": "json_object"}, max_new_tokens=30)
    assert (result.text, result.parsed, result.dropped_markup) == (answer, {"note": TOOL_CALL_OPEN}, [])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tools": "get_weather"}, "tools must be a list of"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, r"tools\[0\] name must be"),
        ({"tools": [WEATHER, WEATHER]}, "repeats the tool name 'get_weather'"),
        ({"tools": [{"type": "retrieval"}]}, r"tools\[0\] must be"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "parameters must be a JSON schema of type 'object'",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"type": "bogus"}}},
                        },
                    }
                ]
            },  # fmt: skip
            "tool 'f' parameters cannot be enforced",
        ),
        ({"tools": TOOLS, "tool_choice": "search"}, r"unknown tool 'search'; the tools are \['get_weather', 'add'\]"),
        ({"tool_choice": "required"}, "tool_choice='required' needs tools"),
        ({"tools": TOOLS, "tool_choice": 3}, "tool_choice must be 'auto', 'none', 'required', a tool name"),
        (
            {"tools": TOOLS, "response_format": {"type": "json_object"}},
            "response_format='json_object' and tools with tool_choice='auto' cannot be combined",
        ),
    ],
)
def test_bad_tool_options_raise_value_errors(engine, options, message):
    with pytest.raises(GuideValueError, match=message):
        engine.generate("x", max_new_tokens=2, **options)


def test_json_with_tools_shown_under_tool_choice_none(engine):
    result = engine.generate(
        "x", tools=TOOLS, tool_choice="none", response_format={"type": "json_object"}, max_new_tokens=6
    )
    assert result.text.startswith("{") and result.tool_calls == []
