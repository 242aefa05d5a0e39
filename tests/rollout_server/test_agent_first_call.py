"""The first trainer call overlaps the first prompt's tokenization, and its failure wins.

The trainer is an ``httpx.MockTransport`` and the pool a stand-in whose first prompt waits for
the test: what is checked is the order of events, not how long anything takes.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from typing import Any

import httpx

from rollout_server.agent import AgentLoop, AgentPolicy
from rollout_server.protocol import RolloutRequest
from rollout_server.tools import calculator_registry
from rollout_server.toolset import ToolBox
from rollout_server.trainer import TrainerClient, TrainerLimits
from tests.stand_in_pool import StandInPool
from tokenize_pool import PoolUnavailable, TokenizePoolError, TokenizerLoadError, ids_text
from tokenize_pool.ops import PoolOp, Promotion, Resolve, Resolved
from tokenize_pool.tokens import FirstPrompt, TokenPrompt

PROMPT = [5, 6, 7]
REQUEST = RolloutRequest.model_validate(
    {
        "rollout_id": "r-1",
        "server_url": "http://trainer.test",
        "messages": [{"role": "user", "content": "hi"}],
        "sampling_params": {},
    }
)


class SlowPool(StandInPool):
    """A first prompt that is ready only when the test says so (or fails then)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.error = error

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        match request:
            case Resolve():  # the tokenizer loads: what is tested here is the first prompt
                return Resolved(None)
            case FirstPrompt():
                return await self.first_prompt(promotion)
        return await super().answer(request, promotion)

    async def first_prompt(self, promotion: Promotion | None) -> TokenPrompt:
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return TokenPrompt(array("i", PROMPT), ids_text(PROMPT), ())


def trainer(calls: list[dict[str, Any]], pool: SlowPool, *, status: int = 200) -> TrainerClient:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append({"body": json.loads(request.content), "pool_ready": pool.release.is_set()})
        if status != 200:
            return httpx.Response(status, json={"error": "no"})
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
                "token_ids": [9, 10],
                "prompt_token_ids": PROMPT,
            },
        )

    async def handler(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        pool.release.set()  # the pool finishes only after the trainer has been called
        return response

    return TrainerClient(TrainerLimits(), transport=httpx.MockTransport(handler))


def run(pool: SlowPool, client: TrainerClient, received: float | None = None) -> dict[str, Any]:
    # The pool answers only after the trainer was called: a loop that waited for the first prompt
    # before calling would never finish, so the rollout timeout turns that into a failure.
    policy = AgentPolicy(rollout_timeout=10.0)
    loop = AgentLoop(pool=pool.client(), trainer=client, tools=ToolBox(calculator_registry()), policy=policy)
    return asyncio.run(loop.run(REQUEST, received=received)).model_dump()


def test_the_first_call_leaves_before_the_first_prompt_is_ready() -> None:
    calls: list[dict[str, Any]] = []
    pool = SlowPool()
    result = run(pool, trainer(calls, pool))
    assert result["status"] == "COMPLETED"
    assert calls[0]["pool_ready"] is False and calls[0]["body"]["response_mask"] is None
    alignment = result["extra_fields"]["alignment"]
    assert alignment["checks"] == 1 and alignment["drift_events"] == 0
    assert alignment["sequence_length"] == len(PROMPT) + 2


class WaitsToBeUrgent(SlowPool):
    """A pool that answers a first prompt only once it is promoted (the rollout waits for it), as
    a pool busy with other rollouts' next turns would."""

    async def first_prompt(self, promotion: Promotion | None) -> TokenPrompt:
        assert promotion is not None
        promoted = asyncio.Event()
        promotion.when_promoted(promoted.set)
        await promoted.wait()
        return TokenPrompt(array("i", PROMPT), ids_text(PROMPT), ())


def test_the_first_prompt_becomes_urgent_once_the_trainer_has_answered() -> None:
    calls: list[dict[str, Any]] = []
    pool = WaitsToBeUrgent()
    result = run(pool, trainer(calls, pool))
    assert result["status"] == "COMPLETED"
    assert result["extra_fields"]["alignment"]["drift_events"] == 0


def test_a_failed_first_prompt_is_the_error_even_when_the_trainer_failed_too() -> None:
    calls: list[dict[str, Any]] = []
    pool = SlowPool(error=TokenizePoolError("cannot load tokenizer nobody/x"))
    result = run(pool, trainer(calls, pool, status=503))
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "tokenizer_error"
    assert "nobody/x" in result["error_message"]


def test_an_unreachable_pool_is_an_internal_error_after_a_successful_call() -> None:
    calls: list[dict[str, Any]] = []
    pool = SlowPool(error=PoolUnavailable("connection to the tokenize pool was lost"))
    result = run(pool, trainer(calls, pool))
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "internal_error"
    assert len(calls) == 1


def test_the_wait_before_the_start_is_reported_apart_and_in_the_total() -> None:
    # The app passes the request's arrival: admission, validation and a free slot came before.
    calls: list[dict[str, Any]] = []
    pool = SlowPool()
    result = run(pool, trainer(calls, pool), received=time.perf_counter() - 0.25)
    timing = result["extra_fields"]["timing"]
    assert 250 <= timing["queued_ms"] < 250 + result["metrics"]["total_latency_ms"]
    assert result["metrics"]["total_latency_ms"] >= 250
    assert timing["turn_overhead_ms"][0] < 250  # the turns' own server time does not include it
    assert run(pool, trainer(calls, pool))["extra_fields"]["timing"]["queued_ms"] == 0


class UnknownTokenizer(SlowPool):
    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        if isinstance(request, Resolve):
            raise TokenizerLoadError(f"cannot load tokenizer {request.key}: We couldn't connect to the hub")
        return await super().answer(request, promotion)


def test_a_tokenizer_that_cannot_load_fails_before_any_trainer_call_saying_what_to_do() -> None:
    calls: list[dict[str, Any]] = []
    pool = UnknownTokenizer()
    result = run(pool, trainer(calls, pool))
    assert calls == []
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "tokenizer_error"
    message = result["error_message"]
    assert "Qwen/Qwen3-8B" in message and "HF_HOME" in message and "seed the cache" in message
    assert "hub" not in message
