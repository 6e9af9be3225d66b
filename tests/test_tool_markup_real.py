"""Issue 19's trial on the embedded model: after a tool round trip, no tool-call markup is content.

SmolLM2 was trained to write ``<tool_call>…</tool_call>``; after a ``ToolMessage`` it may write one
even when calls are not allowed. The trial ran six variants (with and without a system message;
``tool_choice="none"``, ``"auto"``, and no tools bound) and got the literal markup as
``AIMessage.content`` in three of them. Each variant here runs through ``invoke`` and ``stream``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from guide_engine import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, GuideEngine
from guide_integrations.langchain import ChatGuide

pytestmark = pytest.mark.real_model


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}, 21 degrees."


ROUND_TRIP = [
    HumanMessage("What is the weather in Paris?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
    ToolMessage("It is sunny in Paris, 21 degrees.", tool_call_id="call_1", name="get_weather"),
]
SYSTEM = SystemMessage("You are a helpful assistant.")
VARIANTS = [(system, choice) for system in (False, True) for choice in ("none", "auto", "no tools")]


def _llm(real_engine: GuideEngine, choice: str) -> Any:
    llm = ChatGuide(model=real_engine, max_tokens=48, temperature=0)
    return llm if choice == "no tools" else llm.bind_tools([get_weather], tool_choice=choice)


def _has_markup(text: str) -> bool:
    return TOOL_CALL_OPEN in text or TOOL_CALL_CLOSE in text or "<tool_" in text


@pytest.fixture(scope="module")
def answers(real_engine: GuideEngine) -> dict[tuple[bool, str], tuple[AIMessage, Any]]:
    """Each variant's invoked message and its streamed chunks summed."""
    out = {}
    for system, choice in VARIANTS:
        messages = [SYSTEM, *ROUND_TRIP] if system else ROUND_TRIP
        llm = _llm(real_engine, choice)
        chunks = list(llm.stream(messages))
        full = chunks[0]
        for chunk in chunks[1:]:
            full = full + chunk
        assert all(not _has_markup(chunk.content) for chunk in chunks), (system, choice, chunks)
        out[system, choice] = (llm.invoke(messages), full)
    return out


@pytest.mark.parametrize(("system", "choice"), VARIANTS)
def test_no_markup_is_content_after_a_tool_message(answers: Any, system: bool, choice: str) -> None:
    message, streamed = answers[system, choice]
    assert isinstance(message.content, str) and not _has_markup(message.content), message
    assert streamed.content == message.content  # the stream adds up to the same answer
    dropped = message.response_metadata.get("dropped_markup", [])
    assert streamed.response_metadata.get("dropped_markup", []) == dropped
    if choice != "auto":  # calls are not allowed: markup the model wrote is reported, never a call
        assert message.tool_calls == [] and message.invalid_tool_calls == [], message
        assert all(m.startswith(TOOL_CALL_OPEN) or TOOL_CALL_OPEN.startswith(m) for m in dropped), dropped
    else:  # a call, or text: the grammar keeps any call whole
        assert message.tool_calls or message.content, message
        for call in message.tool_calls:
            assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)


def test_where_calls_are_not_allowed_the_answer_is_text(answers: Any) -> None:
    """Issue 27: decoding cannot begin a call, so nothing is dropped and the answer is words (this
    model wrote the markup in three of these six variants before, and they came back empty)."""
    for (system, choice), (message, _) in answers.items():
        if choice != "auto":
            assert message.content.strip(), (system, choice, message)
            assert message.response_metadata.get("dropped_markup", []) == [], (system, choice, message)


ISSUE_27 = [
    HumanMessage("What's the weather in Paris?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
    ToolMessage("Sunny, 21 C in Paris.", tool_call_id="call_1", name="get_weather"),
]
"""Issue 27's conversation, as reported: unbound and ``tool_choice="none"`` gave content ``''``
(the repeated call dropped), ``"auto"`` called ``get_weather(Paris)`` again."""


@pytest.mark.parametrize("choice", ["no tools", "none", "auto"])
def test_issue_27_after_a_tool_result_the_answer_is_text(real_engine: GuideEngine, choice: str) -> None:
    llm = ChatGuide(model=real_engine, max_tokens=32, temperature=0)  # room for the whole call under "auto"
    message = (llm if choice == "no tools" else llm.bind_tools([get_weather], tool_choice=choice)).invoke(ISSUE_27)
    assert message.content.strip() and not _has_markup(message.content), message
    assert (message.tool_calls, message.invalid_tool_calls) == ([], []), message  # "auto": a repeat is no call
