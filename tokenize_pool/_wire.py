"""Framing over the pool's Unix sockets: clients <-> pool host, and pool <-> each worker.

A frame is ``length:u32 | request_id:u64 | kind:u8 | payload``, big-endian, where ``length``
counts everything after itself. Requests: kind 0 runs ``payload`` in a worker, kind 1 asks the
host for its stats. Answers: kind 0 is a worker's answer, kind 1 the host's stats, kind 2 an
error raised by the host itself (pickled).
"""

from __future__ import annotations

import asyncio
import struct
from typing import BinaryIO

__all__ = ["KIND_ERROR", "KIND_STATS", "KIND_TASK", "frame", "read_frame", "read_frame_from", "write_frame"]

KIND_TASK = 0
KIND_STATS = 1
KIND_ERROR = 2

_HEADER = struct.Struct(">IQB")
_LENGTH = struct.Struct(">I")


def frame(request_id: int, kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload) + 9, request_id, kind) + payload


def write_frame(writer: asyncio.StreamWriter, request_id: int, kind: int, payload: bytes) -> None:
    writer.write(frame(request_id, kind, payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    (length,) = _LENGTH.unpack(await reader.readexactly(4))
    body = await reader.readexactly(length)
    request_id, kind = struct.unpack_from(">QB", body)
    return request_id, kind, body[9:]


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
