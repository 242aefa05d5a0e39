"""Token mode's agent loop with the pool's requests run on real tokenizers in this process and a
scripted engine over httpx.MockTransport.

The engine answers each call with the next scripted turn (token ids, as a model would sample
them) and checks what vLLM cannot: that every prompt is exactly the previous prompt plus the ids
it generated, then the growth. The trajectory must be what the engine saw and produced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from rollout_server.agent import AgentPolicy
from rollout_server.engine import EngineClient
from rollout_server.protocol import RolloutRequest
from rollout_server.token_agent import TokenAgentLoop
from rollout_server.tools import calculator_registry
from rollout_server.toolset import ToolBox
from rollout_server.trainer import TrainerClient, TrainerLimits
from tests.stand_in_pool import InlinePool
from tokenize_pool import TokenizerKey
from tokenize_pool.codec import ChatCodec

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"
TOOLS = calculator_registry().schemas()
START = [
    {"role": "system", "content": "You are a calculator agent."},
    {"role": "user", "content": "What is 2+3?"},
]


@dataclass
class Turn:
    ids: list[int]
    finish_reason: str = "stop"


@dataclass
class ScriptedEngine:
    """Answers ``/v1/completions`` with scripted turns; records bodies and continuity breaks."""

    turns: list[Turn]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    breaks: list[int] = field(default_factory=list)
    given: list[list[float]] = field(default_factory=list)
    reply: Callable[[Turn], dict[str, Any]] | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if self.bodies:
            last = self.bodies[-1]
            expected = last["prompt"] + self.turns[len(self.bodies) - 1].ids
            if body["prompt"][: len(expected)] != expected:
                self.breaks.append(len(self.bodies))
        self.bodies.append(body)
        turn = self.turns[len(self.bodies) - 1]
        self.given.append([-(len(self.bodies) + i / 1000) for i in range(len(turn.ids))])
        choice = {
            "index": 0,
            "text": "",
            "finish_reason": turn.finish_reason,
            "logprobs": {"token_logprobs": self.given[-1]},
            "token_ids": turn.ids,
        }
        answer = {"choices": [choice]} if self.reply is None else self.reply(turn)
        return httpx.Response(200, json=answer)


@pytest.fixture
def pool(codec_of: Callable[[str], ChatCodec]) -> InlinePool:
    """The pool's requests run on real tokenizers, in this process: exactly a worker's work."""
    return InlinePool(codec_of)


def rollout(pool: InlinePool, engine: ScriptedEngine, family: str, **fields: Any) -> dict[str, Any]:
    request = RolloutRequest.model_validate(
        {
            "rollout_id": "r-tokens",
            "server_url": "http://engine.test",
            "messages": START,
            "sampling_params": {"temperature": 0.5, **fields.pop("sampling", {})},
            "tokenizer_name": family,
            "generation": "tokens",
            **fields,
        }
    )

    async def scenario() -> dict[str, Any]:
        client = pool.client()
        http = TrainerClient(TrainerLimits(), transport=httpx.MockTransport(engine.handle))
        loop = TokenAgentLoop(
            engine=EngineClient(http),
            pool=client,
            trainer=http,
            tools=ToolBox(calculator_registry()),
            policy=AgentPolicy(rollout_timeout=120.0),
        )
        try:
            return (await loop.run(request)).model_dump()
        finally:
            await client.close()

    return asyncio.run(scenario())


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def render(codec: ChatCodec, messages: list[dict[str, Any]], generation: bool = True) -> str:
    return codec.render_reference(messages, add_generation_prompt=generation, tools=TOOLS)


def sampled(codec: ChatCodec, content: str, *calls: dict[str, Any]) -> list[int]:
    """The ids a model samples for an assistant turn, as its template writes it, end-of-turn included."""
    message = {
        "role": "assistant",
        "content": content,
        "reasoning_content": "Let me compute.",
        "tool_calls": calls,
    }
    base = render(codec, START)
    full = render(codec, [*START, message], generation=False)
    end = full.index("<|im_end|>", len(base)) + len("<|im_end|>")
    return codec.encode(full[len(base) : end])


def as_objects(message: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
        for c in message.get("tool_calls") or []
    ]
    return {**message, "tool_calls": calls} if calls else message


def check_trajectory(engine: ScriptedEngine, trajectory: dict[str, Any]) -> None:
    """Aligned arrays; every prompt the engine saw is the trajectory up to there; every sampled
    id is masked 1 with the engine's logprob, everything else 0 with 0.0."""
    response = trajectory["response_ids"]
    assert len(response) == len(trajectory["response_mask"]) == len(trajectory["response_logprobs"])
    whole = trajectory["prompt_ids"] + response
    for k, body in enumerate(engine.bodies):
        assert whole[: len(body["prompt"])] == body["prompt"]
        at = len(body["prompt"]) - len(trajectory["prompt_ids"])
        ids = engine.turns[k].ids
        assert response[at : at + len(ids)] == ids
        assert trajectory["response_mask"][at : at + len(ids)] == [1] * len(ids)
        logprobs = engine.given[k] if body["logprobs"] else [0.0] * len(ids)
        assert trajectory["response_logprobs"][at : at + len(ids)] == logprobs
    assert sum(trajectory["response_mask"]) == sum(
        len(turn.ids) for turn in engine.turns[: len(engine.bodies)]
    )
    zeros = [
        lp
        for lp, m in zip(trajectory["response_logprobs"], trajectory["response_mask"], strict=True)
        if not m
    ]
    assert zeros == [0.0] * len(zeros)
    assert engine.breaks == []


