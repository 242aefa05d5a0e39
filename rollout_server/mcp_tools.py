"""MCP tool servers over Streamable HTTP (the official ``mcp`` SDK), with a bounded session pool.

A rollout that names a tool server holds one session of it for its whole run (its calls share
it, concurrently); at the end the session goes back to the pool, and a later rollout of the same
URL takes it instead of opening a new one. A session taken from the pool lists its tools again
before it is used: that one round trip checks it is alive and picks up a changed tool list.

The SDK's sessions live in anyio task groups, which must be left by the task that entered them;
each session is therefore owned by a task of its own (``_own``), and calls reach it from the
rollouts' tasks. Foreign errors are translated here: a failed listing becomes
``ToolServerError`` (the rollout's), a failed call ``ToolFailure`` (the tool message's).

The SDK is imported by the functions that use it, on a rollout's first tool server: most servers
never name one, and importing it at start-up would cost every Sanic worker tens of MB. The first
session imports it on a thread, so that a second of imports does not stall the worker's loop.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rollout_server.errors import ToolServerError
from rollout_server.tools import Tool, ToolFailure

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult
    from mcp.types import Tool as McpTool

__all__ = ["McpLimits", "McpPool", "McpSession", "result_text"]

logger = logging.getLogger(__name__)

_MAX_PAGES = 100
_sdk_imported = False


@dataclass(frozen=True, kw_only=True)
class McpLimits:
    """``timeout`` bounds opening a session (connect, handshake, listing) and each call;
    ``pool_size`` is how many idle sessions are kept over all URLs (0: a new one per rollout)."""

    timeout: float = 30.0
    pool_size: int = 32


def _size(data: str) -> int:
    """Bytes encoded by base64 ``data``."""
    return len(data) * 3 // 4 - data[-2:].count("=")


def result_text(result: CallToolResult) -> str:
    """The tool message's text: text content as it is, other content summarised in brackets;
    a result flagged ``isError`` raises ``ToolFailure`` with that text."""
    from mcp.types import (
        AudioContent,
        EmbeddedResource,
        ImageContent,
        ResourceLink,
        TextContent,
        TextResourceContents,
    )

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent | AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {_size(block.data)} bytes]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(
                    f"[resource: {resource.uri}, {resource.mime_type}, {_size(resource.blob)} bytes]"
                )
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource link: {block.uri} ({block.name})]")
        else:
            parts.append(f"[{getattr(block, 'type', type(block).__name__)} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if result.is_error:
        raise ToolFailure(text or "the tool reported an error")
    return text


def _schema(tool: McpTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "description": tool.description or ""}
    function["parameters"] = tool.input_schema or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


class McpSession:
    """One session with one MCP server, owned by a task of its own; open with ``McpSession.open``."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.listed: list[McpTool] = []
        self.broken = False
        self._client: Client | None = None
        self._closing = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, timeout: float) -> McpSession:
        """A session whose tools are listed; raises ``ToolServerError`` when the server cannot be
        reached, answers something else than MCP, or takes longer than ``timeout``."""
        await _import_sdk()
        session = cls(url, timeout)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session._owner = asyncio.create_task(session._own(ready), name=f"mcp-session {url}")
        try:
            async with asyncio.timeout(timeout):
                await ready
            await session.refresh()
        except BaseException as exc:
            await session.close()
            if isinstance(exc, TimeoutError):
                raise ToolServerError(f"tool server {url} did not answer within {timeout:g} s") from None
            if isinstance(exc, ToolServerError | asyncio.CancelledError):
                raise
            raise ToolServerError(f"tool server {url} is unavailable ({_reason(exc)})") from None
        return session

    async def _own(self, ready: asyncio.Future[None]) -> None:
        from mcp import Client

        try:
            async with Client(self.url, read_timeout_seconds=self.timeout, cache=None) as client:
                self._client = client
                ready.set_result(None)
                await self._closing.wait()
        except BaseException as exc:  # anyio wraps transport failures in exception groups
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("session ended"))
            elif not isinstance(exc, asyncio.CancelledError):
                logger.info("MCP session with %s ended: %s", self.url, _reason(exc))
        finally:
            self.broken = True
            self._client = None

    async def refresh(self) -> None:
        """List the server's tools again (every page); raises ``ToolServerError`` on failure."""
        client = self._client
        if client is None:
            raise ToolServerError(f"tool server {self.url}: the session has ended")
        tools: list[McpTool] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                for _ in range(_MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            self.broken = True
            raise ToolServerError(
                f"tool server {self.url} did not list its tools within {self.timeout:g} s"
            ) from None
        except Exception as exc:
            self.broken = True
            raise ToolServerError(
                f"tool server {self.url} could not list its tools ({_reason(exc)})"
            ) from None
        self.listed = tools

    def tools(self) -> list[Tool]:
        """The listed tools, each calling this session."""
        return [Tool(t.name, _schema(t), self._caller(t.name), "async", "mcp") for t in self.listed]

    def _caller(self, name: str) -> Any:
        async def call(arguments: dict[str, Any]) -> str:
            return await self.call(name, arguments)

        return call

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The tool's answer as text; every failure is a ``ToolFailure`` the model may read."""
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED

        client = self._client
        if client is None:
            raise ToolFailure(f"tool server {self.url} is unavailable (the session has ended)")
        try:
            result = await client.call_tool(name, arguments, read_timeout_seconds=self.timeout)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self.broken = True
                raise ToolFailure(f"tool server {self.url} is unavailable (connection closed)") from None
            raise ToolFailure(f"tool {name!r} failed on the tool server ({exc})") from None
        except ValidationError:
            raise ToolFailure(f"tool {name!r}: the tool server sent a malformed result") from None
        except Exception as exc:
            self.broken = True
            raise ToolFailure(f"tool server {self.url} is unavailable ({_reason(exc)})") from None
        return result_text(result)

    async def close(self) -> None:
        self.broken = True
        self._closing.set()
        owner = self._owner
        if owner is not None and not owner.done():
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(owner)
            except TimeoutError:
                owner.cancel()


async def _import_sdk() -> None:
    global _sdk_imported
    if not _sdk_imported:
        await asyncio.to_thread(importlib.import_module, "mcp")
        _sdk_imported = True


def _reason(exc: BaseException) -> str:
    """The innermost useful error of an anyio exception group, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class McpPool:
    """Idle sessions by URL, at most ``limits.pool_size`` over all URLs (the oldest closed first)."""

    def __init__(self, limits: McpLimits) -> None:
        self.limits = limits
        self._idle: OrderedDict[int, McpSession] = OrderedDict()
        self._closers: set[asyncio.Task[None]] = set()

    async def acquire(self, url: str) -> McpSession:
        """A live session of ``url`` with its tools listed: a pooled one if it still answers."""
        while (session := self._take(url)) is not None:
            try:
                await session.refresh()
                return session
            except ToolServerError as exc:
                logger.info("dropping a pooled MCP session: %s", exc)
                await session.close()
        return await McpSession.open(url, self.limits.timeout)

    def _take(self, url: str) -> McpSession | None:
        for key, session in reversed(self._idle.items()):
            if session.url == url:
                del self._idle[key]
                return session
        return None

    def release(self, session: McpSession) -> None:
        """Back to the pool if it is healthy and there is room; otherwise closed in the background."""
        if session.broken or self.limits.pool_size == 0:
            self._close_later(session)
            return
        self._idle[id(session)] = session
        while len(self._idle) > self.limits.pool_size:
            _, oldest = self._idle.popitem(last=False)
            self._close_later(oldest)

    def _close_later(self, session: McpSession) -> None:
        session.broken = True
        task = asyncio.create_task(session.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def aclose(self) -> None:
        sessions = list(self._idle.values())
        self._idle.clear()
        await asyncio.gather(*(s.close() for s in sessions), *self._closers, return_exceptions=True)
