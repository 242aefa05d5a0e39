"""The tools of a rollout: ``ToolBox`` (one per Sanic worker) opens a ``ToolSet`` per rollout.

A rollout is offered the server's own tools (``TOOLS``, the calculator by default) and, when it
names a tool server (``tool_server_url``, or the server's ``TOOL_SERVER_URL``), that MCP
server's tools; a server tool of the same name as a local one replaces it, since the rollout
asked for that environment. ``RolloutRequest.tools`` narrows the set, never widens it.

A tool server that cannot be listed when the rollout starts fails the rollout (``tool_error``)
before its first trainer call: running on without it would train on another task than the
trainer asked for, and only a field of the response would say so. Once listed, a failing
server only fails the calls it answers (``Error: …`` tool messages).

Every tool message is at most ``max_output_chars`` characters plus a visible marker (the token
cap, ``max_output_tokens``, is the agent loop's: ``tokenize_pool/tool_cap.py``), and every call
is counted (``observe``) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from rollout_server.errors import ToolSelectionError
from rollout_server.mcp_tools import McpLimits, McpPool, McpSession
from rollout_server.protocol import RolloutRequest
from rollout_server.tools import Tool, ToolOutcome, ToolRegistry

__all__ = ["ToolBox", "ToolLimits", "ToolSet", "cap_output"]

logger = logging.getLogger(__name__)

ToolObserver = Callable[[ToolOutcome], None]


@dataclass(frozen=True, kw_only=True)
class ToolLimits:
    """Every call's ``timeout`` (seconds) and the length caps of a tool message: characters
    (``ToolSet`` applies it) and tokens of the rollout's tokenizer (0: none; the agent loop
    applies it, since counting needs the tokenize pool)."""

    timeout: float = 30.0
    max_output_chars: int = 16384
    max_output_tokens: int = 0


def cap_output(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} of {len(text)} characters not shown]"


class ToolSet(ToolRegistry):
    """One rollout's tools: the schemas offered to the model (``schemas()``), and the calls it
    makes (``run_calls``: each message capped, observed and logged)."""

    def __init__(
        self,
        tools: Mapping[str, Tool] | None = None,
        *,
        limits: ToolLimits | None = None,
        observe: ToolObserver | None = None,
        rollout_id: str = "",
    ) -> None:
        self.limits = limits or ToolLimits()
        super().__init__(timeout=self.limits.timeout)
        self._tools = dict(tools or {})
        self._observe = observe
        self._rollout_id = rollout_id

    async def run_calls(self, calls: Sequence[Mapping[str, Any]]) -> list[ToolOutcome]:
        """Every call's outcome, in order; parallel calls run concurrently."""
        return [self._finish(outcome) for outcome in await super().run_calls(calls)]

    def _finish(self, outcome: ToolOutcome) -> ToolOutcome:
        content = outcome.message["content"]
        capped = cap_output(content, self.limits.max_output_chars)
        if capped is not content:
            outcome = replace(outcome, message={**outcome.message, "content": capped})
        if self._observe is not None:
            self._observe(outcome)
        extra = {"rollout_id": self._rollout_id}
        if outcome.ok:
            logger.debug("tool %r answered in %.1f ms", outcome.tool, outcome.latency_ms, extra=extra)
        else:
            logger.info(
                "tool %r failed in %.1f ms: %.200s",
                outcome.tool or "(unknown)",
                outcome.latency_ms,
                content,
                extra=extra,
            )
        return outcome


class ToolBox:
    """The worker's tools: ``registry`` (the configured ones) and MCP servers through a pool."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        limits: ToolLimits | None = None,
        mcp: McpLimits | None = None,
        server_url: str = "",
        observe: ToolObserver | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or ToolLimits(timeout=registry.timeout)
        self.pool = McpPool(mcp or McpLimits(timeout=self.limits.timeout))
        self.server_url = server_url
        self._observe = observe

    def known_names(self) -> frozenset[str] | None:
        """The names a request may narrow to, when known before any listing: None when the
        server's own tool server may add names."""
        return None if self.server_url else frozenset(self.registry.tools)

    @asynccontextmanager
    async def open(self, request: RolloutRequest) -> AsyncIterator[ToolSet]:
        """The rollout's tools, for the length of the ``async with``; raises ``ToolServerError``
        when its tool server cannot be listed, ``ToolSelectionError`` for unknown names."""
        # A request's tool_server_url has passed TRAINER_URL_ALLOWLIST in the route (a 403 otherwise).
        url = request.tool_server_url or self.server_url
        session: McpSession | None = await self.pool.acquire(url) if url else None
        try:
            tools = dict(self.registry.tools)
            if session is not None:
                tools.update((tool.name, tool) for tool in session.tools())
            if request.tools is not None:
                unknown = [name for name in request.tools if name not in tools]
                if unknown:
                    raise ToolSelectionError(
                        f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(sorted(tools))}"
                    )
                tools = {name: tools[name] for name in request.tools}
            yield ToolSet(tools, limits=self.limits, observe=self._observe, rollout_id=request.rollout_id)
        finally:
            if session is not None:
                self.pool.release(session)

    def stats(self) -> dict[str, Any]:
        """For /health: the server's own tools and its tool server."""
        return {
            "names": self.registry.names,
            "tool_server_url": self.server_url or None,
            "tool_server_sessions_idle": self.pool.idle,
        }

    async def aclose(self) -> None:
        await self.pool.aclose()
