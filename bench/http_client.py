"""Client CPU per trainer call: httpx's own pool, the shipped TrainerClient, and aiohttp alone.

    python -m bench.http_client [--quick] [--concurrency 1 64 256] [--requests N] [--rounds N]

A local upstream (a minimal Sanic app, single process, in its own process) answers
``POST /v1/completions`` with a realistic ~30 KB completion: one choice with a tool call,
``token_ids``, ``logprobs`` and 5,000 ``prompt_token_ids``. Each client sends the same ~20 KB
request (a 5-turn calculator conversation under a long system prompt, plus a ``response_mask``)
and does the same work around the transport as ``TrainerClient.complete``: encode with
``pydantic_core.to_json``, check the status, validate the answer as ``TrainerCompletion``.

- ``httpx``: ``httpx.AsyncClient`` on its own pool (httpcore);
- ``trainer-client``: ``rollout_server.trainer.TrainerClient`` as shipped (keep-alive HTTP/1.1
  over ``rollout_server.transport.Http1Transport``);
- ``aiohttp``: ``aiohttp.ClientSession`` alone.

For each concurrency, all three clients are opened and warmed up (every connection opened), then
measured in interleaved slices (httpx, trainer-client, aiohttp, httpx, ...) so that the noise of a
shared machine falls on all three alike. The figure is the client process's CPU time
(``time.process_time``) per request; requests/s and the upstream's CPU per request (psutil) are
reported beside it. Compare the ratios between clients of one run, not absolute timings across
machines. The event loop is uvloop when installed, as in Sanic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import random
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx
import psutil
import pydantic_core

from bench._report import RESULTS_DIR, Progress, Series, plot_panels, print_table, write_results
from bench.workloads import calculator_conversation, system_prompt
from rollout_server.protocol import TrainerCompletion
from rollout_server.trainer import TrainerClient, TrainerLimits

NAME = "http_client"
DEFAULT_CONCURRENCY = (1, 64, 256)
MAX_CONNECTIONS = 1000
PROMPT_TOKENS = 5000
SAMPLED_TOKENS = 80
SYSTEM_TOKENS = 3500
MASK_ZEROS = 240
HOST = "127.0.0.1"
# What bench/README.md quotes (client CPU ms per request), printed beside this run's.
QUOTED_MS = {
    ("httpx", 1): 1.18,
    ("httpx", 64): 5.29,
    ("httpx", 256): 2.58,
    ("trainer-client", 1): 0.33,
    ("trainer-client", 64): 0.29,
    ("trainer-client", 256): 0.25,
    ("aiohttp", 1): 0.40,
    ("aiohttp", 64): 0.34,
    ("aiohttp", 256): 0.33,
}

Row = dict[str, Any]


def completion_body(seed: int = 0) -> bytes:
    """The upstream's answer: an OpenAI-style completion plus the three training fields."""
    rng = random.Random(f"completion:{seed}")
    # Token ids of real text are mostly small (frequent tokens come first in BPE vocabularies).
    prompt_ids = [
        rng.randrange(20_000) if rng.random() < 0.9 else rng.randrange(151_000) for _ in range(PROMPT_TOKENS)
    ]
    token_ids = [rng.randrange(20_000) for _ in range(SAMPLED_TOKENS)]
    call = {"name": "multiply", "arguments": '{"a": 417, "b": 23.5}'}
    message = {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I need 417 × 23.5 first, so I call the calculator.",
        "tool_calls": [{"id": "call_0_0_5f3a9c1e", "type": "function", "function": call}],
    }
    document = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "default",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": SAMPLED_TOKENS,
            "total_tokens": PROMPT_TOKENS + SAMPLED_TOKENS,
        },
        "token_ids": token_ids,
        "logprobs": [round(-rng.expovariate(3.0), 6) for _ in token_ids],
        "prompt_token_ids": prompt_ids,
    }
    return pydantic_core.to_json(document)


def trainer_payload(seed: int = 0) -> dict[str, Any]:
    """What the agent loop sends on a later turn of a rollout (``agent.py``'s payload)."""
    rng = random.Random(f"payload:{seed}")
    messages = calculator_conversation(rng, 5, reasoning=True, system=system_prompt(SYSTEM_TOKENS, seed))
    return {
        "model": "default",
        "rollout_id": f"bench-{seed}",
        "messages": messages,
        "response_mask": [0] * MASK_ZEROS,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 512,
        "stop": None,
        "logprobs": True,
    }


