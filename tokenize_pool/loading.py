"""Loading tokenizers, and the cache of loaded codecs each pool worker keeps.

``load_codec`` is the one place that calls ``from_pretrained``: the local cache first, then the
hub; a tokenizer without a fast backend or a chat template is refused. ``CodecCache`` keeps the
most recently used codecs and remembers, for a while, those that failed to load.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenize_pool.errors import TokenizerLoadError

if TYPE_CHECKING:
    from tokenize_pool.codec import ChatCodec

__all__ = ["FAILURE_TTL_SECONDS", "CodecCache", "TokenizerKey", "load_codec"]

logger = logging.getLogger("tokenize_pool.codec")  # the name its lines had before the split

FAILURE_TTL_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class TokenizerKey:
    """A tokenizer as the hub names it: repository id and git revision."""

    name: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.name if self.revision in (None, "main") else f"{self.name}@{self.revision}"

    def __reduce__(self) -> tuple[type[TokenizerKey], tuple[str, str | None]]:
        # Every pool request carries a key; a frozen slots dataclass otherwise pickles through
        # a generated __getstate__ that walks its fields each time.
        return TokenizerKey, (self.name, self.revision)


def load_codec(key: TokenizerKey, *, trust_remote_code: bool) -> ChatCodec:
    """Load a tokenizer with ``from_pretrained``; honours HF_HOME and HF_HUB_OFFLINE."""
    from transformers import AutoTokenizer  # heavy import; only pool worker processes pay it

    from tokenize_pool.codec import ChatCodec  # here: codec.py re-exports this module's names

    def load(local_only: bool) -> Any:
        return AutoTokenizer.from_pretrained(
            key.name, revision=key.revision, trust_remote_code=trust_remote_code, local_files_only=local_only
        )

    try:
        # The cache first: a tokenizer that is there never waits on the network.
        tokenizer = load(local_only=True)
    except Exception:
        try:
            tokenizer = load(local_only=False)
        except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot load"
            raise TokenizerLoadError(f"cannot load tokenizer {key}: {str(exc).splitlines()[0]}") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerLoadError(f"tokenizer {key} has no fast (Rust) backend")
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerLoadError(f"tokenizer {key} has no chat template")
    return ChatCodec(key, tokenizer)


class CodecCache:
    """Least-recently-used codecs of one process, at most ``capacity`` of them."""

    def __init__(self, capacity: int, *, trust_remote_code: bool) -> None:
        self.capacity = max(1, capacity)
        self.trust_remote_code = trust_remote_code
        # Called once a tokenizer is loaded (and any evicted): a worker freezes its heap there.
        self.after_load: Callable[[], None] | None = None
        self._codecs: OrderedDict[TokenizerKey, ChatCodec] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._failures: dict[TokenizerKey, tuple[float, TokenizerLoadError]] = {}

    def get(self, key: TokenizerKey) -> ChatCodec:
        codec = self._codecs.get(key)
        if codec is not None:
            self.hits += 1
            self._codecs.move_to_end(key)
            return codec
        self.misses += 1
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_TTL_SECONDS:
            # A missing tokenizer fails every rollout fast instead of each one retrying the hub.
            raise failed[1]
        try:
            codec = load_codec(key, trust_remote_code=self.trust_remote_code)
        except TokenizerLoadError as exc:
            self._failures[key] = (time.monotonic(), exc)
            raise
        self._failures.pop(key, None)
        self._codecs[key] = codec
        while len(self._codecs) > self.capacity:
            evicted, _ = self._codecs.popitem(last=False)
            logger.info("evicted tokenizer %s", evicted)
        if self.after_load is not None:
            self.after_load()
        return codec

    def keys(self) -> list[str]:
        return [str(k) for k in self._codecs]
