"""Settings: read once from the environment at start-up, validated, then handed out in slices.

Nothing else in the project reads ``os.environ``. ``Settings.from_env(os.environ)`` raises
``SettingsError`` naming the variable and the rule it broke, so a bad deployment fails at
start-up with one clear line instead of at the first rollout.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from rollout_server.security import parse_allowlist_entry

__all__ = ["DriftPolicy", "Settings", "SettingsError"]

DriftPolicy = Literal["fail", "flag"]
T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable has a value the server cannot run with."""


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range [{low}, {high}]")
    return value


def _float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(f"{name}={raw!r} is out of range [{low}, {high}]")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower() if name != "LOG_LEVEL" else raw.strip().upper()
    if value not in choices:
        raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


def _drift_policy(name: str, raw: str) -> DriftPolicy:
    return "fail" if _choice(name, raw, ("fail", "flag")) == "fail" else "flag"


def _keys(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated secrets; an error never repeats one."""
    keys = tuple(item.strip() for item in raw.split(",") if item.strip())
    for i, key in enumerate(keys, 1):
        if any(c.isspace() or not c.isprintable() for c in key) or not key.isascii():
            raise SettingsError(f"{name}: key {i} contains whitespace or a non-ASCII character")
        if len(key) < 16:
            raise SettingsError(f"{name}: key {i} is shorter than 16 characters")
    return keys


def _allowlist(name: str, raw: str) -> tuple[str, ...]:
    entries = tuple(item.strip() for item in raw.split(",") if item.strip())
    for entry in entries:
        try:
            parse_allowlist_entry(entry)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    return entries


def _tokenizer_list(name: str, raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if any(c.isspace() for c in item):
            raise SettingsError(f"{name} entry {item!r} contains whitespace")
    return items


# ``package.module:attribute``, ``package.module``, or the built-in ``calculator``.
_TOOL_ENTRY = re.compile(r"^(calculator|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?)$")


def _tool_entries(name: str, raw: str) -> tuple[str, ...]:
    """``none`` for no tools of the server's own; otherwise comma-separated import paths."""
    if raw.strip().lower() == "none":
        return ()
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if not _TOOL_ENTRY.match(item):
            raise SettingsError(
                f"{name} entry {item!r} must be 'package.module:function', 'package.module' or 'calculator'"
            )
    return items


def _http_url(name: str, raw: str) -> str:
    value = raw.strip()
    match = re.match(r"^https?://[^/\s:]+", value)
    if not match:
        raise SettingsError(f"{name}={raw!r} is not an http:// or https:// URL with a host")
    return value


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the server. Defaults match PROTOCOL.md and the deployment guide."""

    host: str = "0.0.0.0"
    port: int = 9000
    workers: int = 1
    # The CPUs this process may run on (a container's cpuset), not the host's count.
    tokenize_workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1)
    tokenizer_cache_size: int = 5
    tokenizer_trust_remote_code: bool = False
    default_tokenizer: str = "Qwen/Qwen3-8B"
    preload_tokenizers: tuple[str, ...] = ("Qwen/Qwen3-8B",)
    pool_socket: str = ""
    pool_timeout: float = 60.0
    http_client_timeout: float = 300.0
    http_max_connections: int = 1000
    trainer_max_response_bytes: int = 16 * 2**20
    max_concurrent_rollouts: int = 100
    rollout_timeout_seconds: float = 600.0
    drift_policy: DriftPolicy = "fail"
    tool_timeout_seconds: float = 30.0
    tools: tuple[str, ...] = ("calculator",)
    tool_server_url: str = ""
    tool_server_pool_size: int = 32
    tool_output_max_chars: int = 16384
    tool_output_max_tokens: int = 0  # 0: no token cap, only the character cap
    log_level: str = "INFO"
    log_format: str = "json"
    metrics_enabled: bool = True
    # Secrets: kept out of repr() so that no log line of the settings shows them.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_api_keys: tuple[str, ...] = field(default=(), repr=False)
    trainer_url_allowlist: tuple[str, ...] = ()
    max_request_bytes: int = 16 * 2**20
    result_ttl_seconds: float = 600.0
    result_cache_bytes: int = 256 * 2**20
    max_context_tokens: int = 0  # 0: the tokenizer's own model_max_length, when it states one

    @property
    def shared_pool(self) -> bool:
        """Whether the Sanic workers share a tokenize pool host and a rollout ledger that the
        launcher serves (several workers), or the one worker holds both in its process. Every
        part that differs between the two asks this, and nothing else."""
        return self.workers > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; unknown variables are ignored."""

        def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
            raw = env.get(name)
            return default if raw is None or raw.strip() == "" else parse(name, raw)

        d = cls()
        port = get("ROLLOUT_SERVER_PORT", lambda n, r: _int(n, r, 1, 65535), d.port)
        settings = cls(
            host=get("ROLLOUT_SERVER_HOST", lambda n, r: r.strip(), d.host),
            port=port,
            workers=get("ROLLOUT_SERVER_WORKERS", lambda n, r: _int(n, r, 1, 64), d.workers),
            tokenize_workers=get("TOKENIZE_WORKERS", lambda n, r: _int(n, r, 1, 256), d.tokenize_workers),
            tokenizer_cache_size=get(
                "TOKENIZER_CACHE_SIZE", lambda n, r: _int(n, r, 1, 1000), d.tokenizer_cache_size
            ),
            tokenizer_trust_remote_code=get(
                "TOKENIZER_TRUST_REMOTE_CODE", _bool, d.tokenizer_trust_remote_code
            ),
            default_tokenizer=get("DEFAULT_TOKENIZER", lambda n, r: r.strip(), d.default_tokenizer),
            preload_tokenizers=get("PRELOAD_TOKENIZERS", _tokenizer_list, d.preload_tokenizers),
            pool_socket=get(
                "TOKENIZE_POOL_SOCKET",
                lambda n, r: r.strip(),
                os.path.join(tempfile.gettempdir(), f"rollout-server-{port}.sock"),
            ),
            pool_timeout=get(
                "TOKENIZE_TIMEOUT_SECONDS", lambda n, r: _float(n, r, 0.1, 3600), d.pool_timeout
            ),
            http_client_timeout=get(
                "HTTP_CLIENT_TIMEOUT", lambda n, r: _float(n, r, 0.1, 86400), d.http_client_timeout
            ),
            http_max_connections=get(
                "HTTP_MAX_CONNECTIONS", lambda n, r: _int(n, r, 1, 100000), d.http_max_connections
            ),
            trainer_max_response_bytes=get(
                "TRAINER_MAX_RESPONSE_BYTES",
                lambda n, r: _int(n, r, 1024, 2**31),
                d.trainer_max_response_bytes,
            ),
            max_concurrent_rollouts=get(
                "MAX_CONCURRENT_ROLLOUTS", lambda n, r: _int(n, r, 1, 1000000), d.max_concurrent_rollouts
            ),
            rollout_timeout_seconds=get(
                "ROLLOUT_TIMEOUT_SECONDS", lambda n, r: _float(n, r, 0.1, 86400), d.rollout_timeout_seconds
            ),
            drift_policy=get("ALIGNMENT_DRIFT_POLICY", _drift_policy, d.drift_policy),
            tool_timeout_seconds=get(
                "TOOL_TIMEOUT_SECONDS", lambda n, r: _float(n, r, 0.01, 3600), d.tool_timeout_seconds
            ),
            tools=get("TOOLS", _tool_entries, d.tools),
            tool_server_url=get("TOOL_SERVER_URL", _http_url, d.tool_server_url),
            tool_server_pool_size=get(
                "TOOL_SERVER_POOL_SIZE", lambda n, r: _int(n, r, 0, 100000), d.tool_server_pool_size
            ),
            tool_output_max_chars=get(
                "TOOL_OUTPUT_MAX_CHARS", lambda n, r: _int(n, r, 16, 100_000_000), d.tool_output_max_chars
            ),
            tool_output_max_tokens=get(
                "TOOL_OUTPUT_MAX_TOKENS", lambda n, r: _int(n, r, 0, 100_000_000), d.tool_output_max_tokens
            ),
            log_level=get(
                "LOG_LEVEL",
                lambda n, r: _choice(n, r, ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
                d.log_level,
            ),
            log_format=get("LOG_FORMAT", lambda n, r: _choice(n, r, ("json", "text")), d.log_format),
            metrics_enabled=get("METRICS_ENABLED", _bool, d.metrics_enabled),
            api_keys=get("ROLLOUT_API_KEY", _keys, d.api_keys),
            metrics_api_keys=get("METRICS_API_KEY", _keys, d.metrics_api_keys),
            trainer_url_allowlist=get("TRAINER_URL_ALLOWLIST", _allowlist, d.trainer_url_allowlist),
            max_request_bytes=get(
                "MAX_REQUEST_BODY_BYTES", lambda n, r: _int(n, r, 1024, 2**31), d.max_request_bytes
            ),
            result_ttl_seconds=get(
                "ROLLOUT_RESULT_TTL_SECONDS", lambda n, r: _float(n, r, 0, 86400), d.result_ttl_seconds
            ),
            max_context_tokens=get(
                "MAX_CONTEXT_TOKENS", lambda n, r: _int(n, r, 0, 10_000_000), d.max_context_tokens
            ),
            result_cache_bytes=get(
                "ROLLOUT_RESULT_CACHE_MB", lambda n, r: _int(n, r, 0, 1 << 20) << 20, d.result_cache_bytes
            ),
        )
        return settings
