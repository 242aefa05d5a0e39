"""The pool's scheduling rules as data: queues, urgency, promotion, give-ups, pipeline depth;
and the supervisor's restart spacing on an injected clock and what a slot does when its serve
task ends. No process, socket or sleep."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import pytest

from tokenize_pool.scheduler import PIPELINE_DEPTH, PIPELINE_MAX, Scheduler, pipeline_depth
from tokenize_pool.supervisor import RestartSpacing, after_serving


@dataclass(eq=False)
class Req:
    name: str
    gone: bool = False

    def given_up(self) -> bool:
        return self.gone


def names(jobs: list[Req]) -> list[str]:
    return [job.name for job in jobs]


def wave(scheduler: Scheduler[Req], count: int, prefix: str = "first") -> list[Req]:
    jobs = [Req(f"{prefix}-{i}") for i in range(count)]
    for job in jobs:
        scheduler.submit(job, urgent=False)
    return jobs


def slow_scheduler() -> Scheduler[Req]:
    """A scheduler whose workers' recent requests were long: it holds PIPELINE_DEPTH."""
    scheduler: Scheduler[Req] = Scheduler()
    scheduler.answered(0.01)
    return scheduler


@pytest.mark.parametrize(
    ("seconds", "depth"), [(0.0, PIPELINE_MAX), (1e-6, PIPELINE_MAX), (0.0004, 5), (0.0015, 2), (3.0, 2)]
)
def test_the_depth_is_about_two_ms_of_recent_work(seconds: float, depth: int) -> None:
    assert pipeline_depth(seconds) == depth


def test_a_worker_is_given_up_to_the_depth_in_arrival_order() -> None:
    scheduler = slow_scheduler()
    wave(scheduler, 5)
    assert names(scheduler.take(0)) == ["first-0", "first-1"]
    assert names(scheduler.take(2)) == []  # full
    assert names(scheduler.take(1)) == ["first-2"]  # one answered: one more
    assert scheduler.queued == 2


def test_urgent_requests_pass_the_waiting_ones() -> None:
    scheduler = slow_scheduler()
    wave(scheduler, 12)
    sent = scheduler.take(0)
    scheduler.submit(Req("next-turn"), urgent=True)
    assert names(scheduler.take(len(sent) - 1)) == ["next-turn"]
    assert names(scheduler.take(1)) == ["first-2"]


def test_a_promoted_request_goes_to_the_end_of_the_urgent_queue() -> None:
    scheduler = slow_scheduler()
    jobs = wave(scheduler, 6)
    scheduler.submit(Req("urgent"), urgent=True)
    scheduler.promote(jobs[5])
    assert names(scheduler.take(0)) == ["urgent", "first-5"]
    assert names(scheduler.take(0)) == ["first-0", "first-1"]


def test_promoting_a_sent_or_abandoned_request_changes_nothing() -> None:
    scheduler = slow_scheduler()
    jobs = wave(scheduler, 4)
    sent = scheduler.take(0)
    scheduler.promote(sent[0])  # already with a worker
    jobs[3].gone = True
    scheduler.promote(jobs[3])
    assert names(scheduler.take(0)) == ["first-2"]
    assert scheduler.queued == 0


def test_requests_whose_callers_gave_up_take_no_place() -> None:
    scheduler = slow_scheduler()
    jobs = wave(scheduler, 5)
    jobs[0].gone = jobs[2].gone = True
    assert scheduler.queued == 3
    assert names(scheduler.take(0)) == ["first-1", "first-3"]
    assert names(scheduler.take(0)) == ["first-4"]
    assert scheduler.take(0) == [] and scheduler.queued == 0


def test_short_requests_deepen_the_pipeline_and_a_long_one_shortens_it_at_once() -> None:
    scheduler: Scheduler[Req] = Scheduler()
    for _ in range(100):
        scheduler.answered(0.0001)
    wave(scheduler, 64)
    assert PIPELINE_DEPTH < len(scheduler.take(0)) <= PIPELINE_MAX
    scheduler.answered(0.01)
    assert scheduler.depth == PIPELINE_DEPTH
    for _ in range(5):
        scheduler.answered(0.0001)
    assert scheduler.depth == PIPELINE_DEPTH  # down slowly: a few short answers are not enough


def test_restarts_are_spaced_by_the_interval() -> None:
    now = [100.0]
    spacing = RestartSpacing(interval=1.0, clock=lambda: now[0])
    assert spacing.delay() == 0.0  # never restarted
    spacing.restarted()
    now[0] += 0.25
    assert spacing.delay() == pytest.approx(0.75)
    now[0] += 5.0
    assert spacing.delay() == 0.0


@pytest.mark.parametrize(
    ("closing", "current", "error", "step"),
    [
        (False, True, BrokenProcessPool("died"), "replace"),  # the worker died: its slot alone
        (False, True, None, "serve"),  # its connection ended, the process lives: serve again
        (False, True, OSError("connect"), "serve"),
        (True, True, BrokenProcessPool("died"), "nothing"),  # the pool is closing
        (False, False, BrokenProcessPool("died"), "nothing"),  # that executor was replaced already
    ],
)
def test_a_slot_whose_worker_died_is_replaced_and_one_that_hung_up_serves_again(
    closing: bool, current: bool, error: BaseException | None, step: str
) -> None:
    assert after_serving(closing=closing, current=current, error=error) == step
