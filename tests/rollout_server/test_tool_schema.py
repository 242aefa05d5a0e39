"""A Python function as a tool: its generated schema and its argument checks, as data."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from rollout_server.tool_schema import (
    ToolArgumentError,
    ToolDefinitionError,
    check_schema,
    function_spec,
    result_text,
)
from tests import user_tools


def test_schema_from_signature_hints_and_google_docstring() -> None:
    assert function_spec(user_tools.word_count).schema == {
        "type": "function",
        "function": {
            "name": "word_count",
            "description": "Count the words of a text.",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "The text whose words are counted."}
                },
                "required": ["text"],
            },
        },
    }


def test_schema_keeps_defaults_literals_and_param_lines() -> None:
    spec = function_spec(user_tools.shout)
    assert spec.is_async
    parameters = spec.schema["function"]["parameters"]
    assert parameters["required"] == ["text"]
    assert parameters["properties"] == {
        "text": {"type": "string", "description": "what to say"},
        "times": {"type": "integer", "default": 1, "description": "how many times"},
        "style": {"type": "string", "default": "plain", "enum": ["plain", "bold"]},
    }
    assert list(parameters) == ["type", "properties", "required"]


def test_a_property_named_title_is_kept() -> None:
    def book(title: str) -> str:
        """Find a book."""
        return title

    parameters = function_spec(book).schema["function"]["parameters"]
    assert parameters["properties"] == {"title": {"type": "string"}}


class Point(BaseModel):
    x: float
    y: float


def distance(a: Point, b: Point) -> float:
    """Distance between two points."""
    return float(((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5)


def test_nested_models_are_described() -> None:
    spec = function_spec(distance)
    assert spec.schema["function"]["parameters"]["$defs"]["Point"]["required"] == ["x", "y"]
    assert spec.call({"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}}) == 5.0


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "missing argument 'text'"),
        ({"text": "a", "extra": 1}, "unexpected argument 'extra'"),
        ({"text": ["a"]}, "argument 'text': Input should be a valid string"),
    ],
)
def test_arguments_are_checked_against_the_schema(arguments: dict[str, Any], problem: str) -> None:
    with pytest.raises(ToolArgumentError, match=problem):
        function_spec(user_tools.word_count).call(arguments)


def test_defaults_are_filled_in() -> None:
    spec = function_spec(user_tools.shout)
    assert asyncio.run(spec.call({"text": "hi"})) == "HI!"
    assert asyncio.run(spec.call({"text": "hi", "times": 2, "style": "bold"})) == "**HI!** **HI!**"


def test_explicit_schema_is_used_and_names_are_bound() -> None:
    schema = {"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}
    spec = function_spec(user_tools.echo_tool, name="echo", schema=schema)
    assert spec.schema is schema
    assert spec.call({"message": "hi"}) == "hi"
    with pytest.raises(ToolArgumentError, match="missing a required argument"):
        spec.call({"msg": "hi"})


@pytest.mark.parametrize(
    ("fn", "kwargs", "problem"),
    [
        (user_tools.untyped, {}, "parameter 'x' has no type hint"),
        (user_tools.star_args, {}, "parameter 'values' must be a plain or keyword-only parameter"),
        (user_tools.word_count, {"name": "word count"}, "must be 1-64 letters"),
        (user_tools.word_count, {"name": "x" * 65}, "must be 1-64 letters"),
        (42, {}, "is not callable"),
        (
            user_tools.word_count,
            {"schema": {"type": "function", "function": {"name": "other"}}},
            "function.name",
        ),
        (user_tools.word_count, {"schema": {"function": {"name": "word_count"}}}, '"type": "function"'),
    ],
)
def test_tools_that_cannot_be_described_are_named(fn: Any, kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ToolDefinitionError, match=problem):
        function_spec(fn, **kwargs)


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "function", "function": {"name": "t", "parameters": {"type": "array"}}}, "object"),
        ({"type": "function", "function": {"name": "t", "description": 3}}, "description"),
        (
            {"type": "function", "function": {"name": "t", "parameters": {"type": "object", "x": {1, 2}}}},
            "JSON",
        ),
    ],
)
def test_check_schema(schema: dict[str, Any], problem: str) -> None:
    with pytest.raises(ToolDefinitionError, match=problem):
        check_schema("t", schema)


class _Answer(BaseModel):
    value: int


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (None, ""),
        (3, "3"),
        ({"a": [1, "é"]}, '{"a": [1, "é"]}'),
        (_Answer(value=4), '{"value":4}'),
        ({1, 2}, '"{1, 2}"'),
    ],
)
def test_result_text(value: Any, text: str) -> None:
    assert result_text(value) == text
