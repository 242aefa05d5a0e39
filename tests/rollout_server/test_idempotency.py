"""Retry-safe rollouts: the ledger's rules as data, its socket shared by several clients (as
Sanic workers share it), and the rules on real servers with one and with two Sanic workers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout_server.idempotency import (
    LedgerLimits,
    RolloutLedger,
    SocketLedger,
    body_digest,
    serve_ledger,
)
from tests.conftest import Proc
from tests.rollout_server.guarded import API_KEY, auth, error_of, guarded_server, post, rollout_body

A, B = body_digest(b"a"), body_digest(b"b")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ledger(ttl: float = 60.0, max_bytes: int = 100) -> tuple[RolloutLedger, Clock]:
    clock = Clock()
    return RolloutLedger(LedgerLimits(ttl_seconds=ttl, max_bytes=max_bytes), clock), clock


def test_a_running_id_is_refused_whatever_the_body() -> None:
    book, _ = ledger()
    assert book.begin("r", A).verdict == "start"
    assert book.begin("r", A).verdict == "running"
    assert book.begin("r", B).verdict == "reused"
    assert book.begin("other", A).verdict == "start"


def test_a_completed_response_is_replayed_to_the_same_body_only() -> None:
    book, _ = ledger()
    book.begin("r", A)
    book.finish("r", A, b"answer")
    assert (book.begin("r", A).verdict, book.begin("r", A).body) == ("replay", b"answer")
    assert book.begin("r", B).verdict == "reused"


def test_a_response_not_kept_lets_the_retry_run() -> None:
    book, _ = ledger()
    book.begin("r", A)
    book.finish("r", A, None)  # an ERROR, or a cancelled rollout
    assert book.begin("r", B).verdict == "start"


def test_responses_expire_after_the_ttl() -> None:
    book, clock = ledger(ttl=10)
    book.begin("r", A)
    book.finish("r", A, b"answer")
    clock.now = 9.9
    assert book.begin("r", A).verdict == "replay"
    clock.now = 10.0
    assert book.begin("r", A).verdict == "start"
    assert book.kept_bytes == 0


def test_kept_bytes_stay_within_the_budget_oldest_first() -> None:
    book, _ = ledger(max_bytes=10)
    for name in ("r1", "r2", "r3"):
        book.begin(name, A)
        book.finish(name, A, b"4444")
    assert book.kept_bytes == 8 and list(book.done) == ["r2", "r3"]
    book.begin("big", A)
    book.finish("big", A, b"x" * 11)  # larger than the whole budget: not kept, nothing evicted
    assert list(book.done) == ["r2", "r3"] and book.begin("big", A).verdict == "start"


def test_a_ttl_of_zero_keeps_nothing_but_still_refuses_running_ids() -> None:
    book, _ = ledger(ttl=0)
    book.begin("r", A)
    assert book.begin("r", A).verdict == "running"
    book.finish("r", A, b"answer")
    assert book.begin("r", A).verdict == "start"


def test_a_stale_finish_does_not_end_another_run() -> None:
    book, _ = ledger()
    book.begin("r", A)
    book.finish("r", B, b"other")
    assert book.begin("r", A).verdict == "running"


def test_the_running_ids_of_a_gone_owner_are_forgotten() -> None:
    book, _ = ledger()
    book.begin("mine", A, owner=1)
    book.begin("theirs", A, owner=2)
    book.forget_owner(1)
    assert book.begin("mine", A).verdict == "start"
    assert book.begin("theirs", A).verdict == "running"


@pytest.fixture
def ledger_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "ledger.sock")
    stop = serve_ledger(path, LedgerLimits(ttl_seconds=60, max_bytes=2**20))
    yield path
    stop()
    assert not Path(path).exists()


async def until(check: Callable[[], Any], verdict: str) -> None:
    """Poll until ``check`` gives ``verdict``: another connection's end is seen asynchronously."""
    async with asyncio.timeout(30):
        while (await check()).verdict != verdict:
            await asyncio.sleep(0.01)


