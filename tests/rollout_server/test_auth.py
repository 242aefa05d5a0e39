"""Inbound authentication: ROLLOUT_API_KEY on POST /rollout, METRICS_API_KEY on /metrics.

The key check is data (``ApiKeys``); the routes are checked on a real guarded server, and the
start-up warning on the default server, which runs without keys.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from rollout_server.security import ApiKeys
from rollout_server.settings import Settings, SettingsError
from tests.conftest import Proc
from tests.rollout_server.guarded import (
    API_KEY,
    METRICS_KEY,
    OTHER_KEY,
    error_of,
    guarded_server,
    post,
    rollout_body,
)


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (f"Bearer {API_KEY}", True),
        (f"bearer {OTHER_KEY}", True),
        (f"Bearer   {API_KEY}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Basic {API_KEY}", False),
        (API_KEY, False),
        (f"Bearer {API_KEY}x", False),
        (f"Bearer {API_KEY[:-1]}", False),
        ("Bearer ключ", False),
    ],
)
def test_a_key_is_accepted_only_as_a_bearer_token_equal_to_one_of_the_keys(
    header: str | None, allowed: bool
) -> None:
    assert ApiKeys([API_KEY, OTHER_KEY]).authorizes(header) is allowed


def test_no_keys_means_open_and_a_repr_never_shows_a_key() -> None:
    assert ApiKeys([]).authorizes(None) and not ApiKeys([]).enabled
    assert API_KEY not in repr(ApiKeys([API_KEY]))
    settings = Settings.from_env({"ROLLOUT_API_KEY": API_KEY, "METRICS_API_KEY": METRICS_KEY})
    assert settings.api_keys == (API_KEY,) and settings.metrics_api_keys == (METRICS_KEY,)
    assert API_KEY not in repr(settings) and METRICS_KEY not in repr(settings)


@pytest.mark.parametrize("raw", ["short-key", f"{API_KEY},has space-0123456789", f"{API_KEY}é"])
def test_a_bad_key_fails_at_start_up_without_being_repeated(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"ROLLOUT_API_KEY": raw})
    assert "ROLLOUT_API_KEY" in str(info.value)
    assert all(part not in str(info.value) for part in raw.split(","))


def test_rollout_without_the_key_is_a_401_and_starts_nothing(guarded: Proc, sim: Proc) -> None:
    body = rollout_body(sim.url)
    for key in (None, "wrong-key-0123456789abcdef", METRICS_KEY):
        response = post(guarded, body, key=key)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(response)["type"] == "unauthorized"
    assert httpx.get(f"{sim.url}/sim/rollouts/{body['rollout_id']}", timeout=10).status_code == 404


def test_rollout_with_either_key_runs(guarded: Proc, sim: Proc) -> None:
    for key in (API_KEY, OTHER_KEY):
        response = post(guarded, rollout_body(sim.url), key=key)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "COMPLETED"


def test_probes_stay_open_and_metrics_take_their_own_key(guarded: Proc) -> None:
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200
    assert httpx.get(guarded.url + "/ready", timeout=10).status_code == 200
    assert httpx.get(guarded.url + "/metrics", timeout=10).status_code == 401
    wrong = httpx.get(guarded.url + "/metrics", headers={"authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert wrong.status_code == 401
    scraped = httpx.get(
        guarded.url + "/metrics", headers={"authorization": f"Bearer {METRICS_KEY}"}, timeout=10
    )
    assert scraped.status_code == 200 and "rollout_requests_total" in scraped.text


def test_keys_never_reach_the_log(guarded: Proc, sim: Proc) -> None:
    post(guarded, rollout_body(sim.url), key="wrong-key-that-is-long-enough")
    log = guarded.log_text()
    for secret in (API_KEY, OTHER_KEY, METRICS_KEY, "wrong-key-that-is-long-enough"):
        assert secret not in log
    assert "ROLLOUT_API_KEY is not set" not in log


def test_a_server_without_keys_says_so_once_at_start_up(server: Proc) -> None:
    assert server.log_text().count("ROLLOUT_API_KEY is not set") == 1
    assert server.log_text().count("TRAINER_URL_ALLOWLIST is not set") == 1
