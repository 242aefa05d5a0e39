"""Answers broken on the wire: how the simulator delivers a ``WireFault`` (``scenarios.py``).

Each takes the completion the simulator sampled, as JSON bytes, and sends it the way a failing
trainer or network would: stopping mid-body, resetting the connection, trickling it, padding it
to tens of megabytes, or corrupting its UTF-8. They stream through Sanic's ``request.respond``
with the body's length announced, so the client sees a well-formed start and a broken rest.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse

from .scenarios import Route, WireFaultKind

__all__ = ["deliver"]

_DRIP_BYTES = 64
_HUGE_CHUNK = 1 << 20
# Long enough to outlast any client timeout; the handler is cancelled when the client goes.
_FOREVER_S = 3600.0

Sender = Callable[[Request[Any, Any], Route, bytes], Awaitable[None]]


async def _start(request: Request[Any, Any], length: int) -> HTTPResponse:
    response: HTTPResponse | None = await request.respond(
        status=200, headers={"content-length": str(length)}, content_type="application/json"
    )
    assert response is not None  # None only when a response was already sent
    return response


async def _hang(request: Request[Any, Any], route: Route, body: bytes) -> None:
    response = await _start(request, len(body))
    await response.send(body[: len(body) // 2])
    await asyncio.sleep(_FOREVER_S)


async def _reset(request: Request[Any, Any], route: Route, body: bytes) -> None:
    response = await _start(request, len(body))
    await response.send(body[: len(body) // 2])
    sock = request.transport.get_extra_info("socket")
    # Linger on, timeout 0: closing sends a TCP RST instead of a FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.close()
    await asyncio.sleep(_FOREVER_S)


async def _drip(request: Request[Any, Any], route: Route, body: bytes) -> None:
    pause = route.int_option("ms", 100) / 1000
    response = await _start(request, len(body))
    for at in range(0, len(body), _DRIP_BYTES):
        await asyncio.sleep(pause)
        await response.send(body[at : at + _DRIP_BYTES], end_stream=at + _DRIP_BYTES >= len(body))


async def _huge(request: Request[Any, Any], route: Route, body: bytes) -> None:
    # A valid completion with one more field (ignored by a lenient parser) that makes it huge.
    head = body[:-1] + b', "padding": "'
    tail = b'"}'
    pad = max(0, route.int_option("mb", 50) * 2**20 - len(head) - len(tail))
    response = await _start(request, len(head) + pad + len(tail))
    await response.send(head)
    chunk = b"x" * _HUGE_CHUNK
    for _ in range(pad // _HUGE_CHUNK):
        await response.send(chunk)
    await response.send(b"x" * (pad % _HUGE_CHUNK) + tail, end_stream=True)


async def _badutf8(request: Request[Any, Any], route: Route, body: bytes) -> None:
    # Inside the completion's id: valid JSON structure, bytes that are no UTF-8 at all.
    broken = body.replace(b'"chatcmpl-sim-', b'"chatcmpl-sim-\xff\xfe\xc0-', 1)
    response = await _start(request, len(broken))
    await response.send(broken, end_stream=True)


_SENDERS: dict[WireFaultKind, Sender] = {
    "hang": _hang,
    "reset": _reset,
    "drip": _drip,
    "huge": _huge,
    "badutf8": _badutf8,
}


async def deliver(request: Request[Any, Any], route: Route, kind: WireFaultKind, body: bytes) -> None:
    """Send ``body`` (a completion's JSON) broken as ``kind`` says, through ``request.respond``:
    the route handler then returns None (the response is already under way)."""
    await _SENDERS[kind](request, route, body)
