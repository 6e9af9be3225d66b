"""Errors that finish their sentence, and escape_documents both ways (issue 27, items 5 and 6b). No model."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable

from guide_engine import GuideValueError
from guide_engine.constraints import json_schema_grammar
from guide_engine.schema_errors import unsupported_schema_message
from guide_integrations.langchain import ChatGuide, OutputCutShortError, escape_documents
from guide_integrations.langchain.structured import json_schema, structured_parser

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


def _at(content: str, finish_reason: str) -> AIMessage:
    usage = {"input_tokens": 9, "output_tokens": 1, "total_tokens": 10}
    return AIMessage(content=content, response_metadata={"finish_reason": finish_reason}, usage_metadata=usage)


def test_a_number_at_the_limit_is_cut_short_and_a_closed_value_is_complete():
    parser = structured_parser({"type": "integer"}, "json_schema")
    with pytest.raises(OutputCutShortError, match=r"stopped at max_tokens \(1 tokens\)"):
        parser.invoke(_at("1", "length"))  # the start of 136, perhaps
    assert parser.invoke(_at("1", "stop")) == 1  # it ended by itself
    assert structured_parser({"type": "string"}, "json_schema").invoke(_at('"ok"', "length")) == "ok"
    with pytest.raises(OutputCutShortError, match="stopped at the timeout"):
        parser.invoke(_at('{"a": 1', "timeout"))


def test_a_dict_schema_with_a_root_ref_is_taken_as_it_is():
    from pydantic import BaseModel

    class Node(BaseModel):
        name: str
        children: list[Node]

    schema = Node.model_json_schema()  # a root "$ref" only when the model refers to itself at the root
    assert json_schema(schema) == schema
    assert json_schema({"anyOf": [{"type": "string"}, {"type": "integer"}]}) == {
        "anyOf": [{"type": "string"}, {"type": "integer"}]
    }


def test_bindings_serialize_as_langchains_runnable_binding():
    binding = ChatGuide.model_construct().bind(max_tokens=5)
    assert binding.lc_id() == ["langchain", "schema", "runnable", "RunnableBinding"]
    assert type(binding.bind(delta_mid=2.0)) is type(binding)  # further binds keep the options-keeping class
    assert binding.bind(delta_mid=2.0).kwargs == {"max_tokens": 5, "delta_mid": 2.0}
