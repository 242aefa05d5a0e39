"""freeze_live_objects: what is alive leaves the full collections' way; garbage is still freed."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from tokenize_pool.heap import freeze_live_objects


class Node:
    def __init__(self) -> None:
        self.other: Any = self


@pytest.fixture(autouse=True)
def thawed() -> Any:
    yield
    gc.unfreeze()


def test_live_objects_are_frozen_and_earlier_garbage_is_collected_first() -> None:
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    freeze_live_objects()
    assert gone() is None
    assert gc.get_freeze_count() > 0
    assert all(kept is not obj for obj in gc.get_objects())  # the collector no longer walks it


def test_a_frozen_object_that_becomes_garbage_is_freed_by_the_next_freeze() -> None:
    node = Node()
    freeze_live_objects()
    gone = weakref.ref(node)
    del node
    gc.collect()
    assert gone() is not None  # frozen: no collection sees the cycle
    freeze_live_objects()
    assert gone() is None
