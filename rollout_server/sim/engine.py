"""Engine mode: a ``/v1/completions`` request whose ``prompt`` is token ids, answered as vLLM does.

A rollout server in token mode keeps the ids the model sampled and sends every prompt as ids:
``{"model", "prompt": [ids], "max_tokens", "stop_token_ids", "logprobs", "return_token_ids",
"skip_special_tokens", "user": <rollout id>, ...}``. The simulator decodes the prompt only to
count the assistant turns already in it, which picks the scripted turn (``scenarios``); it then
"samples" that turn as ids: the chat template's rendering of the assistant message, cut after
the end-of-turn token, as in message mode (``model``), optionally with ids that do not survive
re-encoding (``splits``). The answer has vLLM 0.32's shape: ``choices[0]`` with ``text``,
``finish_reason``, ``stop_reason``, ``logprobs`` (``token_logprobs``, ``tokens``,
``text_offset``, ``top_logprobs``), ``token_ids`` and ``prompt_token_ids``.

The bookkeeping (``state``) is the message mode's, keyed by ``user``: every prompt must start
with exactly the previous prompt and the ids generated for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from .model import SimTemplateError, fake_logprobs, render_prompt, sampled_ids, sampled_text
from .scenarios import FINAL_ANSWER, Route, Turn

__all__ = [
    "EngineCall",
    "EngineRequestError",
    "EngineSample",
    "assistant_turns",
    "completion_body",
    "is_engine_request",
    "missing_fields_body",
    "parse_engine_call",
    "sample_engine_turn",
]

# vLLM's default when a completions request names no max_tokens.
DEFAULT_MAX_TOKENS = 16
# Any conversation ending in a user message: the assistant turn rendered after it is the same
# text the model samples after any prompt ending in the generation prompt.
_CONTEXT = [{"role": "user", "content": "."}]


class EngineRequestError(ValueError):
    """The completions body cannot be served (vLLM answers these with 400)."""


@dataclass(frozen=True, kw_only=True)
class EngineCall:
    """The fields of a token-prompt completions request that the simulator acts on."""

    rollout_id: str
    model: str
    prompt: list[int]
    max_tokens: int
    logprobs: int | None
    stop_token_ids: frozenset[int]
    return_token_ids: bool
    skip_special_tokens: bool


@dataclass(frozen=True, kw_only=True)
class EngineSample:
    """One generated turn in engine mode."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    stop_reason: int | None


def is_engine_request(body: dict[str, Any]) -> bool:
    """A completions body with a ``prompt`` and no ``messages`` is the engine's protocol."""
    return "prompt" in body and "messages" not in body


def _int_list(value: Any, vocab_size: int) -> list[int]:
    if not isinstance(value, list) or not value:
        raise EngineRequestError("prompt must be a non-empty list of token ids")
    for i, tid in enumerate(value):
        if type(tid) is not int or not 0 <= tid < vocab_size:
            raise EngineRequestError(
                f"prompt[{i}] = {tid!r} is not a token id of the tokenizer (0..{vocab_size - 1})"
            )
    return value


