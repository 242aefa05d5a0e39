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
from typing import Any

from tokenize_pool import _worker
from tokenize_pool._wire import KIND_ERROR, KIND_TASK, Channel
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import PoolUnavailable

__all__ = ["PoolConfig", "WorkerPool"]

logger = logging.getLogger(__name__)

RESTART_INTERVAL = 1.0
# Requests a worker holds at once: one it works on and the next, waiting in its socket, so that
# it never idles between answers. The others wait here, where urgent ones go first.
PIPELINE_DEPTH = 2


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
        self._channels: list[Channel] = []
        # Requests sent to (or a slot handed to) each connected worker, at most PIPELINE_DEPTH.
        self._load: dict[Channel, int] = {}
        # Requests waiting for a slot, urgent ones first: futures resolved with the worker's channel.
        self._waiting: tuple[deque[asyncio.Future[Channel]], ...] = (deque(), deque())
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
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_unix_server(self._accept, path=self._path, limit=2**26)
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer, lost=_worker_lost)
        self._channels.append(channel)
        self._load[channel] = 0
        self._hand_out(channel)
        try:
            await channel.closed
        except asyncio.CancelledError:
            pass  # the loop is ending
        finally:
            self._channels.remove(channel)
            del self._load[channel]

    def _drain_reports(self) -> None:
        while True:
            state = self._reports.get()
            if state is None:
                return
            self.stats.workers[state["pid"]] = state

    async def run(
        self, payload: bytes, *, urgent: bool = False, urgent_when: asyncio.Future[None] | None = None
    ) -> tuple[int, bytes]:
        """Run one pickled request in a worker; answers ``(kind, pickled answer)``.

        The request goes to the least loaded worker with a free slot, else waits for one:
        ``urgent`` requests (a rollout's next turn, its trainer idle meanwhile) ahead of the
        others (first prompts, which overlap the first trainer call). A request becomes urgent
        when ``urgent_when`` is done (the trainer answered first: the rollout now waits for it).
        Before any worker has connected (start-up, restart) every request waits, under the
        caller's timeout."""
        self.stats.in_flight += 1
        channel: Channel | None = None
        try:
            channel = await self._slot(
                urgent or (urgent_when is not None and urgent_when.done()), urgent_when
            )
            _, answer_state = await channel.call(KIND_TASK, payload)
            answer, state = pickle.loads(answer_state)
        except PoolUnavailable as exc:
            return KIND_ERROR, pickle.dumps(exc)
        finally:
            self.stats.in_flight -= 1
            if channel is not None:
                self._release(channel)
        self.stats.tasks += 1
        self.stats.workers[state["pid"]] = state
        return KIND_TASK, answer

    async def _slot(self, urgent: bool, urgent_when: asyncio.Future[None] | None) -> Channel:
        # A free slot means no one waits (freed slots are handed to waiters at once).
        channel = min(self._load, key=self._load.__getitem__, default=None)
        if channel is not None and self._load[channel] < PIPELINE_DEPTH:
            self._load[channel] += 1
            return channel
        ticket: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        self._waiting[0 if urgent else 1].append(ticket)
        if not urgent and urgent_when is not None:
            urgent_when.add_done_callback(lambda _: self._promote(ticket))
        try:
            return await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():  # handed a slot, then cancelled
                self._release(ticket.result())
            raise

    def _promote(self, ticket: asyncio.Future[Channel]) -> None:
        """A waiting request became urgent: it moves to the end of the urgent queue."""
        if not ticket.done() and ticket in self._waiting[1]:
            self._waiting[1].remove(ticket)
            self._waiting[0].append(ticket)

    def _release(self, channel: Channel) -> None:
        if channel in self._load:  # else the worker is gone
            self._load[channel] -= 1
            self._hand_out(channel)

    def _hand_out(self, channel: Channel) -> None:
        """Give the channel's free slots to waiting requests, urgent ones first."""
        for queue in self._waiting:
            while queue and self._load[channel] < PIPELINE_DEPTH:
                ticket = queue.popleft()
                if not ticket.done():  # else its caller gave up (timeout)
                    self._load[channel] += 1
                    ticket.set_result(channel)

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
            "workers_connected": len(self._channels),
            "workers": workers,
            "warm": len(workers) == self.config.workers
            and all(set(preload) <= set(w["tokenizers"]) for w in workers),
            "cache_size": self.config.cache_size,
            "tasks": self.stats.tasks,
            "in_flight": self.stats.in_flight,
            "queued": sum(not ticket.done() for queue in self._waiting for ticket in queue),
            "restarts": self.stats.restarts,
            "uptime_s": round(time.monotonic() - self.stats.started, 1),
        }

    async def close(self) -> None:
        """Hang up on every worker (its serve task ends), then stop the executor."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        channels = list(self._channels)
        for channel in channels:
            channel.hang_up()
        if channels:
            await asyncio.wait([channel.closed for channel in channels], timeout=5.0)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._reports.put(None)
        shutil.rmtree(self._directory, ignore_errors=True)
