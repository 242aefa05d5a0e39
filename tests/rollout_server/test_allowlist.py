"""The outbound allowlist: which URLs a rollout may make the server call, decided as data, and
a refused URL answered with 403 before any connection is made."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from rollout_server.security import OutboundURLRefused, UrlAllowlist, parse_allowlist_entry
from rollout_server.settings import Settings, SettingsError
from tests.conftest import Proc
from tests.rollout_server.guarded import error_of, guarded_server, post, rollout_body

ENTRIES = [
    "trainer.internal",
    "*.svc.cluster.local",
    "gpu-node:8000",
    "10.0.0.0/8",
    "192.168.1.7:9000",
    "fd00::/8",
    "[2001:db8::1]:8000",
]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://trainer.internal:8000", True),
        ("https://TRAINER.internal.", True),
        ("http://x.trainer.internal", False),
        ("http://a.b.svc.cluster.local:80", True),
        ("http://svc.cluster.local", False),
        ("http://evilsvc.cluster.local", False),
        ("http://gpu-node:8000", True),
        ("http://gpu-node:8001", False),
        ("http://gpu-node", False),
        ("http://10.1.2.3:1234", True),
        ("http://11.0.0.1", False),
        ("http://192.168.1.7:9000", True),
        ("http://192.168.1.7:9001", False),
        ("http://[fd12::5]:9", True),
        ("http://[2001:db8::1]:8000", True),
        ("http://[2001:db8::1]:8001", False),
        # Names are never resolved to be checked against networks.
        ("http://localhost", False),
        ("http://10.0.0.1.nip.io", False),
        # Numeric forms the resolver reads as IPv4 are checked as the address they reach.
        ("http://167772161", True),  # 10.0.0.1
        ("http://0x0a.1", True),  # 10.0.0.1
        ("http://2130706433", False),  # 127.0.0.1
        ("http://127.1", False),
        ("http://[::ffff:10.0.0.1]", True),
        ("http://[::ffff:127.0.0.1]", False),
        # What the transport connects to is the host after the userinfo, as read here.
        ("http://trainer.internal@169.254.169.254", False),
        ("http://169.254.169.254#@trainer.internal", False),
        ("http://trainer.internal:99999", False),
        ("http://trainer.internal:port", False),
        ("ftp://trainer.internal", False),
        ("http://", False),
    ],
)
def test_urls_against_the_entries(url: str, allowed: bool) -> None:
    allowlist = UrlAllowlist(ENTRIES)
    assert allowlist.allows(url) is allowed
    if not allowed:
        with pytest.raises(OutboundURLRefused) as info:
            allowlist.check_url(url, field="tool_server_url")
        assert str(info.value).startswith("tool_server_url: ") and "TRAINER_URL_ALLOWLIST" in str(info.value)


def test_an_empty_allowlist_allows_everything() -> None:
    assert not UrlAllowlist([]).enabled
    assert UrlAllowlist([]).allows("http://169.254.169.254")
    UrlAllowlist([]).check_url("http://anything:1")


@pytest.mark.parametrize(
    "entry", ["*", "http://trainer", "trainer:0", "trainer:http", "a..b", "[::1", "*.", "tr ainer"]
)
def test_a_bad_entry_fails_at_start_up_naming_it(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allowlist_entry(entry)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"TRAINER_URL_ALLOWLIST": f"trainer.internal,{entry}"})
    assert "TRAINER_URL_ALLOWLIST" in str(info.value)


def test_settings_keep_the_entries() -> None:
    settings = Settings.from_env({"TRAINER_URL_ALLOWLIST": " a.example , 10.0.0.0/8:8000 ,"})
    assert settings.trainer_url_allowlist == ("a.example", "10.0.0.0/8:8000")


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that would see any connection attempt (not in the guarded server's allowlist)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


def test_a_server_url_outside_the_allowlist_is_a_403_before_any_connection(
    guarded: Proc, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    response = post(guarded, rollout_body(url))
    assert response.status_code == 403
    error = error_of(response)
    assert error["type"] == "url_not_allowed" and error["message"].startswith("server_url: ")
    assert_no_connection(listener)


def test_a_tool_server_url_outside_the_allowlist_is_a_403(
    guarded: Proc, sim: Proc, listener: socket.socket
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    response = post(guarded, rollout_body(sim.url, tool_server_url=url))
    assert response.status_code == 403
    assert error_of(response)["message"].startswith("tool_server_url: ")
    assert_no_connection(listener)


def test_the_allowed_trainer_is_called(guarded: Proc, sim: Proc) -> None:
    response = post(guarded, rollout_body(f"{sim.url}/s/sequential/turns=1"))
    assert response.status_code == 200 and response.json()["status"] == "COMPLETED", response.text
