"""Framing between pool clients and the pool host, over a Unix socket.

A frame is ``length:u32 | request_id:u64 | kind:u8 | payload``, big-endian, where ``length``
counts everything after itself. Requests: kind 0 runs ``payload`` in a worker, kind 1 asks the
host for its stats. Answers: kind 0 is a worker's answer, kind 1 the host's stats, kind 2 an
error raised by the host itself (pickled).
"""

from __future__ import annotations

import asyncio
import struct

__all__ = ["KIND_ERROR", "KIND_STATS", "KIND_TASK", "read_frame", "write_frame"]

KIND_TASK = 0
KIND_STATS = 1
KIND_ERROR = 2

_HEADER = struct.Struct(">IQB")
_LENGTH = struct.Struct(">I")


def write_frame(writer: asyncio.StreamWriter, request_id: int, kind: int, payload: bytes) -> None:
    writer.write(_HEADER.pack(len(payload) + 9, request_id, kind) + payload)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    (length,) = _LENGTH.unpack(await reader.readexactly(4))
    body = await reader.readexactly(length)
    request_id, kind = struct.unpack_from(">QB", body)
    return request_id, kind, body[9:]
