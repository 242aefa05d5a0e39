"""How the Sanic side reaches the tokenize pool: ``PoolClient`` over a ``TokenizePool``.

``TokenizePool`` is where requests run, as pickled bytes in and out. It has two implementations,
chosen once when the server starts (``rollout_server.app``): ``WorkerPool`` itself, living in
this process when there is one Sanic worker (no socket hop), and ``HostedPool``, the pool host's
Unix socket, which several Sanic workers share (calls multiplexed on one connection).

``PoolClient`` is the one typed interface on top: it pickles ``PoolOp`` requests, reads their
answers, and translates every failure — a worker's error, a lost connection, a timeout — into a
``TokenizePoolError`` here, at the pool's edge. It also owns what is worth doing once per Sanic
worker: the cache of recent first prompts and of resolved tokenizers.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import PoolTimeout, PoolUnavailable, TokenizePoolError
from tokenize_pool.ops import (
    ExplainTurn,
    Ping,
    PoolOp,
    Promotion,
    Resolve,
    Steps,
    TurnExplanation,
)
from tokenize_pool.tokens import FirstPrompt
from tokenize_pool.wire import KIND_ERROR, KIND_STATS, KIND_TASK, KIND_URGENT, Channel, Redial

__all__ = ["PROMPT_CACHE_SIZE", "FirstResult", "HostedPool", "Pending", "PoolClient", "TokenizePool"]

PROMPT_CACHE_SIZE = 1024

Message = dict[str, Any]
R = TypeVar("R")


class TokenizePool(Protocol):
    """Where pool requests run: pickled ``PoolOp`` in, pickled ``(ok, result)`` out."""

    async def call(
        self, payload: bytes, *, urgent: bool = False, promotion: Promotion | None = None
    ) -> bytes:
        """Run ``payload``; ahead of requests that are not ``urgent``, or once ``promotion`` is
        promoted. Raises ``PoolUnavailable`` when the pool cannot answer."""
        ...

    async def stats(self) -> dict[str, Any]:
        """The pool's state as ``/health`` shows it (``WorkerPool.snapshot``)."""
        ...

    async def close(self) -> None: ...


def _connection_lost() -> PoolUnavailable:
    return PoolUnavailable("connection to the tokenize pool was lost")