def test_two_workers_share_one_ledger(ledger_path: str) -> None:
    async def go() -> None:
        one, two = SocketLedger(ledger_path), SocketLedger(ledger_path)
        assert (await one.begin("r", A)).verdict == "start"
        assert (await two.begin("r", A)).verdict == "running"
        assert (await two.begin("r", B)).verdict == "reused"
        await one.finish("r", A, b'{"ok": true}')
        replay = await two.begin("r", A)
        assert (replay.verdict, replay.body) == ("replay", b'{"ok": true}')
        one.discard("never-begun", A)
        assert (await one.begin("s", A)).verdict == "start"
        one.discard("s", A)  # without waiting; the same connection's next request sees it
        assert (await one.begin("s", A)).verdict == "start"
        await one.close()
        # A worker gone: its running rollouts may run again, on another worker.
        await until(lambda: two.begin("s", A), "start")
        await two.close()

    asyncio.run(go())


def test_an_unreachable_ledger_lets_rollouts_run(tmp_path: Path) -> None:
    async def go() -> None:
        client = SocketLedger(str(tmp_path / "absent.sock"), connect_timeout=0.1)
        assert (await client.begin("r", A)).verdict == "start"
        await client.finish("r", A, b"x")

    asyncio.run(go())


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


def wait_started(sim: Proc, rollout_id: str) -> None:
    """Until the trainer has seen the rollout's first call (whichever worker runs it)."""
    deadline = time.monotonic() + 60
    while httpx.get(f"{sim.url}/sim/rollouts/{rollout_id}", timeout=10).status_code == 404:
        assert time.monotonic() < deadline, "the rollout never reached the trainer"
        time.sleep(0.02)


def sim_calls(sim: Proc, rollout_id: str) -> int:
    calls: int = httpx.get(f"{sim.url}/sim/rollouts/{rollout_id}", timeout=10).json()["calls"]
    return calls


def check_retry_rules(server: Proc, sim: Proc, attempts: int) -> None:
    """A slow rollout: duplicates refused while it runs, then its answer given to each retry.
    Its two trainer calls take 4 s each, ample time for the duplicates' few milliseconds."""
    body = rollout_body(f"{sim.url}/s/sequential/turns=1/latency=4")
    outcome: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: outcome.setdefault("first", post(server, body)))
    first.start()
    try:
        with httpx.Client(timeout=60) as client:
            wait_started(sim, body["rollout_id"])
            for _ in range(attempts):
                # A new connection each time: with several workers, any of them may answer.
                again = client.post(
                    f"{server.url}/rollout", json=body, headers={**auth(), "connection": "close"}
                )
                assert again.status_code == 409 and error_of(again)["type"] == "rollout_running"
            other = client.post(
                f"{server.url}/rollout",
                json={**body, "max_turns": 2},
                headers={**auth(), "connection": "close"},
            )
            assert other.status_code == 409 and error_of(other)["type"] == "rollout_id_reused"
    finally:
        first.join(120)
    answer = outcome["first"]
    assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED", answer.text
    calls = sim_calls(sim, body["rollout_id"])
    for _ in range(attempts):
        retry = httpx.post(
            f"{server.url}/rollout", json=body, headers={**auth(API_KEY), "connection": "close"}, timeout=60
        )
        assert retry.status_code == 200 and retry.content == answer.content
        assert retry.headers["x-rollout-replayed"] == "true"
    assert sim_calls(sim, body["rollout_id"]) == calls
    reused = post(server, {**body, "messages": [{"role": "user", "content": "Another question"}]})
    assert reused.status_code == 409 and error_of(reused)["type"] == "rollout_id_reused"


def test_one_worker_refuses_duplicates_and_replays_the_answer(guarded: Proc, sim: Proc) -> None:
    check_retry_rules(guarded, sim, attempts=2)


def test_an_error_is_not_kept_so_a_retry_runs_again(guarded: Proc, sim: Proc) -> None:
    body = rollout_body(f"{sim.url}/s/error/status=503")
    for _ in range(2):
        response = post(guarded, body)
        assert response.status_code == 200 and response.json()["status"] == "ERROR"
        assert "x-rollout-replayed" not in response.headers


def test_two_workers_hold_the_rules_across_workers(start_server: Callable[..., Proc], sim: Proc) -> None:
    server = start_server(
        ROLLOUT_SERVER_WORKERS="2",
        ROLLOUT_API_KEY=API_KEY,
        TRAINER_URL_ALLOWLIST=sim.url.removeprefix("http://"),
    )
    try:
        check_retry_rules(server, sim, attempts=6)
        pids = {
            httpx.get(server.url + "/health", headers={"connection": "close"}, timeout=10).json()[
                "worker_pid"
            ]
            for _ in range(20)
        }
        assert len(pids) >= 1
    finally:
        server.stop()
