"""The client of an inference engine's ``POST {server_url}/v1/completions`` in token mode.

The prompt goes out as token ids and the sampled ids come back as they are, in the body vLLM and
SGLang accept. Transport and error translation are the trainer client's (``TrainerClient.post_json``:
one connection pool per worker, 429/4xx/5xx/timeouts/network errors in the trainer categories);
this module adds the body and the checks of what token mode needs from the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core

from rollout_server.errors import TrainerBadResponse
from rollout_server.protocol import EngineCompletion
from rollout_server.trainer import TrainerClient, parse_body, without_prompt_ids

__all__ = ["EngineClient", "EngineRequest", "EngineTurn"]


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineRequest:
    """One generation: the prompt's ids and how to sample."""

    model: str
    # The prompt's ids as the inside of their JSON array (``ids_text``), kept by the agent loop
    # as the sequence grows: the body is spliced around it, never re-serialised from ints.
    prompt_text: bytes | bytearray
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None
    stop_token_ids: Sequence[int]
    logprobs: bool
    user: str  # the rollout id (OpenAI's end-user field)

    def body(self) -> bytes:
        """The JSON body: ``prompt`` first, spliced in as text, then the other fields."""
        fields: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop_token_ids": list(self.stop_token_ids),
            "logprobs": 1 if self.logprobs else 0,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "return_token_ids": True,
            "user": self.user,
        }
        if self.stop:
            fields["stop"] = self.stop
        rest = pydantic_core.to_json(fields)  # b'{"model": …}'
        return b"".join((b'{"prompt":[', self.prompt_text, b"],", rest[1:]))


@dataclass(frozen=True, slots=True)
class EngineTurn:
    """What the engine sampled: ids, one logprob each (None when not asked), why it stopped."""

    ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    text: str


class EngineClient:
    """Posts token-id prompts to an engine over the trainer client's transport."""

    def __init__(self, http: TrainerClient) -> None:
        self._http = http

    async def generate(self, server_url: str, request: EngineRequest, *, api_key: str | None) -> EngineTurn:
        """One completion; a ``TrainerError`` on any failure, ``TrainerBadResponse`` when the
        answer lacks what token mode needs (token ids, a logprob per id, a finish reason)."""
        content = await self._http.post_json(server_url, request.body(), api_key=api_key, peer="engine")
        # vLLM echoes the prompt's ids, most of the answer: skipped unparsed when plainly shaped.
        cut = without_prompt_ids(content)
        choice = parse_body(EngineCompletion, content if cut is None else cut[0], peer="engine").choices[0]
        if choice.token_ids is None:
            raise TrainerBadResponse(
                "engine answered without choices.0.token_ids: token mode needs the generated ids "
                "(vLLM >= 0.10.2 returns them with return_token_ids; SGLang needs its equivalent)"
            )
        if choice.finish_reason not in ("stop", "length"):
            raise TrainerBadResponse(
                f"engine answered finish_reason {choice.finish_reason!r}, not stop or length"
            )
        logprobs: list[float] | None = None
        if request.logprobs:
            given = choice.logprobs.token_logprobs if choice.logprobs is not None else []
            if len(given) != len(choice.token_ids) or any(lp is None for lp in given):
                raise TrainerBadResponse(
                    f"engine answered {len(given)} logprobs for {len(choice.token_ids)} token ids "
                    "(choices.0.logprobs.token_logprobs)"
                )
            logprobs = [float(lp) for lp in given if lp is not None]
        return EngineTurn(choice.token_ids, logprobs, choice.finish_reason, choice.text)
