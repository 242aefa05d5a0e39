"""Real server processes for tests and benchmarks: start on a free loopback port, wait, stop."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Proc", "free_port", "mcp_command", "sim_command", "spawn", "wait_http"]


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port for a server about to start.

    Taken below the kernel's ephemeral range when there is room: a port that ``bind(0)`` picks
    can be taken, before the server binds it (a second or two of imports), as the source port
    of any outgoing connection — and the tests make thousands. Never the same port twice."""
    low = _ephemeral_low()
    if low > 11024:
        rng = random.Random()
        for _ in range(200):
            port = rng.randrange(low - 10000, low)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


@dataclass
class Proc:
    """A server process with its URL and log file."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def wait_http(proc: Proc, path: str, timeout: float = 90.0) -> float:
    """Poll ``path`` until it answers 200; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.url} exited with {proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(proc.url + path, timeout=2.0).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{proc.url}{path} not ready in {timeout} s:\n{proc.log_text()[-3000:]}")


def sim_command(port: int, tokenizer: str = "Qwen/Qwen3-8B") -> list[str]:
    """The command line of a trainer simulator on a loopback port."""
    return [
        sys.executable,
        "-m",
        "rollout_server.sim",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tokenizer",
        tokenizer,
    ]


def mcp_command(port: int) -> list[str]:
    """The command line of the simulated MCP tool server on a loopback port (endpoint ``/mcp``)."""
    return [sys.executable, "-m", "rollout_server.sim.mcp_server", "--host", "127.0.0.1", "--port", str(port)]


def spawn(args: list[str], env: dict[str, str], log: Path, port: int, *, cwd: Path | None = None) -> Proc:
    handle = log.open("wb")
    popen = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
    return Proc(popen=popen, url=f"http://127.0.0.1:{port}", log=log)
