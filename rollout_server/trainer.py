"""The client of the trainer's ``POST {server_url}/v1/completions``.

One ``TrainerClient`` per Sanic worker, posting over keep-alive HTTP/1.1 connections with
httpx's exception types (``transport.py`` says why). Every failure is translated here, once, into the
errors of ``rollout_server.errors``; nothing above this module sees an httpx type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pydantic_core
from pydantic import BaseModel, ValidationError

from rollout_server.errors import (
    TrainerBadResponse,
    TrainerClientError,
    TrainerNetworkError,
    TrainerRateLimited,
    TrainerServerError,
    TrainerTimeout,
)
from rollout_server.protocol import TrainerCompletion
from rollout_server.transport import DEFAULT_MAX_RESPONSE_BYTES, Http1Transport, ResponseTooLarge

__all__ = ["TrainerClient", "TrainerLimits", "TrainerReply", "parse_body", "without_prompt_ids"]


@dataclass(frozen=True, kw_only=True)
class TrainerLimits:
    """The slice of settings the trainer client needs."""

    timeout: float = 300.0
    max_connections: int = 1000
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


def _snippet(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:200] + ("…" if len(text) > 200 else "")


def _describe(exc: Exception) -> str:
    detail = str(exc).strip().replace("\n", " ")[:200]
    return f"{type(exc).__name__} ({detail})" if detail else type(exc).__name__


_PROMPT_KEY = b'"prompt_token_ids"'
_JSON_SPACE = b" \t\r\n"


def without_prompt_ids(body: bytes) -> tuple[bytes, bytes] | None:
    """``body`` with its ``prompt_token_ids`` array emptied, and that array's text; None when
    the body is not plainly shaped (the key twice, or not followed by an array).

    A long prompt's ids are most of an answer that echoes them, and parsing them into Python
    ints costs about ten times more than comparing (or skipping) their bytes. Inside a JSON
    string a quote is escaped, so no string can contain the key; the array is cut at the first
    ``]`` after it. What is left still goes through validation, so a key in the wrong place
    still fails it."""
    at = body.find(_PROMPT_KEY)
    if at < 0 or body.find(_PROMPT_KEY, at + 1) >= 0:
        return None
    start = body.find(b"[", at)
    end = body.find(b"]", start)
    if start < 0 or end < 0 or body[at + len(_PROMPT_KEY) : start].strip(_JSON_SPACE) != b":":
        return None
    return body[: start + 1] + body[end:], body[start + 1 : end]


@dataclass(frozen=True, slots=True)
class TrainerReply:
    """The trainer's answer to one call.

    ``prompt_as_expected``: the body's ``prompt_token_ids`` were, as text, exactly the ids the
    server expected (``ids_text``), so they were not parsed and ``completion.prompt_token_ids``
    is empty; the prompt is the expected one. Otherwise they were parsed in full."""

    completion: TrainerCompletion
    prompt_as_expected: bool = False


def _parse_expected(body: bytes, expected: bytes | bytearray) -> TrainerReply | None:
    """The answer, without parsing ``prompt_token_ids`` when that array is, as text, the
    ``expected`` ids (``ids_text``); None when it is not, or the body is not plainly shaped."""
    cut = without_prompt_ids(body)
    if cut is None:
        return None
    rest, text = cut
    if text != expected and text.translate(None, _JSON_SPACE) != expected:
        return None
    try:
        completion = TrainerCompletion.model_validate_json(rest)
    except ValidationError:
        return None
    return TrainerReply(completion, prompt_as_expected=True)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], content: bytes, peer: str = "trainer") -> M:
    """``content`` validated as ``model``; a ``TrainerBadResponse`` naming the first bad field."""
    try:
        return model.model_validate_json(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise TrainerBadResponse(f"malformed response from {peer}: {where}: {first['msg']}") from exc


def _raise_for_status(status: int, content: bytes, peer: str) -> None:
    if 200 <= status < 300:
        return
    detail = f"{peer} answered HTTP {status}: {_snippet(content)}"
    if status == 429:
        raise TrainerRateLimited(detail, http_status=status)
    if status >= 500:
        raise TrainerServerError(detail, http_status=status)
    raise TrainerClientError(detail, http_status=status)


class TrainerClient:
    """Calls the trainer; one instance per worker, shared by all its rollouts.

    By default it posts through ``Http1Transport.post``: none of ``httpx.AsyncClient``'s
    cookie, auth, redirect and URL-merging layers, nor httpx's request and response objects, is
    needed for one POST, and at thousands of calls a second they cost as much as the transport
    itself. Any other httpx transport (``httpx.MockTransport`` in unit tests) gets
    ``httpx.Request`` objects.
    """

    def __init__(self, limits: TrainerLimits, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport: Http1Transport | httpx.AsyncBaseTransport = transport or Http1Transport(
            max_connections=limits.max_connections, max_response_bytes=limits.max_response_bytes
        )
        self._seconds = limits.timeout
        self._timeout = httpx.Timeout(limits.timeout).as_dict()

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if isinstance(self._transport, Http1Transport):
            return await self._transport.post(url, body, headers, self._seconds)
        request = httpx.Request("POST", url, content=body, headers=headers)
        request.extensions["timeout"] = self._timeout
        response = await self._transport.handle_async_request(request)
        return response.status_code, await response.aread()

    async def post_json(
        self, server_url: str, payload: dict[str, Any] | bytes, *, api_key: str | None, peer: str = "trainer"
    ) -> bytes:
        """POST ``payload`` to ``{server_url}/v1/completions``; the body of a 2xx answer, or a
        TrainerError (429, 4xx, 5xx with ``http_status``; timeout; network). ``peer`` names the
        other side in the messages ("trainer", "engine")."""
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        # Rust: ~5x faster than json.dumps on long prompts; bytes are a body written already.
        body = payload if isinstance(payload, bytes) else pydantic_core.to_json(payload)
        try:
            status, content = await self._post(f"{server_url}/v1/completions", body, headers)
        except httpx.TimeoutException as exc:
            raise TrainerTimeout(
                f"{peer} at {server_url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except ResponseTooLarge as exc:
            raise TrainerBadResponse(f"{peer} at {server_url} answered too much: {exc}") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.LocalProtocolError) as exc:
            raise TrainerNetworkError(
                f"network error communicating with {peer} at {server_url}: {_describe(exc)}"
            ) from exc
        except httpx.HTTPError as exc:
            raise TrainerNetworkError(
                f"error communicating with {peer} at {server_url}: {_describe(exc)}"
            ) from exc
        _raise_for_status(status, content, peer)
        return content

    async def complete(
        self,
        server_url: str,
        payload: dict[str, Any],
        *,
        api_key: str | None,
        expected_prompt: bytes | bytearray | Callable[[], bytes | bytearray | None] | None = None,
    ) -> TrainerReply:
        """POST one completion request; returns the parsed answer or raises a TrainerError.

        With ``expected_prompt`` (``ids_text`` of the ids the trainer should echo, or a function
        giving it, or None if not known yet, when the answer is in), an answer whose
        ``prompt_token_ids`` match it as text comes back with ``prompt_as_expected`` set and
        those ids not parsed; any other answer is parsed in full."""
        content = await self.post_json(server_url, payload, api_key=api_key)
        expected = expected_prompt() if callable(expected_prompt) else expected_prompt
        if expected:
            reply = _parse_expected(content, expected)
            if reply is not None:
                return reply
        return TrainerReply(parse_body(TrainerCompletion, content))

    def connection_stats(self) -> dict[str, int] | None:
        """The connection pool's use (``Http1Transport.stats``); None with another transport."""
        return self._transport.stats() if isinstance(self._transport, Http1Transport) else None

    async def aclose(self) -> None:
        await self._transport.aclose()
