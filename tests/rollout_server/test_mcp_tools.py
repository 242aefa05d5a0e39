"""MCP tool servers against the simulator's real MCPServer: listing, calls, failures, the session pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from rollout_server.errors import ToolServerError
from rollout_server.mcp_tools import McpLimits, McpPool, McpSession, result_text
from rollout_server.tools import ToolFailure, ToolOutcome, run_tool_calls
from tests.conftest import Proc, Served, free_port


def endpoint(proc: Proc | Served) -> str:
    return f"{proc.url}/mcp"


def call(name: str, arguments: Any, call_id: str = "c1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


async def run_on(session: McpSession, calls: list[dict[str, Any]], timeout: float = 10) -> list[ToolOutcome]:
    return await run_tool_calls(calls, {t.name: t for t in session.tools()}, timeout=timeout)


def test_listing_offers_the_servers_tools_with_their_schemas(mcp_server: Served) -> None:
    async def main() -> list[dict[str, Any]]:
        session = await McpSession.open(endpoint(mcp_server), timeout=10)
        try:
            return [t.schema for t in session.tools()]
        finally:
            await session.close()

    schemas = {s["function"]["name"]: s for s in asyncio.run(main())}
    assert sorted(schemas) == ["crash", "fail", "lookup", "picture", "repeat", "reverse", "sleep"]
    lookup = schemas["lookup"]
    assert lookup["type"] == "function"
    assert lookup["function"]["description"].startswith("Look a fact up")
    assert lookup["function"]["parameters"]["properties"]["key"]["type"] == "string"
    assert lookup["function"]["parameters"]["required"] == ["key"]


def test_calls_and_their_failures_become_tool_messages(mcp_server: Served) -> None:
    calls = [
        call("lookup", {"key": "capital of france"}, "c1"),
        call("reverse", '{"text": "abc"}', "c2"),
        call("fail", {"message": "the sandbox is gone"}, "c3"),
        call("picture", {}, "c4"),
        call("lookup", {"key": "nothing"}, "c5"),
        call("reverse", {"text": 5}, "c6"),
        call("nosuch", {}, "c7"),
    ]

    async def main() -> list[ToolOutcome]:
        session = await McpSession.open(endpoint(mcp_server), timeout=10)
        try:
            return await run_on(session, calls)
        finally:
            await session.close()

    outcomes = asyncio.run(main())
    assert [o.message["tool_call_id"] for o in outcomes] == [f"c{i}" for i in range(1, 8)]
    text = [o.message["content"] for o in outcomes]
    assert text[:2] == ["Paris", "cba"]
    assert text[2] == "Error executing tool fail: the sandbox is gone"  # the server's wording
    assert text[3] == "[image: image/png, 68 bytes]"
    assert text[4] == "Error executing tool lookup: no fact for 'nothing'"
    assert text[5].startswith("Error") and "valid string" in text[5]
    assert text[6].startswith("Error: unknown tool 'nosuch'; available: crash, fail, lookup")
    assert [o.ok for o in outcomes] == [True, True, False, True, False, False, False]
    assert {o.source for o in outcomes[:6]} == {"mcp"} and outcomes[6].source == ""


def test_a_slow_tool_ends_in_an_error_message_and_the_session_goes_on(mcp_server: Served) -> None:
    async def main() -> list[ToolOutcome]:
        session = await McpSession.open(endpoint(mcp_server), timeout=10)
        try:
            slow = await run_on(session, [call("sleep", {"seconds": 30})], timeout=0.1)
            after = await run_on(session, [call("reverse", {"text": "ok"})])
            return slow + after
        finally:
            await session.close()

    slow, after = asyncio.run(main())
    assert slow.ok is False
    assert slow.message["content"] == "Error: tool 'sleep' did not finish within 0.1 s"
    assert after.message["content"] == "ko"


def test_a_server_that_is_down_fails_the_listing() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(ToolServerError, match=f"tool server {url} is unavailable"):
        asyncio.run(McpSession.open(url, timeout=10))


def test_a_url_that_is_not_mcp_fails_the_listing(mcp_server: Served) -> None:
    with pytest.raises(ToolServerError, match="is unavailable"):
        asyncio.run(McpSession.open(f"{mcp_server.url}/health", timeout=10))


@pytest.mark.slow  # starts a tool server of its own
def test_a_server_that_dies_mid_rollout_fails_only_the_calls(start_mcp: Callable[[], Proc]) -> None:
    private = start_mcp()

    async def main() -> tuple[list[ToolOutcome], bool]:
        pool = McpPool(McpLimits(timeout=5))
        session = await pool.acquire(endpoint(private))
        before = await run_on(session, [call("reverse", {"text": "up"})])
        private.stop()
        after = await run_on(session, [call("reverse", {"text": "down"}), call("lookup", {"key": "x"}, "c2")])
        pool.release(session)
        broken = session.broken and pool.idle == 0
        await pool.aclose()
        return before + after, broken

    outcomes, broken = asyncio.run(main())
    assert outcomes[0].message["content"] == "pu"
    for outcome in outcomes[1:]:
        assert outcome.ok is False
        assert outcome.message["content"].startswith("Error: ")
    assert broken  # a broken session is not pooled


@pytest.mark.slow  # starts a tool server of its own
def test_sessions_are_pooled_and_bounded(mcp_server: Served, start_mcp: Callable[[], Proc]) -> None:
    other = start_mcp()

    async def main() -> None:
        pool = McpPool(McpLimits(timeout=10, pool_size=1))
        first = await pool.acquire(endpoint(mcp_server))
        pool.release(first)
        again = await pool.acquire(endpoint(mcp_server))
        assert again is first  # reused, its tools listed again
        both = await asyncio.gather(pool.acquire(endpoint(mcp_server)), pool.acquire(endpoint(other)))
        assert first not in both
        pool.release(again)
        for session in both:
            pool.release(session)
        assert pool.idle == 1  # the bound: the older idle sessions were closed
        assert again.broken and both[0].broken and not both[1].broken
        await pool.aclose()
        assert both[1].broken

    asyncio.run(main())


def test_a_pool_of_size_zero_opens_a_session_per_rollout(mcp_server: Served) -> None:
    async def main() -> None:
        pool = McpPool(McpLimits(timeout=10, pool_size=0))
        first = await pool.acquire(endpoint(mcp_server))
        pool.release(first)
        second = await pool.acquire(endpoint(mcp_server))
        assert second is not first and pool.idle == 0
        pool.release(second)
        await pool.aclose()

    asyncio.run(main())


@pytest.mark.slow  # starts a tool server of its own
def test_a_pooled_session_of_a_server_that_went_away_is_dropped(start_mcp: Callable[[], Proc]) -> None:
    first_server = start_mcp()

    async def main() -> None:
        pool = McpPool(McpLimits(timeout=5))
        stale = await pool.acquire(endpoint(first_server))
        pool.release(stale)
        first_server.stop()
        with pytest.raises(ToolServerError):
            await pool.acquire(endpoint(first_server))
        assert pool.idle == 0 and stale.broken
        await pool.aclose()

    asyncio.run(main())


def _result(*content: Any, is_error: bool = False, structured: Any = None) -> CallToolResult:
    return CallToolResult(content=list(content), is_error=is_error, structured_content=structured)


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (_result(TextContent(text="a"), TextContent(text="b")), "a\nb"),
        (_result(ImageContent(data="AAAA", mime_type="image/png")), "[image: image/png, 3 bytes]"),
        (_result(AudioContent(data="AAA=", mime_type="audio/wav")), "[audio: audio/wav, 2 bytes]"),
        (
            _result(EmbeddedResource(resource=TextResourceContents(uri="file:///a.txt", text="inside"))),
            "inside",
        ),
        (
            _result(
                EmbeddedResource(
                    resource=BlobResourceContents(uri="file:///a.bin", blob="AAAAAAAA", mime_type="x/y")
                )
            ),
            "[resource: file:///a.bin, x/y, 6 bytes]",
        ),
        (_result(ResourceLink(uri="file:///b", name="b")), "[resource link: file:///b (b)]"),
        (_result(structured={"answer": 42}), '{"answer": 42}'),
        (_result(), ""),
    ],
)
def test_result_text(result: CallToolResult, text: str) -> None:
    assert result_text(result) == text


def test_an_error_result_raises_its_text() -> None:
    with pytest.raises(ToolFailure, match="^bad$"):
        result_text(_result(TextContent(text="bad"), is_error=True))
    with pytest.raises(ToolFailure, match="reported an error"):
        result_text(_result(is_error=True))
