"""docs/langchain.md's chat-session snippet (create_agent with LangGraph's InMemorySaver) runs as written."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def session_snippet() -> str:
    """The first Python block under "## Chat sessions (memory)" in docs/langchain.md."""
    page = (ROOT / "docs" / "langchain.md").read_text()
    section = page.split("## Chat sessions (memory)\n", 1)
    assert len(section) == 2, "docs/langchain.md has no 'Chat sessions (memory)' section"
    found = re.search(r"```python\n(.*?)```", section[1], re.DOTALL)
    assert found, "the chat-session section has no Python snippet"
    return found.group(1)


def test_the_docs_recommend_no_deprecated_history_wrapper() -> None:
    snippet = session_snippet()
    assert "RunnableWithMessageHistory" not in snippet
    assert "checkpointer=InMemorySaver()" in snippet


@pytest.mark.real_model
def test_the_chat_session_snippet_keeps_the_history_without_deprecation_warnings(real_engine) -> None:
    """Run verbatim: two turns in one thread; the second gets the first; no LangChain or LangGraph deprecation."""
    from langchain_core._api.deprecation import LangChainDeprecationWarning
    from langgraph.warnings import LangGraphDeprecationWarning

    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", LangChainDeprecationWarning)  # what RunnableWithMessageHistory raises
        warnings.simplefilter("error", LangGraphDeprecationWarning)
        exec(compile(session_snippet(), "docs/langchain.md", "exec"), namespace)
    messages = namespace["agent"].get_state(namespace["session"]).values["messages"]
    assert [m.type for m in messages] == ["human", "ai", "human", "ai"]
    assert messages[0].content == namespace["escape_tags"]("My name is Ada. You close a tag with <-!>.")
    first, second = messages[1].usage_metadata["input_tokens"], messages[3].usage_metadata["input_tokens"]
    assert second > first + 10  # the second turn's prompt holds the first turn
    assert all(m.content.strip() for m in (messages[1], messages[3]))
