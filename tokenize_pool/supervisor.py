"""The worker processes: started, kept serving, replaced when one dies, and what they report.

The ``ProcessPoolExecutor`` starts the processes, warms them (its initializer loads the
tokenizers) and, when one dies, is replaced by a new one. Each worker runs one long task,
``_worker.serve``, that connects back to the pool's Unix socket and answers requests there:
a call is then one frame out and one frame back on the event loop, where submitting each call
to the executor would pass it through two helper threads, three pipes and as many GIL hand-offs
(bench/README.md, "What each change bought").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenize_pool import _worker

if TYPE_CHECKING:
    from tokenize_pool.workers import PoolConfig

__all__ = ["RESTART_INTERVAL", "RestartSpacing", "Supervisor"]

logger = logging.getLogger("tokenize_pool.workers")  # the name its lines had before the split

RESTART_INTERVAL = 1.0


@dataclass
class RestartSpacing:
    """At most one restart every ``interval`` seconds: a worker that dies while starting must not
    make the pool spin. ``clock`` is injectable so that the rule is tested without waiting."""

    interval: float = RESTART_INTERVAL
    clock: Callable[[], float] = time.monotonic
    last: float = float("-inf")

    def delay(self) -> float:
        """Seconds to wait before the next restart may start."""
        return max(0.0, self.interval - (self.clock() - self.last))

    def restarted(self) -> None:
        self.last = self.clock()


@dataclass
class WorkerReports:
    """What the workers said of themselves (pid, tokenizers, cache hits), by pid."""

    restarts: int = 0
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)


class Supervisor:
    """Owns the executor: starts one serve task per worker, and restarts it when a worker dies."""

    def __init__(self, config: PoolConfig, socket_path: str) -> None:
        self.config = config
        self.reports = WorkerReports()
        self._path = socket_path
        self._context = multiprocessing.get_context("spawn")
        self._queue: Any = self._context.Queue()
        threading.Thread(target=self._drain_reports, name="pool-reports", daemon=True).start()
        self._executor = self._new_executor()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._spacing = RestartSpacing()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=self._context,
            initializer=_worker.init,
            initargs=(self.config, self._queue),
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every worker; restarts are scheduled on ``loop``."""
        self._loop = loop
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
        asyncio.get_running_loop().call_later(self._spacing.delay(), self._restart, executor, error)

    def _restart(self, executor: ProcessPoolExecutor, error: BaseException | None) -> None:
        if self._closing or executor is not self._executor:
            return  # shutting down, or restarted already (every serve task of it ends alike)
        self._spacing.restarted()
        if not isinstance(error, BrokenProcessPool):
            logger.error("a tokenize worker stopped serving (%r); starting it again", error)
            self._start_serving(1)
            return
        logger.error("a tokenize worker died; restarting the pool")
        self.reports.restarts += 1
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        self._start_serving()

    def _drain_reports(self) -> None:
        while True:
            state = self._queue.get()
            if state is None:
                return
            self.reports.workers[state["pid"]] = state

    def alive(self) -> list[dict[str, Any]]:
        """The latest report of every live worker (a bare one if it has not reported yet); the
        reports of dead workers are dropped."""
        processes = getattr(self._executor, "_processes", None) or {}
        alive = {pid for pid, proc in processes.items() if proc.is_alive()}
        for pid in list(self.reports.workers):
            if pid not in alive:
                del self.reports.workers[pid]
        return [self.reports.workers.get(pid, {"pid": pid, "tokenizers": []}) for pid in sorted(alive)]

    def stopping(self) -> None:
        """The pool is closing: a serve task that ends now is not replaced."""
        self._closing = True

    async def close(self) -> None:
        """Stop the executor (its serve tasks must have ended or be ending) and the reports."""
        self._closing = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._queue.put(None)