def _optional_int(body: dict[str, Any], name: str, default: int | None, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if type(value) is not int or value < minimum:
        raise EngineRequestError(f"{name} must be an integer >= {minimum}")
    return value


def parse_engine_call(body: dict[str, Any], vocab_size: int) -> EngineCall:
    """Validate a token-prompt completions body; ``user`` carries the rollout id."""
    user = body.get("user")
    if not isinstance(user, str) or not user:
        raise EngineRequestError("user must name the rollout (a non-empty string)")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(type(t) is int for t in stop_ids):
        raise EngineRequestError("stop_token_ids must be a list of token ids")
    max_tokens = _optional_int(body, "max_tokens", DEFAULT_MAX_TOKENS, 1)
    assert max_tokens is not None  # a default is given
    return EngineCall(
        rollout_id=user,
        model=str(body.get("model") or "default"),
        prompt=_int_list(body.get("prompt"), vocab_size),
        max_tokens=max_tokens,
        logprobs=_optional_int(body, "logprobs", None, 0),
        stop_token_ids=frozenset(stop_ids),
        return_token_ids=body.get("return_token_ids") is True,
        skip_special_tokens=body.get("skip_special_tokens", True) is not False,
    )


@dataclass(frozen=True)
class _TemplateFacts:
    turn_prompt: str  # the context's rendering with the generation prompt
    assistant_marker: str  # how the template opens an assistant turn, e.g. "<|im_start|>assistant"


_facts: dict[int, _TemplateFacts] = {}


def _template_facts(tok: PreTrainedTokenizerBase) -> _TemplateFacts:
    facts = _facts.get(id(tok))
    if facts is None:
        prompt, _ = render_prompt(tok, _CONTEXT)
        closed = tok.apply_chat_template(_CONTEXT, add_generation_prompt=False, tokenize=False)
        if not isinstance(closed, str) or not prompt.startswith(closed) or prompt == closed:
            raise SimTemplateError("the template's generation prompt does not follow the conversation")
        # Qwen3.5 opens a think block in the generation prompt: the marker is its first line.
        marker = prompt[len(closed) :].split("\n", 1)[0]
        facts = _facts[id(tok)] = _TemplateFacts(turn_prompt=prompt, assistant_marker=marker)
    return facts


def assistant_turns(tok: PreTrainedTokenizerBase, prompt_ids: list[int]) -> int:
    """The assistant turns a prompt holds before its trailing generation prompt."""
    text = tok.decode(prompt_ids, skip_special_tokens=False)
    if not isinstance(text, str):
        raise SimTemplateError("the tokenizer decoded a flat id list into a batch")
    return max(0, text.count(_template_facts(tok).assistant_marker) - 1)


def sample_engine_turn(
    tok: PreTrainedTokenizerBase, turn: Turn, route: Route, max_tokens: int
) -> EngineSample:
    """The ids the model generates for ``turn``: cut at ``max_tokens`` ("length"), else ending
    with the end-of-turn id ("stop"; the route may leave that id out)."""
    text = sampled_text(tok, _CONTEXT, _template_facts(tok).turn_prompt, turn, think=route.think)
    ids = sampled_ids(tok, text, route.split)
    if len(ids) > max_tokens:
        cut = ids[:max_tokens]
        return EngineSample(
            token_ids=cut, logprobs=fake_logprobs(cut), finish_reason="length", stop_reason=None
        )
    end = ids[-1]
    if not route.end_of_turn:
        ids = ids[:-1]
    return EngineSample(token_ids=ids, logprobs=fake_logprobs(ids), finish_reason="stop", stop_reason=end)


def _logprobs_body(tok: PreTrainedTokenizerBase, sample: EngineSample, skip_special: bool) -> dict[str, Any]:
    tokens = [str(tok.decode([tid], skip_special_tokens=skip_special)) for tid in sample.token_ids]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "text_offset": offsets,
        "token_logprobs": sample.logprobs,
        "tokens": tokens,
        "top_logprobs": [{t: lp} for t, lp in zip(tokens, sample.logprobs, strict=True)],
    }


def completion_body(
    tok: PreTrainedTokenizerBase, call: EngineCall, sample: EngineSample, *, with_ids: bool, serial: int
) -> dict[str, Any]:
    """vLLM's answer; ``with_ids`` False leaves out the ids, as an engine not asked for them."""
    # vLLM names the stop token in stop_reason only when it came from stop_token_ids.
    stop_reason = sample.stop_reason if sample.stop_reason in call.stop_token_ids else None
    choice = {
        "index": 0,
        "text": tok.decode(sample.token_ids, skip_special_tokens=call.skip_special_tokens),
        "finish_reason": sample.finish_reason,
        "stop_reason": stop_reason,
        "logprobs": None if call.logprobs is None else _logprobs_body(tok, sample, call.skip_special_tokens),
        "token_ids": sample.token_ids if with_ids and call.return_token_ids else None,
        "prompt_token_ids": call.prompt if with_ids and call.return_token_ids else None,
    }
    generated = len(sample.token_ids)
    return {
        "id": f"cmpl-sim-{call.rollout_id}-{serial}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(call.prompt),
            "completion_tokens": generated,
            "total_tokens": len(call.prompt) + generated,
        },
    }


def missing_fields_body(call: EngineCall) -> dict[str, Any]:
    """A 200 answer lacking every generation field but the text (the ``malformed`` scenario)."""
    choice = {"index": 0, "text": FINAL_ANSWER, "finish_reason": "stop"}
    return {"id": "cmpl-sim", "object": "text_completion", "model": call.model, "choices": [choice]}
