"""Fixtures of the simulator's tests: in-process tokenizers, the simulator as a real process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rollout_server.sim.procs import Proc

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"


@pytest.fixture(scope="session")
def toks(hf_home: Path) -> dict[str, PreTrainedTokenizerBase]:
    """In-process tokenizers, by hub name from the seeded cache (tests/conftest.py)."""
    return {name: AutoTokenizer.from_pretrained(name) for name in (QWEN3, QWEN25, QWEN35)}


@pytest.fixture(scope="session")
def sim(start_sim: Callable[..., Proc]) -> str:
    """The simulator as a real process (tests/conftest.py), by its base URL."""
    return start_sim(QWEN3).url


@pytest.fixture()
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client
