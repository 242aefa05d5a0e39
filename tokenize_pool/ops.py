"""Typed pool requests: a request is a frozen dataclass that names its tokenizer and runs itself.

    request = ParseTurn(key=..., ids=..., finish_reason="stop")   # the Sanic side builds it
    result = await pool_client.run(request)                       # a ParsedTurn, typed
    # in a pool worker: request.run(codec_cache.get(request.key))

The request and its result travel pickled, so both are plain dataclasses of picklable fields
(token ids as ``array('i')``, which pickles as raw bytes). A request's ``run`` is a pure function
of the warm codec and its fields; errors it raises are ``TokenizePoolError``s, which the worker
sends back as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from tokenize_pool.codec import ChatCodec, TokenizerKey

__all__ = ["PoolOp"]

R = TypeVar("R", covariant=True)


class PoolOp(Generic[R]):
    """Base of the typed pool requests; subclasses are frozen dataclasses with a ``key`` field."""

    __slots__ = ()
    # A request a rollout's next turn waits for goes ahead of first prompts in the pool.
    urgent: ClassVar[bool] = False
    key: TokenizerKey

    def run(self, codec: ChatCodec) -> R:
        raise NotImplementedError
