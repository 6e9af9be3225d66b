"""Tool calling in the engine: rendering, the call grammar, parsing, on tiny random models."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from guide_engine import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, GuideEngine, GuideValueError
from guide_engine.tools import FALLBACK_HEADER, split_tool_calls
from tests.reference import tiny_model
from tests.schema_check import errors

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
    if result.finish_reason == "length":  # calls may follow each other: only the last one may be cut short
        assert (TOOL_CALL_OPEN + "{").startswith(result.text[:12]), result  # a cut call (or nothing) is left
        assert TOOL_CALL_CLOSE not in result.text, result
    else:
        assert result.finish_reason == "tool_calls" and result.text == "", result
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


def test_stream_yields_the_markup_and_the_result_has_the_calls(engine):
    stream = engine.stream("Add.", tools=TOOLS, tool_choice="add", max_new_tokens=80, temperature=1.0, seed=1)
    raw = "".join(stream)
    assert raw.startswith(TOOL_CALL_OPEN) and raw.rstrip().endswith(TOOL_CALL_CLOSE)
    check_calls(stream.result, names=["add"])
    assert split_tool_calls(raw)[1][0].arguments == stream.result.tool_calls[0].arguments


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


def test_split_tool_calls_keeps_broken_blocks_as_text():
    text = (
        "Sure. "
        + TOOL_CALL_OPEN
        + '{"name": "add", "arguments": {"a": 1, "b": 2}}'
        + TOOL_CALL_CLOSE
        + TOOL_CALL_OPEN
        + '{"name": "add", "arg'
    )
    outside, calls = split_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    assert outside == "Sure. " + TOOL_CALL_OPEN + '{"name": "add", "arg'
    assert split_tool_calls("no calls") == ("no calls", [])


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
