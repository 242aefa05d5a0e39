"""End to end: a rollout uses a user tool loaded from TOOLS and the tools of a real MCP server,
with exact masks on the strict trainer simulator, on several template families."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Proc, Served, free_port
from tests.rollout_server.test_rollout_e2e import (  # noqa: F401 (an autouse fixture)
    QWEN3,
    QWEN25,
    QWEN35,
    _use_session_codecs,
    assert_trained_sequence_exact,
    body,
    post_rollout,
    scenario_url,
)

# What the toolbox scenario's five calls answer (rollout_server/sim/scenarios.py).
TOOLBOX_ANSWERS = [
    "4",
    "Paris",
    "siraP",
    "Error executing tool fail: the sandbox is gone",
    "[image: image/png, 68 bytes]",
]


@pytest.fixture(scope="module")
def tools_server(start_server: Callable[..., Proc]) -> Proc:
    """The calculator and a user tool from tests/user_tools.py."""
    return start_server(TOOLS="calculator,tests.user_tools:word_count", TOOL_TIMEOUT_SECONDS="3")


@pytest.mark.parametrize(
    ("tokenizer", "spec"),
    [
        (QWEN3, "toolbox"),
        (QWEN3, "toolbox/think=1"),
        (QWEN25, "toolbox/tok=Qwen--Qwen2.5-7B-Instruct"),
        (QWEN35, "toolbox/think=1/tok=Qwen--Qwen3.5-9B"),
    ],
)
def test_user_and_mcp_tools_in_one_rollout_are_exact(
    tools_server: Proc, sim: Proc, mcp_server: Served, tokenizer: str, spec: str
) -> None:
    payload = body(scenario_url(sim, spec), tokenizer_name=tokenizer, tool_server_url=f"{mcp_server.url}/mcp")
    result = post_rollout(tools_server, payload)
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop"), result["error_message"]
    tools = [m for m in result["final_messages"] if m["role"] == "tool"]
    assert [t["content"] for t in tools] == TOOLBOX_ANSWERS
    assert result["metrics"]["num_tool_calls"] == 5 and result["metrics"]["num_llm_calls"] == 3
    assert_trained_sequence_exact(sim, result, tokenizer)


@pytest.mark.parametrize(
    ("tokenizer", "spec"),
    [(QWEN3, "toolfail"), (QWEN25, "toolfail/tok=Qwen--Qwen2.5-7B-Instruct")],
)
def test_mcp_server_failures_end_as_tool_messages(
    tools_server: Proc, sim: Proc, start_mcp: Callable[[], Proc], tokenizer: str, spec: str
) -> None:
    """Slow (past TOOL_TIMEOUT_SECONDS), failing, given bad arguments, then dead: each call ends
    as an ``Error…`` tool message and the rollout completes with exact masks."""
    private = start_mcp()  # its crash tool ends it
    url = f"{private.url}/mcp"
    result = post_rollout(
        tools_server, body(scenario_url(sim, spec), tokenizer_name=tokenizer, tool_server_url=url)
    )
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop"), result["error_message"]
    contents = [m["content"] for m in result["final_messages"] if m["role"] == "tool"]
    assert contents[0] == "Error: tool 'sleep' did not finish within 3 s"
    assert contents[1] == "Error executing tool lookup: no fact for 'nothing'"
    assert contents[2].startswith("Error executing tool reverse") and "valid string" in contents[2]
    assert contents[3].startswith(f"Error: tool server {url} is unavailable")
    assert contents[4].startswith(f"Error: tool server {url} is unavailable")
    assert len(contents) == 5
    assert_trained_sequence_exact(sim, result, tokenizer)


def test_per_tool_metrics(tools_server: Proc, sim: Proc, mcp_server: Served) -> None:
    payload = body(scenario_url(sim, "toolbox"), tool_server_url=f"{mcp_server.url}/mcp")
    assert post_rollout(tools_server, payload)["status"] == "COMPLETED"
    text = httpx.get(f"{tools_server.url}/metrics", timeout=10).text
    counters = dict(re.findall(r"^(tool_(?:calls|errors)_total\{[^}]*\}) (\S+)$", text, flags=re.MULTILINE))
    assert float(counters['tool_calls_total{source="local",tool="word_count"}']) >= 1
    assert float(counters['tool_calls_total{source="mcp",tool="lookup"}']) >= 1
    assert float(counters['tool_errors_total{source="mcp",tool="fail"}']) >= 1
    assert 'tool_duration_seconds_count{source="mcp",tool="picture"}' in text
    assert re.search(r"^tool_server_sessions_idle [1-9]", text, flags=re.MULTILINE)  # kept for reuse
    health = httpx.get(f"{tools_server.url}/health", timeout=10).json()
    assert health["tools"]["names"] == ["add", "divide", "multiply", "subtract", "word_count"]
    assert health["tools"]["tool_server_url"] is None


def test_a_request_may_narrow_the_tools(tools_server: Proc, sim: Proc, mcp_server: Served) -> None:
    payload = body(
        scenario_url(sim, "toolbox"), tool_server_url=f"{mcp_server.url}/mcp", tools=["lookup", "reverse"]
    )
    result = post_rollout(tools_server, payload)
    assert result["status"] == "COMPLETED"
    contents = [m["content"] for m in result["final_messages"] if m["role"] == "tool"]
    assert contents[1:3] == ["Paris", "siraP"]
    assert contents[0].startswith("Error: unknown tool 'word_count'; available: lookup, reverse")
    assert_trained_sequence_exact(sim, result)


def test_unknown_tool_names_get_422(tools_server: Proc, sim: Proc) -> None:
    response = httpx.post(
        f"{tools_server.url}/rollout",
        json=body(scenario_url(sim, "one"), tools=["add", "search"]),
        timeout=10,
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert [f["field"] for f in error["fields"]] == ["tools"]
    assert (
        "unknown tool(s) search; available: add, divide, multiply, subtract, word_count" in error["message"]
    )


def test_a_tool_server_that_is_down_fails_the_rollout_before_the_trainer_is_called(
    tools_server: Proc, sim: Proc
) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    result = post_rollout(tools_server, body(scenario_url(sim, "toolbox"), tool_server_url=url))
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "tool_error"
    assert f"tool server {url} is unavailable" in result["error_message"]
    assert result["metrics"]["num_llm_calls"] == 0
    assert httpx.get(f"{sim.url}/sim/rollouts/{result['rollout_id']}", timeout=10).status_code == 404


def test_a_tool_server_gone_between_rollouts_fails_the_next_start(
    tools_server: Proc, sim: Proc, start_mcp: Callable[[], Proc]
) -> None:
    """The first rollout's session waits in the pool; the second finds it dead when it lists the
    tools again, and no new one can be opened. (A server dying in the middle of a rollout is
    tests/rollout_server/test_mcp_tools.py's: its calls end as ``Error: …`` tool messages.)"""
    private = start_mcp()
    payload = body(scenario_url(sim, "toolbox"), tool_server_url=f"{private.url}/mcp")
    assert post_rollout(tools_server, payload)["status"] == "COMPLETED"
    private.stop()
    result = post_rollout(tools_server, {**payload, "rollout_id": payload["rollout_id"] + "-2"})
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "tool_error"
    assert result["metrics"]["num_llm_calls"] == 0
