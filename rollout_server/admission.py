"""Starting a wave of rollouts a few per event-loop iteration.

A trainer sends a training step's rollouts together: hundreds or thousands of ``POST /rollout``
arrive within milliseconds. Each one's first step (parsing and validating the request, the
first trainer call, the first prompt's pool request) takes 0.2-0.5 ms of the event loop, and
all of them would run in one iteration: 2,048 arrivals stood the loop still for a second, and
every rollout already running, every trainer answer and every ``/health`` waited behind them.

``Admission.enter`` lets ``PER_ITERATION`` new rollouts start per iteration; the others wait
their turn in arrival order. The wave takes as long as before, but the loop serves everything
else between its slices.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["PER_ITERATION", "Admission"]

# About 2-4 ms of the loop per iteration on this project's 2-core machines.
PER_ITERATION = 8


class Admission:
    """Hands out starts, at most ``per_iteration`` in each iteration of the running event loop."""

    def __init__(self, per_iteration: int = PER_ITERATION) -> None:
        self.per_iteration = per_iteration
        self._started = 0  # in the current iteration
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_scheduled = False

    async def enter(self) -> None:
        """Return when the caller may start; a caller cancelled meanwhile gives up its place."""
        if not self._waiting and self._started < self.per_iteration:
            self._started += 1
            self._schedule_turn()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._schedule_turn()
        await future

    def _schedule_turn(self) -> None:
        # Callbacks scheduled now run in the next iteration: that is where the count starts over.
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._turn_scheduled = False
        self._started = 0
        while self._waiting and self._started < self.per_iteration:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._started += 1
        if self._started:
            self._schedule_turn()