@pytest.mark.parametrize("family", [QWEN3, QWEN25, QWEN35])
def test_tool_turns_are_exact_and_the_trajectory_is_what_the_engine_saw(
    pool: InlinePool, codec_of: Any, family: str
) -> None:
    codec = codec_of(family)
    engine = ScriptedEngine(
        [
            Turn(sampled(codec, "", call("add", a=2, b=3))),
            Turn(sampled(codec, "Two at once.", call("multiply", a=3, b=4), call("divide", a=8, b=2))),
            Turn(sampled(codec, "It is 5.")),
        ]
    )
    result = rollout(pool, engine, family)
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop")
    first = engine.bodies[0]
    assert first["model"] == family and first["user"] == "r-tokens" and first["temperature"] == 0.5
    assert first["stop_token_ids"] == [codec.encode("<|im_end|>")[0]] and first["return_token_ids"] is True
    assert "stop" not in first
    messages = result["final_messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["5", "12", "4"]
    assert messages[-1]["content"] == "It is 5."
    trajectory = result["extra_fields"]["trajectory"]
    check_trajectory(engine, trajectory)
    assert trajectory["prompt_ids"] == codec.encode(render(codec, START))
    # The turns were sampled as the template writes them: the full render is canonical here.
    # (With arguments as objects: final_messages hold OpenAI's JSON strings, which Qwen2.5 would quote.)
    full = codec.encode(render(codec, [as_objects(m) for m in messages], generation=False))
    assert full == trajectory["prompt_ids"] + trajectory["response_ids"] + codec.encode("\n")
    assert result["metrics"]["num_llm_calls"] == 3 and result["metrics"]["num_tool_calls"] == 3


def test_ids_that_do_not_round_trip_and_a_missing_end_of_turn_stay_exact(
    pool: InlinePool, codec_of: Any
) -> None:
    codec = codec_of(QWEN35)
    newline = codec.encode("\n")
    # Qwen3.5's empty think block sampled as "\n" + "\n" (the tokenizer writes "\n\n"), and a
    # turn the engine ended without <|im_end|> (a stop string): kept, then closed by the server.
    first = (
        newline
        + newline
        + codec.encode("</think>\n\n<tool_call>\n<function=add>\n<parameter=a>\n2\n</parameter>\n")
    )
    first += codec.encode("<parameter=b>\n3\n</parameter>\n</function>\n</tool_call>")
    assert codec.encode(codec.decode(first)) != first
    cut = codec.encode("Hmm, five or so, I think, but")
    engine = ScriptedEngine([Turn(first), Turn(cut, "length")])
    result = rollout(pool, engine, QWEN35, sampling={"stop": ["</tool_call>"]})
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "length")
    assert engine.bodies[0]["stop"] == ["</tool_call>"]
    end_of_turn = codec.encode("<|im_end|>")
    prompt = engine.bodies[0]["prompt"]
    assert engine.bodies[1]["prompt"][: len(prompt) + len(first) + 1] == prompt + first + end_of_turn
    trajectory = result["extra_fields"]["trajectory"]
    check_trajectory(engine, trajectory)
    closing = len(first)
    assert trajectory["response_ids"][closing] == end_of_turn[0]
    assert (trajectory["response_mask"][closing], trajectory["response_logprobs"][closing]) == (0, 0.0)
    assert trajectory["response_ids"][-len(cut) :] == cut
    assert result["final_messages"][2]["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": '{"a": 2, "b": 3}',
    }
    assert result["final_messages"][3]["content"] == "5"


def test_budgets_end_token_mode_as_they_end_message_mode(pool: InlinePool, codec_of: Any) -> None:
    codec = codec_of(QWEN3)
    tool_turn = sampled(codec, "", call("add", a=2, b=3))
    engine = ScriptedEngine([Turn(tool_turn), Turn(tool_turn)])
    result = rollout(pool, engine, QWEN3, max_turns=2)
    assert result["finish_reason"] == "max_turns" and len(engine.bodies) == 2
    budget = len(tool_turn) + 5
    engine = ScriptedEngine(
        [Turn(tool_turn), Turn(codec.encode("one two three four five six")[:5], "length")]
    )
    result = rollout(
        pool, engine, QWEN3, max_tokens_total=budget, sampling={"max_tokens": 512, "logprobs": False}
    )
    assert result["finish_reason"] == "max_tokens"
    assert [body["max_tokens"] for body in engine.bodies] == [budget, 5]
    assert engine.bodies[0]["logprobs"] == 0
    assert set(result["extra_fields"]["trajectory"]["response_logprobs"]) == {0.0}


def test_an_engine_without_token_ids_fails_the_rollout_clearly(pool: InlinePool, codec_of: Any) -> None:
    engine = ScriptedEngine(
        [Turn([1, 2])], reply=lambda turn: {"choices": [{"text": "x", "finish_reason": "stop"}]}
    )
    result = rollout(pool, engine, QWEN3)
    assert result["status"] == "ERROR"
    assert result["extra_fields"]["error_category"] == "trainer_server_error"
    assert "return_token_ids" in result["error_message"]


def test_a_tokenizer_that_cannot_load_is_a_tokenizer_error(pool: InlinePool) -> None:
    result = rollout(pool, ScriptedEngine([]), "nobody/no-such-tokenizer")
    assert result["extra_fields"]["error_category"] == "tokenizer_error"
    assert str(TokenizerKey("nobody/no-such-tokenizer")) in result["error_message"]
