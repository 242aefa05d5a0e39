"""The tokenize workers: a ``ProcessPoolExecutor`` whose processes keep tokenizers warm.

``WorkerPool`` is where three units meet: the ``Supervisor`` (``supervisor.py``) starts the
processes and replaces them, the ``Scheduler`` (``scheduler.py``) decides which waiting request a
worker gets next and how many it holds, and each ``WorkerLink`` (``_link.py``) carries frames to
one worker and its answers back. The pool runs wherever it lives: inside the Sanic process when
there is one Sanic worker, or inside the pool host (``host.py``) that several Sanic workers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenize_pool._link import Job, WorkerLink
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.ops import Promotion
from tokenize_pool.scheduler import Scheduler
from tokenize_pool.supervisor import Supervisor

__all__ = ["PoolConfig", "WorkerPool", "setup_logging"]


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


def setup_logging(config: PoolConfig, name: str) -> None:
    """Logging in a pool process: the configured set-up (the server's format), else plain text."""
    if config.log_setup is not None:
        config.log_setup()
    else:
        logging.basicConfig(
            level=config.log_level, format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(message)s"
        )


@dataclass
class _Counts:
    started: float = field(default_factory=time.monotonic)
    tasks: int = 0
    in_flight: int = 0


class WorkerPool:
    """The workers, their connections, and the requests waiting for them: the in-process
    ``TokenizePool`` (``client.py``), and what the pool host serves to several Sanic workers.

    ``start()`` (in the event loop that will call ``call``) starts the workers."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.counts = _Counts()
        # 0700: only this user can connect and pose as a worker.
        self._directory = tempfile.mkdtemp(prefix="rollout-pool-")
        self._path = os.path.join(self._directory, "workers.sock")
        self._supervisor = Supervisor(config, self._path)
        self._scheduler: Scheduler[Job] = Scheduler()
        self._links: list[WorkerLink] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen for the workers and start them: each loads the preloaded tokenizers, reports
        on the queue, and connects. Returns at once; calls wait for a first connection."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: WorkerLink(self, loop), path=self._path)
        self._supervisor.start(loop)

    @property
    def depth(self) -> int:
        """Requests a worker holds at once (``scheduler.pipeline_depth``)."""
        return self._scheduler.depth

    async def call(
        self, payload: bytes, *, urgent: bool = False, promotion: Promotion | None = None
    ) -> bytes:
        """Run one pickled request in a worker; its pickled answer (``TokenizePool.call``).

        The request goes to the least loaded worker with a free place, else waits for one:
        ``urgent`` requests (a rollout's next turn, its trainer idle meanwhile) ahead of the
        others (first prompts, which overlap the first trainer call). A request becomes urgent
        once ``promotion`` is promoted (the trainer answered first: the rollout now waits for
        it). Before any worker has connected (start-up, restart) every request waits, under the
        caller's timeout; a worker that dies holding it fails it with ``PoolUnavailable``."""
        urgent = urgent or (promotion is not None and promotion.promoted)
        job = Job(payload, asyncio.get_running_loop().create_future())
        self._scheduler.submit(job, urgent=urgent)
        if not urgent and promotion is not None:
            promotion.when_promoted(lambda: self._scheduler.promote(job))
        self.counts.in_flight += 1
        try:
            link = min(self._links, key=lambda link: len(link.jobs), default=None)
            if link is not None:
                self._fill(link)
            answer_state = await job.answer
        finally:
            self.counts.in_flight -= 1
        answer, state, seconds = pickle.loads(answer_state)
        self._scheduler.answered(seconds)
        self.counts.tasks += 1
        self._supervisor.reports.workers[state["pid"]] = state
        answer_bytes: bytes = answer
        return answer_bytes

    def _fill(self, link: WorkerLink) -> None:
        """Send the worker what the scheduler gives it, in one write."""
        if link.open:
            link.send(self._scheduler.take(len(link.jobs)))

    def link_opened(self, link: WorkerLink) -> None:
        self._links.append(link)
        self._fill(link)

    def link_answered(self, link: WorkerLink) -> None:
        self._fill(link)

    def link_closed(self, link: WorkerLink) -> None:
        with contextlib.suppress(ValueError):
            self._links.remove(link)

    async def stats(self) -> dict[str, Any]:
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The pool's state as ``/health`` shows it (``tokenize_pool`` there)."""
        workers = self._supervisor.alive()
        preload = [str(k) for k in self.config.preload]
        return {
            "pid": os.getpid(),
            "workers_configured": self.config.workers,
            "workers_alive": len(workers),
            "workers_connected": len(self._links),
            "workers": workers,
            "warm": len(workers) == self.config.workers
            and all(set(preload) <= set(w["tokenizers"]) for w in workers),
            "cache_size": self.config.cache_size,
            "tasks": self.counts.tasks,
            "in_flight": self.counts.in_flight,
            "queued": self._scheduler.queued,
            "pipeline_depth": self.depth,
            "restarts": self._supervisor.reports.restarts,
            "uptime_s": round(time.monotonic() - self.counts.started, 1),
        }

    async def close(self) -> None:
        """Hang up on every worker (its serve task ends), then stop the executor."""
        self._supervisor.stopping()
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        for link in links:
            link.hang_up()
        if links:
            await asyncio.wait([link.closed for link in links], timeout=5.0)
        await self._supervisor.close()
        shutil.rmtree(self._directory, ignore_errors=True)
