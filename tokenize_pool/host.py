"""The pool host: one process that owns the ``ProcessPoolExecutor`` and serves it on a Unix socket.

Why a host process: Sanic workers are daemon processes and may not start children, so none of
them can own a process pool; and one pool shared by every Sanic worker keeps exactly one warm
copy of each tokenizer per CPU instead of one per (Sanic worker x CPU). The launcher (not a
daemon) starts the host before Sanic, and every Sanic worker connects to its socket.

The host never unpickles a payload: it hands the request bytes to a worker and the answer bytes
back, so its own CPU cost per call is a few microseconds of framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from tokenize_pool import _worker
from tokenize_pool._wire import KIND_ERROR, KIND_STATS, KIND_TASK, read_frame, write_frame
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import PoolUnavailable

__all__ = ["PoolConfig", "PoolHost", "start_pool_host"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """What the pool host needs: its socket, its size, and its tokenizers."""

    socket_path: str
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


class PoolHost:
    """Serves pool requests from any number of clients on one Unix socket."""

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

    async def _run(self, payload: bytes) -> tuple[int, bytes]:
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

    async def _serve_request(
        self, writer: asyncio.StreamWriter, request_id: int, kind: int, payload: bytes
    ) -> None:
        if kind == KIND_STATS:
            answer_kind, answer = KIND_STATS, pickle.dumps(self.snapshot())
        else:
            answer_kind, answer = await self._run(payload)
        if not writer.is_closing():
            write_frame(writer, request_id, answer_kind, answer)

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                request_id, kind, payload = await read_frame(reader)
                task = asyncio.create_task(self._serve_request(writer, request_id, kind, payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _watch_parent(stop: asyncio.Event) -> None:
        """Stop when the launcher is gone (killed without a chance to stop us): no orphans."""
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        logger.warning("launcher %d is gone; stopping the tokenize pool", parent)
        stop.set()

    async def serve_forever(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)
        server = await asyncio.start_unix_server(
            self.handle_client, path=self.config.socket_path, limit=2**26
        )
        self.warm_up()
        logger.info(
            "tokenize pool host %d serving %s with %d workers",
            os.getpid(),
            self.config.socket_path,
            self.config.workers,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            watchdog = asyncio.create_task(self._watch_parent(stop))
            await stop.wait()
            watchdog.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)


def run_host(config: PoolConfig) -> None:
    """Process entry point of the pool host."""
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s pool-host[%(process)d] %(message)s"
    )
    asyncio.run(PoolHost(config).serve_forever())


def start_pool_host(config: PoolConfig) -> multiprocessing.process.BaseProcess:
    """Start the host as a child of the calling (non-daemon) process; returns once it is spawned.

    Callers wait for readiness through the client, which retries the socket.
    """
    process = multiprocessing.get_context("spawn").Process(
        target=run_host, args=(config,), name="tokenize-pool-host", daemon=False
    )
    process.start()
    return process
