"""Token throughput of the tokenize pool against the raw tokenizer limit, on the same rendered text.

    python -m bench.throughput [--quick] [--max-workers N] [--tokenizers NAME ...]

For each tokenizer and workload (``bench.workloads``) every conversation is rendered once
in-process; those texts and their ids are the reference for everything else:

- *raw limit*: tokens/s of the Rust tokenizer encoding exactly those texts on all cores, the
  faster of ``encode_batch_fast`` (Rust threads) and one process per core encoding its share
  text by text. Both use the fastest call ``tokenizers`` has (``encode_batch_fast``: ids
  without character offsets, a fifth cheaper than ``encode``), the one the pool uses too;
- *pool*: tokens/s of the real pool driven by a ``PoolClient`` with many concurrent
  ``first_prompt`` calls (render the chat template, then tokenize: what the server does), each
  answer checked against the reference ids. ``--layout in-process`` (the default) runs the pool
  as the server's default layout does, inside the calling process on a uvloop loop (the client
  is then the Sanic process); ``--layout host`` runs the pool host that several Sanic workers
  share, one process hop further;
- *costs* (one pool worker only): CPU per conversation of rendering and of encoding, in-process.

The machine is shared and noisy, so the three are measured in interleaved slices (raw, pool,
costs, raw, pool, costs, ...) until each has run ``--duration`` seconds, and every process's CPU
time is read as well: the ratio per CPU-second does not depend on what other processes do with
the cores, and the share of the machine they took meanwhile is reported. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench._report import RESULTS_DIR, Progress, Series, plot_panels, print_table, write_results
from bench.workloads import QWEN3, QWEN25, Conversation, workloads
from tokenize_pool import HostedPool, PoolClient, PoolConfig, TokenizerKey, start_pool_host
from tokenize_pool.codec import ChatCodec, load_codec
from tokenize_pool.workers import WorkerPool

NAME = "throughput"
TARGET_RATIO = 0.90
SLICES = 4
WARMUP_SECONDS = 0.3
QUICK_WORKLOADS = ("20-turn", "system-1k", "system-8k")
LAYOUTS = ("in-process", "host")
ROLES = ("client", "host", "workers")

Row = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Options:
    tokenizers: tuple[str, ...]
    workloads: tuple[str, ...] | None
    max_workers: int
    duration: float
    count: int
    concurrency: int
    layout: str = LAYOUTS[0]


@dataclass(frozen=True)
class Rendered:
    """One workload rendered once in-process: the reference every measurement is checked against."""

    name: str
    conversations: list[Conversation]
    texts: list[str]
    ids: list[array[int]]

    @property
    def tokens(self) -> list[int]:
        return [len(ids) for ids in self.ids]

    @property
    def total_tokens(self) -> int:
        return sum(len(ids) for ids in self.ids)


def render_workload(codec: ChatCodec, name: str, conversations: list[Conversation]) -> Rendered:
    texts = [codec.render(c, add_generation_prompt=True) for c in conversations]
    return Rendered(name, conversations, texts, [array("i", codec.encode(t)) for t in texts])


def cpu_of(processes: Iterable[psutil.Process]) -> float:
    """CPU seconds (user + system, every thread) the processes have used; gone ones count 0."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def machine_busy() -> float:
    """CPU seconds every process of the machine has used, all cores together."""
    times = psutil.cpu_times()
    return float(
        times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    )


@dataclass
class Tally:
    """A rate measured in slices: units done, wall seconds and CPU seconds, summed over slices."""

    units: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0

    def add(self, units: float, wall: float, cpu: float = 0.0) -> None:
        self.units += units
        self.wall += wall
        self.cpu += cpu

    @property
    def rate(self) -> float:
        return self.units / self.wall if self.wall else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.units / self.cpu if self.cpu else 0.0


def repeat_for(
    work: Callable[[], int], seconds: float, clock: Callable[[], float] = time.perf_counter
) -> tuple[int, float]:
    """Call ``work`` (which returns the units it did) until ``seconds`` of wall time have passed;
    returns (units, time spent on ``clock``)."""
    units, start, wall = 0, clock(), time.perf_counter()
    while True:
        units += work()
        if time.perf_counter() - wall >= seconds:
            return units, clock() - start


