"""The token cap of tool messages (``TOOL_OUTPUT_MAX_TOKENS``): a text cut to N tokens of the
rollout's tokenizer, plus a visible marker.

Most tool messages are far below the cap, and counting their tokens would cost a pool round trip
per turn. ``fits_unseen`` settles those without a tokenizer: for a byte-level BPE tokenizer
every token covers at least one byte of the text it reads, so a text of at most N UTF-8 bytes
has at most N tokens. The text it reads is the normalized one; the seeded families normalize
with NFC or not at all, and NFC can lengthen a text (U+1D160 is 4 bytes, its NFC form 12), so
only a text already in NFC is settled this way. ``tests/tokenize_pool/test_tool_cap.py`` checks
the bound on every seeded family. Anything else goes to the pool, in one ``CutTools``.

Tokens are counted on the text alone, as ``ChatCodec.encode`` reads it; inside the rendered
prompt a token or so may merge differently at the text's two ends.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import ClassVar

from tokenize_pool.codec import ChatCodec, TokenizerKey
from tokenize_pool.ops import PoolOp

__all__ = ["CutTexts", "CutTools", "cut_to_tokens", "fits_unseen"]


def fits_unseen(text: str, limit: int) -> bool:
    """True when ``text`` surely has at most ``limit`` tokens, known without tokenizing it."""
    # len() first: a text of more characters than the cap has more bytes too.
    return (
        len(text) <= limit
        and len(text.encode("utf-8", "surrogatepass")) <= limit
        and unicodedata.is_normalized("NFC", text)
    )


def cut_to_tokens(codec: ChatCodec, text: str, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` tokens and marked, or None when it has no more.

    The kept part is the decode of the first ``limit`` ids, cut back to whole characters (a
    byte-level token may end inside one: its decode ends in U+FFFD)."""
    ids = codec.encode(text)
    if len(ids) <= limit:
        return None
    kept = codec.decode(ids[:limit])
    if not text.startswith(kept):
        kept = kept.rstrip("\ufffd")
    # Decoding then encoding a prefix gives back its ids for these tokenizers; should a
    # tokenizer merge differently, drop a character per token over until the prefix fits.
    while kept and (over := len(codec.encode(kept)) - limit) > 0:
        kept = kept[:-over]
    return (
        f"{kept}\n[truncated at {limit} tokens: {len(text) - len(kept)} of {len(text)} characters not shown]"
    )


@dataclass(frozen=True, slots=True)
class CutTexts:
    """Each text of a ``CutTools``, cut and marked, or None where it was within the cap."""

    texts: list[str | None]


@dataclass(frozen=True, slots=True)
class CutTools(PoolOp[CutTexts]):
    """Cut each of ``texts`` (tool messages' contents) to at most ``limit`` tokens."""

    urgent: ClassVar[bool] = True  # the rollout's next turn waits for it
    key: TokenizerKey
    texts: list[str]
    limit: int

    def run(self, codec: ChatCodec) -> CutTexts:
        return CutTexts([cut_to_tokens(codec, text, self.limit) for text in self.texts])
