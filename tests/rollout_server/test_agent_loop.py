"""The agent loop's decisions without a process: a stand-in pool and an ``httpx.MockTransport``
trainer that answers from a script. Every finish reason, both drift policies, the token budget's
cap on ``max_tokens`` and a broken prompt prefix, with the masks each call carries."""

from __future__ import annotations

import asyncio
import json
from array import array
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from rollout_server.agent import AgentLoop, AgentPolicy
from rollout_server.protocol import RolloutRequest
from rollout_server.tools import ToolRegistry, calculator_registry
from rollout_server.toolset import ToolBox, ToolLimits
from rollout_server.trainer import TrainerClient, TrainerLimits
from tests.stand_in_pool import StandInPool
from tokenize_pool import CutTexts, CutTools, Growth, TokenizePoolError, ids_text
from tokenize_pool.masks import ExtendFull, ExtendWindow, NeedFull
from tokenize_pool.ops import ExplainTurn, PoolOp, Promotion, Resolve, Resolved
from tokenize_pool.tokens import FirstPrompt, TokenPrompt

PROMPT = [5, 6, 7]
CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}


class ScriptedPool(StandInPool):
    """The first prompt is ``PROMPT``; each turn's growth is the next of ``growths`` (ids, or a
    whole new prompt with ``prefix_ok=False``), answered to the full render (``ExtendFull``) or,
    when the agent allows it, to the fast path's ``ExtendWindow``."""

    def __init__(self, growths: list[tuple[list[int], bool]] | None = None) -> None:
        super().__init__()
        self.growths = growths or []
        # The prompt the trainer's tokenizer makes of the conversation so far: what it echoes.
        self.prompt: list[int] = list(PROMPT)

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        match request:
            case Resolve():
                return Resolved(None)
            case FirstPrompt():
                return TokenPrompt(array("i", PROMPT), ids_text(PROMPT), ())
            case ExtendWindow() if self.growths and not self.growths[0][1]:
                return NeedFull()  # a break is the full render's to find
            case ExtendWindow() | ExtendFull():
                return self.grow(request)
            case ExplainTurn():
                raise TokenizePoolError("no tokenizer behind this stand-in")  # the break stays unexplained
        return await super().answer(request, promotion)

    def grow(self, request: ExtendWindow | ExtendFull) -> Growth:
        ids, prefix_ok = self.growths.pop(0) if self.growths else ([20, 21], True)
        seq_len = request.seq_len if isinstance(request, ExtendWindow) else len(request.seq)
        seq = self.prompt + list(request.gen) if isinstance(request, ExtendWindow) else list(request.seq)
        self.prompt = seq + ids if prefix_ok else ids
        return Growth(
            assistant=request.assistant,
            ids=array("i", ids),
            faithful=True,
            prefix_ok=prefix_ok,
            mismatch_at=None if prefix_ok else 1,
            fast=isinstance(request, ExtendWindow),
            tokens_encoded=len(ids),
            prompt_len=seq_len + len(ids) if prefix_ok else len(ids),
        )

    @property
    def extends(self) -> list[ExtendWindow | ExtendFull]:
        return [r for r, _ in self.requests if isinstance(r, (ExtendWindow, ExtendFull))]


@dataclass
class Turn:
    """One trainer answer. ``prompt`` None: the trainer echoes exactly what the server sent."""

    tools: bool = True
    finish: str = "stop"
    tokens: list[int] = field(default_factory=lambda: [9, 10])
    prompt: list[int] | None = None


