"""The wrappers' option lists, written out literally, add up to the engine's request options.

ChatGuide and GuideLLM each list which engine options they take as fields, which arrive per call
(tools, structured output) and which have no field of their own. Written literally so a reader
sees them; checked here so a new engine option cannot be forgotten by either wrapper.
"""

from __future__ import annotations

from collections import Counter

import pytest

from guide_engine import REQUEST_OPTIONS
from guide_integrations.langchain import options as langchain_options
from guide_integrations.llama_index import options as llama_index_options


def test_chat_guide_takes_every_engine_option_exactly_once() -> None:
    names = [
        *langchain_options.FIELD_OPTIONS.values(),
        *langchain_options.PER_CALL_OPTIONS,
        *langchain_options.ENGINE_EXTRAS,
        "stop",  # LangChain's own argument of every call
    ]
    assert Counter(names) == Counter(REQUEST_OPTIONS)


def test_guide_llm_takes_every_engine_option_exactly_once() -> None:
    assert Counter(llama_index_options.CALL_OPTIONS) == Counter(REQUEST_OPTIONS)
    assert not set(llama_index_options.FIELD_OPTIONS) & set(llama_index_options.PER_CALL_OPTIONS)


@pytest.mark.real_model
def test_both_wrappers_coerce_types_as_pydantic_does_and_check_ranges_as_the_engine_does(real_engine) -> None:
    from guide_integrations.core import SettingsError
    from guide_integrations.langchain import ChatGuide
    from guide_integrations.llama_index import GuideLLM

    assert ChatGuide(model=real_engine, max_tokens="5").max_tokens == 5  # pydantic's lax coercion, as before
    assert GuideLLM(engine=real_engine, max_new_tokens="7").max_new_tokens == 7
    with pytest.raises(SettingsError, match=r"^timeout must be > 0 \(seconds of wall-clock time\), got 0$"):
        ChatGuide(model=real_engine, timeout=0)  # the engine's message, naming the value as given (not 0.0)
    with pytest.raises(SettingsError, match=r"^timeout must be > 0 \(seconds of wall-clock time\), got 0$"):
        GuideLLM(engine=real_engine, timeout=0)
