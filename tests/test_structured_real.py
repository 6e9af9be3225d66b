"""Structured output and tool calls on the embedded SmolLM2-135M: every answer parses and validates.

Validity, not quality: a 135M model picks odd values, but the grammar guarantees their shape.
Batched (one left-padded batch per schema or tool set), so 40 answers stay within about a minute.
"""

from __future__ import annotations

import json

import pytest

from tests.schema_check import errors

pytestmark = pytest.mark.real_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 40},
    },
    "required": ["name", "age", "city"],
}
REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "topics": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["sentiment", "stars", "topics"],
}
JSON_CASES = {
    "person": (
        PERSON,
        [
            "Alice is 31 and lives in Paris.",
            "Bob, 45, moved to Rome last year.",
            "Extract the person: Chen Wei, age 28, Shanghai.",
            "My grandmother Rosa is 82; she lives in Lisbon.",
            "Describe a fictional detective as JSON.",
            "Who wrote Hamlet? Give name, age at death and city.",
            "Make up a person who lives in Nairobi.",
            "Olaf (19) studies in Oslo.",
            "The mayor of Berlin is 50 years old.",
            "Return a JSON record for a chef from Lyon.",
        ],
    ),
    "review": (
        REVIEW,
        [
            "Review: The pasta was cold and the waiter rude.",
            "Review: Absolutely loved the battery life of this phone!",
            "Review: It works. Nothing special.",
            "Classify: 'Best concert of my life, the sound was perfect.'",
            "Classify: 'The hotel room smelled of smoke.'",
            "Rate this: fast delivery, but the box was damaged.",
            "Analyse: 'Five stars, would buy again.'",
            "Analyse: 'Terrible customer service, never again.'",
            "Review of a movie: long, slow, but beautiful images.",
            "Summarize the sentiment: 'meh'.",
        ],
    ),
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "maxLength": 60}},
                "required": ["query"],
            },
        },
    },
]
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
TOOL_PROMPTS = [
    "What's the weather in Paris?",
    "Is it raining in Tokyo right now?",
    "Temperature in New York in fahrenheit?",
    "What is 2 plus 3?",
    "Add 17 and 25.",
    "How much is 100 + 250?",
    "Search for the tallest building in the world.",
    "Find recent news about the Mars rover.",
    "Look up the capital of Australia.",
    "Weather in Cairo, please, in celsius.",
    "Compute 7 + 8.",
    "Search: best pizza in Naples.",
    "Do I need an umbrella in London today?",
    "Sum 1000 and 2000.",
    "Who won the 2018 World Cup? Search it.",
    "How hot is it in Dubai?",
    "What's -5 plus 12?",
    "Find a recipe for pancakes.",
    "Weather forecast for Sydney.",
    "Add 3 and 4, then tell me.",
]


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_json_schema_answers_parse_and_validate(real_engine, case):
    schema, prompts = JSON_CASES[case]
    fmt = {"type": "json_schema", "json_schema": {"name": case, "schema": schema}}
    results = real_engine.generate_batch(prompts, response_format=fmt, max_new_tokens=64)
    for prompt, result in zip(prompts, results):
        assert result.finish_reason == "stop", (prompt, result.text)
        value = json.loads(result.text)
        assert result.parsed == value and errors(value, schema) == [], (prompt, result.text)


def test_required_tool_calls_parse_and_validate(real_engine):
    system = {"role": "system", "content": "You are a <!!->precise<-!!> assistant. Use the tools."}
    prompts = [[system, {"role": "user", "content": p}] for p in TOOL_PROMPTS]
    results = real_engine.generate_batch(prompts, tools=TOOLS, tool_choice="required", max_new_tokens=64)
    for prompt, result in zip(TOOL_PROMPTS, results):
        assert result.finish_reason == "tool_calls" and result.text == "", (prompt, result)
        assert result.spans and result.spans[0].text == "precise"
        for call in result.tool_calls:
            assert call.name in TOOL_SCHEMAS and errors(call.arguments, TOOL_SCHEMAS[call.name]) == [], (prompt, call)
