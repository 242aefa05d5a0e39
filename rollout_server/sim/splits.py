"""Sampled id sequences that decode to the tokenizer's text but do not survive re-encoding.

Pure: no tokenizer, only a lookup from token strings to ids. A real model samples such
sequences now and then: a word as two pieces where the tokenizer has one token for it, or two
``\\n`` tokens where the tokenizer would write one ``\\n\\n``. Decoding them gives the same text,
so a client that re-tokenizes what the model said gets other ids than the model produced; a
client that keeps the sampled ids does not.

Token strings are the tokenizer's own spelling of its vocabulary (byte-level BPE: ``Ġ`` for a
leading space, ``Ċ`` for a newline). Splitting one token's string into two vocabulary strings
keeps the bytes, hence the decoded text, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

__all__ = ["SPLIT_KINDS", "SplitKind", "split_first"]

SplitKind = Literal["word", "newlines"]
SPLIT_KINDS: tuple[str, ...] = get_args(SplitKind)

_SPACE = "Ġ"
_NEWLINE = "Ċ"
_MIN_WORD = 4


def _qualifies(token: str, kind: SplitKind) -> bool:
    if kind == "newlines":
        return len(token) >= 2 and set(token) == {_NEWLINE}
    word = token.removeprefix(_SPACE)
    return len(word) >= _MIN_WORD and word.isascii() and word.isalpha()


def _halves(token: str, lookup: Callable[[str], int | None]) -> tuple[int, int] | None:
    """Two vocabulary ids spelling ``token``, cut as near its middle as the vocabulary allows."""
    for cut in sorted(range(1, len(token)), key=lambda k: (abs(2 * k - len(token)), k)):
        head, tail = lookup(token[:cut]), lookup(token[cut:])
        if head is not None and tail is not None:
            return head, tail
    return None


def split_first(
    ids: Sequence[int], tokens: Sequence[str], lookup: Callable[[str], int | None], kind: SplitKind
) -> list[int]:
    """``ids`` with the first token of ``kind`` replaced by two ids spelling the same string.

    ``tokens[i]`` is the vocabulary string of ``ids[i]``; ``lookup`` maps a string to its id,
    or None. ``word``: a token of at least four ASCII letters (after a leading space);
    ``newlines``: a token of two or more newlines. Returns a copy of ``ids`` unchanged when no
    token qualifies or none can be split."""
    for i, token in enumerate(tokens):
        if _qualifies(token, kind):
            halves = _halves(token, lookup)
            if halves is not None:
                return [*ids[:i], *halves, *ids[i + 1 :]]
    return list(ids)
