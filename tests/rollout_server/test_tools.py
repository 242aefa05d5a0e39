"""The tool registry and the calculator: results, concurrency, and failures as tool messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from rollout_server.tools import ToolRegistry, calculator_registry


def call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def run(registry: ToolRegistry, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [outcome.message for outcome in asyncio.run(registry.run_calls(calls))]


def run_one(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    [outcome] = asyncio.run(calculator_registry().run_calls([call(name, arguments, call_id)]))
    assert outcome.ok is not outcome.message["content"].startswith("Error:")
    return outcome.message


@pytest.mark.parametrize(
    ("name", "a", "b", "expected"),
    [
        ("add", 2, 3, "5"),
        ("add", 0.5, 0.25, "0.75"),
        ("subtract", 2, 5, "-3"),
        ("subtract", 7.5, 0.5, "7"),
        ("multiply", 6, 7, "42"),
        ("multiply", -1.5, 2, "-3"),
        ("divide", 20, 4, "5"),
        ("divide", 1, 4, "0.25"),
        ("divide", 0, 3, "0"),
    ],
)
def test_calculator_ops(name: str, a: float, b: float, expected: str) -> None:
    message = run_one(name, json.dumps({"a": a, "b": b}), call_id="call_7")
    assert message == {"role": "tool", "content": expected, "tool_call_id": "call_7"}


def test_arguments_may_be_an_object() -> None:
    assert run_one("add", {"a": 2, "b": 3})["content"] == "5"


def test_calculator_names() -> None:
    assert calculator_registry().names == ["add", "divide", "multiply", "subtract"]


def test_calls_of_one_turn_run_concurrently() -> None:
    registry = ToolRegistry(timeout=10)
    started: list[int] = []
    everyone_started = asyncio.Event()

    async def meet(args: dict[str, Any]) -> str:
        # Each call waits for all five to have started: run one after another, the first would
        # wait until the registry's timeout and come back as an error message.
        started.append(args["n"])
        if len(started) == 5:
            everyone_started.set()
        await everyone_started.wait()
        return str(args["n"])

    registry.register("meet", meet)
    messages = run(registry, [call("meet", {"n": n}, f"c{n}") for n in range(5)])
    assert [m["content"] for m in messages] == ["0", "1", "2", "3", "4"]


def test_results_keep_call_order_when_later_calls_finish_first() -> None:
    registry = ToolRegistry(timeout=10)
    finished: list[int] = []
    done = [asyncio.Event() for _ in range(5)]

    async def staggered(args: dict[str, Any]) -> str:
        n = args["n"]
        if n < 4:
            await done[n + 1].wait()  # the call after this one finishes first
        finished.append(n)
        done[n].set()
        return f"result {n}"

    registry.register("staggered", staggered)
    messages = run(registry, [call("staggered", {"n": n}, f"c{n}") for n in range(5)])
    assert finished == [4, 3, 2, 1, 0]
    assert [m["tool_call_id"] for m in messages] == ["c0", "c1", "c2", "c3", "c4"]
    assert [m["content"] for m in messages] == [f"result {n}" for n in range(5)]


def test_no_calls_gives_no_messages() -> None:
    assert run(calculator_registry(), []) == []


@pytest.mark.parametrize(
    ("name", "arguments", "mentions"),
    [
        ("add", '{"a": 5, "b": ', "not valid JSON"),
        ("add", "not json at all", "not valid JSON"),
        ("add", "[1, 2]", "JSON object"),
        ("add", 42, "JSON object"),
        ("power", '{"a": 2, "b": 3}', "unknown tool"),
        ("", '{"a": 2, "b": 3}', "unknown tool"),
        ("add", '{"a": "5", "b": 3}', "'a' must be a number"),
        ("add", '{"a": 5, "b": true}', "'b' must be a number"),
        ("multiply", '{"a": null, "b": 3}', "'a' must be a number"),
        ("subtract", '{"a": [1], "b": 3}', "'a' must be a number"),
        ("add", '{"a": 5}', "missing argument 'b'"),
        ("add", "{}", "missing argument"),
        ("add", '{"a": 1, "b": 2, "c": 3}', "unexpected argument"),
        ("divide", '{"a": 1, "b": 0}', "division by zero"),
        ("divide", '{"a": 1.5, "b": 0.0}', "division by zero"),
        ("add", '{"a": Infinity, "b": 1}', "finite"),
        ("add", '{"a": NaN, "b": 1}', "finite"),
    ],
)
def test_tool_failure_becomes_an_error_tool_message(name: str, arguments: Any, mentions: str) -> None:
    message = run_one(name, arguments, call_id="call_err")
    assert message["role"] == "tool"
    assert message["tool_call_id"] == "call_err"
    assert message["content"].startswith("Error:")
    assert mentions in message["content"]


def test_unknown_tool_lists_the_available_ones() -> None:
    content = run_one("power", "{}")["content"]
    assert "add, divide, multiply, subtract" in content


def test_tool_exceeding_the_registry_timeout_becomes_an_error_message() -> None:
    registry = ToolRegistry(timeout=0.05)

    async def stuck(args: dict[str, Any]) -> str:
        await asyncio.sleep(30)
        return "never"

    registry.register("stuck", stuck)
    [outcome] = asyncio.run(registry.run_calls([call("stuck", "{}", "call_slow")]))
    assert outcome.ok is False
    assert outcome.message["tool_call_id"] == "call_slow"
    assert outcome.message["content"].startswith("Error:")
    assert "stuck" in outcome.message["content"]


def test_one_failing_call_does_not_spoil_the_others() -> None:
    messages = run(
        calculator_registry(),
        [
            call("add", '{"a": 2, "b": 3}', "c1"),
            call("divide", '{"a": 1, "b": 0}', "c2"),
            call("multiply", '{"a": 5, "b": 4}', "c3"),
        ],
    )
    assert [m["content"] for m in messages] == ["5", "Error: division by zero", "20"]
    assert [m["tool_call_id"] for m in messages] == ["c1", "c2", "c3"]


def test_malformed_call_without_function_or_id_still_becomes_a_tool_message() -> None:
    [outcome] = asyncio.run(calculator_registry().run_calls([{"type": "function"}]))
    assert outcome.message["role"] == "tool"
    assert outcome.message["tool_call_id"] == ""
    assert outcome.message["content"].startswith("Error:")


def test_outcome_reports_latency() -> None:
    [outcome] = asyncio.run(calculator_registry().run_calls([call("add", '{"a": 1, "b": 1}')]))
    assert outcome.ok is True
    assert outcome.latency_ms >= 0


def test_integer_argument_beyond_float_range_becomes_an_error_message() -> None:
    message = run_one("add", '{"a": 1' + "0" * 400 + ', "b": 1}')
    assert message["content"].startswith("Error:")
