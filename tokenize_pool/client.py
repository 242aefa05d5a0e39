"""Async client of the tokenize pool, one per Sanic worker.

Either over the pool host's Unix socket (several Sanic workers share one pool; calls are
multiplexed on one connection) or, with one Sanic worker, straight to a ``WorkerPool`` that lives
in the same process (``PoolClient.local``), which saves a process hop per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenize_pool._wire import KIND_ERROR, KIND_STATS, KIND_TASK, KIND_URGENT, Channel
from tokenize_pool._worker import ids_from_bytes, ids_to_bytes
from tokenize_pool.codec import TokenizerKey
from tokenize_pool.errors import PoolTimeout, PoolUnavailable, TokenizePoolError
from tokenize_pool.masks import TAIL_TOKENS, Growth, conversation_window
from tokenize_pool.ops import PoolOp
from tokenize_pool.tokens import FirstPrompt, TokenPrompt
from tokenize_pool.workers import WorkerPool

__all__ = ["PROMPT_CACHE_SIZE", "FirstResult", "PoolClient"]

PROMPT_CACHE_SIZE = 1024
_PING = pickle.dumps(("ping", {}), protocol=pickle.HIGHEST_PROTOCOL)

Message = dict[str, Any]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class FirstResult:
    ids: array[int]
    text: bytes  # ``ids_text(ids)``, made in the pool, off the event loop
    tokens_encoded: int
    stop_ids: tuple[int, ...] = ()  # the ids ending an assistant turn, when asked with tools


def _connection_lost() -> PoolUnavailable:
    return PoolUnavailable("connection to the tokenize pool was lost")


class PoolClient:
    """Calls into the tokenize pool; every failure comes out as a ``TokenizePoolError``."""

    def __init__(
        self,
        socket_path: str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        prompt_cache: int = PROMPT_CACHE_SIZE,
    ) -> None:
        self.socket_path = socket_path
        self.prompt_cache = prompt_cache
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._channel: Channel | None = None
        self._connect_lock = asyncio.Lock()
        self._local: WorkerPool | None = None
        self._prompts: OrderedDict[bytes, tuple[array[int], bytes, tuple[int, ...]]] = OrderedDict()

    async def connect(self) -> None:
        """Connect, retrying while the host starts; raises PoolUnavailable after connect_timeout."""
        async with self._connect_lock:
            if self._channel is not None and self._channel.open:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.connect_timeout
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=2**26)
                    break
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    if loop.time() > deadline:
                        raise PoolUnavailable(
                            f"tokenize pool at {self.socket_path} is not reachable"
                        ) from exc
                    await asyncio.sleep(0.05)
            self._channel = Channel(reader, writer, lost=_connection_lost)

    @classmethod
    def local(cls, pool: WorkerPool, *, timeout: float = 60.0) -> PoolClient:
        """A client of a pool that lives in this process (one Sanic worker): no socket hop."""
        client = cls("", timeout=timeout)
        client._local = pool
        return client

    async def _call(
        self,
        kind: int,
        payload: bytes,
        timeout: float | None = None,
        urgent_when: asyncio.Future[None] | None = None,
    ) -> tuple[int, bytes]:
        """One request to the pool in this process or over the host's socket, under ``timeout``."""
        timeout = timeout or self.timeout
        pool = self._local
        if pool is not None and kind == KIND_STATS:
            return KIND_STATS, pickle.dumps(pool.snapshot())
        if pool is None and (self._channel is None or not self._channel.open):
            await self.connect()  # under its own connect_timeout
        try:
            # asyncio.timeout, not wait_for: no extra task per call.
            async with asyncio.timeout(timeout):
                if pool is not None:
                    return await pool.run(payload, urgent=kind == KIND_URGENT, urgent_when=urgent_when)
                assert self._channel is not None
                return await self._channel.call(kind, payload, urgent_when=urgent_when)
        except TimeoutError:
            raise PoolTimeout(f"tokenize pool did not answer within {timeout:.0f} s") from None

    async def _next_turn(self, op: str, **kwargs: Any) -> Any:
        """A request a rollout's next trainer call waits for: ahead of first prompts in the pool."""
        return await self._send(pickle.dumps((op, kwargs), protocol=pickle.HIGHEST_PROTOCOL), urgent=True)

    async def _send(
        self, request: bytes, *, urgent: bool = False, urgent_when: asyncio.Future[None] | None = None
    ) -> Any:
        kind, payload = await self._call(
            KIND_URGENT if urgent else KIND_TASK, request, urgent_when=urgent_when
        )
        answer = pickle.loads(payload)
        if kind == KIND_ERROR:
            raise answer
        ok, result = answer
        if not ok:
            raise result if isinstance(result, TokenizePoolError) else TokenizePoolError(str(result))
        return result

    async def first_prompt(
        self,
        key: TokenizerKey,
        messages: list[Message],
        *,
        urgent_when: asyncio.Future[None] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> FirstResult:
        """The ids of the first prompt. GRPO samples a group of rollouts from one prompt, so the
        ids of recent prompts are kept (by a digest of the request) and a repeat costs nothing.

        With ``tools`` (OpenAI function schemas, possibly none), the template renders them
        (``tokens.FirstPrompt``) and the result carries the ids that end an assistant turn.
        The request waits behind a rollout's next turns in the pool until ``urgent_when`` is
        done (the trainer has answered the first call, and the rollout waits for these ids)."""
        request: Any = (
            ("first", {"key": key, "messages": messages})
            if tools is None
            else FirstPrompt(key=key, messages=messages, tools=tools)
        )
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.blake2b(payload, digest_size=16).digest() if self.prompt_cache else b""
        cached = self._prompts.get(digest) if self.prompt_cache else None
        if cached is not None:
            self._prompts.move_to_end(digest)
            return FirstResult(
                ids=array("i", cached[0]), text=cached[1], tokens_encoded=0, stop_ids=cached[2]
            )
        result = await self._send(payload, urgent_when=urgent_when)
        if isinstance(result, TokenPrompt):
            ids, text, stops = result.ids, result.text, result.stop_ids
        else:
            ids, text, stops = ids_from_bytes(result["ids"]), result["text"], ()
        if self.prompt_cache:
            self._prompts[digest] = (array("i", ids), text, stops)
            if len(self._prompts) > self.prompt_cache:
                self._prompts.popitem(last=False)
        return FirstResult(ids=ids, text=text, tokens_encoded=len(ids), stop_ids=stops)

    async def run(self, request: PoolOp[R]) -> R:
        """One typed request (``tokenize_pool.ops``), its typed result; ahead of first prompts
        in the pool when the request says it is ``urgent`` (a rollout's next turn waits for it)."""
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        result: R = await self._send(payload, urgent=request.urgent)
        return result

    async def extend(
        self,
        key: TokenizerKey,
        *,
        history: list[Message],
        seq: array[int],
        prev_prompt_len: int,
        assistant: Message,
        tool_messages: list[Message],
        allow_fast: bool,
        tools: list[Message] | None = None,
    ) -> Growth:
        """The next prompt's growth. Asks first with a few messages and tokens (the fast path
        needs only ``conversation_window`` and the prompt's tail), then, if the pool says the
        full render must decide, with the whole conversation and sequence."""
        window = conversation_window(history) if allow_fast else None
        result: dict[str, Any] = {"need_full": True}
        if window is not None:
            result = await self._next_turn(
                "extend_window",
                key=key,
                window=window,
                prompt_tail=ids_to_bytes(seq[max(0, prev_prompt_len - TAIL_TOKENS) : prev_prompt_len]),
                gen=ids_to_bytes(seq[prev_prompt_len:]),
                seq_len=len(seq),
                assistant=assistant,
                tool_messages=tool_messages,
            )
        if result.get("need_full"):
            # ``tools`` only when given: without them, the request is as it always was.
            extra = {} if tools is None else {"tools": tools}
            result = await self._next_turn(
                "extend",
                key=key,
                seq=ids_to_bytes(seq),
                history=history,
                prev_prompt_len=prev_prompt_len,
                assistant=assistant,
                tool_messages=tool_messages,
                allow_fast=False,
                **extra,
            )
        result["ids"] = ids_from_bytes(result["ids"])
        return Growth(**result)

    async def ping(self) -> None:
        """A request that a worker answers without doing anything: the pool's round trip alone."""
        await self._send(_PING)

    async def stats(self, timeout: float = 2.0) -> dict[str, Any]:
        _, payload = await self._call(KIND_STATS, b"", timeout=timeout)
        stats: dict[str, Any] = pickle.loads(payload)
        return stats

    async def close(self) -> None:
        if self._local is not None:
            await self._local.close()
        if self._channel is not None:
            await self._channel.aclose()
