"""Token-mode rollouts against a real vLLM, each trajectory checked against what vLLM saw.

A random-weight model almost never writes a tool call or its end-of-turn token by itself, so
the mix steers some rollouts through the recording proxy with vLLM's own structured outputs
(a regex the sampled text must match): the model still picks the ids, and being random it picks
arbitrary splits of the forced text (``<tool_call>`` as one added token or as ``<``, ``tool``,
``_call``, ``>``...), the non-canonical ids a trajectory must keep as they are.

Kinds of rollout (``KINDS``):
    free     unconstrained sampling until max_tokens: a length cut, usually one turn
    tools    two forced tool turns (the second with two parallel calls), then unconstrained
    stop     one forced short answer that ends with the end-of-turn token
    budget   forced tool turns until max_tokens_total runs out
    edge     a first prompt about 150 tokens short of vLLM's context: vLLM cuts the turn at
             the context's end, before max_tokens
    overflow a first prompt longer than vLLM's context: vLLM answers 400, the rollout ends
             in ERROR (trainer_client_error, http_status 400) and the server stays healthy
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.engine.check import check_trajectory, engine_calls, non_canonical_turns
from bench.engine.recorder import Recorder
from tokenize_pool.codec import ChatCodec

__all__ = ["KINDS", "Outcome", "rollout_body", "run_rollouts", "shape_request"]

KINDS = ("free", "tools", "stop", "budget", "edge", "overflow")
# " word" is one Qwen3 token: system prompts that fill most of / more than 4,096 tokens.
_FILL = {"edge": 3500, "overflow": 4500}

_THINK = r"<think>\n[a-z ]{1,16}\n</think>\n\n"


def _call(number: str) -> str:
    return (
        r'<tool_call>\n\{"name": "(add|subtract|multiply|divide)", '
        rf'"arguments": \{{"a": {number}, "b": {number}\}}\}}\n</tool_call>'
    )


_CALL = _call(r"(0|[1-9][0-9]{0,2})")
# Numbers with leading zeros are not JSON: a malformed call, answered with a tool error.
_LOOSE_CALL = _call(r"[0-9]{1,3}")
TOOL_TURN = _THINK + _CALL
PARALLEL_TURN = _THINK + _CALL + r"\n" + _CALL
LOOSE_TURN = _THINK + _LOOSE_CALL
SHORT_ANSWER = _THINK + r"[A-Za-z ]{1,24}"


def _kind(rollout_id: str) -> str:
    return rollout_id.split("-", 1)[0]


def shape_request(body: dict[str, Any], before: int) -> dict[str, Any]:
    """Extra sampling fields for the call number ``before`` (0-based) of the rollout ``body["user"]``."""
    kind = _kind(str(body.get("user")))
    regex = None
    if kind == "tools" and before < 2:
        regex = TOOL_TURN if before == 0 else PARALLEL_TURN
    elif kind == "budget":
        regex = LOOSE_TURN
    elif kind == "stop":
        regex = SHORT_ANSWER
    return {"structured_outputs": {"regex": regex}} if regex else {}


def rollout_body(rollout_id: str, server_url: str, *, model: str | None, max_tokens: int) -> dict[str, Any]:
    """A token-mode ``POST /rollout`` body of the rollout's kind; without ``model`` the server
    names the model by the tokenizer's name."""
    kind = _kind(rollout_id)
    budget = 200 if kind == "budget" else 4096
    return {
        "rollout_id": rollout_id,
        "server_url": server_url,
        "generation": "tokens",
        "tokenizer_name": "Qwen/Qwen3-8B",
        "messages": [
            {
                "role": "system",
                "content": "You are a calculator. Use the tools." + " word" * _FILL.get(kind, 0),
            },
            {"role": "user", "content": f"What is 12 * 7 + 3? ({rollout_id})"},
        ],
        "sampling_params": {"temperature": 1.0, "top_p": 1.0, "max_tokens": max_tokens}
        | ({"model": model} if model else {}),
        "max_turns": 6,
        "max_tokens_total": budget,
    }


@dataclass
class Outcome:
    """One rollout: its answer, the engine calls recorded for it, and every breach found."""

    rollout_id: str
    status: str
    finish_reason: str | None
    engine_calls: int
    response_tokens: int
    sampled_tokens: int
    seconds: float
    non_canonical: int = 0  # turns whose sampled ids do not survive decode + re-encode
    breaches: list[str] = field(default_factory=list)


def _judge(
    rollout_id: str, answer: dict[str, Any], recorder: Recorder, seconds: float, codec: ChatCodec
) -> Outcome:
    extra = answer.get("extra_fields") or {}
    traj = extra.get("trajectory")
    calls = engine_calls(recorder.of(rollout_id))
    outcome = Outcome(
        rollout_id,
        str(answer.get("status")),
        answer.get("finish_reason"),
        len(calls),
        len(traj["response_ids"]) if traj else 0,
        sum(traj["response_mask"]) if traj else 0,
        seconds,
        non_canonical_turns(calls, codec.encode, codec.decode),
    )
    if _kind(rollout_id) == "overflow":
        got = (answer.get("status"), extra.get("error_category"), extra.get("http_status"))
        if got != ("ERROR", "trainer_client_error", 400):
            outcome.breaches.append(
                f"an overflowing prompt ended as {got}, not ERROR/trainer_client_error/400"
            )
        return outcome
    if answer.get("status") != "COMPLETED":
        outcome.breaches.append(f"status {answer.get('status')}: {answer.get('error_message')}")
    if traj is None:
        outcome.breaches.append("no extra_fields.trajectory")
    else:
        outcome.breaches.extend(check_trajectory(traj, calls))
    return outcome


async def run_rollouts(
    server: str,
    recorder: Recorder,
    proxy: str,
    ids: list[str],
    *,
    model: str | None,
    max_tokens: int,
    codec: ChatCodec,
) -> list[Outcome]:
    """Posts every rollout at once to the rollout server and judges each answer (``codec``, the
    Qwen3 tokenizer, only counts the turns that do not survive decode + re-encode)."""
    async with httpx.AsyncClient(base_url=server, timeout=900.0) as client:

        async def one(rollout_id: str) -> Outcome:
            started = time.perf_counter()
            body = rollout_body(rollout_id, proxy, model=model, max_tokens=max_tokens)
            resp = await client.post("/rollout", json=body)
            seconds = time.perf_counter() - started
            if resp.status_code != 200:
                return Outcome(
                    rollout_id, f"HTTP {resp.status_code}", None, 0, 0, 0, seconds, [resp.text[:300]]
                )
            return _judge(rollout_id, resp.json(), recorder, seconds, codec)

        return list(await asyncio.gather(*(one(rollout_id) for rollout_id in ids)))
