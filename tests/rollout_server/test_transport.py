"""Http1Transport over real sockets: keep-alive, the three ways a body ends, the connection
limit, and every way an answer can fail. The upstream is a scripted asyncio server."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from rollout_server.transport import Http1Transport

Answer = Callable[[bytes], bytes | None]  # request body -> raw response (None: hang up)

JSON = {"content-type": "application/json"}


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class Upstream:
    """Counts connections and requests; answers each request with ``answer``."""

    answer: Answer
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    bodies: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.bodies.append(head + body)
                await asyncio.sleep(0.01)
                raw = self.answer(body)
                if raw is None:
                    return
                writer.write(raw)
                await writer.drain()
                if b"connection: close" in raw.lower():
                    return
        finally:
            self.open_now -= 1
            writer.close()


async def with_upstream(
    answer: Answer, test: Callable[[str, Upstream], Awaitable[None]], tls: ssl.SSLContext | None = None
) -> Upstream:
    upstream = Upstream(answer)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=tls)
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"
    try:
        await test(url, upstream)
    finally:
        for writer in upstream.writers:
            writer.close()
        server.close()
        await server.wait_closed()
    return upstream


def run(
    answer: Answer, test: Callable[[str, Upstream], Awaitable[None]], tls: ssl.SSLContext | None = None
) -> Upstream:
    return asyncio.run(with_upstream(answer, test, tls))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a socket event the test cannot await directly (bounded, never a timed assertion)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


@dataclass
class Clock:
    """The transport's clock, moved by the test: idle expiry without waiting for it."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sequential_posts_reuse_one_connection_and_send_what_was_asked() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport()
        for i in range(3):
            assert await transport.post(url, b'{"n": %d}' % i, {**JSON, "authorization": "Bearer k"}, 5) == (
                200,
                b"echo " + b'{"n": %d}' % i,
            )
        await transport.aclose()

    upstream = run(lambda body: ok(b"echo " + body), test)
    assert upstream.connections == 1
    head = upstream.bodies[0]
    assert head.startswith(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nauthorization: Bearer k\r\n" in head and b"\r\nContent-Length: 8\r\n\r\n" in head


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"final"), b"final"),
    ],
    ids=["chunked", "informational-first"],
)
def test_answers_framed_other_ways_are_read_whole_on_a_kept_connection(raw: bytes, body: bytes) -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport()
        assert await transport.post(url, b"{}", JSON, 5) == (200, body)
        assert await transport.post(url, b"{}", JSON, 5) == (200, body)
        await transport.aclose()

    assert run(lambda _: raw, test).connections == 1


def test_a_body_ended_by_the_server_closing_and_connection_close_are_not_reused() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            ok(b"third"),
        ]
    )

    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport()
        assert await transport.post(url, b"{}", JSON, 5) == (200, b"until the end")
        assert await transport.post(url, b"{}", JSON, 5) == (201, b"hi")
        assert await transport.post(url, b"{}", JSON, 5) == (200, b"third")
        await transport.aclose()

    assert run(lambda body: next(answers), test).connections == 3


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport()
        assert await transport.post(url, b"{}", JSON, 5) == (200, b"x")
        for writer in upstream.writers:
            writer.close()
        await until(lambda: transport.stats()["open"] == 0, "the transport saw the close")
        assert await transport.post(url, b"{}", JSON, 5) == (200, b"x")
        await transport.aclose()

    assert run(lambda body: ok(b"x"), test).connections == 2


def test_an_idle_connection_past_its_expiry_is_not_reused() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        clock = Clock()
        transport = Http1Transport(keepalive_expiry=4, clock=clock)
        await transport.post(url, b"{}", JSON, 5)
        clock.now += 3.9
        await transport.post(url, b"{}", JSON, 5)  # reused
        clock.now += 4
        await transport.post(url, b"{}", JSON, 5)
        await transport.aclose()

    assert run(lambda body: ok(b"x"), test).connections == 2


def test_connections_idle_past_their_expiry_are_closed() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        clock = Clock()
        transport = Http1Transport(keepalive_expiry=0.3, clock=clock)
        await asyncio.gather(*(transport.post(url, b"{}", JSON, 5) for _ in range(4)))
        assert upstream.open_now == 4
        clock.now += 1.1  # past the expiry and the sweep interval
        await transport.post(url, b"{}", JSON, 5)  # closes the expired ones, opens one
        assert transport.stats()["open"] == 1
        await until(lambda: upstream.open_now == 1, "the upstream saw the expired ones close")
        await transport.aclose()

    run(lambda body: ok(b"x"), test)


