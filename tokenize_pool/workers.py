"""The tokenize workers: a ``ProcessPoolExecutor`` whose processes keep tokenizers warm.

``WorkerPool`` owns the executor, restarts it if a worker dies, and knows which tokenizers each
worker holds (workers report on a queue when warm, and with every answer). It runs wherever
the pool lives: inside the Sanic process when there is one Sanic worker, or inside the pool
host (``host.py``) that several Sanic workers share.

How requests reach the workers. The executor starts, warms (its initializer loads the
tokenizers) and, when one dies, replaces the worker processes; each worker then runs one long
task, ``_worker.serve``, that connects back to this pool over a Unix socket in a private
directory and answers requests there. A call is then one frame out and one frame back on the
event loop. Submitting each call to the executor instead passes it through two helper threads
(its manager and its queue feeder), three pipes and as many GIL hand-offs: 0.12–0.32 ms of CPU in
this process and 0.05–0.12 ms in the worker per call, against 0.05 ms in this process this way
(micro-benchmarks, 1–64 calls in flight); in the CPU-target scenario of ``bench.e2e`` the server's
CPU per rollout fell by 18 % (README, "Process layout").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, cast

from tokenize_pool import _worker
from tokenize_pool._wire import FRAME_HEADER, KIND_ERROR, KIND_TASK, frame, hang_up, read_header
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import PoolUnavailable

__all__ = ["PoolConfig", "WorkerPool"]

logger = logging.getLogger(__name__)

RESTART_INTERVAL = 1.0
# Requests a worker holds at once (the others wait here, where urgent ones go first): at least
# one it works on and the next, waiting in its socket, so that it never idles between answers;
# more when its requests are short, enough for about PIPELINE_SECONDS of work. An urgent request
# then waits about that long at most in a worker, while a loop busy with a wave of arrivals (4 ms
# iterations) still keeps it busy: with two places, short first prompts (0.07 ms of work) reached
# a worker about two per iteration, and it idled.
PIPELINE_DEPTH = 2
PIPELINE_MAX = 32
PIPELINE_SECONDS = 0.002
# How fast a worker's recent seconds per request fall back after a long request (each answer
# moves them this much of the way).
SERVICE_WEIGHT = 0.1


def _worker_lost() -> PoolUnavailable:
    return PoolUnavailable("tokenize worker died; the pool was restarted")


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """What the pool needs: its size, its tokenizers, and (for a shared host) its socket."""

    socket_path: str = ""
    workers: int = 2
    cache_size: int = 5
    trust_remote_code: bool = False
    preload: tuple[TokenizerKey, ...] = ()
    log_level: str = "INFO"
    # How the pool's processes (host, workers) set up logging, e.g. the server's JSON format: a
    # picklable callable (a module-level function or a functools.partial of one). None: plain text.
    log_setup: Callable[[], None] | None = None


@dataclass
class _Stats:
    started: float = field(default_factory=time.monotonic)
    tasks: int = 0
    in_flight: int = 0
    restarts: int = 0
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)


class _Job:
    """One request for a worker: its pickled payload, and the future of its answer."""

    __slots__ = ("payload", "answer")

    def __init__(self, payload: bytes, answer: asyncio.Future[bytes]) -> None:
        self.payload = payload
        self.answer = answer


class _WorkerLink(asyncio.Protocol):
    """The pool's end of one worker's connection. Answers are read in the callback that receives
    them, and the worker's freed places are refilled there at once (``WorkerPool._fill``): the
    worker waits for no coroutine to wake up, however long the event loop's iterations are."""

    def __init__(self, pool: WorkerPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        # Requests sent and not yet answered, by request id: what the worker holds.
        self.jobs: dict[int, _Job] = {}
        self.ids = itertools.count(1)
        self._buffer = bytearray()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._pool._connected(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start, size = 0, len(buffer)
        with memoryview(buffer) as view:  # each answer copied out once, not twice
            while size - start >= FRAME_HEADER:
                length, request_id, _ = read_header(buffer, start)
                end = start + 4 + length
                if end > size:
                    break
                job = self.jobs.pop(request_id, None)
                if job is not None and not job.answer.done():  # else its caller gave up
                    job.answer.set_result(view[start + FRAME_HEADER : end].tobytes())
                start = end
        del buffer[:start]
        self._pool._fill(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool._disconnected(self)
        jobs, self.jobs = self.jobs, {}
        for job in jobs.values():
            if not job.answer.done():
                job.answer.set_exception(_worker_lost())
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def hang_up(self) -> None:
        """End the connection now, so that the worker sees end of stream even if this event loop
        does not run again (shutdown)."""
        if self.transport is not None:
            hang_up(self.transport)


class WorkerPool:
    """The executor, the workers' connections, and what is known of the workers.

    ``start()`` (in the event loop that will call ``run``) starts the workers."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.stats = _Stats()
        self._context = multiprocessing.get_context("spawn")
        self._reports: Any = self._context.Queue()
        threading.Thread(target=self._drain_reports, name="pool-reports", daemon=True).start()
        self._executor = self._new_executor()
        self._links: list[_WorkerLink] = []
        # Requests waiting for a place in a worker, urgent ones first.
        self._waiting: tuple[deque[_Job], ...] = (deque(), deque())
        # Seconds a worker took per request, lately (each answer says): sets the pipeline depth.
        self._service = PIPELINE_SECONDS / PIPELINE_DEPTH
        self._server: asyncio.AbstractServer | None = None
        # 0700: only this user can connect and pose as a worker.
        self._directory = tempfile.mkdtemp(prefix="rollout-pool-")
        self._path = os.path.join(self._directory, "workers.sock")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._restarted = 0.0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=self._context,
            initializer=_worker.init,
            initargs=(self.config, self._reports),
        )

    async def start(self) -> None:
        """Listen for the workers and start them: each loads the preloaded tokenizers, reports
        on the queue, and connects. Returns at once; calls wait for a first connection."""
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _WorkerLink(self, loop), path=self._path)
        self._start_serving()

    def _start_serving(self, count: int | None = None) -> None:
        # With the spawn context the executor starts one process per submit that finds no idle
        # worker, and a worker runs one task at a time: one serve task per worker.
        executor = self._executor
        for _ in range(self.config.workers if count is None else count):
            future = executor.submit(_worker.serve, self._path)
            future.add_done_callback(functools.partial(self._served, executor))

    def _served(self, executor: ProcessPoolExecutor, future: Future[None]) -> None:
        """Runs in the executor's thread when a serve task ends, which it should only do when
        the pool closes: a dead worker restarts the executor, any other end serves again."""
        if future.cancelled() or self._loop is None or self._closing:
            return
        error = future.exception()
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(self._schedule_restart, executor, error)

    def _schedule_restart(self, executor: ProcessPoolExecutor, error: BaseException | None) -> None:
        # At most one restart a second: a worker that dies while starting must not spin.
        delay = max(0.0, RESTART_INTERVAL - (time.monotonic() - self._restarted))
        asyncio.get_running_loop().call_later(delay, self._restart, executor, error)

    def _restart(self, executor: ProcessPoolExecutor, error: BaseException | None) -> None:
        if self._closing or executor is not self._executor:
            return  # shutting down, or restarted already (every serve task of it ends alike)
        self._restarted = time.monotonic()
        if not isinstance(error, BrokenProcessPool):
            logger.error("a tokenize worker stopped serving (%r); starting it again", error)
            self._start_serving(1)
            return
        logger.error("a tokenize worker died; restarting the pool")
        self.stats.restarts += 1
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        self._start_serving()

    def _connected(self, link: _WorkerLink) -> None:
        self._links.append(link)
        self._fill(link)

    def _disconnected(self, link: _WorkerLink) -> None:
        with contextlib.suppress(ValueError):
            self._links.remove(link)

    def _drain_reports(self) -> None:
        while True:
            state = self._reports.get()
            if state is None:
                return
            self.stats.workers[state["pid"]] = state

    @property
    def depth(self) -> int:
        """Requests a worker holds at once: enough for ``PIPELINE_SECONDS`` of its recent work,
        at least ``PIPELINE_DEPTH``, at most ``PIPELINE_MAX``."""
        # (A worker whose requests took no measurable time gets the most.)
        return max(PIPELINE_DEPTH, min(PIPELINE_MAX, int(PIPELINE_SECONDS / max(self._service, 1e-9))))

    async def run(
        self, payload: bytes, *, urgent: bool = False, urgent_when: asyncio.Future[None] | None = None
    ) -> tuple[int, bytes]:
        """Run one pickled request in a worker; answers ``(kind, pickled answer)``.

        The request goes to the least loaded worker with a free place, else waits for one:
        ``urgent`` requests (a rollout's next turn, its trainer idle meanwhile) ahead of the
        others (first prompts, which overlap the first trainer call). A request becomes urgent
        when ``urgent_when`` is done (the trainer answered first: the rollout now waits for it).
        Before any worker has connected (start-up, restart) every request waits, under the
        caller's timeout."""
        urgent = urgent or (urgent_when is not None and urgent_when.done())
        job = _Job(payload, asyncio.get_running_loop().create_future())
        self._waiting[0 if urgent else 1].append(job)
        if not urgent and urgent_when is not None:
            urgent_when.add_done_callback(lambda _: self._promote(job))
        self.stats.in_flight += 1
        try:
            link = min(self._links, key=lambda link: len(link.jobs), default=None)
            if link is not None:
                self._fill(link)
            answer_state = await job.answer
        except PoolUnavailable as exc:
            return KIND_ERROR, pickle.dumps(exc)
        finally:
            self.stats.in_flight -= 1
        answer, state, seconds = pickle.loads(answer_state)
        # Up at once, down slowly: after a long request the pipeline is short again at once.
        self._service = max(seconds, self._service + SERVICE_WEIGHT * (seconds - self._service))
        self.stats.tasks += 1
        self.stats.workers[state["pid"]] = state
        return KIND_TASK, answer

    def _promote(self, job: _Job) -> None:
        """A waiting request became urgent: it moves to the end of the urgent queue."""
        if not job.answer.done() and job in self._waiting[1]:
            self._waiting[1].remove(job)
            self._waiting[0].append(job)

    def _fill(self, link: _WorkerLink) -> None:
        """Send the worker waiting requests, urgent ones first, until it holds ``depth``; in one write."""
        if not link.open:
            return
        depth, frames = self.depth, []
        while len(link.jobs) < depth and (job := self._next_job()) is not None:
            request_id = next(link.ids)
            link.jobs[request_id] = job
            frames.append(frame(request_id, KIND_TASK, job.payload))
        if frames:
            assert link.transport is not None
            link.transport.write(b"".join(frames))

    def _next_job(self) -> _Job | None:
        for queue in self._waiting:
            while queue:
                job = queue.popleft()
                if not job.answer.done():  # else its caller gave up (timeout)
                    return job
        return None

    def snapshot(self) -> dict[str, Any]:
        processes = getattr(self._executor, "_processes", None) or {}
        alive = {pid for pid, proc in processes.items() if proc.is_alive()}
        for pid in list(self.stats.workers):
            if pid not in alive:
                del self.stats.workers[pid]
        preload = [str(k) for k in self.config.preload]
        workers = [self.stats.workers.get(pid, {"pid": pid, "tokenizers": []}) for pid in sorted(alive)]
        return {
            "pid": os.getpid(),
            "workers_configured": self.config.workers,
            "workers_alive": len(alive),
            "workers_connected": len(self._links),
            "workers": workers,
            "warm": len(workers) == self.config.workers
            and all(set(preload) <= set(w["tokenizers"]) for w in workers),
            "cache_size": self.config.cache_size,
            "tasks": self.stats.tasks,
            "in_flight": self.stats.in_flight,
            "queued": sum(not job.answer.done() for queue in self._waiting for job in queue),
            "pipeline_depth": self.depth,
            "restarts": self.stats.restarts,
            "uptime_s": round(time.monotonic() - self.stats.started, 1),
        }

    async def close(self) -> None:
        """Hang up on every worker (its serve task ends), then stop the executor."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        for link in links:
            link.hang_up()
        if links:
            await asyncio.wait([link.closed for link in links], timeout=5.0)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._reports.put(None)
        shutil.rmtree(self._directory, ignore_errors=True)
