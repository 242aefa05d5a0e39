"""Faults: a trainer whose answer breaks on the wire, a client that goes away, SIGTERM.

Real server and simulator processes. Nothing here waits for time to pass: a held trainer call
is a simulator gate (``gate=<name>``, opened by ``POST /sim/gates/<name>``), and a fault that
must end in a timeout (a hang, a drip) never ends by itself.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from rollout_server.drain import Drain
from rollout_server.errors import TrainerBadResponse
from rollout_server.settings import Settings, SettingsError
from rollout_server.sim.procs import Proc
from rollout_server.trainer import TrainerClient, TrainerLimits
from rollout_server.transport import Http1Transport, ResponseTooLarge
from tests.rollout_server.test_rollout_e2e import body, post_rollout, sim_record
from tests.rollout_server.test_transport import JSON, Upstream, ok, run

LIMIT = 4096


def poll(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Wait for a state (not for time): ``condition`` is checked until true; ``limit`` only
    bounds a failing test."""
    ends = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < ends, f"never happened: {what}"
        time.sleep(0.02)


# The transport refuses an answer larger than its limit, before reading it when it says its size.


def test_an_answer_announcing_more_than_the_limit_is_refused_before_its_body() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        # Headers only: the body never comes, so reading it would end in the 30 s timeout.
        upstream.answer = lambda body: b"HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n{"
        transport = Http1Transport(max_response_bytes=LIMIT)
        with pytest.raises(ResponseTooLarge, match="4,096 bytes"):
            await transport.post(url, b"{}", JSON, 30)
        upstream.answer = ok
        assert await transport.post(url, b"next", JSON, 5) == (200, b"next")
        assert upstream.connections == 2  # the refused answer's connection was not reused
        await transport.aclose()

    run(ok, test)


