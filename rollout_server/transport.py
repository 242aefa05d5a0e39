"""The trainer client's transport: keep-alive HTTP/1.1 POSTs on asyncio protocols, parsed by
httptools (the C parser Sanic itself serves with), failures as httpx's exception types.

A rollout server spends most of its own CPU around trainer calls, and a general-purpose client
does much per request that one POST to a known endpoint does not need (URL parsing, header
multidicts, cookie jars, request and response objects, timers, redirects). Against httpx's pool
and aiohttp's session, this transport costs the least client CPU per call at every concurrency
measured (``bench.http_client``; figures in bench/README.md, "Trainer HTTP client").

What it does: one pool of connections per origin (``http`` or ``https``), most recently used
first; at most ``max_connections`` open in all (callers wait for one beyond that); an idle
connection is reused for ``keepalive_expiry`` seconds (default 4: below the 5 s after which
uvicorn's default and vLLM's OpenAI server close an idle connection, so that a request is not
sent on a connection the server is closing at that moment), or until the server closes it. Bodies may
come with a length, chunked, or delimited by the server closing. A request is never sent twice:
a POST to the trainer starts a generation, so a failure is the caller's to handle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
import httpx

__all__ = ["Http1Transport", "ResponseTooLarge"]

_TARGETS_KEPT = 1024
# A completion with its token ids and logprobs is a few hundred KB; tens of MB is a broken trainer.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 2**20


class ResponseTooLarge(httpx.RemoteProtocolError):
    """The answer announced or sent more than the transport's ``max_response_bytes``."""


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL parsed once: where to connect and the fixed start of every request to it."""

    origin: tuple[str, str, int]
    server_hostname: str | None
    head: bytes  # request line and Host header


def _target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise httpx.UnsupportedProtocol(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"URL {url!r} is not http(s)://host/...")
    if parts.username is not None or parts.password is not None:
        raise httpx.UnsupportedProtocol(
            "credentials in the trainer URL are not supported; use callback_api_key"
        )
    secure = parts.scheme == "https"
    port = port or (443 if secure else 80)
    host = parts.netloc.rpartition("@")[2]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not (path + host).isascii() or any(ord(c) <= 32 or ord(c) == 127 for c in path + host):
        raise httpx.UnsupportedProtocol(f"URL {url!r} holds spaces, control or non-ASCII characters")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("ascii")
    return _Target((parts.scheme, parts.hostname, port), parts.hostname if secure else None, head)


def _header_lines(headers: dict[str, str], length: int) -> bytes:
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # One line per header: a CR or LF inside a name or value would add a line (injection).
    if text.count("\n") != len(headers) or text.count("\r") != len(headers) or "\0" in text:
        raise httpx.LocalProtocolError("a header name or value holds a line break or NUL")
    text += f"Content-Length: {length}\r\n\r\n"
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise httpx.LocalProtocolError("a header value is not latin-1 text") from None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the answer parsed as it arrives."""

    def __init__(self, pool: Http1Transport, origin: tuple[str, str, int]) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._status = 0
        self._framed = False  # the answer announced its length (Content-Length or chunked)
        self._headers_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a registered subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # not TCP (tests), or no such option
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._body, self._status, self._framed, self._headers_done = [], 0, False, False
        self._size = 0
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self._fail(httpx.RemoteProtocolError("the trainer sent data nobody asked for"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response from the trainer ({exc})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._framed = True
        if name == b"content-length" and value.strip().isdigit():
            self._check_size(int(value))

    def _check_size(self, size: int) -> None:
        # Refused as soon as it is known, before the body is read: a trainer's 50 MB answer
        # would otherwise be held whole in memory, once per rollout that received it.
        limit = self._pool.max_response_bytes
        if size > limit and self._waiter is not None:
            self._fail(ResponseTooLarge(f"the trainer's answer exceeds {limit:,} bytes"))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            return  # failed earlier in this chunk (too large): drop the rest
        self._size += len(body)
        self._check_size(self._size)  # a chunked or unframed body has no length to check first
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            # An informational answer (100 Continue, 103 Early Hints): the real one follows.
            self._body, self._framed, self._headers_done = [], False, False
            return
        if not self._parser.should_keep_alive():
            self.close()
        self._finish()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None:
            if self._headers_done and not self._framed:
                self._finish()  # a body delimited by the end of the connection
            elif self._headers_done:
                self._fail(httpx.RemoteProtocolError("the trainer closed the connection mid-response"))
            else:
                self._fail(httpx.RemoteProtocolError("the trainer closed the connection without answering"))
        self._pool._lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Transport:
    """Keep-alive HTTP/1.1 connections, at most ``max_connections`` open; POST only.

    Failures are httpx's exception types: ``ConnectError``/``ConnectTimeout`` before a
    connection, ``ReadTimeout`` after, ``RemoteProtocolError`` for a broken answer."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (seconds) times idle connections; the event loop's unless given (tests)."""
        self._max_connections = max(1, max_connections)
        self.max_response_bytes = max_response_bytes
        self._keepalive_expiry = keepalive_expiry
        # Per origin, in order of release: reused from the right (most recent), expired from the left.
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = collections.defaultdict(
            collections.deque
        )
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._targets: dict[str, _Target] = {}
        self._ssl = ssl_context  # https: the system's trusted CAs unless given
        self._swept = 0.0
        self._clock = clock

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _target(url)
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float | None
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``url``; the status and the body of the answer, within ``timeout`` s."""
        target = self._target(url)
        data = target.head + _header_lines(headers, len(body)) + body
        connected = False
        try:
            async with asyncio.timeout(timeout):
                connection = await self._acquire(target)
                connected = True
                try:
                    answer = await connection.request(data)
                except BaseException:
                    connection.close()  # its state is unknown: never reuse it
                    raise
        except TimeoutError:
            if connected:
                raise httpx.ReadTimeout(f"no answer within {timeout:g} s") from None
            raise httpx.ConnectTimeout(f"no connection within {timeout:g} s") from None
        self._release(connection)
        return answer

    async def _acquire(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            idle = self._idle.get(target.origin)
            while idle:
                connection = idle.pop()
                if not connection.closed and self._now() - connection.idle_since < self._keepalive_expiry:
                    return connection
                connection.close()
                self._open.discard(connection)
            if len(self._open) + self._opening < self._max_connections or self._evict_idle():
                return await self._connect(target)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # this turn was ours: pass it on
                raise

    def _evict_idle(self) -> bool:
        """Close one idle connection (to another origin) to make room; False if none is idle."""
        for connections in self._idle.values():
            if connections:
                connection = connections.popleft()
                connection.close()
                self._open.discard(connection)
                return True
        return False

    async def _connect(self, target: _Target) -> _Connection:
        scheme, host, port = target.origin
        context = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        self._opening += 1
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self, target.origin),
                host,
                port,
                ssl=context,
                server_hostname=target.server_hostname,
            )
        except BaseException as exc:
            self._opening -= 1
            self._wake()  # the slot this attempt held is free again
            if isinstance(exc, OSError):  # refused, unreachable, DNS, TLS
                raise httpx.ConnectError(f"cannot connect to {host}:{port} ({exc})") from exc
            raise
        self._opening -= 1
        self._open.add(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        now = self._now()
        if connection.closed:
            self._open.discard(connection)
        else:
            connection.idle_since = now
            self._idle[connection.origin].append(connection)
        if now - self._swept > 1.0:
            self._sweep(now)
        self._wake()

    def _sweep(self, now: float) -> None:
        """Close the connections idle past their expiry (after a burst, or to a trainer gone)."""
        self._swept = now
        for connections in self._idle.values():
            while connections and now - connections[0].idle_since >= self._keepalive_expiry:
                stale = connections.popleft()
                stale.close()
                self._open.discard(stale)

    def stats(self) -> dict[str, int]:
        """Connections open (idle ones included), idle, and callers waiting for one."""
        return {
            "open": len(self._open),
            "idle": sum(len(connections) for connections in self._idle.values()),
            "waiting": sum(not waiter.done() for waiter in self._waiters),
            "max": self._max_connections,
        }

    def _lost(self, connection: _Connection) -> None:
        """A connection ended (either side closed it): it no longer counts."""
        if connection in self._open:
            self._open.discard(connection)
            idle = self._idle.get(connection.origin)
            if idle and connection in idle:
                idle.remove(connection)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
