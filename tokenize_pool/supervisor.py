"""The worker processes: started, kept serving, replaced when one dies, and what they report.

Each worker slot has its own one-process ``ProcessPoolExecutor``: it starts the process, warms it
(its initializer loads the tokenizers) and, when the process dies, the slot's executor alone is
replaced. One executor for every worker would break as a whole when one of its processes dies,
and take with it the requests the other workers held. Each worker runs one long task,
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
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tokenize_pool.workers import PoolConfig

__all__ = ["RESTART_INTERVAL", "RestartSpacing", "Supervisor", "after_serving"]

logger = logging.getLogger("tokenize_pool.workers")  # the name its lines had before the split

RESTART_INTERVAL = 1.0

Step = Literal["nothing", "serve", "replace"]


# The executor's entry points: they import the worker's code in the worker, so that the process
# that owns the pool (a Sanic worker, or the pool host) never imports it.
def _init_worker(config: PoolConfig, reports: Any) -> None:
    from tokenize_pool import _worker

    _worker.init(config, reports)


def _serve_worker(path: str) -> None:
    from tokenize_pool import _worker

    _worker.serve(path)


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


def after_serving(*, closing: bool, current: bool, error: BaseException | None) -> Step:
    """What a worker slot does when its serve task ended: nothing while the pool closes or if the
    task was of an executor already replaced; a new executor if its process died (the executor is
    broken); else the process lives and serves again (its connection ended)."""
    if closing or not current:
        return "nothing"
    return "replace" if isinstance(error, BrokenProcessPool) else "serve"


@dataclass
class WorkerReports:
    """What the workers said of themselves (pid, tokenizers, cache hits), by pid."""

    restarts: int = 0
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass(eq=False)
class _Slot:
    """One worker's place: its one-process executor, replaced alone, at its own spacing."""

    executor: ProcessPoolExecutor
    spacing: RestartSpacing = field(default_factory=RestartSpacing)

    def pids(self) -> set[int]:
        processes = getattr(self.executor, "_processes", None) or {}
        return {pid for pid, process in processes.items() if process.is_alive()}


class Supervisor:
    """Owns the worker slots: starts one serve task in each, and restarts a slot whose worker
    died (the other slots serve on)."""

    def __init__(self, config: PoolConfig, socket_path: str) -> None:
        self.config = config
        self.reports = WorkerReports()
        self._path = socket_path
        self._context = multiprocessing.get_context("spawn")
        self._queue: Any = self._context.Queue()
        threading.Thread(target=self._drain_reports, name="pool-reports", daemon=True).start()
        self._slots = [_Slot(self._new_executor()) for _ in range(config.workers)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self.config, self._queue),
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every worker; restarts are scheduled on ``loop``."""
        self._loop = loop
        for slot in self._slots:
            self._serve(slot)

    def _serve(self, slot: _Slot) -> None:
        # The executor starts its process at the first submit; the process runs one task at a
        # time, and this one lasts as long as its connection.
        executor = slot.executor
        future = executor.submit(_serve_worker, self._path)
        future.add_done_callback(functools.partial(self._served, slot, executor))

    def _served(self, slot: _Slot, executor: ProcessPoolExecutor, future: Future[None]) -> None:
        """Runs in the executor's thread when a serve task ends, which it should only do when
        the pool closes; else the slot serves again, or restarts if its worker died."""
        if future.cancelled() or self._loop is None or self._closing:
            return
        error = future.exception()
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(self._schedule_restart, slot, executor, error)

    def _schedule_restart(
        self, slot: _Slot, executor: ProcessPoolExecutor, error: BaseException | None
    ) -> None:
        asyncio.get_running_loop().call_later(slot.spacing.delay(), self._restart, slot, executor, error)

    def _restart(self, slot: _Slot, executor: ProcessPoolExecutor, error: BaseException | None) -> None:
        step = after_serving(closing=self._closing, current=executor is slot.executor, error=error)
        if step == "nothing":
            return
        slot.spacing.restarted()
        if step == "serve":
            logger.error("a tokenize worker stopped serving (%r); starting it again", error)
        else:
            logger.error("a tokenize worker died; restarting it (the other workers serve on)")
            self.reports.restarts += 1
            executor.shutdown(wait=False, cancel_futures=True)
            slot.executor = self._new_executor()
        self._serve(slot)

    def _drain_reports(self) -> None:
        while True:
            state = self._queue.get()
            if state is None:
                return
            self.reports.workers[state["pid"]] = state

    def alive(self) -> list[dict[str, Any]]:
        """The latest report of every live worker (a bare one if it has not reported yet); the
        reports of dead workers are dropped."""
        alive = set().union(*(slot.pids() for slot in self._slots))
        for pid in list(self.reports.workers):
            if pid not in alive:
                del self.reports.workers[pid]
        return [self.reports.workers.get(pid, {"pid": pid, "tokenizers": []}) for pid in sorted(alive)]

    def stopping(self) -> None:
        """The pool is closing: a serve task that ends now is not replaced."""
        self._closing = True

    async def close(self) -> None:
        """Stop the executors (their serve tasks must have ended or be ending) and the reports."""
        self._closing = True
        await asyncio.gather(
            *(asyncio.to_thread(s.executor.shutdown, wait=True, cancel_futures=True) for s in self._slots)
        )
        self._queue.put(None)
