"""Settings: defaults from PROTOCOL.md, every variable parsed from a plain dict, bad values named.

The last test starts the real entry point with a bad value and checks it fails fast: exit code 2
and one line naming the variable, no stack trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rollout_server.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_protocol_env_table() -> None:
    settings = Settings.from_env({})
    assert settings.port == 9000
    assert settings.tokenizer_cache_size == 5
    assert settings.http_client_timeout == 300.0
    assert settings.tokenizer_trust_remote_code is False
    assert settings.log_level == "INFO"
    assert settings.max_concurrent_rollouts == 100
    assert settings.rollout_timeout_seconds == 600.0


def test_class_defaults_agree_with_from_env_of_an_empty_environment() -> None:
    built, plain = Settings.from_env({}), Settings()
    for name in (
        "port",
        "tokenizer_cache_size",
        "http_client_timeout",
        "tokenizer_trust_remote_code",
        "log_level",
        "max_concurrent_rollouts",
        "rollout_timeout_seconds",
        "drift_policy",
    ):
        assert getattr(built, name) == getattr(plain, name), name


def test_default_pool_socket_lives_in_the_temp_dir_and_depends_on_the_port() -> None:
    settings = Settings.from_env({"ROLLOUT_SERVER_PORT": "9123"})
    assert settings.pool_socket == os.path.join(tempfile.gettempdir(), "rollout-server-9123.sock")


def test_every_variable_is_parsed_from_a_dict() -> None:
    env = {
        "ROLLOUT_SERVER_HOST": "127.0.0.1",
        "ROLLOUT_SERVER_PORT": "8081",
        "ROLLOUT_SERVER_WORKERS": "4",
        "TOKENIZE_WORKERS": "3",
        "TOKENIZER_CACHE_SIZE": "7",
        "TOKENIZER_TRUST_REMOTE_CODE": "true",
        "DEFAULT_TOKENIZER": "Qwen/Qwen2.5-7B-Instruct",
        "PRELOAD_TOKENIZERS": "Qwen/Qwen3-8B, Qwen/Qwen2.5-7B-Instruct ,",
        "TOKENIZE_POOL_SOCKET": "/run/pool.sock",
        "TOKENIZE_TIMEOUT_SECONDS": "12.5",
        "HTTP_CLIENT_TIMEOUT": "45",
        "HTTP_MAX_CONNECTIONS": "64",
        "MAX_CONCURRENT_ROLLOUTS": "250",
        "ROLLOUT_TIMEOUT_SECONDS": "120.5",
        "ALIGNMENT_DRIFT_POLICY": "flag",
        "TOOL_TIMEOUT_SECONDS": "2",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "TEXT",
        "METRICS_ENABLED": "off",
        "SOMETHING_UNRELATED": "ignored",
    }
    assert Settings.from_env(env) == Settings(
        host="127.0.0.1",
        port=8081,
        workers=4,
        tokenize_workers=3,
        tokenizer_cache_size=7,
        tokenizer_trust_remote_code=True,
        default_tokenizer="Qwen/Qwen2.5-7B-Instruct",
        preload_tokenizers=("Qwen/Qwen3-8B", "Qwen/Qwen2.5-7B-Instruct"),
        pool_socket="/run/pool.sock",
        pool_timeout=12.5,
        http_client_timeout=45.0,
        http_max_connections=64,
        max_concurrent_rollouts=250,
        rollout_timeout_seconds=120.5,
        drift_policy="flag",
        tool_timeout_seconds=2.0,
        log_level="DEBUG",
        log_format="text",
        metrics_enabled=False,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"TOKENIZER_TRUST_REMOTE_CODE": raw}).tokenizer_trust_remote_code is expected


def test_blank_values_fall_back_to_the_default() -> None:
    settings = Settings.from_env({"ROLLOUT_SERVER_PORT": "  ", "LOG_LEVEL": "", "HTTP_CLIENT_TIMEOUT": " "})
    assert (settings.port, settings.log_level, settings.http_client_timeout) == (9000, "INFO", 300.0)


def test_surrounding_whitespace_is_ignored() -> None:
    settings = Settings.from_env({"ROLLOUT_SERVER_PORT": " 8080 ", "ROLLOUT_TIMEOUT_SECONDS": " 30 "})
    assert (settings.port, settings.rollout_timeout_seconds) == (8080, 30.0)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("ROLLOUT_SERVER_PORT", "abc"),
        ("ROLLOUT_SERVER_PORT", "9000.5"),
        ("ROLLOUT_SERVER_PORT", "0"),
        ("ROLLOUT_SERVER_PORT", "70000"),
        ("ROLLOUT_SERVER_PORT", "-1"),
        ("ROLLOUT_SERVER_WORKERS", "0"),
        ("TOKENIZE_WORKERS", "many"),
        ("TOKENIZER_CACHE_SIZE", "0"),
        ("HTTP_CLIENT_TIMEOUT", "-5"),
        ("HTTP_CLIENT_TIMEOUT", "nan"),
        ("HTTP_CLIENT_TIMEOUT", "inf"),
        ("HTTP_CLIENT_TIMEOUT", "soon"),
        ("ROLLOUT_TIMEOUT_SECONDS", "-1"),
        ("ROLLOUT_TIMEOUT_SECONDS", "NaN"),
        ("TOKENIZE_TIMEOUT_SECONDS", "0"),
        ("TOOL_TIMEOUT_SECONDS", "-0.5"),
        ("TOOL_OUTPUT_MAX_TOKENS", "-1"),
        ("TOOL_OUTPUT_MAX_TOKENS", "lots"),
        ("MAX_CONCURRENT_ROLLOUTS", "0"),
        ("MAX_CONCURRENT_ROLLOUTS", "1e3"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("TOKENIZER_TRUST_REMOTE_CODE", "maybe"),
        ("METRICS_ENABLED", "2"),
        ("LOG_LEVEL", "VERBOSE"),
        ("LOG_FORMAT", "xml"),
        ("ALIGNMENT_DRIFT_POLICY", "other"),
        ("PRELOAD_TOKENIZERS", "Qwen/Qwen3-8B, bad name"),
    ],
)
def test_invalid_value_raises_settings_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: raw})
    assert name in str(info.value)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.slow
def test_server_with_a_bad_value_fails_fast_with_a_clear_message() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLOUT_", "TOKENIZE", "HF_"))}
    env["ROLLOUT_SERVER_PORT"] = "abc"
    done = subprocess.run(
        [sys.executable, "-m", "rollout_server.server"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ROLLOUT_SERVER_PORT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_the_tool_token_cap_is_off_by_default_and_parsed() -> None:
    assert Settings().tool_output_max_tokens == 0
    assert Settings.from_env({"TOOL_OUTPUT_MAX_TOKENS": " 2048 "}).tool_output_max_tokens == 2048
    assert Settings.from_env({"TOOL_OUTPUT_MAX_TOKENS": "0"}).tool_output_max_tokens == 0
