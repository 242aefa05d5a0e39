"""The trainer client: the request it sends, and every failure translated into our error types.

Most tests inject an ``httpx.MockTransport``; the last two use real sockets and no mocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rollout_server.errors import (
    TrainerBadResponse,
    TrainerClientError,
    TrainerError,
    TrainerHTTPError,
    TrainerNetworkError,
    TrainerRateLimited,
    TrainerServerError,
    TrainerTimeout,
)
from rollout_server.sim.procs import free_port
from rollout_server.trainer import TrainerClient, TrainerLimits, TrainerReply
from tokenize_pool import ids_text

SERVER = "http://trainer.test:8000"
PAYLOAD: dict[str, Any] = {
    "model": "default",
    "rollout_id": "r-1",
    "messages": [{"role": "user", "content": "What is 2 + 3? — ünïcode"}],
    "response_mask": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "max_tokens": 16,
    "stop": None,
    "logprobs": True,
}
GOOD_BODY: dict[str, Any] = {
    "id": "cmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "default",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "5"}, "finish_reason": "stop"}],
    "token_ids": [20, 151645],
    "logprobs": [-0.1, -0.2],
    "prompt_token_ids": [1, 2, 3],
}

Handler = Callable[[httpx.Request], httpx.Response]


def complete_with(
    handler: Handler,
    *,
    api_key: str | None = None,
    server_url: str = SERVER,
    expected_prompt: bytes | None = None,
) -> TrainerReply:
    async def go() -> TrainerReply:
        client = TrainerClient(TrainerLimits(timeout=5), transport=httpx.MockTransport(handler))
        try:
            return await client.complete(
                server_url, PAYLOAD, api_key=api_key, expected_prompt=expected_prompt
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def recording(seen: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=GOOD_BODY)

    return handler


def test_request_url_headers_and_body() -> None:
    seen: list[httpx.Request] = []
    completion = complete_with(recording(seen), api_key="k").completion
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == f"{SERVER}/v1/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == PAYLOAD
    assert completion.token_ids == [20, 151645]
    assert completion.prompt_token_ids == [1, 2, 3]
    assert completion.logprobs == [-0.1, -0.2]
    assert completion.choices[0].message == {"role": "assistant", "content": "5"}
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("api_key", [None, ""])
def test_no_authorization_header_without_an_api_key(api_key: str | None) -> None:
    seen: list[httpx.Request] = []
    complete_with(recording(seen), api_key=api_key)
    assert "authorization" not in seen[0].headers


def test_server_url_with_a_path_prefix() -> None:
    seen: list[httpx.Request] = []
    complete_with(recording(seen), server_url="https://gate.example.com/rl/job-7")
    assert str(seen[0].url) == "https://gate.example.com/rl/job-7/v1/completions"


@pytest.mark.parametrize(
    ("status", "error_type", "category"),
    [
        (429, TrainerRateLimited, "rate_limited"),
        (400, TrainerClientError, "trainer_client_error"),
        (404, TrainerClientError, "trainer_client_error"),
        (422, TrainerClientError, "trainer_client_error"),
        (500, TrainerServerError, "trainer_server_error"),
        (502, TrainerServerError, "trainer_server_error"),
        (503, TrainerServerError, "trainer_server_error"),
    ],
)
def test_http_error_status_is_translated(
    status: int, error_type: type[TrainerHTTPError], category: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": "rollout r-1 says no"})

    with pytest.raises(error_type) as info:
        complete_with(handler)
    error = info.value
    assert type(error) is error_type
    assert error.http_status == status
    assert error.category == category
    assert str(status) in error.message
    assert "rollout r-1 says no" in error.message


def test_long_error_body_is_cut_short_in_the_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="x" * 5000)

    with pytest.raises(TrainerServerError) as info:
        complete_with(handler)
    assert len(info.value.message) < 400


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>gateway says hi</html>"),
        httpx.Response(200, text=""),
        httpx.Response(200, json={k: v for k, v in GOOD_BODY.items() if k != "token_ids"}),
        httpx.Response(200, json={k: v for k, v in GOOD_BODY.items() if k != "prompt_token_ids"}),
        httpx.Response(200, json={**GOOD_BODY, "choices": []}),
        httpx.Response(200, json={**GOOD_BODY, "token_ids": ["a", "b"]}),
        httpx.Response(200, json={**GOOD_BODY, "token_ids": [5, -1]}),
        httpx.Response(200, json={**GOOD_BODY, "prompt_token_ids": [2**31]}),
        httpx.Response(200, json=[1, 2, 3]),
    ],
    ids=[
        "html",
        "empty",
        "no-token_ids",
        "no-prompt_token_ids",
        "no-choices",
        "string-token_ids",
        "negative-token-id",
        "token-id-beyond-int32",
        "array",
    ],
)
def test_unusable_2xx_body_is_a_bad_response(response: httpx.Response) -> None:
    with pytest.raises(TrainerBadResponse) as info:
        complete_with(lambda request: response)
    assert info.value.category == "trainer_server_error"
    assert "malformed response from trainer" in info.value.message


def test_missing_token_ids_names_the_field() -> None:
    body = {k: v for k, v in GOOD_BODY.items() if k != "token_ids"}
    with pytest.raises(TrainerBadResponse) as info:
        complete_with(lambda request: httpx.Response(200, json=body))
    assert "token_ids" in info.value.message


def answering(body: bytes) -> Handler:
    return lambda request: httpx.Response(200, content=body, headers={"content-type": "application/json"})


COMPACT = json.dumps(GOOD_BODY, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "body",
    [COMPACT, json.dumps(GOOD_BODY).encode(), json.dumps(GOOD_BODY, indent=2).encode()],
    ids=["compact", "json.dumps", "indented"],
)
def test_prompt_ids_equal_to_the_expected_text_are_not_parsed(body: bytes) -> None:
    reply = complete_with(answering(body), expected_prompt=ids_text([1, 2, 3]))
    assert reply.prompt_as_expected
    completion = reply.completion
    assert completion.prompt_token_ids == []
    assert completion.token_ids == [20, 151645]
    assert completion.choices[0].message == {"role": "assistant", "content": "5"}


@pytest.mark.parametrize(
    ("expected", "body"),
    [
        (b"1,2", COMPACT),  # the trainer's prompt is longer
        (b"1,2,3,4", COMPACT),  # shorter
        (b"1,2,4", COMPACT),  # one id differs
        (b"1,2,3", COMPACT.replace(b"[1,2,3]", b"[1,2,3.0]")),  # not the same text: parsed
        (b"1,2,3", COMPACT.replace(b'"model"', b'"usage":{"prompt_token_ids":[1,2,3]},"model"')),
    ],
    ids=["longer", "shorter", "differs", "float-text", "key-twice"],
)
def test_any_other_answer_is_parsed_in_full(expected: bytes, body: bytes) -> None:
    reply = complete_with(answering(body), expected_prompt=expected)
    assert not reply.prompt_as_expected
    assert reply.completion.prompt_token_ids == [1, 2, 3]


def test_the_key_quoted_inside_a_string_is_not_the_key() -> None:
    # Inside a JSON string a quote is escaped, so the text cannot contain the bare key.
    body = COMPACT.replace(b'"5"', b'"say \\"prompt_token_ids\\":[9]"')
    reply = complete_with(answering(body), expected_prompt=b"1,2,3")
    assert reply.prompt_as_expected
    assert reply.completion.choices[0].message["content"] == 'say "prompt_token_ids":[9]'


def test_prompt_key_only_below_the_top_level_is_still_a_bad_response() -> None:
    body = {k: v for k, v in GOOD_BODY.items() if k != "prompt_token_ids"}
    body["usage"] = {"prompt_token_ids": [1, 2, 3]}
    with pytest.raises(TrainerBadResponse) as info:
        complete_with(answering(json.dumps(body).encode()), expected_prompt=b"1,2,3")
    assert "prompt_token_ids" in info.value.message


def test_a_bad_field_beside_matching_prompt_ids_is_still_a_bad_response() -> None:
    body = json.dumps({**GOOD_BODY, "token_ids": ["a"]}).encode()
    with pytest.raises(TrainerBadResponse) as info:
        complete_with(answering(body), expected_prompt=b"1,2,3")
    assert "token_ids" in info.value.message


@pytest.mark.parametrize("expected", [None, b"9"], ids=["no-expectation", "mismatch"])
def test_prompt_as_expected_cannot_be_set_from_the_wire(expected: bytes | None) -> None:
    body = json.dumps({**GOOD_BODY, "_prompt_as_expected": True, "prompt_as_expected": True}).encode()
    reply = complete_with(answering(body), expected_prompt=expected)
    assert not reply.prompt_as_expected
    assert reply.completion.prompt_token_ids == [1, 2, 3]


@pytest.mark.parametrize(
    ("exc", "error_type", "category"),
    [
        (httpx.ConnectError("connection refused"), TrainerNetworkError, "network_error"),
        (httpx.ReadError("connection reset"), TrainerNetworkError, "network_error"),
        (httpx.RemoteProtocolError("peer closed connection"), TrainerNetworkError, "network_error"),
        (httpx.ReadTimeout("read timed out"), TrainerTimeout, "timeout"),
        (httpx.ConnectTimeout("connect timed out"), TrainerTimeout, "timeout"),
        (httpx.PoolTimeout("no free connection"), TrainerTimeout, "timeout"),
    ],
)
def test_transport_errors_are_translated(
    exc: httpx.HTTPError, error_type: type[TrainerError], category: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(error_type) as info:
        complete_with(handler)
    assert type(info.value) is error_type
    assert info.value.category == category
    assert isinstance(info.value.__cause__, httpx.HTTPError)
    assert SERVER in info.value.message


def test_trainer_errors_are_not_httpx_errors() -> None:
    for error_type in (
        TrainerRateLimited,
        TrainerClientError,
        TrainerServerError,
        TrainerBadResponse,
        TrainerNetworkError,
        TrainerTimeout,
    ):
        assert issubclass(error_type, TrainerError)
        assert not issubclass(error_type, httpx.HTTPError)


def test_refused_connection_over_a_real_socket_is_a_network_error() -> None:
    port = free_port()

    async def go() -> None:
        client = TrainerClient(TrainerLimits(timeout=5))
        try:
            await client.complete(f"http://127.0.0.1:{port}", PAYLOAD, api_key=None)
        finally:
            await client.aclose()

    with pytest.raises(TrainerNetworkError) as info:
        asyncio.run(go())
    assert info.value.category == "network_error"


def test_trainer_that_never_answers_over_a_real_socket_is_a_timeout() -> None:
    async def go() -> None:
        release = asyncio.Event()
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await release.wait()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = TrainerClient(TrainerLimits(timeout=0.5))
        try:
            await client.complete(f"http://127.0.0.1:{port}", PAYLOAD, api_key="k")
        finally:
            await client.aclose()
            release.set()
            for writer in writers:
                writer.close()
            server.close()
            await server.wait_closed()

    started = time.perf_counter()
    with pytest.raises(TrainerTimeout) as info:
        asyncio.run(go())
    assert time.perf_counter() - started < 3
    assert info.value.category == "timeout"
