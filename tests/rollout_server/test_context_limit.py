"""The context limit (MAX_CONTEXT_TOKENS, else the tokenizer's own): a first prompt that fills it
ends the rollout before any trainer call, and every call's max_tokens leaves room for the prompt.

The trainer is an ``httpx.MockTransport`` and the pool a stand-in, as in test_agent_first_call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rollout_server.agent import AgentLoop, AgentPolicy, _prompt_bound
from rollout_server.tools import calculator_registry
from rollout_server.toolset import ToolBox
from tests.rollout_server.test_agent_first_call import PROMPT, REQUEST, SlowPool, trainer
from tokenize_pool.ops import PoolOp, Promotion, Resolve, Resolved


class LimitedPool(SlowPool):
    """A tokenizer that states ``limit``, and a first prompt ready at once (or when released)."""

    def __init__(self, limit: int | None, *, ready: bool = True) -> None:
        super().__init__()
        self.limit = limit
        if ready:
            self.release.set()

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        if isinstance(request, Resolve):
            return Resolved(self.limit)
        return await super().answer(request, promotion)


def run(pool: SlowPool, calls: list[dict[str, Any]], max_context_tokens: int = 0) -> dict[str, Any]:
    policy = AgentPolicy(rollout_timeout=10.0, max_context_tokens=max_context_tokens)
    loop = AgentLoop(
        pool=pool.client(), trainer=trainer(calls, pool), tools=ToolBox(calculator_registry()), policy=policy
    )
    return asyncio.run(loop.run(REQUEST)).model_dump()


@pytest.mark.parametrize(("stated", "setting"), [(len(PROMPT), 0), (10**6, len(PROMPT))])
def test_a_first_prompt_that_fills_the_context_ends_before_any_call(stated: int, setting: int) -> None:
    calls: list[dict[str, Any]] = []
    result = run(LimitedPool(stated), calls, max_context_tokens=setting)
    assert calls == []
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "validation_error"
    assert f"first prompt is {len(PROMPT)} tokens" in result["error_message"]


def test_a_call_near_the_limit_asks_for_what_fits() -> None:
    calls: list[dict[str, Any]] = []
    result = run(LimitedPool(len(PROMPT) + 7), calls)
    assert result["status"] == "COMPLETED"
    assert [c["body"]["max_tokens"] for c in calls] == [7]


def test_a_prompt_far_below_the_limit_still_overlaps_its_tokenization_with_the_call() -> None:
    calls: list[dict[str, Any]] = []
    bound = _prompt_bound([{"role": "user", "content": "hi"}])
    # The pool answers only after the trainer is called: a wait here would time the rollout out.
    result = run(LimitedPool(bound + 100, ready=False), calls)
    assert result["status"] == "COMPLETED" and calls[0]["pool_ready"] is False
    assert calls[0]["body"]["max_tokens"] == 100  # the bound stands in for the prompt's length


def test_the_bound_is_not_below_a_real_prompt(codec_of: Any) -> None:
    messages = [
        {"role": "system", "content": "You are a calculator agent."},
        {"role": "user", "content": "数学 " * 200 + "What is (2+3)*4? 🙂" * 50},
    ]
    for name in ("Qwen/Qwen3-8B", "Qwen/Qwen2.5-7B-Instruct", "zai-org/glm-4-9b-chat-hf", "Qwen/Qwen3.5-9B"):
        codec = codec_of(name)
        ids = codec.encode(codec.render(messages, add_generation_prompt=True))
        assert len(ids) <= _prompt_bound(messages), name
