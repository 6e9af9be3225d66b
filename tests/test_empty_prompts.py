"""One rule for empty prompts on every surface (issue 27, item 6a): nothing to answer is refused.

A blank string, or messages that are all blank, raises ``GuideValueError`` ("prompt is empty") in
the engine, ChatGuide (invoke, stream, a blank HumanMessage), GuideLLM (complete, chat) and the CLI,
before anything is generated. The refusal leaves the engine usable.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from llama_index.core.llms import ChatMessage

from guide_engine import GuideValueError
from guide_integrations.langchain import ChatGuide
from guide_integrations.llama_index import GuideLLM

pytestmark = pytest.mark.real_model


def surfaces(engine):
    chat, llm = ChatGuide(model=engine, max_tokens=2), GuideLLM(engine=engine, max_new_tokens=2)
    return {
        "engine.generate('')": lambda: engine.generate(""),
        "engine.generate(blank messages)": lambda: engine.generate([{"role": "user", "content": "  "}]),
        "ChatGuide.invoke('')": lambda: chat.invoke(""),
        "ChatGuide.invoke([HumanMessage('')])": lambda: chat.invoke([HumanMessage("")]),
        "ChatGuide.invoke(blank system and human)": lambda: chat.invoke([SystemMessage(" "), HumanMessage("")]),
        "ChatGuide.stream('')": lambda: list(chat.stream("")),
        "ChatGuide.ainvoke('')": lambda: asyncio.run(chat.ainvoke("")),
        "ChatGuide.batch(['', ''])": lambda: chat.batch(["", ""]),
        "ChatGuide.abatch([''])": lambda: asyncio.run(chat.abatch([""])),
        "GuideLLM.complete('')": lambda: llm.complete(""),
        "GuideLLM.stream_complete('')": lambda: list(llm.stream_complete("")),
        "GuideLLM.chat(blank)": lambda: llm.chat([ChatMessage(role="user", content="")]),
    }


def test_every_surface_refuses_an_empty_prompt(real_engine):
    for name, call in surfaces(real_engine).items():
        try:
            call()
        except GuideValueError as error:
            assert "prompt is empty" in str(error) and "pass" in str(error), (name, error)  # and says what to pass
        else:
            pytest.fail(f"{name} generated instead of refusing")
    assert ChatGuide(model=real_engine, max_tokens=2).invoke("Hi").content  # still usable


def test_the_command_line_refuses_an_empty_prompt():
    run = subprocess.run(
        [sys.executable, "-m", "guide_integrations.cli", "generate", ""], capture_output=True, text=True
    )
    assert run.returncode == 2 and "is empty" in run.stderr, run.stderr
