"""ChatGuide on the embedded SmolLM2-135M-Instruct: every LangChain path gives the engine's own answer.

Marked ``real_model`` (the integration stage, ``pytest -m real_model``). Each call asks for a few
tokens and is compared with a direct ``GuideEngine`` call: invoke, stream, async, batches, stop
strings, Influence events, spans from templates and tool output, tools and structured output,
timeouts and abandoned streams. The example scripts are run in ``test_langchain_examples.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from guide_engine import GuideEngine, GuideError, InfluenceResult, TagError
from guide_engine.errors import GenerationTimeoutError
from guide_integrations.langchain import (
    INFLUENCE_EVENT,
    ChatGuide,
    GuideChatPromptTemplate,
    InfluenceCallbackHandler,
    escape_documents,
    to_engine_prompt,
)
from guide_integrations.langchain.structured import OutputCutShortError
from tests.test_langchain_unit import (
    DOCUMENT,
    MEASURED,
    TEMPLATES,
    City,
    CountingEngine,
    Movie,
    Person,
    chain_prompt,
    get_weather,
    joined,
)

pytestmark = pytest.mark.real_model


# ------------------------------------------------------------- the engine's answer, every path


PROMPT = [
    SystemMessage("You are a concise assistant."),
    HumanMessage("<!!-> Answer in French. <-!!> What is the capital of Italy?"),
]


@pytest.fixture(scope="module")
def llm(real_engine: GuideEngine) -> ChatGuide:
    return ChatGuide(model="default", delta_mid=2.0, max_tokens=8)


@pytest.fixture(scope="module")
def reference(real_engine: GuideEngine) -> Any:
    """The engine's own answer to PROMPT, which every LangChain path must reproduce."""
    return real_engine.generate(to_engine_prompt(PROMPT), max_new_tokens=8, delta_mid=2.0)


