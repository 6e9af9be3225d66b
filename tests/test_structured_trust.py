"""Structured answers you can trust, on the embedded SmolLM2-135M (issue 27, items 1 to 3).

- An answer cut by the token budget, a stop string or the timeout is never parsed into an object,
  in every method, sync, async, stream and batch, in both wrappers.
- Schemas arrive whole (recursion, ``$defs``, Optional, Union, enums, nested lists): every answer
  validates with the pydantic model.
- Bound and per-call options reach the engine through ``with_structured_output``.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from langchain_core.runnables import RunnableBinding
from langchain_core.utils.json import parse_partial_json
from llama_index.core import PromptTemplate
from pydantic import BaseModel, Field

from guide_engine import GuideError, GuideValueError
from guide_engine.errors import GenerationTimeoutError
from guide_integrations.langchain import ChatGuide, OutputCutShortError
from guide_integrations.langchain.structured import json_schema, structured_tool
from guide_integrations.llama_index import GuideLLM

pytestmark = pytest.mark.real_model

QUESTION = "Ada Lovelace is 136 years old."
METHODS = ("json_schema", "json_mode", "function_calling")


class Person(BaseModel):
    name: str
    age: int


class Basket(BaseModel):
    fruits: list[str]


class Node(BaseModel):
    name: str = Field(max_length=20)
    children: list[Node] = Field(max_length=2)


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    city: str = Field(max_length=20)
    zip_code: Optional[str] = Field(default=None, max_length=10)  # noqa: UP045  # Optional, as users write it


class Contact(BaseModel):
    name: str = Field(max_length=20)
    address: Address
    favourite: Color
    reach: Union[int, str] = Field(description="a phone number or an e-mail")  # noqa: UP007
    grid: list[Annotated[list[int], Field(max_length=3)]] = Field(max_length=2)
    kind: Literal["friend", "work"]


@pytest.fixture(scope="module")
def llm(real_engine):
    return ChatGuide(model=real_engine, temperature=0)


def schema_of(method: str) -> type[BaseModel] | None:
    return None if method == "json_mode" else Person


# ---------------------------------------------------------------- 1. cut short is never an object


@pytest.mark.parametrize("method", METHODS)
def test_an_answer_cut_by_max_tokens_is_never_an_object(llm, method):
    structured = llm.bind(max_tokens=6).with_structured_output(schema_of(method), method=method)
    with pytest.raises(OutputCutShortError, match=r"stopped at max_tokens \(6 tokens\)"):
        structured.invoke(QUESTION)
    raw = llm.bind(max_tokens=6).with_structured_output(schema_of(method), method=method, include_raw=True)
    answer = raw.invoke(QUESTION)
    assert answer["parsed"] is None
    assert isinstance(answer["parsing_error"], OutputCutShortError)
    assert answer["raw"].response_metadata["finish_reason"] == "length"


def test_the_reproduced_age_2_is_not_parsed(llm):
    # The case: '{"name": "Ada Lovelace", "age": 2' parsed into Person(age=2).
    answer = llm.bind(max_tokens=15).with_structured_output(Person, include_raw=True).invoke(QUESTION)
    assert answer["raw"].content.startswith('{"name": "Ada Lovelace", "age": 2')
    assert answer["parsed"] is None and isinstance(answer["parsing_error"], OutputCutShortError)
    list_answer = llm.bind(max_tokens=8).with_structured_output(Basket, include_raw=True)
    cut = list_answer.invoke("I bought apples and pears.")
    assert cut["raw"].response_metadata["finish_reason"] == "length", cut["raw"].content
    assert cut["parsed"] is None and isinstance(cut["parsing_error"], OutputCutShortError)


@pytest.mark.parametrize("method", METHODS)
def test_a_cut_stream_raises_after_its_partials(llm, method):
    structured = llm.bind(max_tokens=6).with_structured_output(schema_of(method), method=method)
    with pytest.raises(OutputCutShortError):
        list(structured.stream(QUESTION))

    async def astream() -> None:
        async for _ in structured.astream(QUESTION):
            pass

    with pytest.raises(OutputCutShortError):
        asyncio.run(astream())


def test_a_whole_stream_ends_with_the_complete_object(llm):
    parts = list(llm.bind(max_tokens=64).with_structured_output(Person).stream(QUESTION))
    assert isinstance(parts[-1], Person)
    assert parts[-1] == llm.bind(max_tokens=64).with_structured_output(Person).invoke(QUESTION)


@pytest.mark.parametrize("method", METHODS)
def test_async_and_batch_answers_cut_short_are_never_objects(llm, method):
    structured = llm.bind(max_tokens=6).with_structured_output(schema_of(method), method=method, include_raw=True)
    for answer in [asyncio.run(structured.ainvoke(QUESTION)), *structured.batch([QUESTION, "Bob is 45."])]:
        assert answer["parsed"] is None and isinstance(answer["parsing_error"], OutputCutShortError)
    plain = llm.bind(max_tokens=6).with_structured_output(schema_of(method), method=method)
    outcomes = plain.batch([QUESTION, "Bob is 45."], return_exceptions=True)
    assert all(isinstance(outcome, OutputCutShortError) for outcome in outcomes), outcomes


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_an_answer_cut_by_a_stop_string_is_never_an_object(llm, method):
    structured = llm.bind(max_tokens=64, stop=["age"]).with_structured_output(Person, method=method, include_raw=True)
    answer = structured.invoke(QUESTION)
    assert answer["parsed"] is None
    assert isinstance(answer["parsing_error"], OutputCutShortError)
    assert "stop string" in str(answer["parsing_error"])


def test_a_number_cut_at_the_limit_is_not_parsed(llm):
    # '1' is valid JSON, and may be the start of 136: at max_tokens only a closing mark proves the end.
    answer = llm.bind(max_tokens=1).with_structured_output({"type": "integer"}, include_raw=True).invoke(QUESTION)
    assert answer["raw"].response_metadata["finish_reason"] == "length"
    assert answer["parsed"] is None and isinstance(answer["parsing_error"], OutputCutShortError)
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}
    assert llm.engine.generate(QUESTION, response_format=fmt, max_new_tokens=1).parsed is None


def test_an_answer_past_the_timeout_raises(llm):
    with pytest.raises(GenerationTimeoutError):
        llm.bind(max_tokens=64, timeout=1e-6).with_structured_output(Person).invoke(QUESTION)
    raw = llm.bind(max_tokens=64, timeout=1e-6).with_structured_output(Person, include_raw=True)
    with pytest.raises(GenerationTimeoutError):  # not a parse error: the call itself failed
        raw.invoke(QUESTION)


def test_guide_llm_structured_predict_never_parses_a_cut_answer(real_engine):
    llm = GuideLLM(engine=real_engine, temperature=0.0)
    prompt = PromptTemplate("{text}")
    with pytest.raises(GuideValueError, match="cut at max_new_tokens"):
        llm.structured_predict(Person, prompt, llm_kwargs={"max_new_tokens": 6}, text=QUESTION)
    with pytest.raises(GuideValueError, match="cut at max_new_tokens"):
        asyncio.run(llm.astructured_predict(Person, prompt, llm_kwargs={"max_new_tokens": 6}, text=QUESTION))
    with pytest.raises(GuideValueError, match="cut at max_new_tokens"):
        list(llm.stream_structured_predict(Person, prompt, llm_kwargs={"max_new_tokens": 6}, text=QUESTION))
    with pytest.raises(GuideError, match="stop string"):
        llm.structured_predict(Person, prompt, llm_kwargs={"max_new_tokens": 64, "stop": ["age"]}, text=QUESTION)


# ---------------------------------------------------------------- 2. schemas arrive whole

SHAPES: dict[str, type[BaseModel]] = {"node": Node, "contact": Contact}
NAMES = [
    "Ada", "Bob", "Chen", "Dana", "Eve", "Farid", "Grace", "Hugo", "Iris", "Jon",
    "Kai", "Lena", "Mo", "Nina", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara",
]  # fmt: skip


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_chat_guide_sends_the_whole_schema(llm, method):
    structured = llm.with_structured_output(Node, method=method)
    bound = structured.first  # the model with its options bound, before the parser
    assert isinstance(bound, RunnableBinding) and bound.bound is llm
    if method == "json_schema":
        sent = bound.kwargs["response_format"]["json_schema"]["schema"]
        assert sent == Node.model_json_schema()
    else:
        sent = bound.kwargs["tools"][0]["function"]["parameters"]
        assert sent["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert json_schema(Node)["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert structured_tool(Contact)["function"]["parameters"]["$defs"].keys() == {"Address", "Color"}


def only_nodes(value: Any) -> bool:
    """Whether every ``children`` item of a (partial) Node is itself a node: no ``1`` or ``"Moloch"``."""
    children = value.get("children", []) if isinstance(value, dict) else None
    return isinstance(children, list) and all(isinstance(c, dict) and only_nodes(c) for c in children)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_twenty_chat_guide_contacts_validate(llm, method):
    # $defs, Optional, Union, an enum, a Literal and nested lists, through the whole schema.
    structured = llm.bind(max_tokens=120).with_structured_output(Contact, method=method, include_raw=True)
    answers = structured.batch([f"Describe {name}'s contact as JSON." for name in NAMES])
    for answer in answers:  # a valid object, or an answer cut short: never a wrong object
        if answer["parsing_error"] is not None:
            assert isinstance(answer["parsing_error"], OutputCutShortError), answer
    parsed = [a["parsed"] for a in answers if a["parsing_error"] is None]
    assert len(parsed) >= 18, [a["raw"].content for a in answers if a["parsing_error"] is not None]
    assert all(isinstance(value, Contact) for value in parsed)  # PydanticOutputParser validated each


def test_twenty_recursive_answers_hold_only_nodes(llm):
    # The 135M model nests greedily until max_tokens: whole answers validate, and a cut answer's
    # partial JSON holds only nodes in `children` (the flattened schema let it write [1, "Moloch"]).
    structured = llm.bind(max_tokens=160).with_structured_output(Node, include_raw=True)
    prompt = "A family tree: {} has two children, Kim and Lee, who have no children."
    answers = structured.batch([prompt.format(name) for name in NAMES])
    whole = [a["parsed"] for a in answers if a["parsing_error"] is None]
    assert whole and all(isinstance(value, Node) for value in whole)
    for answer in answers:
        if answer["parsing_error"] is not None:
            assert isinstance(answer["parsing_error"], OutputCutShortError), answer
        assert only_nodes(parse_partial_json(answer["raw"].content)), answer["raw"].content
    called = llm.bind(max_tokens=160).with_structured_output(Node, method="function_calling", include_raw=True)
    for answer in called.batch([prompt.format(name) for name in NAMES[:4]]):
        assert answer["parsed"] is None or isinstance(answer["parsed"], Node)
        if answer["parsed"] is None:
            assert isinstance(answer["parsing_error"], OutputCutShortError), answer


def test_guide_llm_contacts_validate(real_engine):
    llm = GuideLLM(engine=real_engine, temperature=0.0, max_new_tokens=120)
    prompt = PromptTemplate("Describe {name}'s contact as JSON.")
    valid = 0
    for name in NAMES[:4]:  # GuideLLM decodes one at a time: four keep the suite short
        try:
            value = llm.structured_predict(Contact, prompt, name=name)
        except GuideValueError as error:  # cut at max_new_tokens: an error, never an object
            assert "cut at max_new_tokens" in str(error)
            continue
        assert isinstance(value, Contact)
        valid += 1
    assert valid >= 3


# ---------------------------------------------------------------- 3. options reach the call


def test_bound_options_reach_the_call_with_and_without_include_raw(llm):
    for include_raw in (False, True):
        structured = llm.bind(max_tokens=5).with_structured_output(Person, include_raw=include_raw)
        if include_raw:
            assert structured.invoke(QUESTION)["raw"].usage_metadata["output_tokens"] == 5
        else:
            with pytest.raises(OutputCutShortError, match=r"\(5 tokens\)"):
                structured.invoke(QUESTION)
    tools = llm.bind(max_tokens=5).bind_tools([Person], tool_choice="Person")
    assert tools.invoke(QUESTION).usage_metadata["output_tokens"] == 5


def test_options_bound_after_with_config_reach_the_call(llm):
    configured = llm.with_config(tags=["trust"]).bind(max_tokens=5)
    answer = configured.with_structured_output(Person, include_raw=True).invoke(QUESTION)
    assert answer["raw"].usage_metadata["output_tokens"] == 5


def test_bound_tools_give_way_to_the_schema(llm):
    structured = llm.bind_tools([Basket], max_tokens=64).with_structured_output(Person)
    assert isinstance(structured.invoke(QUESTION), Person)


def test_per_call_options_reach_the_call_with_and_without_include_raw(llm):
    raw = llm.with_structured_output(Person, include_raw=True)
    assert raw.invoke(QUESTION, max_tokens=5)["raw"].usage_metadata["output_tokens"] == 5
    with pytest.raises(OutputCutShortError, match=r"\(5 tokens\)"):
        llm.with_structured_output(Person).invoke(QUESTION, max_tokens=5)
    streamed = list(raw.stream(QUESTION, max_tokens=5))
    assert streamed[-1]["raw"].usage_metadata["output_tokens"] == 5
    assert [a["raw"].usage_metadata["output_tokens"] for a in raw.batch([QUESTION, "Bob is 45."], max_tokens=5)] == [
        5,
        5,
    ]


def test_the_advice_in_the_error_works_as_written(real_engine):
    with pytest.raises(OutputCutShortError) as cut:
        ChatGuide(model=real_engine, max_tokens=5, temperature=0).with_structured_output(Person).invoke(QUESTION)
    advice = str(cut.value)
    assert "ChatGuide(max_tokens=...)" in advice
    assert "llm.bind(max_tokens=...).with_structured_output(...)" in advice
    assert ".invoke(..., max_tokens=...)" in advice
    short = ChatGuide(model=real_engine, max_tokens=5, temperature=0)
    for fixed in (
        ChatGuide(model=real_engine, max_tokens=64, temperature=0).with_structured_output(Person).invoke(QUESTION),
        short.bind(max_tokens=64).with_structured_output(Person).invoke(QUESTION),
        short.with_structured_output(Person).invoke(QUESTION, max_tokens=64),
    ):
        assert isinstance(fixed, Person) and fixed.name == "Ada Lovelace"
