"""Admission: a wave of rollouts starts a few per event-loop iteration, in arrival order."""

from __future__ import annotations

import asyncio
from collections import Counter

from rollout_server.admission import Admission


async def _wave(
    admission: Admission, size: int, cancel: frozenset[int] = frozenset()
) -> list[tuple[int, int]]:
    """Everyone enters at once; returns (entrant, loop iteration it started in), in start order."""
    loop = asyncio.get_running_loop()
    iteration = 0
    started: list[tuple[int, int]] = []

    def tick() -> None:
        nonlocal iteration
        iteration += 1
        loop.call_soon(tick)

    loop.call_soon(tick)

    async def entrant(i: int) -> None:
        await admission.enter()
        started.append((i, iteration))

    tasks = [asyncio.create_task(entrant(i)) for i in range(size)]
    await asyncio.sleep(0)
    for i in cancel:
        tasks[i].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return started


def test_a_wave_starts_a_few_per_iteration_in_arrival_order() -> None:
    started = asyncio.run(_wave(Admission(per_iteration=3), 20))
    assert [i for i, _ in started] == list(range(20))
    per_iteration = Counter(iteration for _, iteration in started)
    assert max(per_iteration.values()) == 3 and len(per_iteration) == 7


def test_a_cancelled_entrant_gives_up_its_place() -> None:
    admission = Admission(per_iteration=2)
    started = asyncio.run(_wave(admission, 10, cancel=frozenset({4, 5})))
    assert [i for i, _ in started] == [0, 1, 2, 3, 6, 7, 8, 9]
    first = started[0][1]
    # The first two start at once, the waiting ones from the iteration after next (woken in the
    # next), two an iteration; the two who gave up took none of those starts.
    assert [iteration - first for _, iteration in started] == [0, 0, 2, 2, 3, 3, 4, 4]


def test_a_lone_arrival_starts_at_once() -> None:
    async def scenario() -> bool:
        admission = Admission(per_iteration=1)
        entering = asyncio.ensure_future(admission.enter())
        await asyncio.sleep(0)
        return entering.done()

    assert asyncio.run(scenario())