class Recorder(BaseCallbackHandler):
    """Records run starts, ends and errors, in order and per run."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.runs: dict[Any, list[str]] = {}

    def _record(self, event: str, run_id: Any) -> None:
        self.events.append(event)
        self.runs.setdefault(run_id, []).append(event)

    def on_chat_model_start(self, *args: Any, run_id: Any = None, **kwargs: Any) -> None:
        self._record("start", run_id)

    def on_llm_end(self, *args: Any, run_id: Any = None, **kwargs: Any) -> None:
        self._record("end", run_id)

    def on_llm_error(self, *args: Any, run_id: Any = None, **kwargs: Any) -> None:
        self._record("error", run_id)


def test_engines_are_shared(real_engine: GuideEngine) -> None:
    one, two = ChatGuide(model="default", delta_mid=1.0), ChatGuide(delta_mid=3.0, max_tokens=4)
    assert one._engine_call(PROMPT, None, {}).engine() is real_engine
    assert two._engine_call(PROMPT, None, {}).engine() is real_engine
    assert ChatGuide(model=real_engine)._engine_call(PROMPT, None, {}).engine() is real_engine


def test_invoke_is_the_engine_answer_with_usage_and_spans(llm: ChatGuide, reference: Any) -> None:
    message = llm.invoke(PROMPT)
    assert message.content == reference.text
    assert message.usage_metadata == {
        "input_tokens": reference.prompt_tokens,
        "output_tokens": reference.completion_tokens,
        "total_tokens": reference.prompt_tokens + reference.completion_tokens,
    }
    assert message.response_metadata == {
        "model_name": "SmolLM2-135M-Instruct.Q4_1",
        "finish_reason": reference.finish_reason,
        "spans": [s.to_dict() for s in reference.spans],
    }
    assert (
        message.response_metadata["spans"][0]["delta"] == 2.0
        and message.response_metadata["spans"][0]["message_index"] == 1
    )


def test_stream_yields_tokens_as_they_come_and_closes_with_usage(llm: ChatGuide, reference: Any) -> None:
    chunks = list(llm.stream(PROMPT))
    assert "".join(c.content for c in chunks) == reference.text
    assert sum(1 for c in chunks if c.content) >= 3  # piece by piece, not one block
    assert [c.usage_metadata is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.usage_metadata["input_tokens"] == reference.prompt_tokens
    assert full.response_metadata["spans"] == [s.to_dict() for s in reference.spans]


async def test_async_paths_match_and_never_block_the_loop(llm: ChatGuide, reference: Any) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        message = await llm.ainvoke(PROMPT)
        elapsed = time.monotonic() - started
        seen = ticks
        pieces = [chunk.content async for chunk in llm.astream(PROMPT)]
    finally:
        task.cancel()
    assert message.content == reference.text
    assert "".join(pieces) == reference.text
    # A blocking ainvoke would starve the ticker for the whole generation: not one tick, however
    # short the answer (prefill and each step run on worker threads, each well over one 5 ms tick).
    assert seen >= 2, (seen, elapsed)
    # And the loop keeps ticking at a good fraction of its pace while the model decodes.
    assert seen >= int(elapsed / 0.005) // 4, (seen, elapsed)


async def test_concurrent_async_calls_keep_their_own_spans(llm: ChatGuide, reference: Any) -> None:
    other = [HumanMessage("<!!!-> Be brief. <-!!!> Name a fruit.")]
    alone = llm.invoke(other)
    together = await asyncio.gather(llm.ainvoke(PROMPT), llm.ainvoke(other, delta_mid=2.0))
    assert [m.content for m in together] == [reference.text, alone.content]
    assert together[1].response_metadata["spans"][0]["delta"] == 4.0


def test_stop_sequences_cut_the_answer(real_engine: GuideEngine) -> None:
    llm = ChatGuide(max_tokens=10)
    full = llm.invoke("Hello").content
    stop = " " + full.split()[2]  # a word in the middle of the answer
    expected = full[: full.index(stop)]
    message = llm.invoke("Hello", stop=[stop])
    assert (message.content, message.response_metadata["finish_reason"]) == (expected, "stop")
    assert "".join(c.content for c in llm.stream("Hello", stop=[stop])) == expected
    assert ChatGuide(max_tokens=10, stop=[stop]).invoke("Hello").content == expected
    assert ChatGuide(max_tokens=10, stop=["never appears"]).invoke("Hello", stop=[stop]).content == expected


# ------------------------------------------------------------------------------------ batches


async def test_batch_is_one_engine_batch_equal_to_one_by_one(real_engine: GuideEngine) -> None:
    spy = CountingEngine(real_engine)
    llm = ChatGuide(model=spy, delta_mid=2.0, max_tokens=4)
    inputs: list[Any] = [PROMPT, "Hey", "<!-> Name <-!> one color, please, in a single word."]
    one_by_one = [llm.invoke(x).content for x in inputs]
    recorder = Recorder()
    assert [m.content for m in llm.batch(inputs, config={"callbacks": [recorder]})] == one_by_one
    assert spy.batches == [3]
    # One run per input, each started then ended (LangChain runs the inputs concurrently, in any order).
    assert list(recorder.runs.values()) == [["start", "end"]] * 3
    assert [m.content for m in await llm.abatch(inputs)] == one_by_one
    assert spy.batches == [3, 3]
    assert [m.content for m in llm.batch(inputs, config={"max_concurrency": 2})] == one_by_one
    assert spy.batches == [3, 3, 2]  # rows of two at most; the last row alone goes through generate()
    # A cache is consulted input by input: LangChain's own batch path, and the second time no decoding.
    cached, singles = ChatGuide(model=spy, delta_mid=2.0, max_tokens=4, cache=InMemoryCache()), spy.singles
    assert [m.content for m in cached.batch(inputs)] == one_by_one
    assert (spy.batches, spy.singles) == ([3, 3, 2], singles + 3)
    assert [m.content for m in cached.batch(inputs)] == one_by_one
    assert (spy.batches, spy.singles) == ([3, 3, 2], singles + 3)


def test_a_bad_input_fails_alone_in_a_batch(real_engine: GuideEngine) -> None:
    llm, recorder = ChatGuide(max_tokens=3), Recorder()
    out = llm.batch(["Hey", "<!-> never closed", "Hello"], config={"callbacks": [recorder]}, return_exceptions=True)
    assert isinstance(out[0], AIMessage) and isinstance(out[2], AIMessage) and isinstance(out[1], TagError)
    assert out[2].content == llm.invoke("Hello").content
    assert sorted(recorder.events) == ["end", "end", "error", "start", "start", "start"]
    with pytest.raises(TagError, match="<!->"):
        llm.batch(["<!-> never closed", "<-!> never opened"])


# ---------------------------------------------------------------------------- Influence events


async def test_influence_reaches_the_handler_from_every_path(real_engine: GuideEngine) -> None:
    expected = real_engine.generate(MEASURED, max_new_tokens=2, metric="influence").influence.to_dict()
    llm = ChatGuide(max_tokens=2)
    handler = InfluenceCallbackHandler()
    config = {"callbacks": [handler]}
    messages = [
        llm.invoke(MEASURED, config=config),
        joined(llm.stream(MEASURED, config=config)),
        await llm.ainvoke(MEASURED, config=config),
        joined([c async for c in llm.astream(MEASURED, config=config)]),
        ChatGuide(max_tokens=2, streaming=True).invoke(MEASURED, config=config),  # invoke through _stream
        *llm.batch([MEASURED, MEASURED], config=config),
    ]
    assert len(handler.reports) == len(messages) == 7
    reports = dict(zip(map(str, handler.run_ids), handler.reports, strict=True))
    for message in messages:  # a batch's rows finish on their own threads, in any order
        (run_id,) = [run for run in reports if message.id.startswith(f"lc_run--{run}")]  # the model's own run
        _assert_same_influence(reports.pop(run_id).to_dict(), expected)


def _assert_same_influence(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {k: v for k, v in got.items() if k != "layers"} == {k: v for k, v in expected.items() if k != "layers"}
    assert got["layers"].keys() == expected["layers"].keys()
    for layer, values in expected["layers"].items():
        assert got["layers"][layer] == pytest.approx(values, rel=1e-4, abs=1e-6), layer


def test_no_event_without_a_span_or_with_metric_off(llm: ChatGuide) -> None:
    handler = InfluenceCallbackHandler()
    llm.invoke("Hello", config={"callbacks": [handler]}, max_tokens=2)
    llm.invoke(MEASURED, config={"callbacks": [handler]}, max_tokens=2, metric=None)
    assert handler.reports == []


async def test_influence_event_shows_up_in_astream_events(tmp_path: Path) -> None:
    chain = (
        ChatPromptTemplate.from_messages([("human", "<?-> Summarize in French: <-?> {text}")])
        | ChatGuide(max_tokens=4)
        | StrOutputParser()
    )
    events = [e async for e in chain.astream_events({"text": "The cat sat."}, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    model_run = next(e["run_id"] for e in events if e["event"] == "on_chat_model_start")
    assert [(e["name"], e["run_id"]) for e in custom] == [(INFLUENCE_EVENT, model_run)]
    report = InfluenceResult.from_dict(custom[0]["data"])
    assert sorted(report.layers) == list(range(-1, 30)) and report.spans[0].text == " Summarize in French: "
    assert Path(report.plot(str(tmp_path / "influence.png"))).stat().st_size > 0


# --------------------------------------------------- which text makes spans, and the errors that say so


@pytest.mark.parametrize("template_format", sorted(TEMPLATES))
def test_template_spans_are_applied_by_the_model(template_format: str) -> None:
    message = (chain_prompt(template_format) | ChatGuide(delta_mid=2.0, max_tokens=1)).invoke(DOCUMENT)
    spans = [(s["message_index"], s["level"], s["delta"], s["text"]) for s in message.response_metadata["spans"]]
    assert spans == [(0, 1, 1.0, " concise "), (1, 2, 2.0, " Summarize in French: ")]


def test_tool_output_cannot_create_spans_unless_trusted() -> None:
    history = [
        HumanMessage("What did the tool return?"),
        AIMessage(""),
        ToolMessage("<!!-> 42 <-!!>", tool_call_id="1"),
    ]
    assert ChatGuide(max_tokens=1).invoke(history).response_metadata["spans"] == []
    trusted = ChatGuide(max_tokens=1, escape_tool_messages=False).invoke(history)
    assert [s["text"] for s in trusted.response_metadata["spans"]] == [" 42 "]


@pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning")
def test_a_chat_session_survives_stray_markers(real_engine: GuideEngine) -> None:
    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.runnables.history import RunnableWithMessageHistory

    prompt = GuideChatPromptTemplate.from_messages(
        [("system", "<!-> You are concise. <-!>"), ("placeholder", "{history}"), ("human", "{input}")]
    )
    store: dict[str, InMemoryChatMessageHistory] = {}
    chat = RunnableWithMessageHistory(
        prompt | ChatGuide(max_tokens=6),
        lambda session: store.setdefault(session, InMemoryChatMessageHistory()),
        input_messages_key="input",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": "s"}}
    turns = ["How do I close a GUIDE tag?", "Like this: <-!> or <!!!-> x <-!!!>?", "Thanks!"]
    store["s"] = InMemoryChatMessageHistory()
    store["s"].add_ai_message("You close it with <-!>.")  # the model's answer may carry markers too
    for turn in turns:
        answer = chat.invoke({"input": turn}, config)
        assert [s["text"] for s in answer.response_metadata["spans"]] == [" You are concise. "]
    assert len(store["s"].messages) == 7


UNESCAPED = "A text that ends with <-!> oops"


HINT = (
    "If that text came from a template variable (a document, a user's input), make it literal: "
    "{'document': escape_documents} | prompt, or build the prompt with GuideChatPromptTemplate, "
    "which escapes every variable"
)


def test_a_stray_tag_in_a_template_variable_names_the_message_and_the_way_out(real_engine: GuideEngine) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "<!!-> Summarize: <-!!>\n{doc}")])
    messages = prompt.invoke({"doc": UNESCAPED}).to_messages()
    with pytest.raises(TagError) as info:
        ChatGuide(model=real_engine, max_tokens=2).invoke(messages)
    assert str(info.value) == (
        "message 1 (user): closing tag '<-!>' at position 45 has no opening tag '<!->': "
        f"'...text that ends with <-!> oops'. {HINT}"
    )
    assert (info.value.tag, info.value.position) == ("<-!>", 45)
    escaped = ({"doc": escape_documents} | prompt).invoke(UNESCAPED).to_messages()  # the README's chain
    guarded = GuideChatPromptTemplate.from_messages(prompt.messages).invoke({"doc": UNESCAPED}).to_messages()
    for fixed in (escaped, guarded):  # both ways out the message names: the tag stays text
        assert ChatGuide(model=real_engine)._engine_call(fixed, None, {}).prompt[1]["content"].endswith("<\\-!> oops")


def test_an_unknown_role_is_refused_through_chat_guide(real_engine: GuideEngine) -> None:
    with pytest.raises(GuideError) as info:
        ChatGuide(model=real_engine, max_tokens=2).invoke([ChatMessage(role="users", content="hi")])
    assert str(info.value) == "message 0 has role 'users'; allowed: system, user, assistant, tool"


def test_a_bad_delta_gets_the_same_message_from_chat_guide_and_the_engine(real_engine: GuideEngine) -> None:
    with pytest.raises(GuideError) as engine_error:
        real_engine.generate("hi", delta_mid="high")
    with pytest.raises(GuideError) as field_error:
        ChatGuide(delta_mid="high")
    assert str(field_error.value) == str(engine_error.value) == "delta_mid must be a finite number, got 'high'"


# -------------------------------------------------------------- tools and structured output


CITIES = ["Paris", "Rome", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Seoul", "Dakar"]


TOOL_PROMPTS = [f"What is the weather in {city}?" for city in CITIES] + [
    "Is it raining in Berlin right now?",
    "Tell me the temperature in Madrid in fahrenheit.",
    "Weather for New York, please.",
    "<!!-> Use celsius. <-!!> How warm is it in Sydney?",
    "I am flying to Lisbon tomorrow. What's the weather like?",
    "quick: weather vienna",
    "Should I take an umbrella in London today?",
    "What's it like outside in Toronto?",
    "Give me the forecast for Nairobi.",
    "Check the weather in Mexico City for me.",
]


PEOPLE_PROMPTS = [
    "Ada is 36 years old.",
    "Extract the person: Bob, aged 41.",
    "My grandmother Rosa turned 90 last week.",
    "<!!-> Only the first name. <-!!> Alan Turing was 41 when he died.",
    "Who is mentioned? 'Lina (27) joined the team.'",
    "Marie Curie, 66.",
    "The child, Tom, is seven.",
    "Name and age please: Sam, 19",
    "Describe a person of your choice.",
    "Yuki will be 30 next year; she is 29 now.",
    "Omar is a 52-year-old teacher.",
    "Return JSON for: Eva, 23.",
    "A man called Ivan, age 64.",
    "Liu is twelve years old.",
    "Hello!",
    "Grace Hopper was 85.",
    "Nina, twenty-two.",
    "Paul (age 48) lives in Paris.",
    "Zoe just turned 5.",
    "Make up someone who is 100 years old.",
]


def test_every_tool_call_parses_and_validates_on_twenty_prompts(real_engine: GuideEngine) -> None:
    llm = ChatGuide(max_tokens=40).bind_tools([get_weather], tool_choice="any")
    messages = llm.batch(TOOL_PROMPTS)
    for prompt, message in zip(TOOL_PROMPTS, messages, strict=True):
        assert message.tool_calls, (prompt, message)
        for call in message.tool_calls:
            assert call["name"] == "get_weather" and call["id"].startswith("call_")
            get_weather.args_schema.model_validate(call["args"])  # the tool's own schema
        assert "<tool_call>" not in message.content
    assert len({call["id"] for m in messages for call in m.tool_calls}) == sum(len(m.tool_calls) for m in messages)
    # Streamed: the calls come as tool_call_chunks (name, id, index, JSON arguments), no markup as text.
    chunks = list(llm.stream(TOOL_PROMPTS[0]))
    assert "".join(c.content for c in chunks) == "" and [c.tool_call_chunks for c in chunks if c.tool_call_chunks]
    full = joined(chunks)
    assert [c["args"] for c in full.tool_calls] == [c["args"] for c in messages[0].tool_calls]


def test_every_structured_answer_parses_and_validates_on_twenty_prompts(real_engine: GuideEngine) -> None:
    people = ChatGuide(max_tokens=32).with_structured_output(Person).batch(PEOPLE_PROMPTS)
    assert all(isinstance(person, Person) for person in people)  # PydanticOutputParser validated each
    llm = ChatGuide(max_tokens=40)
    movie = llm.with_structured_output(Movie).invoke("Name a famous movie and its year.")
    assert set(movie) == {"title", "year"} and isinstance(movie["year"], int)
    called = llm.with_structured_output(Person, method="function_calling", include_raw=True).invoke(PEOPLE_PROMPTS[0])
    assert isinstance(called["parsed"], Person) and called["parsing_error"] is None and called["raw"].tool_calls
    # A prompt with a natural end: "A JSON object about cats." loops past any budget on this model,
    # and an answer cut short is an error, not a dict (issue 27).
    cat = llm.with_structured_output(None, method="json_mode").invoke("A JSON object with a cat's name and age.")
    assert isinstance(cat, dict) and cat


def test_a_tool_message_round_trip_reads_the_result_as_text(real_engine: GuideEngine) -> None:
    llm = ChatGuide(max_tokens=40)
    question = HumanMessage("<!-> Be brief. <-!> What is the weather in Paris?")
    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    result = get_weather.invoke(call.tool_calls[0])  # a ToolMessage with a hostile tag in it
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke([question, call, result], max_tokens=12)
    assert isinstance(answer.content, str) and not answer.tool_calls
    assert [s["text"] for s in answer.response_metadata["spans"]] == [" Be brief. "]  # none from the tool


def test_structured_output_with_too_few_tokens_names_max_tokens(real_engine: GuideEngine) -> None:
    structured = ChatGuide(model=real_engine, max_tokens=5).with_structured_output(City)
    with pytest.raises(OutputCutShortError, match=r"^the structured answer stopped at max_tokens \(5 tokens\)"):
        structured.invoke("Paris is in France.")
    raw = ChatGuide(model=real_engine, max_tokens=5).with_structured_output(City, include_raw=True)
    out = raw.invoke("Paris is in France.")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputCutShortError)


# -------------------------------------------------------------- timeouts and abandoned streams


async def test_an_abandoned_stream_leaves_the_engine_usable(llm: ChatGuide, reference: Any) -> None:
    for _ in llm.stream(PROMPT, max_tokens=200):
        break  # closing the generator stops decoding
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.astream("Count from 1 to 100, separated by commas.", max_tokens=200):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()  # lands while the next step runs on the worker thread
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await llm.ainvoke(PROMPT)).content == reference.text
    assert llm.invoke(PROMPT).content == reference.text


def test_timeout_is_a_wall_clock_limit_and_max_retries_retries_it(real_engine: GuideEngine) -> None:
    spy = CountingEngine(real_engine)
    with pytest.raises(GenerationTimeoutError) as info:
        ChatGuide(model=spy, max_tokens=200, timeout=0.05, max_retries=2).invoke("Count to one hundred.")
    assert spy.singles == 3  # the run and two retries
    assert info.value.partial.finish_reason == "timeout"  # the deadline is checked after each token
