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
import functools
import logging
import multiprocessing
import os
import pickle
import signal

from tokenize_pool.errors import PoolUnavailable
from tokenize_pool.heap import freeze_live_objects
from tokenize_pool.ops import Promotion
from tokenize_pool.wire import (
    KIND_ERROR,
    KIND_PROMOTE,
    KIND_STATS,
    KIND_TASK,
    KIND_URGENT,
    read_frame,
    write_frame,
)
from tokenize_pool.workers import PoolConfig, WorkerPool, setup_logging

__all__ = ["PoolConfig", "PoolHost", "start_pool_host"]

logger = logging.getLogger(__name__)


def _forget(promotable: dict[int, Promotion], request_id: int, _: object) -> None:
    promotable.pop(request_id, None)


class PoolHost:
    """Serves the worker pool to any number of clients on one Unix socket."""

    def __init__(self, config: PoolConfig, pool: WorkerPool | None = None) -> None:
        self.config = config
        # ``pool``: tests hand in a stand-in that answers without processes.
        self.pool = pool if pool is not None else WorkerPool(config)

    async def _serve_request(
        self,
        writer: asyncio.StreamWriter,
        request_id: int,
        kind: int,
        payload: bytes,
        promotion: Promotion | None,
    ) -> None:
        if kind == KIND_STATS:
            answer_kind, answer = KIND_STATS, pickle.dumps(await self.pool.stats())
        else:
            try:
                answer_kind = KIND_TASK
                answer = await self.pool.call(payload, urgent=kind == KIND_URGENT, promotion=promotion)
            except PoolUnavailable as exc:
                answer_kind, answer = KIND_ERROR, pickle.dumps(exc)
        if not writer.is_closing():
            write_frame(writer, request_id, answer_kind, answer)

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        # Requests that may still be promoted (KIND_PROMOTE), by id, while they run.
        promotable: dict[int, Promotion] = {}
        try:
            while True:
                request_id, kind, payload = await read_frame(reader)
                if kind == KIND_PROMOTE:
                    promotion = promotable.get(request_id)
                    if promotion is not None:
                        promotion.promote()
                    continue
                promotion = Promotion() if kind == KIND_TASK else None
                task = asyncio.create_task(self._serve_request(writer, request_id, kind, payload, promotion))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if promotion is not None:
                    promotable[request_id] = promotion
                    task.add_done_callback(functools.partial(_forget, promotable, request_id))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
        """Stop when the launcher is gone (killed without a chance to stop us): no orphans.

        ``parent`` is the launcher's pid as the launcher itself gave it: had it died while this
        process was still starting, ``os.getppid()`` read here would already be init's."""
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        logger.warning("launcher %d is gone; stopping the tokenize pool", parent)
        stop.set()

    async def serve_forever(self, parent: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)
        server = await asyncio.start_unix_server(
            self.handle_client, path=self.config.socket_path, limit=2**26
        )
        await self.pool.start()
        freeze_live_objects()
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
            watchdog = asyncio.create_task(self._watch_parent(parent, stop))
            await stop.wait()
            watchdog.cancel()
        await self.pool.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)


def run_host(config: PoolConfig, parent: int) -> None:
    """Process entry point of the pool host; ``parent`` is the launcher's pid."""
    setup_logging(config, "pool-host")
    asyncio.run(PoolHost(config).serve_forever(parent))


def start_pool_host(config: PoolConfig) -> multiprocessing.process.BaseProcess:
    """Start the host as a child of the calling (non-daemon) process; returns once it is spawned.

    Callers wait for readiness through the client, which retries the socket.
    """
    process = multiprocessing.get_context("spawn").Process(
        target=run_host, args=(config, os.getpid()), name="tokenize-pool-host", daemon=False
    )
    process.start()
    return process
