"""The Sanic app through sanic-testing's ASGI client, with a stand-in tokenize pool.

Only routes that fail before the agent loop are driven (bad bodies, unknown routes, a route that
raises) and the routes that only read the pool's stats; the pool is handed to ``create_app``, so
no process starts. ``configure_logging`` is replaced, as it would rewire pytest's root logger.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from pydantic import ValidationError
from sanic import Request, Sanic
from sanic.exceptions import NotFound, ServiceUnavailable

import rollout_server.app as app_module
from rollout_server.app import JSONErrorHandler, _validation_response, create_app
from rollout_server.protocol import RolloutRequest
from rollout_server.settings import Settings
from tests.stand_in_pool import StandInPool

_names = itertools.count()
LEAKS = ("Traceback", 'File "', "RuntimeError", "secret detail")


def keep_pytest_logging(level: str, fmt: str) -> None:
    """Stands in for configure_logging."""


class StatsPool(StandInPool):
    """What the app asks of the pool outside a rollout: its stats, and to close."""

    def __init__(self, stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._stats = stats or {"workers_alive": 1, "warm": True, "workers": []}

    async def stats(self) -> dict[str, Any]:
        return self._stats


@pytest.fixture(autouse=True)
def _quiet_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "configure_logging", keep_pytest_logging)


def make_app(pool: StatsPool | None = None, **env: str) -> Sanic[Any, Any]:
    settings = Settings.from_env({"TOKENIZE_POOL_SOCKET": "/nonexistent/rollout-test.sock", **env})
    return create_app(settings, name=f"rollout-test-{next(_names)}", pool=(pool or StatsPool()).client())


def request(app: Sanic[Any, Any], method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
    async def go() -> tuple[int, str, Any]:
        _, response = await app.asgi_client.request(method, path, **kwargs)
        return response.status_code, response.headers.get("content-type", ""), response.text

    status, content_type, text = asyncio.run(go())
    for leak in LEAKS:
        assert leak not in text
    return status, content_type, text


def error_of(text: str) -> dict[str, Any]:
    body = json.loads(text)
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str)
    return body["error"]


@pytest.mark.parametrize("body", [b"{not json", b'{"rollout_id": "r-1",', b"", b"\xff\xfe"])
def test_invalid_json_body_is_a_400(body: bytes) -> None:
    status, content_type, text = request(make_app(), "POST", "/rollout", content=body)
    assert status == 400
    assert content_type.startswith("application/json")
    assert error_of(text)["type"] == "invalid_json"


def test_body_missing_fields_is_a_422_naming_each_field() -> None:
    status, _, text = request(make_app(), "POST", "/rollout", content=b"{}")
    assert status == 422
    error = error_of(text)
    assert error["type"] == "validation_error"
    named = {f["field"] for f in error["fields"]}
    assert named == {"rollout_id", "server_url", "messages", "sampling_params"}
    for field in named:
        assert field in error["message"]


def test_nested_invalid_field_is_named_by_its_path() -> None:
    body = {
        "rollout_id": "r-1",
        "server_url": "ftp://trainer",
        "messages": [{"role": "robot", "content": "hi"}],
        "sampling_params": {"temperature": 9},
    }
    status, _, text = request(make_app(), "POST", "/rollout", json=body)
    assert status == 422
    named = {f["field"] for f in error_of(text)["fields"]}
    assert named == {"server_url", "messages.0.role", "sampling_params.temperature"}


def test_json_that_is_not_an_object_is_a_422_on_the_body() -> None:
    status, _, text = request(make_app(), "POST", "/rollout", content=b"[1, 2]")
    assert status == 422
    assert [f["field"] for f in error_of(text)["fields"]] == ["body"]


def test_unknown_route_is_a_json_404() -> None:
    status, content_type, text = request(make_app(), "GET", "/no/such/route")
    assert status == 404
    assert content_type.startswith("application/json")
    assert error_of(text)["type"] == "NotFound"


def test_wrong_method_is_a_json_405() -> None:
    status, _, text = request(make_app(), "GET", "/rollout")
    assert status == 405
    error_of(text)


def test_metrics_route_is_absent_when_disabled() -> None:
    status, _, text = request(make_app(METRICS_ENABLED="false"), "GET", "/metrics")
    assert status == 404
    error_of(text)


def test_unexpected_exception_is_a_generic_json_500() -> None:
    app = make_app()

    async def broken(req: Request) -> None:
        raise RuntimeError("secret detail")

    app.add_route(broken, "/broken", methods=["GET"])
    status, _, text = request(app, "GET", "/broken")
    assert status == 500
    assert error_of(text) == {"type": "internal_error", "message": "Internal server error"}


def test_response_timeout_leaves_room_for_a_whole_rollout() -> None:
    app = make_app(ROLLOUT_TIMEOUT_SECONDS="900")
    assert app.config.RESPONSE_TIMEOUT >= 900


def test_error_handler_hides_the_message_of_a_5xx_sanic_exception() -> None:
    handler = JSONErrorHandler()
    fake = Request.__new__(Request)
    response = handler.default(fake, ServiceUnavailable("secret detail"))
    assert response.status == 503
    assert json.loads(response.body) == {
        "error": {"type": "ServiceUnavailable", "message": "Internal server error"}
    }


def test_error_handler_keeps_the_message_of_a_4xx_sanic_exception() -> None:
    response = JSONErrorHandler().default(Request.__new__(Request), NotFound("no route /x"))
    assert response.status == 404
    assert json.loads(response.body)["error"] == {"type": "NotFound", "message": "no route /x"}


def validation_error(raw: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate_json(raw)
    return info.value


def test_validation_response_for_invalid_json() -> None:
    response = _validation_response(validation_error(b"{oops"))
    assert response.status == 400
    assert json.loads(response.body)["error"]["type"] == "invalid_json"


def test_validation_response_lists_fields_and_does_not_echo_input() -> None:
    secret = "sk-do-not-echo-me"
    raw = json.dumps(
        {
            "rollout_id": "r",
            "server_url": secret,
            "messages": [],
            "sampling_params": {},
            "callback_api_key": secret,
        }
    ).encode()
    response = _validation_response(validation_error(raw))
    assert response.status == 422
    error = json.loads(response.body)["error"]
    assert {f["field"] for f in error["fields"]} == {"server_url", "messages"}
    assert secret not in response.body.decode()


def test_metrics_expose_the_pools_cache_totals_as_counters() -> None:
    workers = [{"pid": 1, "tokenizers": ["a"], "hits": 5, "misses": 1}, {"pid": 2, "hits": 7, "misses": 2}]
    pool = StatsPool({"workers_alive": 2, "warm": True, "workers": workers})
    status, _, text = request(make_app(pool), "GET", "/metrics")
    assert status == 200
    assert "# TYPE tokenizer_cache_hits_total counter\ntokenizer_cache_hits_total 12\n" in text
    assert "# TYPE tokenizer_cache_misses_total counter\ntokenizer_cache_misses_total 3\n" in text
    assert "# TYPE tokenize_workers_alive gauge\ntokenize_workers_alive 2\n" in text


def test_health_is_503_when_no_tokenize_worker_is_alive() -> None:
    pool = StatsPool({"workers_alive": 0, "warm": False, "workers": []})
    status, _, text = request(make_app(pool), "GET", "/health")
    assert status == 503 and json.loads(text)["status"] == "unhealthy"
    status, _, text = request(make_app(pool), "GET", "/ready")
    assert status == 503 and json.loads(text) == {"ready": False}


def test_the_handed_pool_is_closed_with_the_app() -> None:
    pool = StatsPool()
    status, _, _ = request(make_app(pool), "GET", "/ready")
    assert status == 200 and pool.closed
