"""Framing over the server's Unix sockets (clients <-> pool host, pool <-> each worker, Sanic
workers <-> the retry ledger), and the ``Channel`` that multiplexes calls on one such connection.

A frame is ``length:u32 | request_id:u64 | kind:u8 | payload``, big-endian, where ``length``
counts everything after itself. Requests: kind 0 runs ``payload`` in a worker, kind 1 asks the
host for its stats, kind 3 runs ``payload`` ahead of kind-0 requests still waiting for a worker
(``WorkerPool.call(urgent=True)``), kind 4 (no payload) makes the kind-0 request with its id
urgent. Answers: kind 0 is a worker's answer, kind 1 the host's stats, kind 2 an error raised
by the host itself (pickled).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from tokenize_pool.ops import Promotion

__all__ = [
    "KIND_ERROR",
    "KIND_PROMOTE",
    "KIND_STATS",
    "KIND_TASK",
    "KIND_URGENT",
    "Channel",
    "Redial",
    "FRAME_HEADER",
    "frame",
    "hang_up",
    "read_frame",
    "read_header",
    "read_frame_from",
    "write_frame",
]

KIND_TASK = 0
KIND_STATS = 1
KIND_ERROR = 2
KIND_URGENT = 3
KIND_PROMOTE = 4

_HEADER = struct.Struct(">IQB")
_LENGTH = struct.Struct(">I")
FRAME_HEADER = _HEADER.size  # 13: the payload starts there


def frame(request_id: int, kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload) + 9, request_id, kind) + payload


def write_frame(writer: asyncio.StreamWriter, request_id: int, kind: int, payload: bytes) -> None:
    writer.write(frame(request_id, kind, payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    (length,) = _LENGTH.unpack(await reader.readexactly(4))
    body = await reader.readexactly(length)
    request_id, kind = struct.unpack_from(">QB", body)
    return request_id, kind, body[9:]


def read_header(buffer: bytes | bytearray, offset: int) -> tuple[int, int, int]:
    """``(length, request_id, kind)`` of the frame at ``offset``, whose header is in ``buffer``."""
    return _HEADER.unpack_from(buffer, offset)


def read_frame_from(stream: BinaryIO) -> tuple[int, int, bytes] | None:
    """Blocking ``read_frame`` for a worker's socket file; None at end of stream."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (length,) = _LENGTH.unpack(head)
    body = stream.read(length)
    if len(body) < length:
        return None
    request_id, kind = struct.unpack_from(">QB", body)
    return request_id, kind, body[9:]


def hang_up(transport: asyncio.BaseTransport) -> None:
    """Shut a Unix stream connection down and close it, so that the peer sees end of stream even
    if this event loop does not run again (shutdown)."""
    transport_socket = transport.get_extra_info("socket")
    if transport_socket is not None:
        # Event loops' socket wrappers refuse shutdown(); a duplicate of the descriptor
        # reaches the same socket.
        with contextlib.suppress(OSError):
            dup = socket.fromfd(transport_socket.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
            with dup:
                dup.shutdown(socket.SHUT_RDWR)
    transport.close()


class Channel:
    """Calls multiplexed on one stream connection: each request goes out as a frame with a fresh
    id and its answer comes back by that id, in any order. When the connection ends, every call
    still waiting fails with ``lost()`` and ``closed`` is done."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, lost: Callable[[], Exception]
    ) -> None:
        self.writer = writer
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost = lost
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read(reader))

    @property
    def open(self) -> bool:
        return not self.closed.done() and not self.writer.is_closing()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                request_id, kind, payload = await read_frame(reader)
                future = self.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writer.close()
            pending, self.pending = self.pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(self._lost())
            if not self.closed.done():
                self.closed.set_result(None)

    async def call(
        self, kind: int, payload: bytes, *, promotion: Promotion | None = None
    ) -> tuple[int, bytes]:
        """One request and its answer; when ``promotion`` is promoted before the answer, the peer
        is told that the request became urgent (a ``KIND_PROMOTE`` frame with its id)."""
        if self.closed.done():  # nothing would answer
            raise self._lost()
        request_id = next(self._ids)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            write_frame(self.writer, request_id, kind, payload)
            if promotion is not None:
                promotion.when_promoted(lambda: self._promote(request_id))
            return await future
        finally:
            self.pending.pop(request_id, None)

    def _promote(self, request_id: int) -> None:
        if request_id in self.pending and not self.writer.is_closing():
            write_frame(self.writer, request_id, KIND_PROMOTE, b"")

    def hang_up(self) -> None:
        """End the connection now, so that the peer sees end of stream even if this event loop
        does not run again (shutdown)."""
        hang_up(self.writer.transport)

    async def aclose(self) -> None:
        self.writer.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Redial:
    """A ``Channel`` to the Unix socket at ``path``, opened at first use and again once lost.

    Opening retries while the server starts (its socket missing or refusing) for
    ``connect_timeout`` seconds, then raises the last ``OSError``."""

    def __init__(
        self, path: str, *, connect_timeout: float, lost: Callable[[], Exception], limit: int = 2**16
    ) -> None:
        self.path = path
        self.connect_timeout = connect_timeout
        self._lost = lost
        self._limit = limit
        self.channel: Channel | None = None  # the current one, if any: None until first used
        self._lock = asyncio.Lock()

    async def open(self) -> Channel:
        channel = self.channel
        if channel is not None and channel.open:
            return channel
        async with self._lock:
            if self.channel is None or not self.channel.open:
                self.channel = await self._dial()
            return self.channel

    async def _dial(self) -> Channel:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=self._limit)
                return Channel(reader, writer, lost=self._lost)
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        if self.channel is not None:
            await self.channel.aclose()
