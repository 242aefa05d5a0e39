"""The pool host and its client as real processes over a real Unix socket: one test per
mechanism (serving, restarts, urgency, promotion, pipeline depth, a lost connection). The
scheduler's rules are tested as data in test_scheduler.py."""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import signal
import socket
import string
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokenize_pool import (
    HostedPool,
    PoolClient,
    PoolConfig,
    PoolUnavailable,
    TemplateError,
    TokenizerKey,
    TokenizerLoadError,
    WorkerPool,
    start_pool_host,
)
from tokenize_pool.codec import load_codec
from tokenize_pool.ops import Ping, Promotion
from tokenize_pool.scheduler import PIPELINE_DEPTH, PIPELINE_MAX
from tokenize_pool.tokens import FirstPrompt

pytestmark = pytest.mark.slow

QWEN3 = TokenizerKey("Qwen/Qwen3-8B")


@pytest.fixture(scope="module")
def pool_socket(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    socket_path = str(tmp_path_factory.mktemp("pool") / "pool.sock")
    process = start_pool_host(PoolConfig(socket_path=socket_path, workers=2, cache_size=2, preload=(QWEN3,)))
    yield socket_path
    process.terminate()
    process.join(20)
    assert process.exitcode == 0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_client(socket_path: str, fn: Any) -> Any:
    return await _with_client_of(PoolClient(HostedPool(socket_path), timeout=60), fn)


async def _with_client_of(client: PoolClient, fn: Any) -> Any:
    try:
        return await fn(client)
    finally:
        await client.close()


def test_first_prompt_matches_the_tokenizer(pool_socket: str) -> None:
    messages = [{"role": "user", "content": "Héllo 数学 🙂"}]
    result = run(_with_client(pool_socket, lambda c: c.first_prompt(QWEN3, messages)))
    codec = load_codec(QWEN3, trust_remote_code=False)
    assert list(result.ids) == codec.encode(codec.render_reference(messages, add_generation_prompt=True))
    assert result.tokens_encoded == len(result.ids)
    assert result.text == ",".join(map(str, result.ids)).encode()


def test_workers_warm_up_with_the_preloaded_tokenizer(pool_socket: str) -> None:
    async def wait_warm(client: PoolClient) -> dict[str, Any]:
        for _ in range(300):
            stats = await client.stats()
            if stats["warm"]:
                return stats
            await asyncio.sleep(0.1)
        return stats

    stats = run(_with_client(pool_socket, wait_warm))
    assert stats["warm"] and stats["workers_alive"] == 2
    assert all(str(QWEN3) in w["tokenizers"] for w in stats["workers"])


def test_unknown_tokenizer_fails_fast_and_is_remembered(pool_socket: str) -> None:
    async def twice(client: PoolClient) -> list[float]:
        times = []
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(TokenizerLoadError, match="no-such"):
                await client.first_prompt(TokenizerKey("nobody/no-such"), [{"role": "user", "content": "hi"}])
            times.append(time.monotonic() - started)
        return times

    assert max(run(_with_client(pool_socket, twice))) < 5


def test_template_errors_are_ours(pool_socket: str) -> None:
    key = TokenizerKey("Qwen/Qwen3.5-9B")  # its template refuses a conversation with no user turn
    with pytest.raises(TemplateError, match="chat template"):
        run(_with_client(pool_socket, lambda c: c.first_prompt(key, [{"role": "system", "content": "x"}])))


def test_many_concurrent_calls_multiplex_on_one_connection(pool_socket: str) -> None:
    async def many(client: PoolClient) -> list[Any]:
        calls = [client.first_prompt(QWEN3, [{"role": "user", "content": "word " * i}]) for i in range(200)]
        return await asyncio.gather(*calls)

    results = run(_with_client(pool_socket, many))
    assert [len(r.ids) for r in results] == sorted(len(r.ids) for r in results)


def test_a_ping_goes_to_a_worker_and_back(pool_socket: str) -> None:
    async def pings(client: PoolClient) -> tuple[int, int]:
        before = (await client.stats())["tasks"]
        await asyncio.gather(*(client.ping() for _ in range(50)))
        return before, (await client.stats())["tasks"]

    before, after = run(_with_client(pool_socket, pings))
    assert after - before == 50


def test_a_killed_worker_is_replaced(pool_socket: str) -> None:
    async def kill_one(client: PoolClient) -> dict[str, Any]:
        stats = await client.stats()
        os.kill(stats["workers"][0]["pid"], signal.SIGKILL)
        await asyncio.sleep(0.5)
        for _ in range(5):  # the call that finds the pool broken may fail; later ones succeed
            try:
                await client.first_prompt(QWEN3, [{"role": "user", "content": "hi"}])
                break
            except PoolUnavailable:
                await asyncio.sleep(0.2)
        return await client.stats()

    stats = run(_with_client(pool_socket, kill_one))
    assert stats["restarts"] >= 1
    assert stats["workers_alive"] >= 1


def test_client_without_host_reports_unavailable(tmp_path: Path) -> None:
    client = PoolClient(HostedPool(str(tmp_path / "none.sock"), connect_timeout=0.3))
    with pytest.raises(PoolUnavailable):
        run(_with_client_of(client, lambda c: c.first_prompt(QWEN3, [{"role": "user", "content": "hi"}])))


def test_host_stops_when_its_launcher_is_killed(hf_home: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "orphan.sock"
    script = textwrap.dedent(
        f"""
        import time
        from tokenize_pool import PoolConfig, start_pool_host
        if __name__ == "__main__":
            p = start_pool_host(PoolConfig(socket_path={str(socket_path)!r}, workers=1))
            print(p.pid, flush=True)
            time.sleep(600)
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    host_pid = int(launcher.stdout.readline())
    deadline = time.monotonic() + 30
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(host_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(host_pid, signal.SIGKILL)
        pytest.fail("pool host outlived its launcher")


def test_repeated_first_prompts_come_from_the_cache_and_are_copies(pool_socket: str) -> None:
    messages = [{"role": "user", "content": "the same GRPO prompt"}]

    async def three(client: PoolClient) -> list[Any]:
        first = await client.first_prompt(QWEN3, messages)
        first.ids.extend([1, 2, 3])  # the agent appends to its sequence: the cache must not see it
        return [first, await client.first_prompt(QWEN3, messages), await client.first_prompt(QWEN3, messages)]

    first, second, third = run(_with_client(pool_socket, three))
    assert first.tokens_encoded > 0 and second.tokens_encoded == third.tokens_encoded == 0
    assert list(second.ids) == list(third.ids) == list(first.ids[:-3])
    assert second.text == third.text == first.text == ",".join(map(str, second.ids)).encode()


def _ping() -> bytes:
    return pickle.dumps(Ping(), protocol=pickle.HIGHEST_PROTOCOL)


OK, LOST = 0, 2


async def _run(pool: WorkerPool, payload: bytes, **kwargs: Any) -> tuple[int, bytes]:
    """``pool.call`` as ``(OK, answer)``, or ``(LOST, b"")`` when it raised PoolUnavailable."""
    try:
        return OK, await pool.call(payload, **kwargs)
    except PoolUnavailable:
        return LOST, b""


async def _connected(pool: WorkerPool, count: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while pool.snapshot()["workers_connected"] < count:
            await asyncio.sleep(0.05)


def test_worker_pool_in_process_serves_restarts_and_closes(hf_home: Path) -> None:
    """The in-process pool (one Sanic worker): every worker connects back and serves; a worker
    whose connection ends serves again; a killed worker's slot restarts; closing ends
    every worker process and removes the pool's socket directory."""

    async def scenario() -> tuple[list[int], dict[str, Any], list[int], str]:
        pool = WorkerPool(PoolConfig(workers=2, cache_size=1))
        await pool.start()
        try:
            await _connected(pool, 2)
            assert [kind for kind, _ in await asyncio.gather(*(_run(pool, _ping()) for _ in range(20)))] == [
                0
            ] * 20
            pool._links[0].hang_up()  # a connection lost without the worker dying
            await asyncio.sleep(0.2)
            await _connected(pool, 2)
            victim = pool.snapshot()["workers"][0]["pid"]
            os.kill(victim, signal.SIGKILL)
            async with asyncio.timeout(60):
                while pool.snapshot()["restarts"] < 1:
                    await asyncio.sleep(0.05)
            await _connected(pool, 2)
            kind, _ = await _run(pool, _ping())
            assert kind == 0
            stats = pool.snapshot()
            pids = [w["pid"] for w in stats["workers"]]
            assert victim not in pids
        finally:
            directory = pool._directory
            await pool.close()
        return pids, stats, [victim], directory

    pids, stats, _, directory = run(scenario())
    assert stats["workers_alive"] == 2 and stats["restarts"] == 1
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not Path(directory).exists()


def _slow_first(i: int) -> bytes:
    """A first prompt that takes a worker several ms: long, and made of words no other call has
    (the tokenizer caches the words it has seen, so repeated text would be fast)."""
    rng = random.Random(i)
    words = ("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(1500))
    messages = [{"role": "user", "content": f"Tokenize me, slowly ({i}): " + " ".join(words)}]
    return pickle.dumps(FirstPrompt(key=QWEN3, messages=messages), protocol=pickle.HIGHEST_PROTOCOL)


def test_urgent_requests_pass_the_ones_waiting_for_a_worker(hf_home: Path) -> None:
    """A rollout's next turn (urgent) does not queue behind a wave of first prompts: it waits for
    at most the requests its worker already holds (PIPELINE_DEPTH), not for the whole wave."""

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        pool = WorkerPool(PoolConfig(workers=1, cache_size=1, preload=(QWEN3,)))
        await pool.start()
        try:
            await _connected(pool, 1)
            await _run(pool, _slow_first(-1))  # warm
            finished: list[str] = []

            async def call(name: str, payload: bytes, urgent: bool) -> None:
                kind, _ = await _run(pool, payload, urgent=urgent)
                assert kind == 0
                finished.append(name)

            wave = [asyncio.create_task(call(f"first-{i}", _slow_first(i), False)) for i in range(12)]
            await asyncio.sleep(0)  # the wave is sent or waiting
            queued = pool.snapshot()
            await asyncio.gather(call("next-turn", _ping(), True), *wave)
        finally:
            await pool.close()
        return finished, queued

    finished, queued = run(scenario())
    assert queued["queued"] == 12 - PIPELINE_DEPTH and queued["in_flight"] == 12
    assert finished.index("next-turn") <= PIPELINE_DEPTH
    assert sorted(finished) == sorted(["next-turn", *(f"first-{i}" for i in range(12))])


def test_a_worker_holds_more_requests_when_they_are_short(hf_home: Path) -> None:
    """Short requests fill a worker's pipeline deeper (so that a slow event loop, which refills
    it once per iteration, does not leave it idle); long ones keep it at PIPELINE_DEPTH."""

    async def scenario() -> tuple[int, int, int, int]:
        pool = WorkerPool(PoolConfig(workers=1, cache_size=1, preload=(QWEN3,)))
        await pool.start()
        try:
            await _connected(pool, 1)
            for _ in range(100):
                await _run(pool, _ping())
            pings = [asyncio.create_task(_run(pool, _ping())) for _ in range(64)]
            await asyncio.sleep(0)  # every ping is sent or waiting
            held_short = len(pool._links[0].jobs)
            await asyncio.gather(*pings)
            for i in range(30):
                await _run(pool, _slow_first(i))
            slow = [asyncio.create_task(_run(pool, _slow_first(100 + i))) for i in range(8)]
            await asyncio.sleep(0)
            held_long = len(pool._links[0].jobs)
            await asyncio.gather(*slow)
            return held_short, held_long, pool.depth, pool.snapshot()["in_flight"]
        finally:
            await pool.close()

    held_short, held_long, depth, in_flight = run(scenario())
    assert PIPELINE_DEPTH < held_short <= PIPELINE_MAX
    assert held_long == depth == PIPELINE_DEPTH
    assert in_flight == 0


def test_a_waiting_first_prompt_is_promoted_when_its_rollout_needs_it(hf_home: Path) -> None:
    """In-process: a first prompt queued behind a wave goes ahead of it once it is promoted."""

    async def scenario() -> list[str]:
        pool = WorkerPool(PoolConfig(workers=1, cache_size=1, preload=(QWEN3,)))
        await pool.start()
        try:
            await _connected(pool, 1)
            finished: list[str] = []
            needed = Promotion()

            async def call(name: str, payload: bytes, promotion: Promotion | None = None) -> None:
                kind, _ = await _run(pool, payload, promotion=promotion)
                assert kind == 0
                finished.append(name)

            wave = [asyncio.create_task(call(f"first-{i}", _slow_first(i))) for i in range(12)]
            mine = asyncio.create_task(call("mine", _slow_first(99), needed))
            await asyncio.sleep(0)  # everything is sent or waiting, "mine" last
            needed.promote()
            await asyncio.gather(mine, *wave)
        finally:
            await pool.close()
        return finished

    assert run(scenario()).index("mine") <= PIPELINE_DEPTH


def test_a_worker_connection_that_ends_fails_what_it_held_and_the_waiting_go_on(hf_home: Path) -> None:
    """Requests a worker held when its connection ended fail with PoolUnavailable (the caller
    gets a clear error); requests still waiting in the pool are served once it reconnects."""

    async def scenario() -> tuple[list[int], list[int]]:
        pool = WorkerPool(PoolConfig(workers=1, cache_size=1, preload=(QWEN3,)))
        await pool.start()
        try:
            await _connected(pool, 1)
            await _run(pool, _slow_first(-1))  # slow answers: the worker holds PIPELINE_DEPTH
            calls = [asyncio.create_task(_run(pool, _slow_first(i))) for i in range(PIPELINE_DEPTH + 3)]
            await asyncio.sleep(0)
            held = len(pool._links[0].jobs)
            pool._links[0].hang_up()
            answers = await asyncio.gather(*calls)
            return [held], [kind for kind, _ in answers]
        finally:
            await pool.close()

    (held,), kinds = run(scenario())
    assert held == PIPELINE_DEPTH
    assert kinds[:PIPELINE_DEPTH] == [LOST] * PIPELINE_DEPTH
    assert kinds[PIPELINE_DEPTH:] == [0] * 3


def _peer_pid(link: Any) -> int:
    """The pid of the worker at the other end of ``link`` (Linux: the socket's peer credentials)."""
    sock = link.transport.get_extra_info("socket")
    pid, _, _ = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    return int(pid)


def test_a_killed_worker_fails_only_the_requests_it_held(hf_home: Path) -> None:
    """SIGKILL of one of two workers while both hold requests: the requests the killed worker
    held fail with PoolUnavailable; the other worker's and the waiting ones complete, and the
    killed worker's slot alone is restarted. Both workers are stopped (SIGSTOP) while the
    requests are handed out, so that each holds its requests unanswered when one is killed."""

    async def scenario() -> tuple[set[int], list[int], dict[str, Any], int]:
        pool = WorkerPool(PoolConfig(workers=2, cache_size=1, preload=(QWEN3,)))
        await pool.start()
        try:
            await _connected(pool, 2)
            await asyncio.gather(*(_run(pool, _slow_first(-i)) for i in range(1, 5)))  # depth: PIPELINE_DEPTH
            victim_link, other_link = pool._links
            victim, other = _peer_pid(victim_link), _peer_pid(other_link)
            for pid in (victim, other):
                os.kill(pid, signal.SIGSTOP)
            payloads = [_slow_first(i) for i in range(4 * PIPELINE_DEPTH)]
            calls = [asyncio.create_task(_run(pool, payload)) for payload in payloads]
            await asyncio.sleep(0)  # each worker holds PIPELINE_DEPTH (unread), the rest wait
            sent = {job.payload for job in victim_link.jobs.values()}
            held = {i for i, payload in enumerate(payloads) if payload in sent}
            os.kill(victim, signal.SIGKILL)
            os.kill(other, signal.SIGCONT)
            kinds = [kind for kind, _ in await asyncio.gather(*calls)]
            async with asyncio.timeout(60):
                while not pool.snapshot()["warm"]:
                    await asyncio.sleep(0.05)
            return held, kinds, pool.snapshot(), other
        finally:
            await pool.close()

    held, kinds, stats, other = run(scenario())
    assert len(held) == PIPELINE_DEPTH
    assert {i for i, kind in enumerate(kinds) if kind != 0} == held
    assert all(kinds[i] == LOST for i in held)
    assert stats["restarts"] == 1 and stats["workers_alive"] == 2
    assert other in [w["pid"] for w in stats["workers"]]  # the other worker served on
