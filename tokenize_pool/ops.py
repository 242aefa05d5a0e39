"""Typed pool requests: a request is a frozen dataclass that names its tokenizer and runs itself.

    request = ParseTurn(key=..., ids=..., finish_reason="stop")   # the Sanic side builds it
    result = await pool_client.run(request)                       # a ParsedTurn, typed
    # in a pool worker: request.run(codec_cache.get(request.key))

The request and its result travel pickled, so both are plain dataclasses of picklable fields
(token ids as ``array('i')``, which pickles as raw bytes). A request's ``run`` is a pure function
of the warm codec and its fields; errors it raises are ``TokenizePoolError``s, which the worker
sends back as they are.

A decision that takes more than one request (the growth of a message-mode turn: a cheap request,
then a full one if the cheap one cannot prove itself) is written once as ``Steps``, a generator
that yields requests and receives their results. ``PoolClient.steps`` runs it against the pool;
``run_steps`` runs the very same generator on a codec in this process (tests, benchmarks).

This module also holds the requests that belong to no mode: ``Ping``, ``Resolve``,
``ExplainTurn``.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from tokenize_pool.codec import ChatCodec, CodecCache, TokenizerKey

__all__ = [
    "ExplainTurn",
    "Ping",
    "PoolOp",
    "Promotion",
    "Resolve",
    "Resolved",
    "Steps",
    "TurnExplanation",
    "run_steps",
]

R = TypeVar("R", covariant=True)
T = TypeVar("T")
Message = dict[str, Any]


class PoolOp(Generic[R]):
    """Base of the typed pool requests; subclasses are frozen dataclasses with a ``key`` field."""

    __slots__ = ()
    # A request a rollout's next turn waits for goes ahead of first prompts in the pool.
    urgent: ClassVar[bool] = False
    key: TokenizerKey

    def run(self, codec: ChatCodec) -> R:
        raise NotImplementedError

    def run_in(self, cache: CodecCache) -> R:
        """How a worker runs the request: on the warm codec of its ``key``."""
        return self.run(cache.get(self.key))


Steps = Generator[PoolOp[Any], Any, T]
"""A decision over several pool requests: yields each request, receives its result, returns
the outcome. The generator owns the decision; whoever drives it only runs the requests."""


def run_steps(steps: Steps[T], codec: ChatCodec) -> T:
    """``steps`` run in this process on ``codec``: exactly the requests the pool would run."""
    try:
        request = next(steps)
        while True:
            request = steps.send(request.run(codec))
    except StopIteration as done:
        result: T = done.value
        return result


class Promotion:
    """Whether a waiting request has become urgent: the caller now waits for it (``promote``).

    Made by ``PoolClient`` for a first prompt that overlaps the first trainer call; whichever
    pool runs the request (``WorkerPool``, or the pool host through ``HostedPool``) registers
    with ``when_promoted`` how to move the request ahead. Lives in one event loop's thread."""

    __slots__ = ("_callbacks", "promoted")

    def __init__(self) -> None:
        self.promoted = False
        self._callbacks: list[Callable[[], None]] = []

    def promote(self) -> None:
        if self.promoted:
            return
        self.promoted = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def when_promoted(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once promoted (at once, if it is)."""
        if self.promoted:
            callback()
        else:
            self._callbacks.append(callback)


@dataclass(frozen=True, slots=True)
class Pong:
    pid: int


@dataclass(frozen=True, slots=True)
class Ping(PoolOp[Pong]):
    """A request a worker answers without touching a tokenizer: the pool's round trip alone."""

    def run_in(self, cache: CodecCache) -> Pong:
        return Pong(os.getpid())


@dataclass(frozen=True, slots=True)
class Resolved:
    context_limit: int | None  # what the tokenizer states (model_max_length), if anything


@dataclass(frozen=True, slots=True)
class Resolve(PoolOp[Resolved]):
    """Load ``key`` (or find it loaded): a cheap way to learn that a tokenizer cannot be had,
    and what context it states."""

    key: TokenizerKey

    def run(self, codec: ChatCodec) -> Resolved:
        return Resolved(codec.context_limit)


@dataclass(frozen=True, slots=True)
class TurnExplanation:
    decoded: str  # the turn's generated ids as text
    rendered: str  # its message as the chat template renders it after the history


@dataclass(frozen=True, slots=True)
class ExplainTurn(PoolOp[TurnExplanation]):
    """A turn's generated ids as text beside its message as the template renders it after
    ``history``: what a prefix break is explained with."""

    urgent: ClassVar[bool] = True
    key: TokenizerKey
    history: list[Message]
    gen: array[int]
    assistant: Message

    def run(self, codec: ChatCodec) -> TurnExplanation:
        before = codec.render(self.history, add_generation_prompt=True)
        after = codec.render([*self.history, self.assistant], add_generation_prompt=False)
        rendered = after[len(before) :] if after.startswith(before) else after
        return TurnExplanation(codec.decode(list(self.gen)), rendered)
