"""Retry-safe rollouts: one run per ``rollout_id``, and a finished answer given again to a retry.

A trainer that loses an answer (a timeout, a dropped connection) sends the same request again.
Running it again would cost a second generation and leave the trainer with two token sequences
under one id, so the ``RolloutLedger`` decides, per ``rollout_id``:

    running                              -> 409 rollout_running, nothing starts
    finished COMPLETED, same body        -> the stored response, byte for byte
    finished COMPLETED, different body   -> 409 rollout_id_reused
    unknown, expired, or ended in ERROR  -> it runs

"Same request" is the same body, byte for byte (its BLAKE2b digest): a retry resends what it
sent, and a body that differs in any byte (another prompt, another ``server_url``) is another
request that must not be answered with this one's result. ERROR responses are not kept: the
errors a retry is for (429, 5xx, network, timeouts) would otherwise be replayed forever.
COMPLETED responses are kept for ROLLOUT_RESULT_TTL_SECONDS, at most ROLLOUT_RESULT_CACHE_MB of
response bodies in all: the oldest go first, and one larger than the whole budget is not kept.

Across Sanic workers: a retry may reach any worker, so there is one ledger per server. With one
worker it lives in that worker (``LocalLedger``). With several, the launcher serves it on a
Unix socket beside the tokenize pool's (``serve_ledger`` runs it in a thread of the launcher,
which outlives every worker; no new process) and each worker is a ``SocketLedger`` client. Its
operations are a dictionary look-up each, run one at a time on that thread's event loop, so
check-and-start is atomic without a lock. Sanic's shared context offers only
``multiprocessing`` objects whose every access blocks the event loop, and the pool host belongs
to the CPU side, which knows nothing about rollouts. Rollouts a worker had running when its
connection ends (the worker died) are forgotten, so their retries can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tokenize_pool.wire import Channel, Redial, read_frame, write_frame

__all__ = [
    "LedgerLimits",
    "LocalLedger",
    "Outcome",
    "RolloutLedger",
    "SocketLedger",
    "body_digest",
    "ledger_socket",
    "serve_ledger",
]

logger = logging.getLogger("rollout_server.idempotency")

Verdict = Literal["start", "running", "replay", "reused"]
_VERDICTS: tuple[Verdict, ...] = ("start", "running", "replay", "reused")
_BEGIN, _FINISH, _DISCARD = 0, 1, 2
_HEAD = struct.Struct(">16sH")


def body_digest(body: bytes) -> bytes:
    """What makes two requests "the same": a 16-byte BLAKE2b digest of the body's bytes."""
    return hashlib.blake2b(body, digest_size=16).digest()


def ledger_socket(pool_socket: str) -> str:
    """The ledger's Unix socket, beside the tokenize pool's (a directory the server may write)."""
    return pool_socket + ".ledger"


@dataclass(frozen=True, kw_only=True)
class LedgerLimits:
    """How long and how much of finished responses are kept."""

    ttl_seconds: float = 600.0
    max_bytes: int = 256 * 2**20


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    body: bytes = b""  # the stored response, for "replay"


@dataclass(slots=True)
class _Done:
    digest: bytes
    body: bytes
    expires: float


