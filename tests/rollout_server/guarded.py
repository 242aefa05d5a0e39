"""One rollout server with every guard on, shared by the trust tests (auth, allowlist, strict
input, retries, OpenAPI, fuzzing): started once per session, as a real process.

Its allowlist holds only the simulator's address, so any other URL is refused; its request
body limit is small, so the 413 is cheap to reach.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Proc

API_KEY = "test-rollout-key-0123456789abcdef"
OTHER_KEY = "test-rollout-key-second-fedcba987654"
METRICS_KEY = "test-metrics-key-0123456789abcdef"
MAX_BODY = 65536
QWEN3 = "Qwen/Qwen3-8B"

_started: dict[str, Proc] = {}


def guarded_server(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    """The shared guarded server (started on first use) whose allowlist holds ``sim`` only."""
    if sim.url not in _started:
        _started[sim.url] = start_server(
            ROLLOUT_API_KEY=f"{API_KEY},{OTHER_KEY}",
            METRICS_API_KEY=METRICS_KEY,
            TRAINER_URL_ALLOWLIST=sim.url.removeprefix("http://"),
            MAX_REQUEST_BODY_BYTES=str(MAX_BODY),
        )
    return _started[sim.url]


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def rollout_body(server_url: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "rollout_id": f"trust-{uuid.uuid4().hex}",
        "server_url": server_url,
        "messages": [{"role": "user", "content": "What is 2+3?"}],
        "sampling_params": {"max_tokens": 64},
        "tokenizer_name": QWEN3,
    }
    body.update(overrides)
    return body


def post(server: Proc, body: Any, *, key: str | None = API_KEY, timeout: float = 120) -> httpx.Response:
    headers = auth(key) if key is not None else {}
    if isinstance(body, bytes):
        return httpx.post(f"{server.url}/rollout", content=body, headers=headers, timeout=timeout)
    return httpx.post(f"{server.url}/rollout", json=body, headers=headers, timeout=timeout)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error body every refusal carries, with no trace of a stack."""
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    error: dict[str, Any] = body["error"]
    return error
