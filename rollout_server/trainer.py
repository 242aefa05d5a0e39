"""The client of the trainer's ``POST {server_url}/v1/completions``.

One ``httpx.AsyncClient`` per Sanic worker, over aiohttp's connection pool (``transport.py``
says why). Every failure is translated here, once, into
the errors of ``rollout_server.errors``; nothing above this module sees an httpx type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from rollout_server.errors import (
    TrainerBadResponse,
    TrainerClientError,
    TrainerNetworkError,
    TrainerRateLimited,
    TrainerServerError,
    TrainerTimeout,
)
from rollout_server.protocol import TrainerCompletion
from rollout_server.transport import AiohttpTransport

__all__ = ["TrainerClient", "TrainerLimits"]


@dataclass(frozen=True, kw_only=True)
class TrainerLimits:
    """The slice of settings the trainer client needs."""

    timeout: float = 300.0
    max_connections: int = 1000


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200] + ("…" if len(text) > 200 else "")


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = f"trainer answered HTTP {status}: {_snippet(response)}"
    if status == 429:
        raise TrainerRateLimited(detail, http_status=status)
    if status >= 500:
        raise TrainerServerError(detail, http_status=status)
    raise TrainerClientError(detail, http_status=status)


class TrainerClient:
    """Calls the trainer; one instance per worker, shared by all its rollouts."""

    def __init__(self, limits: TrainerLimits, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(limits.timeout),
            transport=transport or AiohttpTransport(max_connections=limits.max_connections),
            follow_redirects=False,
        )

    async def complete(
        self, server_url: str, payload: dict[str, Any], *, api_key: str | None
    ) -> TrainerCompletion:
        """POST one completion request; returns the parsed answer or raises a TrainerError."""
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        body = json.dumps(payload, ensure_ascii=False).encode()
        url = f"{server_url}/v1/completions"
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TrainerTimeout(
                f"trainer at {server_url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.LocalProtocolError) as exc:
            raise TrainerNetworkError(
                f"network error communicating with trainer at {server_url}: {type(exc).__name__}"
            ) from exc
        except httpx.HTTPError as exc:
            raise TrainerNetworkError(
                f"error communicating with trainer at {server_url}: {type(exc).__name__}"
            ) from exc
        _raise_for_status(response)
        try:
            return TrainerCompletion.model_validate_json(response.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise TrainerBadResponse(f"malformed response from trainer: {where}: {first['msg']}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
