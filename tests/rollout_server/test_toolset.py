"""Per-rollout tool sets: narrowing, MCP tools beside local ones, the output cap, the URL check,
and per-tool metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rollout_server.errors import ToolSelectionError, ToolServerError
from rollout_server.metrics import MAX_MCP_TOOL_LABELS, Metrics
from rollout_server.protocol import RolloutRequest
from rollout_server.tool_loader import load_tools
from rollout_server.tools import ToolOutcome
from rollout_server.toolset import ToolBox, ToolLimits, ToolSet, cap_output
from tests.conftest import Served, free_port


def request(**fields: Any) -> RolloutRequest:
    body = {
        "rollout_id": "r-1",
        "server_url": "http://127.0.0.1:1",
        "messages": [{"role": "user", "content": "hi"}],
        "sampling_params": {},
        **fields,
    }
    return RolloutRequest.model_validate(body)


def call(name: str, arguments: Any, call_id: str = "c1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def box(**kwargs: Any) -> ToolBox:
    return ToolBox(load_tools(("calculator", "tests.user_tools:shout"), timeout=10), **kwargs)


async def opened(
    toolbox: ToolBox, req: RolloutRequest, calls: list[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    async with toolbox.open(req) as tools:
        outcomes = await tools.run_calls(calls)
    await toolbox.aclose()
    return tools.names, [o.message["content"] for o in outcomes]


@pytest.mark.parametrize(
    ("text", "limit", "capped"),
    [
        ("abc", 3, "abc"),
        ("abcdef", 3, "abc\n[truncated: 3 of 6 characters not shown]"),
        ("", 16, ""),
    ],
)
def test_cap_output(text: str, limit: int, capped: str) -> None:
    assert cap_output(text, limit) == capped


def test_the_default_set_is_the_servers_tools() -> None:
    names, out = asyncio.run(opened(box(), request(), [call("add", {"a": 1, "b": 2})]))
    assert names == ["add", "divide", "multiply", "shout", "subtract"]
    assert out == ["3"]


def test_a_request_narrows_the_set_and_a_call_outside_it_is_unknown() -> None:
    req = request(tools=["shout", "add"])
    names, out = asyncio.run(
        opened(box(), req, [call("shout", {"text": "a"}), call("multiply", {"a": 1, "b": 2})])
    )
    assert names == ["add", "shout"]
    assert out == ["A!", "Error: unknown tool 'multiply'; available: add, shout"]


def test_unknown_names_are_a_validation_error_before_the_rollout() -> None:
    known = box().known_names()
    assert known == frozenset({"add", "divide", "multiply", "shout", "subtract"})
    body = request().model_dump()
    with pytest.raises(ValueError, match="unknown tool\\(s\\) search; available: add, divide"):
        RolloutRequest.model_validate({**body, "tools": ["add", "search"]}, context={"known_tools": known})
    with pytest.raises(ValueError, match="names a tool twice"):
        RolloutRequest.model_validate({**body, "tools": ["add", "add"]})
    # With a tool server, its names are only known once it is listed.
    with_server = {**body, "tools": ["search"], "tool_server_url": "http://127.0.0.1:1/mcp"}
    assert RolloutRequest.model_validate(with_server, context={"known_tools": known}).tools == ["search"]
    assert box(server_url="http://127.0.0.1:1/mcp").known_names() is None


def test_tool_output_is_capped_with_a_marker() -> None:
    toolbox = box(limits=ToolLimits(timeout=5, max_output_chars=20))
    _, [out] = asyncio.run(opened(toolbox, request(), [call("shout", {"text": "x" * 30})]))
    assert out == "X" * 20 + "\n[truncated: 11 of 31 characters not shown]"


def test_mcp_tools_join_the_local_ones_and_replace_namesakes(mcp_server: Served) -> None:
    url = f"{mcp_server.url}/mcp"
    toolbox = ToolBox(load_tools(("calculator", "tests.user_tools:namesakes"), timeout=10))
    calls = [call("reverse", {"text": "abc"}), call("add", {"a": 2, "b": 2}, "c2")]
    names, out = asyncio.run(opened(toolbox, request(tool_server_url=url), calls))
    assert {"add", "lookup", "reverse", "sleep"} <= set(names)
    assert out == ["cba", "4"]  # the server's reverse, not the local one


def test_narrowing_applies_to_mcp_tools_and_unknown_names_fail_the_start(mcp_server: Served) -> None:
    url = f"{mcp_server.url}/mcp"
    names, out = asyncio.run(opened(box(), request(tool_server_url=url, tools=["lookup"]), []))
    assert names == ["lookup"]
    with pytest.raises(ToolSelectionError, match="unknown tool\\(s\\) search; available: add"):
        asyncio.run(opened(box(), request(tool_server_url=url, tools=["lookup", "search"]), []))


def test_a_server_configured_tool_server_serves_every_rollout(mcp_server: Served) -> None:
    toolbox = box(server_url=f"{mcp_server.url}/mcp")
    names, out = asyncio.run(opened(toolbox, request(), [call("lookup", {"key": "speed of light"})]))
    assert "lookup" in names and "shout" in names
    assert out == ["299792458 m/s"]


def test_a_tool_server_that_cannot_be_listed_fails_the_start() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(ToolServerError, match="is unavailable") as info:
        asyncio.run(opened(box(), request(tool_server_url=url), []))
    assert info.value.category == "tool_error"


def test_every_call_is_observed_and_counted_by_tool() -> None:
    metrics = Metrics()
    seen: list[ToolOutcome] = []

    def observe(outcome: ToolOutcome) -> None:
        seen.append(outcome)
        metrics.observe_tool(
            outcome.tool, source=outcome.source, ok=outcome.ok, seconds=outcome.latency_ms / 1000
        )

    calls = [call("add", {"a": 1, "b": 2}), call("divide", {"a": 1, "b": 0}, "c2"), call("made_up", {}, "c3")]
    asyncio.run(opened(box(observe=observe), request(), calls))
    assert [(o.tool, o.source, o.ok) for o in seen] == [
        ("add", "local", True),
        ("divide", "local", False),
        ("", "", False),
    ]
    text = metrics.render({})
    assert 'tool_calls_total{source="local",tool="add"} 1' in text
    assert 'tool_errors_total{source="local",tool="divide"} 1' in text
    assert 'tool_calls_total{source="none",tool="unknown"} 1' in text
    assert 'tool_duration_seconds_bucket{source="local",tool="add",le="+Inf"} 1' in text
    assert 'tool_duration_seconds_count{source="local",tool="divide"} 1' in text
    assert text.count("# TYPE tool_duration_seconds histogram") == 1


def test_mcp_tool_labels_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_MCP_TOOL_LABELS + 10):
        metrics.observe_tool(f"t{i}", source="mcp", ok=True, seconds=0.001)
    metrics.observe_tool("t0", source="mcp", ok=True, seconds=0.001)
    series = metrics.counters["tool_calls_total"]
    assert len(series) == MAX_MCP_TOOL_LABELS + 1
    assert series[(("source", "mcp"), ("tool", "other"))] == 10
    assert series[(("source", "mcp"), ("tool", "t0"))] == 2


def test_an_empty_tool_set_offers_nothing() -> None:
    tools = ToolSet()
    assert tools.schemas() == []
    [outcome] = asyncio.run(tools.run_calls([call("add", {})]))
    assert outcome.message["content"] == "Error: unknown tool 'add'; available: none"
