"""A pass-through HTTP proxy that records every ``/v1/completions`` exchange with the engine.

The rollout server talks to the proxy as if it were vLLM; the proxy forwards each request and
keeps both bodies, so a trajectory can be checked against exactly what the engine was sent and
what it sampled. An optional ``shape`` may add sampling options to a request on its way (the
bench uses it to make a random-weight model call tools); the prompt is never touched, and the
body recorded is the one forwarded. Thread per connection, keep-alive, loopback only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

__all__ = ["Exchange", "Recorder", "Shape"]

# (request body, how many exchanges of the same ``user`` came before) -> extra body fields
Shape = Callable[[dict[str, Any], int], dict[str, Any]]


@dataclass(frozen=True)
class Exchange:
    """One request to the engine and its answer (``response`` is None when it was not JSON)."""

    request: dict[str, Any]
    status: int
    response: dict[str, Any] | None


@dataclass
class Recorder:
    """Runs the proxy in a background thread; ``exchanges`` grows as requests pass."""

    upstream: str
    shape: Shape | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        """Starts listening on a free loopback port; returns the proxy's base URL."""
        client = httpx.Client(base_url=self.upstream, timeout=600.0, limits=httpx.Limits(max_connections=256))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                return

            def do_GET(self) -> None:
                upstream = client.get(self.path)
                self._answer(upstream.status_code, upstream.content)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                if recorder.shape is not None:
                    body = {**body, **recorder.shape(body, len(recorder.of(str(body.get("user")))))}
                upstream = client.post(self.path, json=body)
                try:
                    answer: dict[str, Any] | None = upstream.json()
                except ValueError:
                    answer = None
                with recorder._lock:
                    recorder.exchanges.append(Exchange(body, upstream.status_code, answer))
                self._answer(upstream.status_code, upstream.content)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def of(self, user: str) -> list[Exchange]:
        """The exchanges of one rollout (the server sends its rollout id as ``user``), in order."""
        with self._lock:
            return [e for e in self.exchanges if e.request.get("user") == user]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
