"""The pool's end of a worker connection, fed bytes by hand: no process, no socket."""

from __future__ import annotations

import asyncio

from tokenize_pool._link import Job, WorkerLink
from tokenize_pool.wire import KIND_TASK, frame


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_answers_split_anywhere_across_reads_reach_their_callers() -> None:
    """The pool parses its workers' answer frames from a byte stream: a frame cut at any byte,
    or several in one read, still resolves each caller with its own payload."""

    class Owner:  # a link calls back on every read
        def link_answered(self, link: object) -> None:
            pass

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        link = WorkerLink(Owner(), loop)  # type: ignore[arg-type]
        payloads = [bytes([i]) * size for i, size in enumerate((0, 1, 13, 300, 70_000))]
        jobs = {request_id: Job(b"", loop.create_future()) for request_id in range(1, 6)}
        link.jobs.update(jobs)
        stream = b"".join(frame(i, KIND_TASK, p) for i, p in zip(jobs, payloads, strict=True))
        cuts = [0, 1, 5, 13, 14, 40, 320, 9_000, 9_001, len(stream) - 1, len(stream)]
        for start, end in zip(cuts, cuts[1:], strict=False):
            link.data_received(stream[start:end])
        assert not link.jobs and not link._buffer
        return [job.answer.result() for job in jobs.values()]

    payloads = [bytes([i]) * size for i, size in enumerate((0, 1, 13, 300, 70_000))]
    assert run(scenario()) == payloads


def test_jobs_sent_together_go_out_in_one_write_with_fresh_ids() -> None:
    class Owner:
        def link_opened(self, link: object) -> None:
            pass

    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

    async def scenario() -> tuple[list[bytes], list[int]]:
        loop = asyncio.get_running_loop()
        link = WorkerLink(Owner(), loop)  # type: ignore[arg-type]
        transport = Transport()
        link.connection_made(transport)  # type: ignore[arg-type]
        link.send([Job(b"a", loop.create_future()), Job(b"bc", loop.create_future())])
        link.send([])
        return transport.writes, list(link.jobs)

    writes, ids = run(scenario())  # type: ignore[misc]
    assert writes == [frame(1, KIND_TASK, b"a") + frame(2, KIND_TASK, b"bc")]
    assert ids == [1, 2]


def test_an_answer_for_a_caller_that_gave_up_still_frees_its_place() -> None:
    class Owner:
        answered = 0

        def link_answered(self, link: object) -> None:
            self.answered += 1

    async def scenario() -> tuple[int, int, bool]:
        loop = asyncio.get_running_loop()
        owner = Owner()
        link = WorkerLink(owner, loop)  # type: ignore[arg-type]
        job = Job(b"", loop.create_future())
        link.jobs[1] = job
        job.answer.cancel()  # its caller's timeout
        link.data_received(frame(1, KIND_TASK, b"late"))
        return len(link.jobs), owner.answered, job.answer.cancelled()

    assert run(scenario()) == (0, 1, True)
