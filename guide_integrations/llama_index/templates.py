"""Keep a prompt template's own tags and neutralize every value inserted into it.

LlamaIndex builds every prompt of a query engine the same way: a *template* (text QA, refine,
tree summarize, a chat template, ...) written by the developer, formatted with *values* it did
not write — retrieved node text (``context_str``, ``context_msg``, ``context_messages``), the
end user's question (``query_str``), the model's own earlier answer (``existing_answer``).
Escaping those values with :func:`guide_engine.escape_tags` before formatting keeps the
template's tags and turns every tag marker inside a value into its literal characters.

Values reach a template two ways, and both are covered: as keyword arguments of the call
(``llm.predict(template, context_str=...)``) and as the template's partial-format ``kwargs``
(``template.partial_format(query_str=...)``, which the response synthesizers use). Both are
merged, escaped and passed as call arguments, which take precedence over the partial values.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import ChatMessage, TextBlock
from llama_index.core.prompts.base import BasePromptTemplate, SelectorPromptTemplate

from guide_engine import escape_tags

from ..core import escape_untrusted_value

__all__ = ["escape_template_value", "escaped_template_args"]


def escape_template_value(value: Any) -> Any:
    """Escape the tag markers in a value about to be formatted into a template.

    Strings are escaped; chat messages and text blocks get their text escaped (the multimodal
    synthesizers pass nodes as messages); lists, tuples and dicts are escaped item by item. Any
    other value (numbers, objects a ``function_mappings`` callable consumes) is returned as is:
    this is :func:`guide_integrations.core.escape_untrusted_value`, the walker both integrations share.
    """
    return escape_untrusted_value(value, _escape_object)


def _escape_object(value: Any) -> Any:
    if isinstance(value, TextBlock):
        return value.model_copy(update={"text": escape_tags(value.text)})
    if isinstance(value, ChatMessage):
        return value.model_copy(update={"blocks": [escape_template_value(b) for b in value.blocks]})
    return value


def escaped_template_args(
    prompt: BasePromptTemplate, prompt_args: dict[str, Any], llm: Any = None
) -> tuple[BasePromptTemplate, dict[str, Any]]:
    """The template to format and its arguments, every inserted value escaped.

    Args:
        prompt: the template the call formats (its tags are kept).
        prompt_args: the call's format arguments.
        llm: the LLM a :class:`SelectorPromptTemplate` selects its template for.

    Returns:
        The template (the selected one, for a selector) and the escaped arguments: the
        template's partial-format values merged with ``prompt_args``, the latter winning.
    """
    if isinstance(prompt, SelectorPromptTemplate):
        prompt = prompt.select(llm=llm)
    merged = {**(prompt.kwargs or {}), **prompt_args}
    return prompt, {name: escape_template_value(value) for name, value in merged.items()}