def _serve_upstream(port: int) -> None:
    from sanic import Request, Sanic
    from sanic.response import HTTPResponse, json, raw

    body = completion_body()
    # Without Sanic's logging set-up only warnings and errors reach stderr.
    app = Sanic("bench_http_upstream", configure_logging=False)

    @app.get("/health")
    async def health(request: Request) -> HTTPResponse:
        return json({"status": "ok"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> HTTPResponse:
        return raw(body, content_type="application/json")

    app.run(host=HOST, port=port, single_process=True, access_log=False, motd=False, backlog=1024)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, kw_only=True)
class Upstream:
    url: str
    process: psutil.Process

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)


def _wait_ready(url: str, process: multiprocessing.process.BaseProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise RuntimeError(f"upstream exited with code {process.exitcode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"upstream at {url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def running_upstream() -> Iterator[Upstream]:
    port = _free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve_upstream, args=(port,), daemon=True)
    process.start()
    url = f"http://{HOST}:{port}"
    try:
        _wait_ready(url, process)
        assert process.pid is not None
        yield Upstream(url=url, process=psutil.Process(process.pid))
    finally:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


class Client(Protocol):
    name: str

    async def call(self) -> None: ...

    async def aclose(self) -> None: ...


def _check(status: int, content: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"upstream answered HTTP {status}")
    TrainerCompletion.model_validate_json(content)


class HttpxClient:
    """``httpx.AsyncClient`` with its own pool (httpcore), sized like the shipped client."""

    name = "httpx"

    def __init__(self, url: str, payload: dict[str, Any]) -> None:
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        self._client = httpx.AsyncClient(limits=limits, timeout=300.0)
        self._url = f"{url}/v1/completions"
        self._payload = payload

    async def call(self) -> None:
        body = pydantic_core.to_json(self._payload)
        response = await self._client.post(
            self._url, content=body, headers={"content-type": "application/json"}
        )
        _check(response.status_code, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


class ShippedClient:
    """``rollout_server.trainer.TrainerClient`` as the server runs it."""

    name = "trainer-client"

    def __init__(self, url: str, payload: dict[str, Any]) -> None:
        self._client = TrainerClient(TrainerLimits(max_connections=MAX_CONNECTIONS))
        self._url = url
        self._payload = payload

    async def call(self) -> None:
        await self._client.complete(self._url, self._payload, api_key=None)

    async def aclose(self) -> None:
        await self._client.aclose()


class AiohttpClient:
    """``aiohttp.ClientSession`` alone: the floor the other two are compared with."""

    name = "aiohttp"

    def __init__(self, url: str, payload: dict[str, Any]) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._url = f"{url}/v1/completions"
        self._payload = payload

    async def call(self) -> None:
        if self._session is None:
            # Created inside the running loop, like AiohttpTransport's.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
        body = pydantic_core.to_json(self._payload)
        async with self._session.post(
            self._url, data=body, headers={"content-type": "application/json"}
        ) as response:
            content = await response.read()
            status = response.status
        _check(status, content)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


CLIENTS: tuple[Callable[[str, dict[str, Any]], Client], ...] = (HttpxClient, ShippedClient, AiohttpClient)


async def drive(call: Callable[[], Awaitable[None]], concurrency: int, requests: int) -> None:
    """``requests`` calls, ``concurrency`` of them in flight at any time."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))


@dataclass
class Tally:
    requests: int = 0
    cpu: float = 0.0
    wall: float = 0.0
    upstream_cpu: float = 0.0


async def measure_slice(
    client: Client, upstream: Upstream, concurrency: int, requests: int, tally: Tally
) -> None:
    gc.collect()
    upstream_before = upstream.cpu()
    wall_before, cpu_before = time.perf_counter(), time.process_time()
    await drive(client.call, concurrency, requests)
    tally.cpu += time.process_time() - cpu_before
    tally.wall += time.perf_counter() - wall_before
    tally.upstream_cpu += upstream.cpu() - upstream_before
    tally.requests += requests


@dataclass(frozen=True, kw_only=True)
class Options:
    concurrency: tuple[int, ...]
    requests: int
    rounds: int
    warmup: int


async def measure_concurrency(
    upstream: Upstream, concurrency: int, options: Options, progress: Progress
) -> list[Row]:
    payload = trainer_payload()
    clients = [make(upstream.url, payload) for make in CLIENTS]
    tallies = {client.name: Tally() for client in clients}
    try:
        for client in clients:
            # Enough calls that every one of ``concurrency`` connections is open and reused.
            await drive(client.call, concurrency, max(options.warmup, 2 * concurrency))
        per_slice = -(-options.requests // options.rounds)
        for round_ in range(1, options.rounds + 1):
            for client in clients:
                await measure_slice(client, upstream, concurrency, per_slice, tallies[client.name])
                progress.step(f"concurrency {concurrency}, {client.name}, round {round_}/{options.rounds}")
    finally:
        for client in clients:
            await client.aclose()
    return [_row(name, concurrency, tally) for name, tally in tallies.items()]


def _row(name: str, concurrency: int, tally: Tally) -> Row:
    return {
        "concurrency": concurrency,
        "client": name,
        "requests": tally.requests,
        "cpu_ms": tally.cpu / tally.requests * 1000,
        "requests_per_s": tally.requests / tally.wall,
        "upstream_cpu_ms": tally.upstream_cpu / tally.requests * 1000,
        "quoted_ms": QUOTED_MS.get((name, concurrency)),
    }


def with_ratios(rows: list[Row]) -> list[Row]:
    """Add each row's CPU per request as a multiple of plain aiohttp's at the same concurrency."""
    floor = {row["concurrency"]: row["cpu_ms"] for row in rows if row["client"] == AiohttpClient.name}
    return [{**row, "x_aiohttp": row["cpu_ms"] / floor[row["concurrency"]]} for row in rows]


def verdicts(rows: list[Row]) -> list[str]:
    by_key = {(row["client"], row["concurrency"]): row["cpu_ms"] for row in rows}
    lines = []
    for concurrency in sorted({row["concurrency"] for row in rows}):
        httpx_ms = by_key[(HttpxClient.name, concurrency)]
        shipped_ms = by_key[(ShippedClient.name, concurrency)]
        floor_ms = by_key[(AiohttpClient.name, concurrency)]
        lines.append(
            f"concurrency {concurrency}: httpx uses {httpx_ms / shipped_ms:.1f}x the client CPU of "
            f"TrainerClient; TrainerClient {shipped_ms / floor_ms:.2f}x that of aiohttp alone"
        )
    return lines


COLUMNS = {
    "concurrency": "concurrency",
    "client": "client",
    "requests": "requests",
    "cpu_ms": "CPU ms/req",
    "x_aiohttp": "x aiohttp",
    "requests_per_s": "req/s",
    "upstream_cpu_ms": "upstream ms/req",
    "quoted_ms": "quoted ms/req",
}


def plot(rows: list[Row]) -> Path:
    series = [
        Series(
            label=name,
            xs=[row["concurrency"] for row in rows if row["client"] == name],
            # In microseconds: the plot's axis labels are whole numbers.
            ys=[row["cpu_ms"] * 1000 for row in rows if row["client"] == name],
        )
        for name in dict.fromkeys(row["client"] for row in rows)
    ]
    return plot_panels(
        RESULTS_DIR / f"{NAME}-latest.png",
        {"Client CPU per trainer call (30 KB answers)": series},
        xlabel="concurrent requests",
        ylabel="client CPU µs per request",
    )


def report(rows: list[Row], options: Options, loop: str) -> None:
    sizes = {
        "request_bytes": len(pydantic_core.to_json(trainer_payload())),
        "response_bytes": len(completion_body()),
    }
    title = (
        f"Client CPU per trainer call ({sizes['request_bytes'] / 1000:.0f} KB request, "
        f"{sizes['response_bytes'] / 1000:.0f} KB answer, {loop} loop)"
    )
    print_table(rows, COLUMNS, title=title)
    print()
    for line in verdicts(rows):
        print(line)
    path = write_results(NAME, {"options": vars(options), "loop": loop, **sizes, "rows": rows})
    png = plot(rows)
    print(f"\nresults: {path}\nplot:    {png}")


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.http_client", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1,000 requests per client and concurrency, 2 rounds"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--requests", type=int, help="measured per client and concurrency (default 3,000)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved slices per client (default 3, 2 with --quick)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls (at least 2x the concurrency)")
    args = parser.parse_args(argv)
    return Options(
        concurrency=tuple(args.concurrency),
        requests=args.requests or (1000 if args.quick else 3000),
        rounds=max(1, args.rounds or (2 if args.quick else 3)),
        warmup=args.warmup,
    )


def _runner() -> tuple[asyncio.Runner, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner(), "asyncio"
    return asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    progress = Progress(len(options.concurrency) * len(CLIENTS) * options.rounds)
    runner, loop = _runner()
    rows: list[Row] = []
    with running_upstream() as upstream, runner:
        for concurrency in options.concurrency:
            rows += runner.run(measure_concurrency(upstream, concurrency, options, progress))
    report(with_ratios(rows), options, loop)


if __name__ == "__main__":
    main()
