"""Errors that finish their sentence, and escape_documents both ways (issue 27, items 5 and 6b). No model."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import Runnable

from guide_engine import GuideValueError
from guide_engine.constraints import json_schema_grammar
from guide_engine.schema_errors import unsupported_schema_message
from guide_integrations.langchain import escape_documents

AFTER = "or keep it out of the schema and validate the answer after generation"


def obj(**properties):
    return {"type": "object", "properties": properties, "required": sorted(properties)}


def test_a_lookahead_pattern_names_the_field_the_keyword_and_what_to_do():
    schema = obj(code={"type": "string", "pattern": "^(?=a)b$"})
    with pytest.raises(GuideValueError) as error:
        json_schema_grammar(schema)
    message = str(error.value)
    assert message.startswith("response_format schema cannot be enforced: field 'code' uses 'pattern' \"^(?=a)b$\"")
    assert "look-around, including look-ahead and look-behind, is not supported" in message
    assert "drop 'pattern' from that field" in message and message.endswith(AFTER)


def test_unique_items_names_the_field_and_the_keyword():
    schema = obj(tags={"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    with pytest.raises(GuideValueError, match=r"field 'tags' uses 'uniqueItems'.*drop 'uniqueItems' from that field"):
        json_schema_grammar(schema)


def test_the_deepest_field_is_named_through_refs_and_lists():
    schema = {
        **obj(people={"type": "array", "items": {"$ref": "#/$defs/Person"}}),
        "$defs": {"Person": obj(email={"type": "string", "format": "e-mail-ish"})},
    }
    with pytest.raises(GuideValueError, match=r"field '\$defs/Person.email' uses 'format'"):
        json_schema_grammar(schema)
    with pytest.raises(GuideValueError, match=r"field 'a\[\]' uses 'uniqueItems'"):
        json_schema_grammar(obj(a={"type": "array", "items": {"type": "array", "uniqueItems": True}}))


def test_a_tool_whose_parameters_cannot_be_enforced_is_named():
    with pytest.raises(GuideValueError, match=r"^tool 'lookup' parameters cannot be enforced: field 'ids' uses"):
        json_schema_grammar(obj(ids={"type": "array", "uniqueItems": True}), "tool 'lookup' parameters")


def test_an_error_without_a_known_keyword_still_says_what_to_do():
    message = unsupported_schema_message({"type": "object"}, "response_format schema", "something odd", lambda _: None)
    assert message == (
        "response_format schema cannot be enforced: the schema: something odd; simplify that part, " + AFTER
    )


def test_escape_documents_works_called_and_as_a_runnable():
    doc = Document(page_content="a <!-> b <-!>", metadata={"source": "x"})
    called = escape_documents([doc])
    assert isinstance(escape_documents, Runnable)
    assert called == escape_documents.invoke([doc])
    assert called[0].page_content == "a <\\!-> b <\\-!>" and called[0].metadata == {"source": "x"}
    assert escape_documents("<?-> x") == "<\\?-> x"