def each(function: Callable[[Any], object], items: Sequence[Any], units: int) -> Callable[[], int]:
    """Work for ``repeat_for``: call ``function`` on every item, report ``units`` done."""

    def work() -> int:
        for item in items:
            function(item)
        return units

    return work


def _batch(backend: Any) -> Callable[..., list[Any]]:
    """The backend's fastest batch call: ``encode_batch_fast`` where it exists."""
    return getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # type: ignore[no-any-return]


def batch_slice(codec: ChatCodec, rendered: Rendered, seconds: float) -> tuple[int, float, float]:
    """Raw encoding through ``encode_batch_fast`` (the Rust side spreads the batch over every core):
    (tokens, wall seconds, CPU seconds of this process, Rust threads included)."""
    backend, me = codec._backend, psutil.Process()

    def work() -> int:
        _batch(backend)(rendered.texts, add_special_tokens=False)
        return rendered.total_tokens

    cpu = cpu_of([me])
    tokens, wall = repeat_for(work, seconds)
    return tokens, wall, cpu_of([me]) - cpu


def check_batch(codec: ChatCodec, rendered: Rendered) -> None:
    encoded = _batch(codec._backend)(rendered.texts, add_special_tokens=False)
    if [array("i", e.ids) for e in encoded] != rendered.ids:
        raise RuntimeError(f"encode_batch disagrees with encode on {rendered.name}")


def _raw_worker(key: TokenizerKey, inbox: Any, outbox: Any, barrier: Any) -> None:
    """One process of the multiprocessing raw limit, its tokenizer loaded as the pool loads it."""
    backend = load_codec(key, trust_remote_code=False)._backend

    batch = _batch(backend)

    def encode(text: str) -> object:
        return batch([text], add_special_tokens=False)

    while (job := inbox.get()) is not None:
        texts, tokens, seconds = job
        barrier.wait()
        outbox.put(repeat_for(each(encode, texts, tokens), seconds)[0])