def test_no_more_connections_than_the_limit_and_every_caller_is_served() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport(max_connections=2)
        answers = await asyncio.gather(*(transport.post(url, b"%d" % i, JSON, 10) for i in range(12)))
        assert sorted(answers) == sorted((200, b"%d" % i) for i in range(12))
        assert transport.stats() == {"open": 2, "idle": 2, "waiting": 0, "max": 2}
        await transport.aclose()

    upstream = run(lambda body: ok(body), test)
    assert upstream.most_open <= 2 and len(upstream.bodies) == 12


def test_a_cancelled_caller_does_not_leak_its_connection() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport(max_connections=1)
        slow = asyncio.ensure_future(transport.post(url, b"slow", JSON, 10))
        await asyncio.sleep(0.001)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await transport.post(url, b"next", JSON, 5) == (200, b"next")
        await transport.aclose()

    run(lambda body: ok(body), test)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (None, httpx.RemoteProtocolError),  # hung up without answering
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhalf",
            httpx.RemoteProtocolError,
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
    ],
    ids=["no-answer", "cut-short", "garbage"],
)
def test_broken_answers_are_protocol_errors(raw: bytes | None, error: type[Exception]) -> None:
    async def test(url: str, upstream: Upstream) -> None:
        transport = Http1Transport()
        with pytest.raises(error):
            await transport.post(url, b"{}", JSON, 5)
        await transport.aclose()

    run(lambda body: raw, test)


def test_a_silent_upstream_is_a_read_timeout() -> None:
    async def test(url: str, upstream: Upstream) -> None:
        upstream.answer = lambda body: None
        transport = Http1Transport()
        hang = asyncio.Event()

        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hang.wait()
            writer.close()

        server = await asyncio.start_server(never, "127.0.0.1", 0)
        silent = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        with pytest.raises(httpx.ReadTimeout):
            await transport.post(silent, b"{}", JSON, 0.2)
        hang.set()
        server.close()
        await transport.aclose()

    run(lambda body: None, test)


@pytest.mark.parametrize(
    ("url", "headers", "error"),
    [
        ("ftp://127.0.0.1/x", JSON, httpx.UnsupportedProtocol),
        ("http:///nohost", JSON, httpx.UnsupportedProtocol),
        ("http://user:pw@127.0.0.1:1/x", JSON, httpx.UnsupportedProtocol),
        ("http://127.0.0.1:1/a b", JSON, httpx.UnsupportedProtocol),
        ("http://127.0.0.1:99999/", JSON, httpx.UnsupportedProtocol),
        ("http://127.0.0.1:1/x", {"authorization": "Bearer k\r\nX-Evil: 1"}, httpx.LocalProtocolError),
        ("http://127.0.0.1:1/x", {"authorization": "Bearer ключ"}, httpx.LocalProtocolError),
        ("http://127.0.0.1:1/x", JSON, httpx.ConnectError),  # nothing listens on port 1
    ],
)
def test_requests_that_cannot_be_sent(url: str, headers: dict[str, str], error: type[Exception]) -> None:
    async def go() -> None:
        transport = Http1Transport()
        with pytest.raises(error):
            await transport.post(url, b"{}", headers, 5)
        await transport.aclose()

    asyncio.run(go())


def test_https_with_the_given_trust_and_not_without(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a certificate with (tests/run.sh installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    async def test(url: str, upstream: Upstream) -> None:
        trusted = Http1Transport(ssl_context=ssl.create_default_context(cafile=str(cert)))
        assert await trusted.post(url, b"{}", JSON, 5) == (200, b"secret")
        assert await trusted.post(url, b"{}", JSON, 5) == (200, b"secret")
        await trusted.aclose()
        system = Http1Transport()  # the system's CAs do not know this certificate
        with pytest.raises(httpx.ConnectError):
            await system.post(url, b"{}", JSON, 5)
        await system.aclose()

    assert run(lambda body: ok(b"secret"), test, tls=server_side).connections >= 1
