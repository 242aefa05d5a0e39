"""The pool host's side of the client protocol, over a real Unix socket, with a stand-in pool
that answers when the test says: what each frame kind does, with no worker process."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

from tokenize_pool.errors import PoolUnavailable
from tokenize_pool.host import PoolHost
from tokenize_pool.ops import Promotion
from tokenize_pool.wire import KIND_ERROR, KIND_STATS, KIND_TASK, KIND_URGENT, Channel
from tokenize_pool.workers import PoolConfig


class HeldPool:
    """Records each request and how it was asked for; answers each when released."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bool, Promotion | None]] = []
        self.release = asyncio.Event()

    async def call(
        self, payload: bytes, *, urgent: bool = False, promotion: Promotion | None = None
    ) -> bytes:
        self.calls.append((payload, urgent, promotion))
        await self.release.wait()
        if payload == b"lost":
            raise PoolUnavailable("the worker holding it died")
        return b"answer:" + payload

    async def stats(self) -> dict[str, Any]:
        return {"queued": len(self.calls)}


async def _host_and_channel(tmp_path: Path) -> tuple[HeldPool, Channel, asyncio.AbstractServer]:
    pool = HeldPool()
    host = PoolHost(PoolConfig(socket_path=str(tmp_path / "host.sock")), pool=pool)  # type: ignore[arg-type]
    server = await asyncio.start_unix_server(host.handle_client, path=host.config.socket_path)
    reader, writer = await asyncio.open_unix_connection(host.config.socket_path)
    return pool, Channel(reader, writer, lost=lambda: PoolUnavailable("lost")), server


async def _until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0)


def test_a_promotion_frame_makes_the_hosts_request_urgent(tmp_path: Path) -> None:
    """A first prompt sent as an ordinary request becomes urgent in the host's pool when the
    client promotes it (a KIND_PROMOTE frame carries that); its answer still comes."""

    async def scenario() -> tuple[bool, bool, tuple[int, bytes]]:
        pool, channel, server = await _host_and_channel(tmp_path)
        async with server:
            mine = Promotion()
            call = asyncio.create_task(channel.call(KIND_TASK, b"mine", promotion=mine))
            await _until(lambda: pool.calls)
            _, urgent, promoted = pool.calls[0]
            assert promoted is not None
            before = promoted.promoted
            mine.promote()
            await _until(lambda: promoted.promoted)
            pool.release.set()
            answer = await call
            await channel.aclose()
        return urgent, before, answer

    urgent, before, answer = asyncio.run(scenario())
    assert not urgent and not before
    assert answer == (KIND_TASK, b"answer:mine")


def test_urgent_and_stats_frames(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[tuple[bytes, bool, bool]], tuple[int, bytes]]:
        pool, channel, server = await _host_and_channel(tmp_path)
        async with server:
            pool.release.set()
            await channel.call(KIND_URGENT, b"next-turn")
            stats = await channel.call(KIND_STATS, b"")
            await channel.aclose()
        return [(payload, urgent, when is None) for payload, urgent, when in pool.calls], stats

    calls, (kind, stats) = asyncio.run(scenario())
    assert calls == [(b"next-turn", True, True)]  # an urgent request cannot be promoted further
    assert kind == KIND_STATS and pickle.loads(stats) == {"queued": 1}


def test_a_request_whose_worker_died_is_answered_with_the_error(tmp_path: Path) -> None:
    """The host answers a lost request with its ``PoolUnavailable`` (KIND_ERROR), not silence."""

    async def scenario() -> tuple[int, bytes]:
        pool, channel, server = await _host_and_channel(tmp_path)
        async with server:
            pool.release.set()
            answer = await channel.call(KIND_TASK, b"lost")
            await channel.aclose()
        return answer

    kind, payload = asyncio.run(scenario())
    assert kind == KIND_ERROR
    error = pickle.loads(payload)
    assert isinstance(error, PoolUnavailable) and "died" in str(error)
