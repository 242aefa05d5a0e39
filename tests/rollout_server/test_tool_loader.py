"""TOOLS: user tools loaded from import paths, how they run, and bad entries named at start-up."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest

from rollout_server import server
from rollout_server.settings import Settings, SettingsError
from rollout_server.tool_loader import ToolConfigError, load_tools
from rollout_server.tools import ToolRegistry


def call(name: str, arguments: Any, call_id: str = "c1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def contents(registry: ToolRegistry, calls: list[dict[str, Any]]) -> list[str]:
    return [o.message["content"] for o in asyncio.run(registry.run_calls(calls))]


def test_tools_setting_parses_entries() -> None:
    assert Settings.from_env({}).tools == ("calculator",)
    assert Settings.from_env({"TOOLS": "none"}).tools == ()
    env = {"TOOLS": " calculator , tests.user_tools:word_count,tests.user_tools "}
    assert Settings.from_env(env).tools == ("calculator", "tests.user_tools:word_count", "tests.user_tools")


def test_tool_server_settings() -> None:
    settings = Settings.from_env(
        {
            "TOOL_SERVER_URL": " http://tools:8765/mcp ",
            "TOOL_SERVER_POOL_SIZE": "0",
            "TOOL_OUTPUT_MAX_CHARS": "500",
        }
    )
    assert settings.tool_server_url == "http://tools:8765/mcp"
    assert (settings.tool_server_pool_size, settings.tool_output_max_chars) == (0, 500)
    defaults = Settings.from_env({})
    assert (defaults.tool_server_url, defaults.tool_server_pool_size, defaults.tool_output_max_chars) == (
        "",
        32,
        16384,
    )


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TOOL_SERVER_URL": "tools:8765/mcp"}, "TOOL_SERVER_URL='tools:8765/mcp' is not an http"),
        ({"TOOL_SERVER_POOL_SIZE": "-1"}, "TOOL_SERVER_POOL_SIZE=-1 is out of range"),
        ({"TOOL_OUTPUT_MAX_CHARS": "many"}, "TOOL_OUTPUT_MAX_CHARS='many' is not an integer"),
        ({"TOOL_OUTPUT_MAX_CHARS": "3"}, "TOOL_OUTPUT_MAX_CHARS=3 is out of range"),
    ],
)
def test_bad_tool_server_settings_are_named(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(problem)):
        Settings.from_env(env)


@pytest.mark.parametrize("entry", ["tests/user_tools.py", "a:b:c", "tests.user_tools:", "1abc", "a..b"])
def test_tools_setting_rejects_what_is_not_an_import_path(entry: str) -> None:
    with pytest.raises(SettingsError, match="TOOLS entry"):
        Settings.from_env({"TOOLS": f"calculator,{entry}"})


def test_default_is_the_calculator() -> None:
    assert load_tools(("calculator",), timeout=1).names == ["add", "divide", "multiply", "subtract"]
    assert load_tools((), timeout=1).names == []


def test_functions_registries_and_the_calculator_together() -> None:
    registry = load_tools(
        ("calculator", "tests.user_tools:shout", "tests.user_tools:snooze", "tests.user_tools:echo_tool"),
        timeout=5,
    )
    assert registry.names == ["add", "divide", "echo_tool", "multiply", "shout", "snooze", "subtract"]
    assert [s["function"]["name"] for s in registry.schemas()] == registry.names
    out = contents(
        registry,
        [call("add", {"a": 1, "b": 2}), call("shout", '{"text": "hey"}'), call("snooze", {"seconds": 0})],
    )
    assert out == ["3", "HEY!", "awake"]


def test_a_module_entry_loads_its_registry() -> None:
    registry = load_tools(("tests.user_tools",), timeout=5)
    assert registry.names == ["echo", "word_count"]
    assert registry.tools["echo"].schema["function"]["description"] == "Echo a message."
    assert contents(registry, [call("echo", {"message": "hi"}), call("word_count", {"text": "a b c"})]) == [
        "hi",
        "3",
    ]


def test_sync_tools_run_in_tool_threads_and_async_tools_on_the_loop() -> None:
    registry = load_tools(("tests.user_tools:thread_name", "tests.user_tools:async_thread_name"), timeout=5)
    sync_thread, async_thread = contents(registry, [call("thread_name", {}), call("async_thread_name", {})])
    assert sync_thread.startswith("tool")
    assert async_thread == "MainThread"


def test_a_sync_tool_past_its_timeout_is_an_error_message() -> None:
    registry = load_tools(("tests.user_tools:snooze",), timeout=0.05)
    [outcome] = asyncio.run(registry.run_calls([call("snooze", {"seconds": 2})]))
    assert outcome.ok is False and outcome.tool == "snooze"
    assert outcome.message["content"] == "Error: tool 'snooze' did not finish within 0.05 s"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"text": 3}, "Error: argument 'text': Input should be a valid string"),
        ({}, "Error: missing argument 'text'"),
    ],
)
def test_bad_arguments_to_a_user_tool(arguments: dict[str, Any], problem: str) -> None:
    registry = load_tools(("tests.user_tools:word_count",), timeout=5)
    assert contents(registry, [call("word_count", arguments)]) == [problem]


def test_a_user_tools_own_error_is_its_message() -> None:
    registry = load_tools(("tests.user_tools:explode",), timeout=5)
    assert contents(registry, [call("explode", {})]) == ["Error: tool 'explode' failed (RuntimeError)"]


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            ("tests.no_such_module:f",),
            "TOOLS entry 'tests.no_such_module:f': cannot import 'tests.no_such_module'",
        ),
        (("tests.user_tools:missing",), "module 'tests.user_tools' has no 'missing'"),
        (("tests.user_tools:untyped",), "tool 'untyped': parameter 'x' has no type hint"),
        (("tests.user_tools:star_args",), "tool 'star_args': parameter 'values'"),
        (("tests.user_tools:not_a_tool",), "int is not a function"),
        (("tests.rollout_server",), "has no 'registry'; name a function with"),
        (("calculator", "calculator"), "tool 'add' is already defined by 'calculator'"),
        (("tests.user_tools", "tests.user_tools:word_count"), "tool 'word_count' is already defined"),
    ],
)
def test_bad_entries_are_named(entries: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ToolConfigError) as info:
        load_tools(entries, timeout=1)
    assert problem in str(info.value)
    assert isinstance(info.value, SettingsError)


def test_the_server_refuses_to_start_with_a_bad_tool(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: the exit status of the command itself is test_settings' (a subprocess).
    for name in [k for k in os.environ if k.startswith("ROLLOUT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TOOLS", "calculator,tests.user_tools:untyped")
    monkeypatch.setattr(server, "serve", lambda settings: pytest.fail("the server started"))
    assert server.main([]) == 2
    err = capsys.readouterr().err
    assert "rollout-server: invalid configuration: TOOLS entry 'tests.user_tools:untyped'" in err
    assert "Traceback" not in err
