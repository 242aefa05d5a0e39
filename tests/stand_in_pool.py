"""A ``TokenizePool`` without processes, for tests of what sits above the pool.

The real ``PoolClient`` runs on it: each request is pickled, unpickled here and handed to
``answer``, which a test overrides (a ``match`` on the request's type), and the result or
error goes back pickled as a worker's would. ``InlinePool`` answers every request with a real
codec in this process: exactly what a worker would compute, without a worker.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from tokenize_pool import PoolClient, PoolUnavailable, TokenizePoolError, TokenizerKey
from tokenize_pool.codec import ChatCodec
from tokenize_pool.ops import PoolOp, Promotion


class StandInPool:
    """Records every request (with whether it was urgent); ``answer`` says what comes back."""

    def __init__(self) -> None:
        self.requests: list[tuple[PoolOp[Any], bool]] = []
        self.closed = False

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        raise TokenizePoolError(f"this stand-in does not answer {type(request).__name__}")

    async def call(
        self, payload: bytes, *, urgent: bool = False, promotion: Promotion | None = None
    ) -> bytes:
        request = pickle.loads(payload)
        self.requests.append((request, urgent))
        try:
            result = await self.answer(request, promotion)
        except PoolUnavailable:
            raise  # as a pool that cannot answer raises it
        except TokenizePoolError as exc:
            return pickle.dumps((False, exc))
        return pickle.dumps((True, result))

    def asked(self, kind: type[PoolOp[Any]]) -> list[Any]:
        """The requests of one type, in order."""
        return [request for request, _ in self.requests if isinstance(request, kind)]

    async def stats(self) -> dict[str, Any]:
        return {"workers_alive": 1, "warm": True, "workers": []}

    async def close(self) -> None:
        self.closed = True

    def client(self) -> PoolClient:
        return PoolClient(self, timeout=10.0)


class InlinePool(StandInPool):
    """Every request run on a real codec in this process, as a worker runs it; ``codec_of``
    (the session fixture) gives the codecs, loaded once per test session."""

    def __init__(self, codec_of: Callable[[str], ChatCodec]) -> None:
        super().__init__()
        self.codec_of = codec_of

    def get(self, key: TokenizerKey) -> ChatCodec:
        """What a request asks of a worker's ``CodecCache``."""
        return self.codec_of(key.name)

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        return request.run_in(self)  # type: ignore[arg-type]
