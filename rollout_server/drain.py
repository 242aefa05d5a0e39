"""Draining on SIGTERM: the rollouts already accepted finish, new ones are refused with 503.

Sanic's own handling of SIGTERM closes the listening socket at once: a trainer's next
``POST /rollout`` is then refused at the TCP level (or, behind a load balancer, fails in some
other way that does not say "try elsewhere"), and the rollouts in flight are cut when the
graceful-shutdown timeout ends. A rolling restart should rather look like this:

1. SIGTERM: ``/ready`` answers 503 (the load balancer stops sending), ``POST /rollout`` answers
   503 with ``Retry-After`` (nothing is started, so a retry elsewhere is safe), and every
   rollout accepted before the signal (running, or waiting for a slot) runs to its end.
2. When none is left, or after ``grace`` seconds, the server stops as Sanic would.

A second SIGTERM or SIGINT stops at once (Sanic then cuts what is still running).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

__all__ = ["RETRY_AFTER_S", "Drain"]

logger = logging.getLogger("rollout_server.drain")

RETRY_AFTER_S = 5
_POLL_S = 0.1


class Drain:
    """The draining state of one Sanic worker; ``install`` takes over its SIGTERM and SIGINT."""

    def __init__(self) -> None:
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    def install(self, *, busy: Callable[[], int], stop: Callable[[], None], grace: float) -> None:
        """Handle the signals on the running loop (after Sanic's own handlers, which it replaces).

        ``busy`` counts the rollouts accepted and not yet answered; ``stop`` stops the server."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum, busy, stop, grace)

    def _on_signal(
        self, signum: int, busy: Callable[[], int], stop: Callable[[], None], grace: float
    ) -> None:
        name = signal.Signals(signum).name
        if self.draining:
            logger.warning("%s while draining: stopping now, %d rollouts still running", name, busy())
            stop()
            return
        self.draining = True
        logger.warning("%s: draining, %d rollouts to finish; new ones get 503", name, busy())
        self._task = asyncio.get_running_loop().create_task(self._stop_when_idle(busy, stop, grace))

    async def _stop_when_idle(self, busy: Callable[[], int], stop: Callable[[], None], grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while busy() and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
        left = busy()
        if left:
            logger.warning("drain: %d rollouts still running after %g s; stopping", left, grace)
        else:
            logger.warning("drain: every accepted rollout has been answered; stopping")
        stop()
