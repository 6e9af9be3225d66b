"""GUIDE for LangChain: ``ChatGuide`` (a chat model), Influence as a callback event, tag escaping.

Install with ``pip install "guide-attention[langchain]"``.

- :class:`ChatGuide` — a ``BaseChatModel`` on a local model; tags in any message of a prompt
  (f-string, mustache or jinja2 templates alike) bias attention; ``stream``, ``astream``,
  ``batch`` (one engine batch) and ``abatch`` are native.
- :class:`InfluenceCallbackHandler` — collects the ``"guide_influence"`` events a ``<?->`` span
  produces, as :class:`~guide_engine.InfluenceResult` objects that plot and export themselves.
- :class:`GuideChatPromptTemplate` — a drop-in ``ChatPromptTemplate`` that escapes every variable
  value where it lands (chat history included), so only the template's own tags become spans.
- :data:`escape_documents` / :func:`escape_untrusted` — make retrieved documents, tool output or
  end-user text literal before it enters a plain template, so it cannot create spans.

``ChatGuide`` also binds tools (``bind_tools``), returns structured output
(``with_structured_output``) and counts tokens with the model's own tokenizer.

One module per job: ``chat_model`` (``ChatGuide``: its fields, its engine call, the partner
methods), ``options`` (the option names and ``EngineCall``), ``messages`` (LangChain messages to
the engine's prompt), ``templates`` (escaping values put into templates), ``outputs`` (engine
results to LangChain messages and chunks), ``outcomes`` (result or error, the retry rule),
``batching`` (one engine batch before LangChain's ``batch``), ``tools`` (tool binding),
``structured`` (structured-output parsers), ``events`` (Influence as a callback event), ``runs``
(how ``_stream`` reaches its run).
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    from guide_engine import MissingDependencyError

    raise MissingDependencyError(
        'guide_integrations.langchain needs langchain-core; install it with `pip install "guide-attention[langchain]"`'
    ) from error

from .chat_model import ChatGuide
from .events import INFLUENCE_EVENT, InfluenceCallbackHandler
from .messages import MessageError, to_engine_prompt
from .structured import OutputCutShortError
from .templates import GuideChatPromptTemplate, escape_documents, escape_untrusted

__all__ = [
    "INFLUENCE_EVENT",
    "ChatGuide",
    "GuideChatPromptTemplate",
    "InfluenceCallbackHandler",
    "MessageError",
    "OutputCutShortError",
    "escape_documents",
    "escape_untrusted",
    "to_engine_prompt",
]
