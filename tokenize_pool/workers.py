"""The tokenize workers: a ``ProcessPoolExecutor`` whose processes keep tokenizers warm.

``WorkerPool`` owns the executor, restarts it if a worker dies, and knows which tokenizers each
worker holds (workers report on a queue when warm, and with every answer). It runs wherever
the pool lives: inside the Sanic process when there is one Sanic worker, or inside the pool
host (``host.py``) that several Sanic workers share.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from tokenize_pool import _worker
from tokenize_pool._wire import KIND_ERROR, KIND_TASK
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import PoolUnavailable

__all__ = ["PoolConfig", "WorkerPool"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """What the pool needs: its size, its tokenizers, and (for a shared host) its socket."""

    socket_path: str = ""
    workers: int = 2
    cache_size: int = 5
    trust_remote_code: bool = False
    preload: tuple[TokenizerKey, ...] = ()
    log_level: str = "INFO"


@dataclass
class _Stats:
    started: float = field(default_factory=time.monotonic)
    tasks: int = 0
    in_flight: int = 0
    restarts: int = 0
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)


class WorkerPool:
    """The executor and what is known of its workers."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.stats = _Stats()
        self._context = multiprocessing.get_context("spawn")
        self._reports: Any = self._context.Queue()
        threading.Thread(target=self._drain_reports, name="pool-reports", daemon=True).start()
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=self._context,
            initializer=_worker.init,
            initargs=(
                self.config.cache_size,
                self.config.trust_remote_code,
                self.config.preload,
                self._reports,
            ),
        )

    def warm_up(self) -> None:
        """Start every worker now; each loads the preloaded tokenizers and reports on the queue.

        With the spawn context the executor starts one process per submit that finds no idle
        worker, so one ping per worker starts them all."""
        for _ in range(self.config.workers):
            self._executor.submit(_worker.handle, pickle.dumps(("ping", {})))

    def _drain_reports(self) -> None:
        while True:
            state = self._reports.get()
            if state is None:
                return
            self.stats.workers[state["pid"]] = state

    async def run(self, payload: bytes) -> tuple[int, bytes]:
        """Run one pickled request in a worker; answers ``(kind, pickled answer)``."""
        loop = asyncio.get_running_loop()
        self.stats.in_flight += 1
        try:
            answer, state = await loop.run_in_executor(self._executor, _worker.handle, payload)
        except BrokenProcessPool:
            logger.error("a tokenize worker died; restarting the pool")
            self.stats.restarts += 1
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            self.warm_up()
            return KIND_ERROR, pickle.dumps(PoolUnavailable("tokenize worker died; the pool was restarted"))
        finally:
            self.stats.in_flight -= 1
        self.stats.tasks += 1
        self.stats.workers[state["pid"]] = state
        return KIND_TASK, answer

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
            "workers": workers,
            "warm": len(workers) == self.config.workers
            and all(set(preload) <= set(w["tokenizers"]) for w in workers),
            "cache_size": self.config.cache_size,
            "tasks": self.stats.tasks,
            "in_flight": self.stats.in_flight,
            "restarts": self.stats.restarts,
            "uptime_s": round(time.monotonic() - self.stats.started, 1),
        }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._reports.put(None)