class ScriptedTrainer:
    """Answers each call with the next ``Turn``, echoing the prompt ids a trainer would hold."""

    def __init__(self, turns: list[Turn], pool: ScriptedPool) -> None:
        self.turns = turns
        self.pool = pool
        self.bodies: list[dict[str, Any]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        turn = self.turns[len(self.bodies) - 1]
        prompt = self.pool.prompt if turn.prompt is None else turn.prompt
        message: dict[str, Any] = {"role": "assistant", "content": "ok"}
        if turn.tools:
            message["tool_calls"] = [CALL]
        choice = {"message": message, "finish_reason": "tool_calls" if turn.tools else turn.finish}
        if turn.finish == "length":
            choice["finish_reason"] = "length"
        return httpx.Response(
            200, json={"choices": [choice], "token_ids": turn.tokens, "prompt_token_ids": prompt}
        )


def rollout(
    turns: list[Turn],
    pool: ScriptedPool | None = None,
    *,
    drift: str = "fail",
    tools: ToolBox | None = None,
    **request: Any,
) -> tuple[dict[str, Any], ScriptedTrainer]:
    pool = pool or ScriptedPool()
    trainer = ScriptedTrainer(turns, pool)
    client = TrainerClient(TrainerLimits(), transport=httpx.MockTransport(trainer.handler))
    loop = AgentLoop(
        pool=pool.client(),
        trainer=client,
        tools=tools or ToolBox(calculator_registry()),
        policy=AgentPolicy(drift_policy=drift, rollout_timeout=10.0),  # type: ignore[arg-type]
    )
    body = RolloutRequest.model_validate(
        {
            "rollout_id": "r-1",
            "server_url": "http://trainer.test",
            "messages": [{"role": "user", "content": "add 1 and 2"}],
            "sampling_params": {"max_tokens": request.pop("max_tokens", 100)},
            **request,
        }
    )
    return asyncio.run(loop.run(body)).model_dump(), trainer


def test_stop_after_a_tool_turn_with_the_growths_mask() -> None:
    result, trainer = rollout([Turn(), Turn(tools=False)])
    assert result["status"] == "COMPLETED" and result["finish_reason"] == "stop"
    assert [b["response_mask"] for b in trainer.bodies] == [None, [0, 0]]
    roles = [m["role"] for m in result["final_messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    alignment = result["extra_fields"]["alignment"]
    assert alignment["drift_events"] == 0 and alignment["checks"] == 2
    assert alignment["response_mask_zeros"] == 2 and alignment["response_mask_ones"] == 4
    assert alignment["sequence_length"] == len(PROMPT) + 2 + 2 + 2


def test_length_when_the_trainer_cut_the_turn() -> None:
    result, _ = rollout([Turn(tools=False, finish="length")])
    assert result["finish_reason"] == "length"


def test_max_tokens_when_the_budget_capped_the_cut_turn() -> None:
    # 5 tokens left of the budget after the first turn's 2: the second call asks for 3, not 100.
    result, trainer = rollout(
        [Turn(), Turn(tools=False, finish="length", tokens=[1, 2, 3])], max_tokens_total=5
    )
    assert [b["max_tokens"] for b in trainer.bodies] == [5, 3]
    assert result["finish_reason"] == "max_tokens"


def test_max_tokens_when_the_budget_is_spent_before_the_tools() -> None:
    result, trainer = rollout([Turn(tokens=[1, 2, 3, 4])], max_tokens_total=4)
    assert result["finish_reason"] == "max_tokens" and len(trainer.bodies) == 1
    assert result["final_messages"][-1]["role"] == "assistant"


def test_max_turns() -> None:
    result, trainer = rollout([Turn(), Turn(), Turn()], max_turns=2)
    assert result["finish_reason"] == "max_turns" and len(trainer.bodies) == 2
    assert result["metrics"]["num_tool_calls"] == 1


def test_a_drifted_trainer_prompt_fails_the_rollout_under_the_fail_policy() -> None:
    result, trainer = rollout([Turn(prompt=[5, 6, 8]), Turn(tools=False)])
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "alignment_error"
    assert len(trainer.bodies) == 1
    (event,) = result["extra_fields"]["alignment"]["events"]
    assert event["kind"] == "trainer_prompt_mismatch" and event["first_mismatch"] == 2


def test_a_drifted_trainer_prompt_is_flagged_and_adopted_under_the_flag_policy() -> None:
    pool = ScriptedPool()
    result, trainer = rollout([Turn(prompt=[5, 6, 8, 1]), Turn(tools=False)], pool, drift="flag")
    assert result["status"] == "COMPLETED" and result["finish_reason"] == "stop"
    assert result["extra_fields"]["alignment"]["drift_events"] == 1
    # The next growth is computed on the trainer's sequence, and the fast path is off after drift.
    (full,) = pool.extends  # no fast path after drift: the full render at once
    assert isinstance(full, ExtendFull) and list(full.seq) == [5, 6, 8, 1, 9, 10]


def test_a_prefix_break_fails_under_fail_and_is_flagged_under_flag() -> None:
    broken = [5, 6, 7, 9, 11, 20, 21, 22]  # the whole new prompt: 8 ids where the trainer holds 5
    failed, _ = rollout([Turn(), Turn(tools=False)], ScriptedPool([(broken, False)]))
    assert failed["status"] == "ERROR" and failed["extra_fields"]["error_category"] == "alignment_error"
    flagged, trainer = rollout([Turn(), Turn(tools=False)], ScriptedPool([(broken, False)]), drift="flag")
    assert flagged["status"] == "COMPLETED"
    (event,) = flagged["extra_fields"]["alignment"]["events"]
    assert event["kind"] == "prefix_break" and event["first_mismatch"] == 1
    assert trainer.bodies[1]["response_mask"] == [0] * (len(broken) - 5)


@pytest.mark.parametrize("drift", ["fail", "flag"])
def test_a_prompt_that_shrank_fails_under_either_policy(drift: str) -> None:
    result, trainer = rollout([Turn(), Turn(tools=False)], ScriptedPool([([5, 6], False)]), drift=drift)
    assert result["status"] == "ERROR" and "shorter" in result["error_message"]
    assert len(trainer.bodies) == 1


class CuttingPool(ScriptedPool):
    """Also answers the token cap's ``CutTools``, cutting each text to its first word."""

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        if isinstance(request, CutTools):
            return CutTexts([text.split()[0] + " [cut]" for text in request.texts])
        return await super().answer(request, promotion)

    @property
    def cuts(self) -> list[CutTools]:
        return self.asked(CutTools)


def _long_add(limit: int) -> ToolBox:
    registry = ToolRegistry()

    @registry.tool(name="add")
    def long_add(a: int, b: int) -> str:
        """Add, at length."""
        return "sum " * (a + b) * 10

    return ToolBox(registry, limits=ToolLimits(max_output_tokens=limit))


def test_tool_messages_within_the_token_cap_by_their_bytes_skip_the_pool() -> None:
    """The calculator's "3" is 1 byte: the pool is never asked to cut it."""
    tools = ToolBox(calculator_registry(), limits=ToolLimits(max_output_tokens=1))
    pool = ScriptedPool()
    result, _ = rollout([Turn(), Turn(tools=False)], pool, tools=tools)
    assert pool.asked(CutTools) == []
    assert result["status"] == "COMPLETED", result["error_message"]
    assert result["final_messages"][2]["content"] == "3"


def test_a_tool_message_over_the_token_cap_is_cut_by_the_pool_and_sent_cut() -> None:
    pool = CuttingPool()
    result, _ = rollout([Turn(), Turn(tools=False)], pool, tools=_long_add(16))
    assert result["status"] == "COMPLETED", result["error_message"]
    assert [(op.texts, op.limit) for op in pool.cuts] == [(["sum " * 30], 16)]
    assert result["final_messages"][2]["content"] == "sum [cut]"
    assert pool.extends[0].tool_messages[0]["content"] == "sum [cut]"  # what the mask is made of
