"""A small MCP tool server (the SDK's ``MCPServer``, formerly FastMCP) for the tests and the demo.

Streamable HTTP at ``/mcp``, plus ``GET /health``. Its tools are deterministic, and a few of them
misbehave on purpose so that a client's failure handling can be exercised against a real server:

    lookup(key)        a fact from a small table (an unknown key is a tool error)
    reverse(text)      the text reversed
    sleep(seconds)     answers after ``seconds``: a slow tool
    fail(message)      always raises: the result comes back with ``isError``
    picture()          an image: content that is not text
    repeat(text, n)    ``text`` repeated ``n`` times: a long result
    crash()            ends the server's process before it answers: a server that dies

Run: ``python -m rollout_server.sim.mcp_server --port 8765`` (or ``rollout-mcp-sim``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["FACTS", "build_server", "main"]

FACTS = {
    "capital of france": "Paris",
    "speed of light": "299792458 m/s",
    "boiling point of water": "100 degrees Celsius at sea level",
}
# A 1x1 transparent PNG.
_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def build_server() -> MCPServer:
    """The server with its tools registered; not yet listening."""
    server = MCPServer("rollout-sim-tools")

    @server.tool()
    def lookup(key: str) -> str:
        """Look a fact up by its key, e.g. "capital of france"."""
        fact = FACTS.get(key.strip().lower())
        if fact is None:
            raise ToolError(f"no fact for {key!r}")
        return fact

    @server.tool()
    def reverse(text: str) -> str:
        """Reverse a text."""
        return text[::-1]

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Wait for some seconds, then say so."""
        await asyncio.sleep(seconds)
        return f"slept {seconds:g} s"

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with the given message."""
        raise ToolError(message)

    @server.tool()
    def picture() -> Image:
        """A tiny picture."""
        return Image(data=_PIXEL, format="png")

    @server.tool()
    def repeat(text: str, n: int) -> str:
        """The text repeated n times."""
        return text * n

    @server.tool()
    def crash() -> str:
        """End the tool server at once, without an answer."""
        os._exit(3)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    server.custom_route("/health", methods=["GET"])(health)

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rollout-mcp-sim", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    build_server().run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