class HostedPool:
    """The ``TokenizePool`` of the pool host (``host.py``), over its Unix socket."""

    def __init__(self, socket_path: str, *, connect_timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._socket = Redial(
            socket_path, connect_timeout=connect_timeout, lost=_connection_lost, limit=2**26
        )

    async def _open_channel(self) -> Channel:
        """The connection, made (again) if needed, retrying while the host starts."""
        try:
            return await self._socket.open()
        except OSError as exc:
            raise PoolUnavailable(f"tokenize pool at {self.socket_path} is not reachable") from exc

    async def call(
        self, payload: bytes, *, urgent: bool = False, promotion: Promotion | None = None
    ) -> bytes:
        channel = await self._open_channel()
        urgent = urgent or (promotion is not None and promotion.promoted)
        kind, answer = await channel.call(
            KIND_URGENT if urgent else KIND_TASK, payload, promotion=None if urgent else promotion
        )
        if kind == KIND_ERROR:  # the host's own error (a worker lost), pickled
            error = pickle.loads(answer)
            raise error if isinstance(error, PoolUnavailable) else PoolUnavailable(str(error))
        return answer

    async def stats(self) -> dict[str, Any]:
        channel = await self._open_channel()
        _, payload = await channel.call(KIND_STATS, b"")
        stats: dict[str, Any] = pickle.loads(payload)
        return stats

    async def close(self) -> None:
        await self._socket.aclose()


@dataclass(frozen=True, slots=True)
class FirstResult:
    ids: array[int]
    text: bytes  # ``ids_text(ids)``, made in the pool, off the event loop
    tokens_encoded: int
    stop_ids: tuple[int, ...] = ()  # the ids that end an assistant turn (token mode stops there)


class Pending(Generic[R]):
    """A pool request under way. Await it for its result; ``promote()`` it once the caller waits
    for it, and it goes ahead of the requests nobody waits for yet."""

    __slots__ = ("_promotion", "task")

    def __init__(self, start: Callable[[Promotion], Awaitable[R]]) -> None:
        self._promotion = Promotion()
        self.task: asyncio.Future[R] = asyncio.ensure_future(start(self._promotion))

    def promote(self) -> None:
        self._promotion.promote()

    def done(self) -> bool:
        return self.task.done()

    def succeeded(self) -> bool:
        """Done with a result (not cancelled, not failed)."""
        return self.task.done() and not self.task.cancelled() and self.task.exception() is None

    def cancel(self) -> None:
        self.task.cancel()

    def __await__(self) -> Generator[Any, None, R]:
        return self.task.__await__()


class PoolClient:
    """The Sanic side's one interface to the pool; every failure is a ``TokenizePoolError``."""

    def __init__(
        self, pool: TokenizePool, *, timeout: float = 60.0, prompt_cache: int = PROMPT_CACHE_SIZE
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.prompt_cache = prompt_cache
        self._prompts: OrderedDict[bytes, FirstResult] = OrderedDict()
        self._resolved: dict[TokenizerKey, int | None] = {}

    async def _call(self, payload: bytes, *, urgent: bool, promotion: Promotion | None = None) -> Any:
        try:
            # asyncio.timeout, not wait_for: no extra task per call.
            async with asyncio.timeout(self.timeout):
                answer = await self.pool.call(payload, urgent=urgent, promotion=promotion)
        except TimeoutError:
            raise PoolTimeout(f"tokenize pool did not answer within {self.timeout:.0f} s") from None
        ok, result = pickle.loads(answer)
        if not ok:
            raise result if isinstance(result, TokenizePoolError) else TokenizePoolError(str(result))
        return result

    async def run(self, request: PoolOp[R]) -> R:
        """One typed request (``tokenize_pool.ops``), its typed result; ahead of first prompts
        in the pool when the request says it is ``urgent`` (a rollout's next turn waits for it)."""
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        result: R = await self._call(payload, urgent=request.urgent)
        return result

    async def steps(self, steps: Steps[R]) -> R:
        """A decision over several requests (``ops.Steps``), each run in the pool in turn."""
        try:
            request = next(steps)
            while True:
                request = steps.send(await self.run(request))
        except StopIteration as done:
            result: R = done.value
            return result

    def first_prompt(
        self, key: TokenizerKey, messages: list[Message], *, tools: list[dict[str, Any]] | None = None
    ) -> Pending[FirstResult]:
        """The ids of the first prompt (``tokens.FirstPrompt``), under way at once.

        It waits behind rollouts' next turns in the pool until promoted (the trainer has
        answered the first call, and the rollout waits for these ids). GRPO samples a group of
        rollouts from one prompt, so the ids of recent prompts are kept (by a digest of the
        request) and a repeat costs nothing."""
        request = FirstPrompt(key=key, messages=messages, tools=tools)
        return Pending(lambda promotion: self._first_prompt(request, promotion))

    async def _first_prompt(self, request: FirstPrompt, promotion: Promotion) -> FirstResult:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.blake2b(payload, digest_size=16).digest() if self.prompt_cache else b""
        cached = self._prompts.get(digest) if self.prompt_cache else None
        if cached is not None:
            self._prompts.move_to_end(digest)
            # The caller extends its ids: a copy, so that the cache never sees it.
            return FirstResult(array("i", cached.ids), cached.text, 0, cached.stop_ids)
        prompt = await self._call(payload, urgent=False, promotion=promotion)
        result = FirstResult(prompt.ids, prompt.text, len(prompt.ids), prompt.stop_ids)
        if self.prompt_cache:
            self._prompts[digest] = FirstResult(array("i", prompt.ids), prompt.text, 0, prompt.stop_ids)
            if len(self._prompts) > self.prompt_cache:
                self._prompts.popitem(last=False)
        return result

    async def resolve(self, key: TokenizerKey) -> int | None:
        """Make sure a worker can load ``key`` (raises its ``TokenizerLoadError`` if not); returns
        the context limit the tokenizer states, if any. A key that loaded is remembered by this
        client: later calls cost nothing."""
        if key not in self._resolved:
            self._resolved[key] = (await self.run(Resolve(key=key))).context_limit
        return self._resolved[key]

    async def explain_turn(
        self, key: TokenizerKey, *, history: list[Message], gen: array[int], assistant: Message
    ) -> TurnExplanation:
        """The turn's generated ids as text, and its message as the chat template renders it
        after ``history`` (for an alignment error's message)."""
        return await self.run(ExplainTurn(key=key, history=history, gen=gen, assistant=assistant))

    async def ping(self) -> None:
        """A request that a worker answers without doing anything: the pool's round trip alone."""
        await self.run(Ping())

    async def stats(self, timeout: float = 2.0) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                return await self.pool.stats()
        except TimeoutError:
            raise PoolTimeout(f"tokenize pool did not answer within {timeout:.0f} s") from None

    async def close(self) -> None:
        await self.pool.close()
