"""A LlamaIndex chat session survives tag markers typed by its user (issue 10, "safe by default").

``index.as_chat_engine()`` over a real index (all-MiniLM-L6-v2 embeddings, the embedded SmolLM2), in
``condense_plus_context`` and ``context`` modes, three turns; turn 2 holds a stray ``<-!>`` and a
whole ``<!!!-> x <-!!!>`` span. Every turn answers, every LLM call of the session applies only the
developer's system-prompt span, and the user's markers reach the model as their literal characters.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "llama_index.core", reason="needs the llama-index extra: pip install 'guide-attention[llama-index]'"
)

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent  # noqa: E402

from guide_integrations.llama_index import GuideLLM, local_embedding  # noqa: E402
from tests.dispatcher import on_root_dispatcher

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
SYSTEM = "You answer questions about mountains. <!-> Keep answers short. <-!>"
TURNS = [
    "Who first climbed Mount Everest?",
    "How do I close an emphasis tag, is it <-!>? And what does <!!!-> x <-!!!> do?",
    "How high is it?",
]


class LLMEnds(BaseEventHandler):
    ends: list = []

    def handle(self, event, **kwargs):
        if isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)):
            self.ends.append(event.response)


@pytest.fixture(scope="module")
def index():
    return VectorStoreIndex.from_documents(SimpleDirectoryReader(str(DATA)).load_data(), embed_model=local_embedding())


@pytest.fixture
def ends():
    handler = LLMEnds(ends=[])
    with on_root_dispatcher(handler):
        yield handler.ends


@pytest.mark.real_model
@pytest.mark.parametrize("mode", ["condense_plus_context", "context"])
def test_three_turns_with_stray_markers_no_error_no_user_span(index, ends, real_engine, mode):
    llm = GuideLLM(engine=real_engine, max_new_tokens=4, delta_mid=1.0)
    chat = index.as_chat_engine(chat_mode=mode, llm=llm, system_prompt=SYSTEM, similarity_top_k=1)
    answers = []
    for turn in TURNS:
        before = len(ends)
        answers.append(chat.chat(turn))
        assert len(ends) > before  # the turn reached the model
    assert all(str(answer) for answer in answers)
    assert len(chat.chat_history) == 6 and chat.chat_history[2].content == TURNS[1]  # memory kept the raw text
    for response in ends:
        spans = [(s["level"], s["text"]) for s in response.additional_kwargs["spans"]]
        assert spans in ([], [(1, " Keep answers short. ")]), spans  # the system prompt's span or none
    seen = [r.raw["guide"]["prompt_text"] for r in ends]
    assert sum(TURNS[1] in text for text in seen) >= 2  # turns 2 and 3 showed the model the literal markers
    if mode == "context":
        assert all(r.additional_kwargs["spans"] for r in ends)  # every answer kept the developer's span
