"""Which waiting request a worker gets next, and how many it holds at once.

The scheduler is plain data: two queues (urgent requests, a rollout's next turn with its trainer
idle meanwhile, ahead of first prompts that overlap the first trainer call), promotion from one
to the other, and the pipeline depth that a worker's recent service time sets. It sends nothing
and starts nothing: ``WorkerPool`` asks it what to send and tells it what was answered, so every
decision here is testable without a process, a socket or a clock.

Why a pipeline: a worker holds at least the request it works on and the next, waiting in its
socket, so that it never idles between answers; more when its requests are short, enough for
about ``PIPELINE_SECONDS`` of work. An urgent request then waits about that long at most in a
worker, while an event loop busy with a wave of arrivals (a refill per iteration) still keeps
every worker busy.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

__all__ = ["PIPELINE_DEPTH", "PIPELINE_MAX", "PIPELINE_SECONDS", "SERVICE_WEIGHT", "Scheduler", "Waiting"]

PIPELINE_DEPTH = 2
PIPELINE_MAX = 32
PIPELINE_SECONDS = 0.002
# How fast a worker's recent seconds per request fall back after a long request (each answer
# moves them this much of the way).
SERVICE_WEIGHT = 0.1


class Waiting(Protocol):
    """What the scheduler needs of a request: whether its caller is still waiting for it."""

    def given_up(self) -> bool: ...


J = TypeVar("J", bound=Waiting)


def pipeline_depth(service_seconds: float) -> int:
    """Requests a worker holds at once: enough for ``PIPELINE_SECONDS`` of work at
    ``service_seconds`` a request, at least ``PIPELINE_DEPTH``, at most ``PIPELINE_MAX``."""
    # (A worker whose requests took no measurable time gets the most.)
    return max(PIPELINE_DEPTH, min(PIPELINE_MAX, int(PIPELINE_SECONDS / max(service_seconds, 1e-9))))


class Scheduler(Generic[J]):
    """The requests waiting for a place in a worker, urgent ones first, and the pipeline depth."""

    def __init__(self) -> None:
        self._urgent: deque[J] = deque()
        self._normal: deque[J] = deque()
        # Seconds a worker took per request, lately (each answer says).
        self.service = PIPELINE_SECONDS / PIPELINE_DEPTH

    @property
    def depth(self) -> int:
        """Requests a worker holds at once, for the recent service time."""
        return pipeline_depth(self.service)

    def submit(self, job: J, *, urgent: bool) -> None:
        """Queue ``job``, at the end of the urgent queue or of the other one."""
        (self._urgent if urgent else self._normal).append(job)

    def promote(self, job: J) -> None:
        """A waiting request became urgent: it moves to the end of the urgent queue (a request
        already sent or given up stays where it is)."""
        if not job.given_up() and job in self._normal:
            self._normal.remove(job)
            self._urgent.append(job)

    def take(self, held: int) -> list[J]:
        """The requests to send a worker that holds ``held``: urgent ones first, until it holds
        ``depth``; requests whose callers gave up are dropped on the way."""
        jobs: list[J] = []
        depth = self.depth
        while held + len(jobs) < depth and (job := self._next()) is not None:
            jobs.append(job)
        return jobs

    def _next(self) -> J | None:
        for queue in (self._urgent, self._normal):
            while queue:
                job = queue.popleft()
                if not job.given_up():
                    return job
        return None

    def answered(self, seconds: float) -> None:
        """A worker answered a request that took it ``seconds``: up at once, down slowly, so
        that after a long request the pipeline is short again at once."""
        self.service = max(seconds, self.service + SERVICE_WEIGHT * (seconds - self.service))

    @property
    def queued(self) -> int:
        """Requests waiting whose callers still wait."""
        return sum(not job.given_up() for queue in (self._urgent, self._normal) for job in queue)
