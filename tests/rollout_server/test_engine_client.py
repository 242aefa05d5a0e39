"""The engine client: the body token mode posts, and every bad answer in its error category."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pytest

from rollout_server.engine import EngineClient, EngineRequest, EngineTurn
from rollout_server.errors import (
    TrainerBadResponse,
    TrainerClientError,
    TrainerError,
    TrainerNetworkError,
    TrainerRateLimited,
    TrainerServerError,
    TrainerTimeout,
)
from rollout_server.trainer import TrainerClient, TrainerLimits

REQUEST = EngineRequest(
    model="Qwen/Qwen3-8B",
    prompt_text=b"1,2,3",
    max_tokens=16,
    temperature=0.7,
    top_p=0.9,
    stop=None,
    stop_token_ids=[151645],
    logprobs=True,
    user="r-1",
)


def answer(**choice: Any) -> dict[str, Any]:
    base = {
        "index": 0,
        "text": "hi",
        "finish_reason": "stop",
        "stop_reason": None,
        "logprobs": {"token_logprobs": [-0.5, -0.25], "tokens": ["h", "i"], "text_offset": [0, 1]},
        "token_ids": [7, 151645],
        "prompt_token_ids": [1, 2, 3],
    }
    return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [{**base, **choice}]}


def generate(
    handler: Any, request: EngineRequest = REQUEST, api_key: str | None = None
) -> tuple[EngineTurn, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    async def record(http_request: httpx.Request) -> httpx.Response:
        seen.append(http_request)
        result = handler(http_request)
        if isinstance(result, Exception):
            raise result
        return result if isinstance(result, httpx.Response) else httpx.Response(200, json=result)

    client = EngineClient(TrainerClient(TrainerLimits(), transport=httpx.MockTransport(record)))
    return asyncio.run(client.generate("http://engine.test", request, api_key=api_key)), seen


def test_the_body_is_what_vllm_and_sglang_accept() -> None:
    turn, [sent] = generate(lambda _: answer(), api_key="secret")
    assert str(sent.url) == "http://engine.test/v1/completions"
    assert sent.headers["authorization"] == "Bearer secret"
    assert json.loads(sent.content) == {
        "model": "Qwen/Qwen3-8B",
        "prompt": [1, 2, 3],
        "max_tokens": 16,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop_token_ids": [151645],
        "logprobs": 1,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
        "return_token_ids": True,
        "user": "r-1",
    }
    assert turn == EngineTurn([7, 151645], [-0.5, -0.25], "stop", "hi")


def test_stop_strings_go_out_when_given_and_logprobs_when_asked() -> None:
    request = dataclasses.replace(REQUEST, stop=["</answer>"], logprobs=False)
    turn, [sent] = generate(lambda _: answer(logprobs=None), request)
    body = json.loads(sent.content)
    assert body["stop"] == ["</answer>"] and body["logprobs"] == 0
    assert turn.logprobs is None


@pytest.mark.parametrize(
    ("reply", "error", "words"),
    [
        (answer(token_ids=None), TrainerBadResponse, "return_token_ids"),
        (answer(logprobs={"token_logprobs": [-0.5]}), TrainerBadResponse, "1 logprobs for 2 token ids"),
        (answer(logprobs=None), TrainerBadResponse, "0 logprobs for 2 token ids"),
        (answer(finish_reason="abort"), TrainerBadResponse, "finish_reason 'abort'"),
        ({"choices": []}, TrainerBadResponse, "malformed response from engine: choices"),
        (httpx.Response(200, content=b"not json"), TrainerBadResponse, "malformed response from engine"),
        (httpx.Response(429, text="slow down"), TrainerRateLimited, "engine answered HTTP 429"),
        (httpx.Response(503, text="overloaded"), TrainerServerError, "engine answered HTTP 503"),
        (httpx.Response(400, text="max_tokens too large"), TrainerClientError, "max_tokens too large"),
        (httpx.ConnectError("refused"), TrainerNetworkError, "network error communicating with engine"),
        (httpx.ReadTimeout("slow"), TrainerTimeout, "engine at http://engine.test did not answer in time"),
    ],
)
def test_bad_answers_end_in_their_categories(reply: Any, error: type[TrainerError], words: str) -> None:
    with pytest.raises(error) as raised:
        generate(lambda _: reply)
    assert words in raised.value.message
    if isinstance(reply, httpx.Response) and reply.status_code != 200:
        assert raised.value.http_status == reply.status_code  # type: ignore[attr-defined]


@pytest.mark.parametrize("echo", [[1, 2, 3], None, "absent"])
def test_the_prompt_echo_is_skipped_or_parsed_alike(echo: Any) -> None:
    reply = answer(prompt_token_ids=echo)
    if echo == "absent":
        del reply["choices"][0]["prompt_token_ids"]
    turn, _ = generate(lambda _: reply)
    assert turn == EngineTurn([7, 151645], [-0.5, -0.25], "stop", "hi")