class RawProcesses:
    """One spawned tokenizer process per core, reused for every measurement of one tokenizer."""

    def __init__(self, key: TokenizerKey, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(processes + 1)
        self._outbox = context.Queue()
        self._inboxes = [context.Queue() for _ in range(processes)]
        self._processes = [
            context.Process(target=_raw_worker, args=(key, inbox, self._outbox, self._barrier), daemon=True)
            for inbox in self._inboxes
        ]
        for process in self._processes:
            process.start()
        self.processes = [psutil.Process(p.pid) for p in self._processes]

    @property
    def count(self) -> int:
        return len(self._processes)

    def run(self, rendered: Rendered, seconds: float) -> tuple[int, float, float]:
        """Every process encodes its share for ``seconds``: (tokens, wall seconds from the common
        start to the last one's end, CPU seconds of all of them)."""
        size, tokens = len(rendered.texts), rendered.tokens
        for i, inbox in enumerate(self._inboxes):
            share = list(range(i, size, self.count)) or list(range(size))
            inbox.put(([rendered.texts[j] for j in share], sum(tokens[j] for j in share), seconds))
        self._barrier.wait(timeout=300)
        cpu, start = cpu_of(self.processes), time.perf_counter()
        done = sum(self._outbox.get(timeout=300) for _ in range(self.count))
        return done, time.perf_counter() - start, cpu_of(self.processes) - cpu

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for process in self._processes:
            process.join(10)


def cpu_slice(function: Callable[[Any], object], items: Sequence[Any], seconds: float) -> tuple[int, float]:
    """(items done, CPU seconds of this thread) calling ``function`` on ``items`` for ``seconds``."""
    return repeat_for(each(function, items, len(items)), seconds, clock=time.thread_time)


def _template_only(codec: ChatCodec, rendered: Rendered) -> Callable[[Conversation], str] | None:
    """The compiled Jinja template called directly, skipping ``apply_chat_template``'s own work;
    None where it does not give the same text (then the comparison would mean nothing)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    template = _compile_jinja_template(codec._hf.chat_template)
    extra = dict(codec._hf.special_tokens_map)

    def render(messages: Conversation) -> str:
        return str(template.render(messages=messages, add_generation_prompt=True, **extra))

    same = all(render(c) == t for c, t in zip(rendered.conversations, rendered.texts, strict=True))
    return render if same else None


Probe = tuple[Callable[[Any], object], Sequence[Any]]


def cost_probes(codec: ChatCodec, rendered: Rendered) -> dict[str, Probe]:
    """What one pool call does, piece by piece, to be timed in this process."""
    probes: dict[str, Probe] = {
        "render": (lambda c: codec.render(c, add_generation_prompt=True), rendered.conversations),
        "encode": (codec.encode, rendered.texts),
    }
    template = _template_only(codec, rendered)
    if template is not None:
        probes["template_only"] = (template, rendered.conversations)
    return probes


@dataclass
class PoolTally:
    """Pool calls summed over slices, with the CPU each role (client, host, workers) spent."""

    tokens: int = 0
    calls: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))

    def cpu_ms_per_call(self, role: str) -> float:
        return self.cpu[role] / self.calls * 1000


async def drive(
    client: PoolClient, key: TokenizerKey, rendered: Rendered, seconds: float, concurrency: int
) -> tuple[int, int, float]:
    """``concurrency`` lanes calling ``first_prompt`` until the time is up; (tokens, calls, wall s).

    Every answer must be the reference ids (the encoding of the same rendered text)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    size = len(rendered.conversations)
    totals = [0, 0]

    async def lane(index: int) -> None:
        while loop.time() < deadline:
            i = index % size
            result = await client.first_prompt(key, rendered.conversations[i])
            if result.ids != rendered.ids[i]:
                raise RuntimeError(f"pool answer differs from the in-process encoding ({rendered.name} #{i})")
            totals[0] += len(result.ids)
            totals[1] += 1
            index += concurrency

    start = loop.time()
    await asyncio.gather(*(lane(i) for i in range(concurrency)))
    return totals[0], totals[1], loop.time() - start


async def pings(client: PoolClient, seconds: float, concurrency: int) -> int:
    """``concurrency`` lanes of requests that do no work until the time is up; the calls made."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    calls = [0]

    async def lane() -> None:
        while loop.time() < deadline:
            await client.ping()
            calls[0] += 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return calls[0]


async def _wait_warm(client: PoolClient, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await client.stats(timeout=10.0))["warm"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the tokenize pool did not warm up")
        await asyncio.sleep(0.1)


def _runner() -> asyncio.Runner:
    """A runner on uvloop when installed, as under Sanic."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class PoolDriver:
    """A client of one running pool, on one event loop kept across slices: a pool host's
    (``host_pid``), or a ``WorkerPool`` in this process (``local``), as the server runs it."""

    def __init__(
        self,
        key: TokenizerKey,
        *,
        workers: int,
        concurrency: int,
        socket_path: str = "",
        host_pid: int | None = None,
        local: PoolConfig | None = None,
    ):
        self.key = key
        self.workers = workers
        self.concurrency = concurrency
        self._runner = _runner()
        self._me = psutil.Process()
        self._host = psutil.Process(host_pid) if host_pid is not None else None
        self._local: WorkerPool | None = None
        if local is not None:
            self._local = WorkerPool(local)
            self._runner.run(self._local.start())
            self._client = PoolClient(self._local, timeout=300.0)
        else:
            self._client = PoolClient(HostedPool(socket_path, connect_timeout=120.0), timeout=300.0)
        # No prompt cache: the workloads repeat, and every call must do the pool's work.
        self._client.prompt_cache = 0
        self._runner.run(_wait_warm(self._client))

    def _workers(self) -> list[psutil.Process]:
        if self._host is not None:
            return list(self._host.children())
        assert self._local is not None
        pids = [w["pid"] for w in self._local.snapshot()["workers"]]
        return [psutil.Process(pid) for pid in pids]

    def processes(self) -> list[psutil.Process]:
        """The pool host (if any) and the workers."""
        return [*([self._host] if self._host is not None else []), *self._workers()]

    def _cpu(self) -> dict[str, float]:
        return {
            "client": cpu_of([self._me]),
            "host": cpu_of([self._host] if self._host is not None else []),
            "workers": cpu_of(self._workers()),
        }

    def warm_up(self, rendered: Rendered) -> None:
        """Every worker compiles the template and meets these texts once before it is timed."""
        self._runner.run(drive(self._client, self.key, rendered, WARMUP_SECONDS, self.concurrency))

    def slice(self, rendered: Rendered, seconds: float, tally: PoolTally) -> None:
        before = self._cpu()
        tokens, calls, wall = self._runner.run(
            drive(self._client, self.key, rendered, seconds, self.concurrency)
        )
        after = self._cpu()
        tally.tokens += tokens
        tally.calls += calls
        tally.wall += wall
        for role in ROLES:
            tally.cpu[role] += after[role] - before[role]

    def round_trip(self, seconds: float) -> Row:
        """CPU µs per call, by role, of requests that do no work: what the round trip itself costs."""
        self._runner.run(pings(self._client, WARMUP_SECONDS, self.concurrency))
        before = self._cpu()
        calls = self._runner.run(pings(self._client, seconds, self.concurrency))
        after = self._cpu()
        return {"calls": calls} | {f"{role}_us": (after[role] - before[role]) / calls * 1e6 for role in ROLES}

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()


@contextlib.contextmanager
def running_pool(key: TokenizerKey, workers: int, concurrency: int, layout: str) -> Iterator[PoolDriver]:
    """A real pool with ``workers`` warm workers, laid out as ``layout``, and a driver for it."""
    config = PoolConfig(workers=workers, cache_size=1, preload=(key,), log_level="WARNING")
    if layout == "in-process":
        driver = PoolDriver(key, workers=workers, concurrency=concurrency, local=config)
        try:
            yield driver
        finally:
            driver.close()
        return
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        socket_path = os.path.join(tmp, "pool.sock")
        host = start_pool_host(dataclasses.replace(config, socket_path=socket_path))
        try:
            assert host.pid is not None
            driver = PoolDriver(
                key, workers=workers, concurrency=concurrency, socket_path=socket_path, host_pid=host.pid
            )
            try:
                yield driver
            finally:
                driver.close()
        finally:
            host.terminate()
            host.join(60)


class OthersMeter:
    """The share of the machine's cores that processes other than ours used over a stretch."""

    def __init__(self, ours: Callable[[], list[psutil.Process]]) -> None:
        self._ours = ours
        self._start = (time.perf_counter(), machine_busy(), cpu_of(ours()))

    def share(self) -> float:
        wall, busy, ours = self._start
        others = (machine_busy() - busy) - (cpu_of(self._ours()) - ours)
        return max(0.0, others / ((time.perf_counter() - wall) * (psutil.cpu_count() or 1)))


@dataclass(frozen=True)
class TokenizerRun:
    """Everything the measurements of one tokenizer share."""

    codec: ChatCodec
    rendered: list[Rendered]
    processes: RawProcesses
    options: Options


def measure_workload(run: TokenizerRun, driver: PoolDriver, workload: Rendered) -> tuple[Row, Row]:
    """Raw limit, pool and (with one worker) in-process costs, in interleaved slices.

    Returns the throughput row and the costs (CPU seconds per conversation; empty unless one worker)."""
    slice_seconds = run.options.duration / SLICES
    batch, spread, pool = Tally(), Tally(), PoolTally()
    probes = cost_probes(run.codec, workload) if driver.workers == 1 else {}
    costs = {name: Tally() for name in probes}
    check_batch(run.codec, workload)
    run.processes.run(workload, WARMUP_SECONDS)
    driver.warm_up(workload)
    others = OthersMeter(lambda: [psutil.Process(), *run.processes.processes, *driver.processes()])
    for _ in range(SLICES):
        batch.add(*batch_slice(run.codec, workload, slice_seconds))
        spread.add(*run.processes.run(workload, slice_seconds))
        driver.slice(workload, slice_seconds, pool)
        for name, (function, items) in probes.items():
            costs[name].add(*cpu_slice(function, items, slice_seconds / 4))
    row: Row = {"tokenizer": run.codec.key.name, "workload": workload.name, "workers": driver.workers}
    row |= throughput(batch, spread, pool, driver.workers, run.processes.count)
    row["others_load"] = others.share()
    return row, {f"{name}_s": 1.0 / tally.rate for name, tally in costs.items()}


def throughput(batch: Tally, spread: Tally, pool: PoolTally, workers: int, processes: int) -> Row:
    """Rates and ratios of one measurement: per wall second, and per CPU second of every process."""
    pool_rate, raw_rate = pool.tokens / pool.wall, max(batch.rate, spread.rate)
    pool_cpu_rate, raw_cpu_rate = pool.tokens / sum(pool.cpu.values()), max(batch.cpu_rate, spread.cpu_rate)
    ratio, cpu_ratio = pool_rate / raw_rate, pool_cpu_rate / raw_cpu_rate
    return {
        "pool_tok_s": pool_rate,
        "raw_tok_s": raw_rate,
        "ratio": ratio,
        "pool_tok_cpu_s": pool_cpu_rate,
        "raw_tok_cpu_s": raw_cpu_rate,
        "cpu_ratio": cpu_ratio,
        "judged_ratio": min(ratio, cpu_ratio),
        "raw_via": "batch" if batch.rate >= spread.rate else f"{processes} procs",
        "raw_batch_tok_s": batch.rate,
        "raw_processes_tok_s": spread.rate,
        "calls": pool.calls,
        "tokens": pool.tokens,
        "wall_s": pool.wall,
        "worker_busy": pool.cpu["workers"] / (pool.wall * workers),
        **{f"{role}_cpu_ms": pool.cpu_ms_per_call(role) for role in ROLES},
    }


def run_tokenizer(name: str, options: Options, progress: Progress) -> tuple[list[Row], list[Row], Row]:
    """Every measurement of one tokenizer: (throughput rows, breakdown rows, the round trip with
    one worker)."""
    key = TokenizerKey(name)
    processes = RawProcesses(key, os.cpu_count() or 1)
    try:
        codec = load_codec(key, trust_remote_code=False)
        chosen = {
            wname: convs
            for wname, convs in workloads(name, count=options.count).items()
            if options.workloads is None or wname in options.workloads
        }
        rendered = [render_workload(codec, n, c) for n, c in chosen.items()]
        run = TokenizerRun(codec, rendered, processes, options)
        rows: list[Row] = []
        costs: dict[str, Row] = {}
        for workers in range(1, options.max_workers + 1):
            with running_pool(key, workers, options.concurrency, options.layout) as driver:
                for workload in rendered:
                    progress.step(f"pool workers={workers} tokenizer={name} workload={workload.name}")
                    row, cost = measure_workload(run, driver, workload)
                    rows.append(row)
                    if cost:
                        costs[workload.name] = cost
                if workers == 1:
                    trip = {"tokenizer": name} | driver.round_trip(options.duration)
    finally:
        processes.close()
    return rows, [breakdown(w, costs[w.name], rows) for w in rendered], trip


def breakdown(workload: Rendered, costs: Row, rows: list[Row]) -> Row:
    """CPU per call with one pool worker: render and encode (measured in-process), and IPC, which
    is the rest of the worker's CPU (unpickling, pickling, queues) plus the host's and client's."""
    one = next(r for r in rows if r["workload"] == workload.name and r["workers"] == 1)
    render, encode = costs["render_s"] * 1000, costs["encode_s"] * 1000
    worker_ipc = one["workers_cpu_ms"] - render - encode
    ipc = worker_ipc + one["host_cpu_ms"] + one["client_cpu_ms"]
    total = render + encode + ipc
    template = costs.get("template_only_s")
    # A worker that reuses a workload's long stretches encodes less than the whole text, so its
    # CPU minus a whole encode is no measure of its IPC: the split is left out ("-"), not negative.
    split = worker_ipc >= 0
    return {
        "tokenizer": one["tokenizer"],
        "workload": workload.name,
        "tokens_per_call": workload.total_tokens / len(workload.texts),
        "pool_ms": one["wall_s"] / one["calls"] * 1000,
        "render_ms": render,
        "encode_ms": encode,
        "ipc_ms": ipc if split else None,
        "worker_ipc_ms": worker_ipc if split else None,
        "host_ms": one["host_cpu_ms"],
        "client_ms": one["client_cpu_ms"],
        "render_share": render / total if split else None,
        "encode_share": encode / total if split else None,
        "ipc_share": ipc / total if split else None,
        "template_only_ms": None if template is None else template * 1000,
    }


def best_rows(rows: list[Row]) -> list[Row]:
    """For each (tokenizer, workload), the pool size with the best judged ratio."""
    best: dict[tuple[str, str], Row] = {}
    for row in rows:
        group = (row["tokenizer"], row["workload"])
        if group not in best or row["judged_ratio"] > best[group]["judged_ratio"]:
            best[group] = row
    return [row | {"meets_target": row["judged_ratio"] >= TARGET_RATIO} for row in best.values()]


def verdicts(best: list[Row], parts: list[Row]) -> list[str]:
    """One paragraph per (tokenizer, workload): the ratios, and where the CPU goes per call."""
    by_group = {(p["tokenizer"], p["workload"]): p for p in parts}
    lines = []
    for row in best:
        part = by_group[(row["tokenizer"], row["workload"])]
        status = "meets" if row["meets_target"] else "is below"
        if row["cpu_ratio"] > 1 or part["ipc_share"] is None:
            # Beyond the raw limit: the workers reused ids, so the split below would be negative.
            costs = "The pool reuses this workload's long stretches (its worker encodes less than the text)."
        else:
            costs = (
                f"CPU per call with one worker: render {part['render_share']:.0%}, "
                f"encode {part['encode_share']:.0%}, IPC {part['ipc_share']:.0%} "
                f"(worker {part['worker_ipc_ms']:.2f} ms, host {part['host_ms']:.2f} ms, "
                f"client {part['client_ms']:.2f} ms)."
            )
        lines.append(
            f"{row['tokenizer']} {row['workload']} (best at {row['workers']} worker{'s' * (row['workers'] > 1)}): "
            f"{row['judged_ratio']:.2f} {status} the {TARGET_RATIO:.2f} target "
            f"(wall {row['ratio']:.2f} while other processes took {row['others_load']:.0%} of the machine; "
            f"per CPU-second {row['cpu_ratio']:.2f}). {costs}"
        )
    return lines


def plot(rows: list[Row], path: Path) -> Path:
    """Pool tokens against pool workers, per wall second and per CPU-second, one row of panels per
    tokenizer; dashed, the best raw rate seen for the same workload."""
    panels: dict[str, list[Series]] = {}
    for tokenizer in dict.fromkeys(r["tokenizer"] for r in rows):
        for workload in dict.fromkeys(r["workload"] for r in rows if r["tokenizer"] == tokenizer):
            mine = [r for r in rows if r["tokenizer"] == tokenizer and r["workload"] == workload]
            for per, pool, raw in (
                ("wall", "pool_tok_s", "raw_tok_s"),
                ("CPU", "pool_tok_cpu_s", "raw_tok_cpu_s"),
            ):
                series = Series(
                    label=workload,
                    xs=[r["workers"] for r in mine],
                    ys=[r[pool] for r in mine],
                    reference=max(r[raw] for r in mine),
                )
                panels.setdefault(f"{tokenizer}, tokens per {per} second", []).append(series)
    # Log scale: workloads whose stretches recur run 5-12x above the others, which a linear
    # axis would flatten to the floor, hiding the ones that miss the target.
    return plot_panels(
        path,
        panels,
        xlabel="pool workers",
        ylabel="tokens",
        title="tokenize pool vs raw limit (dashed)",
        log_y=True,
    )


THROUGHPUT_COLUMNS = {
    "tokenizer": "tokenizer",
    "workload": "workload",
    "workers": "pool workers",
    "pool_tok_s": "pool tok/s",
    "raw_tok_s": "raw tok/s (all cores)",
    "raw_via": "raw via",
    "ratio": "ratio",
    "pool_tok_cpu_s": "pool tok/cpu-s",
    "raw_tok_cpu_s": "raw tok/cpu-s",
    "cpu_ratio": "cpu ratio",
    "worker_busy": "worker busy",
    "others_load": "others' load",
}
BEST_COLUMNS = {
    "tokenizer": "tokenizer",
    "workload": "workload",
    "workers": "best workers",
    "pool_tok_s": "pool tok/s",
    "raw_tok_s": "raw tok/s",
    "ratio": "ratio",
    "cpu_ratio": "cpu ratio",
    "judged_ratio": "judged",
    "meets_target": f">= {TARGET_RATIO:.2f}",
}
BREAKDOWN_COLUMNS = {
    "tokenizer": "tokenizer",
    "workload": "workload",
    "tokens_per_call": "tokens/call",
    "pool_ms": "pool wall ms",
    "render_ms": "render",
    "encode_ms": "encode",
    "ipc_ms": "ipc",
    "worker_ipc_ms": "(worker",
    "host_ms": "host",
    "client_ms": "client)",
    "render_share": "render %",
    "encode_share": "encode %",
    "ipc_share": "ipc %",
    "template_only_ms": "jinja-only",
}


ROUND_TRIP_COLUMNS = {
    "tokenizer": "tokenizer",
    "calls": "calls",
    "client_us": "client µs/call",
    "host_us": "host µs/call",
    "workers_us": "worker µs/call",
}


def report(rows: list[Row], parts: list[Row], trips: list[Row], options: Options) -> None:
    best = best_rows(rows)
    print_table(rows, THROUGHPUT_COLUMNS, title="Pool throughput against the raw limit (same rendered text)")
    print_table(
        best, BEST_COLUMNS, title=f"Best pool size (judged = min(ratio, cpu ratio), target {TARGET_RATIO})"
    )
    print_table(
        parts,
        BREAKDOWN_COLUMNS,
        title="CPU ms per call with one pool worker (ipc = all CPU but render/encode)",
    )
    print_table(
        trips,
        ROUND_TRIP_COLUMNS,
        title=f"The round trip alone: requests that do no work (ping), one worker, {options.concurrency} in flight",
    )
    print()
    for line in verdicts(best, parts):
        print(line)
    payload = {
        "options": vars(options),
        "target_ratio": TARGET_RATIO,
        "rows": rows,
        "best": best,
        "breakdown": parts,
        "round_trip": trips,
    }
    path = write_results(NAME, payload)
    png = plot(rows, RESULTS_DIR / f"{NAME}-latest.png")
    print(f"\nresults: {path}\nplot:    {png}")


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"about a minute: Qwen3 only, workloads {', '.join(QUICK_WORKLOADS)}",
    )
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1, help="pool sizes 1..N")
    parser.add_argument("--tokenizers", nargs="+", help=f"default: {QWEN3} {QWEN25} ({QWEN3} with --quick)")
    parser.add_argument("--workloads", nargs="+", help="names from bench.workloads (default: all)")
    parser.add_argument(
        "--duration", type=float, help="seconds per measurement (default 2, 1.5 with --quick)"
    )
    parser.add_argument("--count", type=int, help="conversations per workload (default 32, 8 with --quick)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent pool calls (default 64)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=LAYOUTS[0],
        help="the pool inside this process, as the server's default layout runs it (default), or a pool host",
    )
    args = parser.parse_args(argv)
    chosen = args.workloads or (list(QUICK_WORKLOADS) if args.quick else None)
    return Options(
        tokenizers=tuple(args.tokenizers or ([QWEN3] if args.quick else [QWEN3, QWEN25])),
        workloads=tuple(chosen) if chosen else None,
        max_workers=max(1, args.max_workers),
        duration=args.duration or (1.5 if args.quick else 2.0),
        count=args.count or (8 if args.quick else 32),
        concurrency=args.concurrency,
        layout=args.layout,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    workload_count = len(options.workloads) if options.workloads else len(workloads(QWEN3, count=1))
    progress = Progress(len(options.tokenizers) * workload_count * options.max_workers)
    rows: list[Row] = []
    parts: list[Row] = []
    trips: list[Row] = []
    for name in options.tokenizers:
        tokenizer_rows, tokenizer_parts, trip = run_tokenizer(name, options, progress)
        rows += tokenizer_rows
        parts += tokenizer_parts
        trips.append(trip)
    report(rows, parts, trips, options)


if __name__ == "__main__":
    main()
