"""No wasted generation: a tokenizer that cannot be loaded fails the rollout, with advice, before
the trainer is called (real server, real pool, real simulator)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Proc
from tests.rollout_server.guarded import guarded_server, post, rollout_body


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


def test_an_unknown_tokenizer_fails_without_calling_the_trainer(guarded: Proc, sim: Proc) -> None:
    body = rollout_body(sim.url, tokenizer_name="nobody/no-such-tokenizer")
    result = post(guarded, body).json()
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "tokenizer_error"
    assert "nobody/no-such-tokenizer" in result["error_message"] and "HF_HOME" in result["error_message"]
    assert result["metrics"]["num_llm_calls"] == 0
    assert httpx.get(f"{sim.url}/sim/rollouts/{body['rollout_id']}", timeout=10).status_code == 404


def test_a_known_tokenizer_still_runs(guarded: Proc, sim: Proc) -> None:
    for _ in range(2):  # the second rollout finds the key known to its pool client
        result = post(guarded, rollout_body(f"{sim.url}/s/sequential/turns=1")).json()
        assert result["status"] == "COMPLETED", result
