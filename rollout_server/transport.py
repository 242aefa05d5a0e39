"""The trainer client's transport: aiohttp's connection pool, failures as httpx's exception types.

httpx's own pool (httpcore) scans every connection on each request, so its CPU cost per request
grows with concurrency (encode/httpx#3215). Client CPU per trainer call against a local upstream
answering a 29 KB body, as ``TrainerClient`` uses it (``python -m bench.http_client``, 2 cores):

    concurrency   httpx.AsyncClient   TrainerClient (this transport)   aiohttp alone
    1             1.38 ms             0.45 ms                          0.37 ms
    64            2.95 ms             0.38 ms                          0.31 ms
    256           4.27 ms             0.49 ms                          0.38 ms

Since then ``TrainerClient`` posts through ``AiohttpTransport.post`` without building httpx
request and response objects: 0.52 / 0.34 / 0.42 ms against aiohttp's 0.53 / 0.36 / 0.38 ms at
1 / 64 / 256 (``--quick``, same day). ``TrainerClient`` still accepts any httpx transport
(``httpx.MockTransport`` in unit tests), and one place (``trainer.py``) translates httpx's
exception types; this transport maps aiohttp's onto them.
"""

from __future__ import annotations

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "client_timeout"]


def client_timeout(seconds: float | None) -> aiohttp.ClientTimeout:
    # HTTP_CLIENT_TIMEOUT bounds the whole call, not only the gaps between bytes.
    return aiohttp.ClientTimeout(total=seconds, connect=seconds, sock_connect=seconds)


class AiohttpTransport:
    """POSTs through one ``aiohttp`` session; failures come out as httpx's exception types."""

    def __init__(self, *, max_connections: int = 1000, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the event loop that will drive it.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_expiry
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> tuple[int, bytes]:
        """POST ``body``; returns the status and the body."""
        session = self._session or self._open()
        try:
            async with session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
        ) as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