class RolloutLedger:
    """The rules above as plain data; ``owner`` tells whose running rollouts are whose."""

    def __init__(self, limits: LedgerLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.running: dict[str, tuple[bytes, int]] = {}
        self.done: OrderedDict[str, _Done] = OrderedDict()  # oldest first
        self.kept_bytes = 0

    def begin(self, rollout_id: str, digest: bytes, owner: int = 0) -> Outcome:
        self._expire()
        running = self.running.get(rollout_id)
        if running is not None:
            return Outcome("running" if running[0] == digest else "reused")
        done = self.done.get(rollout_id)
        if done is not None:
            return Outcome("replay", done.body) if done.digest == digest else Outcome("reused")
        self.running[rollout_id] = (digest, owner)
        return Outcome("start")

    def finish(self, rollout_id: str, digest: bytes, body: bytes | None) -> None:
        """The rollout ended: ``body`` is its response to keep, None when it is not to be kept."""
        running = self.running.get(rollout_id)
        if running is None or running[0] != digest:
            return
        del self.running[rollout_id]
        if body is None or self.limits.ttl_seconds <= 0 or len(body) > self.limits.max_bytes:
            return
        self.done[rollout_id] = _Done(digest, body, self.clock() + self.limits.ttl_seconds)
        self.kept_bytes += len(body)
        while self.kept_bytes > self.limits.max_bytes:
            self._drop_oldest()

    def forget_owner(self, owner: int) -> None:
        """``owner`` is gone (a worker's connection ended): its running rollouts may run again."""
        for rollout_id in [r for r, (_, o) in self.running.items() if o == owner]:
            del self.running[rollout_id]

    def _drop_oldest(self) -> None:
        _, done = self.done.popitem(last=False)
        self.kept_bytes -= len(done.body)

    def _expire(self) -> None:
        now = self.clock()
        while self.done and next(iter(self.done.values())).expires <= now:
            self._drop_oldest()


class LocalLedger:
    """The ledger of a server with one Sanic worker, in that worker."""

    def __init__(self, ledger: RolloutLedger) -> None:
        self.ledger = ledger

    async def begin(self, rollout_id: str, digest: bytes) -> Outcome:
        return self.ledger.begin(rollout_id, digest)

    async def finish(self, rollout_id: str, digest: bytes, body: bytes | None) -> None:
        self.ledger.finish(rollout_id, digest, body)

    def discard(self, rollout_id: str, digest: bytes) -> None:
        """Forget a running rollout that ended with nothing to keep (it was cancelled); no await."""
        self.ledger.finish(rollout_id, digest, None)

    async def close(self) -> None:
        pass


def _pack(rollout_id: str, digest: bytes, body: bytes = b"") -> bytes:
    key = rollout_id.encode("utf-8", "surrogatepass")
    return _HEAD.pack(digest, len(key)) + key + body


def _unpack(payload: bytes) -> tuple[str, bytes, bytes]:
    digest, length = _HEAD.unpack_from(payload)
    start = _HEAD.size
    return payload[start : start + length].decode("utf-8", "surrogatepass"), digest, payload[start + length :]


class SocketLedger:
    """A Sanic worker's client of the launcher's ledger (several workers).

    If the ledger cannot be reached, rollouts run unguarded and the error is logged: a lost
    guarantee against duplicates is better than a server that refuses every rollout."""

    def __init__(self, path: str, *, connect_timeout: float = 10.0) -> None:
        self.path = path
        self._socket = Redial(
            path, connect_timeout=connect_timeout, lost=lambda: ConnectionError("ledger lost")
        )

    async def _connected(self) -> Channel:
        return await self._socket.open()

    async def begin(self, rollout_id: str, digest: bytes) -> Outcome:
        try:
            channel = await self._connected()
            kind, body = await channel.call(_BEGIN, _pack(rollout_id, digest))
        except OSError as exc:
            logger.error("rollout ledger unreachable, running unguarded: %s", exc)
            return Outcome("start")
        return Outcome(_VERDICTS[kind], body)

    async def finish(self, rollout_id: str, digest: bytes, body: bytes | None) -> None:
        payload = _pack(rollout_id, digest, body or b"")
        with contextlib.suppress(OSError):
            channel = await self._connected()
            await channel.call(_FINISH if body is not None else _DISCARD, payload)

    def discard(self, rollout_id: str, digest: bytes) -> None:
        channel = self._socket.channel
        if channel is not None and channel.open:
            write_frame(channel.writer, 0, _DISCARD, _pack(rollout_id, digest))

    async def close(self) -> None:
        await self._socket.aclose()


async def _serve_connection(
    ledger: RolloutLedger, owner: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            request_id, kind, payload = await read_frame(reader)
            rollout_id, digest, body = _unpack(payload)
            if kind == _BEGIN:
                outcome = ledger.begin(rollout_id, digest, owner)
                write_frame(writer, request_id, _VERDICTS.index(outcome.verdict), outcome.body)
                continue
            ledger.finish(rollout_id, digest, body if kind == _FINISH else None)
            if request_id:
                write_frame(writer, request_id, 0, b"")
    except (asyncio.IncompleteReadError, ConnectionError, struct.error, UnicodeDecodeError):
        pass
    finally:
        ledger.forget_owner(owner)
        writer.close()


def serve_ledger(path: str, limits: LedgerLimits) -> Callable[[], None]:
    """Serve one ledger on the Unix socket ``path`` from a daemon thread; returns ``stop``."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    owners = iter(range(1, 2**62))
    ledger = RolloutLedger(limits)

    async def main() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(
            lambda r, w: _serve_connection(ledger, next(owners), r, w), path=path, limit=2**26
        )
        os.chmod(path, 0o600)
        ready.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(serving)
        loop.close()

    serving = loop.create_task(main())
    thread = threading.Thread(target=run, name="rollout-ledger", daemon=True)
    thread.start()
    ready.wait(10)

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(serving.cancel)
            thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    return stop
