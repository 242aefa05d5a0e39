"""Short full garbage collections in the server's long-running processes.

A full (generation 2) collection walks every object the collector tracks. Once started, a
server process holds a few hundred thousand that live until it exits: modules, a tokenizer's
Python side, compiled templates, pydantic's validators. Under load each full collection walked
all of them, and the process stood still meanwhile (tens of milliseconds: bench/README.md),
which every rollout on that event loop, or waiting on that worker, paid at once.

``freeze_live_objects`` moves everything alive into the collector's permanent generation, which
no collection walks; later collections see only what was made after it. Call it once a process
is loaded, and again after loading or dropping something large (a tokenizer): it first thaws
and collects, so what was frozen and has since become garbage is still freed.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_live_objects"]


def freeze_live_objects() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()
