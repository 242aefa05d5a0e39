"""The pool's end of one worker's connection: frames out, answers parsed back by request id.

The frame format is ``wire``'s. Answers are read in the callback that receives them, and the
owner refills the worker's freed places there at once: the worker waits for no coroutine to wake
up, however long the event loop's iterations are.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol, cast

from tokenize_pool.errors import PoolUnavailable
from tokenize_pool.wire import FRAME_HEADER, KIND_TASK, frame, hang_up, read_header

__all__ = ["Job", "LinkOwner", "WorkerLink", "worker_lost"]


def worker_lost() -> PoolUnavailable:
    return PoolUnavailable("tokenize worker died; it is being replaced")


class Job:
    """One request for a worker: its pickled payload, and the future of its answer."""

    __slots__ = ("payload", "answer")

    def __init__(self, payload: bytes, answer: asyncio.Future[bytes]) -> None:
        self.payload = payload
        self.answer = answer

    def given_up(self) -> bool:
        """Answered, or its caller stopped waiting (timeout): nothing left to send."""
        return self.answer.done()


class LinkOwner(Protocol):
    """What a link tells the pool: a worker connected, answered (it has free places), left."""

    def link_opened(self, link: WorkerLink) -> None: ...

    def link_answered(self, link: WorkerLink) -> None: ...

    def link_closed(self, link: WorkerLink) -> None: ...


class WorkerLink(asyncio.Protocol):
    """One worker's connection and the requests it holds (sent, not yet answered)."""

    def __init__(self, owner: LinkOwner, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self.transport: asyncio.Transport | None = None
        # Requests sent and not yet answered, by request id: what the worker holds.
        self.jobs: dict[int, Job] = {}
        self.ids = itertools.count(1)
        self._buffer = bytearray()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._owner.link_opened(self)

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
        self._owner.link_answered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.link_closed(self)
        jobs, self.jobs = self.jobs, {}
        for job in jobs.values():
            if not job.answer.done():
                job.answer.set_exception(worker_lost())
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, jobs: list[Job]) -> None:
        """Hand the worker ``jobs``, in one write."""
        frames = []
        for job in jobs:
            request_id = next(self.ids)
            self.jobs[request_id] = job
            frames.append(frame(request_id, KIND_TASK, job.payload))
        if frames:
            assert self.transport is not None
            self.transport.write(b"".join(frames))

    def hang_up(self) -> None:
        """End the connection now, so that the worker sees end of stream even if this event loop
        does not run again (shutdown)."""
        if self.transport is not None:
            hang_up(self.transport)