def chunked(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (size, b"x" * size)


@pytest.mark.parametrize(("size", "refused"), [(LIMIT, False), (LIMIT + 1, True)])
def test_a_chunked_answer_is_refused_once_past_the_limit(size: int, refused: bool) -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport(max_response_bytes=LIMIT)
        if refused:
            with pytest.raises(ResponseTooLarge):
                await transport.post(url, b"{}", JSON, 30)
        else:
            assert await transport.post(url, b"{}", JSON, 30) == (200, b"x" * size)
        await transport.aclose()

    run(lambda body: chunked(size), test)


def test_the_trainer_client_reports_a_too_large_answer_as_the_trainers_fault() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        client = TrainerClient(TrainerLimits(timeout=30, max_response_bytes=LIMIT))
        with pytest.raises(TrainerBadResponse, match="answered too much") as caught:
            await client.complete(url.removesuffix("/v1/completions"), {}, api_key=None)
        assert caught.value.category == "trainer_server_error"
        await client.aclose()

    run(lambda body: ok(b"x" * (LIMIT + 1)), test)


# A trainer's answer broken on the wire fails only its rollout, with its category.


@pytest.fixture(scope="module")
def impatient(start_server: Callable[..., Proc]) -> Proc:
    """A server that waits 2 s for a trainer's answer, and takes one of at most 1 MB."""
    return start_server(HTTP_CLIENT_TIMEOUT="2", TRAINER_MAX_RESPONSE_BYTES=str(2**20))


@pytest.mark.parametrize(
    ("spec", "category"),
    [
        ("fault/kind=hang/at=1", "timeout"),
        ("fault/kind=drip/at=1/ms=1000", "timeout"),
        ("fault/kind=reset/at=1", "network_error"),
        ("fault/kind=huge/at=1/mb=50", "trainer_server_error"),
        ("fault/kind=badutf8/at=1", "trainer_server_error"),
    ],
)
def test_a_broken_answer_fails_its_rollout_with_a_category(
    impatient: Proc, sim: Proc, spec: str, category: str
) -> None:
    payload = body(f"{sim.url}/s/{spec}/turns=2")
    result = post_rollout(impatient, payload)
    assert result["status"] == "ERROR"
    assert "will not be sent" not in sim.log_text()  # the simulator answered once, as meant
    assert result["extra_fields"]["error_category"] == category, result["error_message"]
    assert sim_record(sim, payload["rollout_id"])["calls"] == 2  # the faulty call was the last
    # The server is whole: the next rollout completes.
    assert post_rollout(impatient, body(f"{sim.url}/s/sequential/turns=2"))["status"] == "COMPLETED"


# A client that goes away cancels its rollout.


def send_rollout(server: Proc, payload: dict[str, Any]) -> socket.socket:
    raw = b"POST /rollout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    content = json.dumps(payload).encode()
    conn = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    conn.sendall(raw + b"Content-Length: %d\r\n\r\n%s" % (len(content), content))
    return conn


def health(server: Proc) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/health", timeout=10).json()
    return answer


def test_a_client_that_disconnects_cancels_its_rollout_and_frees_its_slot(
    start_server: Callable[..., Proc], sim: Proc
) -> None:
    server = start_server(MAX_CONCURRENT_ROLLOUTS="1")
    gate = f"gone-{uuid.uuid4().hex}"
    payload = body(f"{sim.url}/s/sequential/turns=3/gate={gate}")
    conn = send_rollout(server, payload)
    poll(lambda: httpx.get(f"{sim.url}/sim/rollouts/{payload['rollout_id']}").status_code == 200, "call")
    conn.close()
    poll(lambda: health(server)["rollouts"]["in_flight"] == 0, "the rollout cancelled")
    # The one slot is free: another rollout runs; the first one's call, released, goes nowhere.
    httpx.post(f"{sim.url}/sim/gates/{gate}")
    assert post_rollout(server, body(f"{sim.url}/s/sequential/turns=1"))["status"] == "COMPLETED"
    assert sim_record(sim, payload["rollout_id"])["calls"] == 1
    assert "client disconnected: rollout cancelled" in server.log_text()
    assert "unhandled error" not in server.log_text()  # a disconnect is not the server's error


# SIGTERM: what was accepted finishes, what comes after is refused with 503.


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_the_rollouts_in_flight_and_refuses_new_ones(
    start_server: Callable[..., Proc], sim: Proc, workers: int
) -> None:
    # With several Sanic workers the launcher forwards the signal to each, and each drains.
    server = start_server(ROLLOUT_SERVER_WORKERS=str(workers))
    gate = f"drain-{uuid.uuid4().hex}"
    held = body(f"{sim.url}/s/sequential/turns=2/gate={gate}")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{server.url}/rollout", json=held, timeout=120)
        poll(lambda: httpx.get(f"{sim.url}/sim/rollouts/{held['rollout_id']}").status_code == 200, "call")
        server.popen.send_signal(signal.SIGTERM)
        poll(lambda: httpx.get(f"{server.url}/ready").status_code == 503, "draining")
        assert health(server)["draining"]
        assert workers > 1 or health(server)["rollouts"]["in_flight"] == 1  # (another worker's: 0)
        late = body(f"{sim.url}/s/sequential/turns=1")
        refused = httpx.post(f"{server.url}/rollout", json=late, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["type"] == "shutting_down"
        assert httpx.get(f"{sim.url}/sim/rollouts/{late['rollout_id']}").status_code == 404  # not started
        httpx.post(f"{sim.url}/sim/gates/{gate}")
        answer = running.result()
    assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED"
    assert server.popen.wait(60) == 0


def test_the_drain_stops_at_once_on_a_second_signal() -> None:
    async def scenario() -> list[str]:
        stops: list[str] = []
        drain = Drain()
        drain._on_signal(signal.SIGTERM, lambda: 1, lambda: stops.append("stop"), grace=3600)
        assert drain.draining and stops == []
        drain._on_signal(signal.SIGINT, lambda: 1, lambda: stops.append("stop"), grace=3600)
        assert drain._task is not None
        drain._task.cancel()
        return stops

    assert asyncio.run(scenario()) == ["stop"]


def test_the_response_limit_is_read_from_the_environment_within_its_range() -> None:
    assert Settings.from_env({}).trainer_max_response_bytes == 16 * 2**20
    assert Settings.from_env({"TRAINER_MAX_RESPONSE_BYTES": "2048"}).trainer_max_response_bytes == 2048
    with pytest.raises(SettingsError, match="TRAINER_MAX_RESPONSE_BYTES"):
        Settings.from_env({"TRAINER_MAX_RESPONSE_BYTES": "10"})
