"""A warm tokenizer plus its chat template: render, encode, decode, and the split points.

``ChatCodec`` is the only place that calls into a loaded tokenizer. Encoding goes straight to
the Rust ``tokenizers`` backend with ``add_special_tokens=False``, which is what
``apply_chat_template(tokenize=True)`` does, minus the Python overhead and minus transformers
5's ``BatchEncoding`` return value (whose ``len()`` counts keys, not tokens).

Loading and the per-worker cache live in ``loading.py``, the render checks in
``render_checks.py``, the id table in ``id_text.py``; their public names are importable from
here too.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Any

from tokenize_pool.errors import TemplateError
from tokenize_pool.id_text import ids_text, warm_ids_text
from tokenize_pool.loading import CodecCache, TokenizerKey, load_codec
from tokenize_pool.render_checks import (
    PROBE,
    RENDER_CHECKS,
    Reference,
    agrees,
    compiled_template,
    native_template,
)

__all__ = ["PROBE", "ChatCodec", "CodecCache", "TokenizerKey", "ids_text", "load_codec", "warm_ids_text"]

logger = logging.getLogger(__name__)

SEGMENT_MIN_CHARS = 1024
SEGMENT_CACHE_ENTRIES = 256
SEGMENT_SELF_CHECKS = 3


@dataclass(frozen=True, slots=True)
class _Piece:
    """Ids of one stretch of a prompt; ``text`` is their ``ids_text`` when kept (reused stretches)."""

    ids: list[int]
    text: bytes | None = None


def _joined(pieces: list[_Piece]) -> list[int]:
    """The pieces' ids in one new list; a lone piece made for this call (not a reused stretch,
    which keeps its own) is that list already."""
    if len(pieces) == 1 and pieces[0].text is None:
        return pieces[0].ids
    return list(chain.from_iterable(piece.ids for piece in pieces))


class ChatCodec:
    """One loaded tokenizer with its chat template."""

    def __init__(self, key: TokenizerKey, hf_tokenizer: Any) -> None:
        self.key = key
        self._hf = hf_tokenizer
        self._backend = hf_tokenizer.backend_tokenizer
        self._fast_encode = hasattr(self._backend, "encode_batch_fast")
        self.boundary_ids = self._find_boundary_ids()
        contents = sorted(
            (self._hf.added_tokens_decoder[i].content for i in self.boundary_ids), key=len, reverse=True
        )
        self._boundaries = re.compile("|".join(map(re.escape, contents))) if contents else None
        self._segments: OrderedDict[str, _Piece] = OrderedDict()
        self._segment_checks = SEGMENT_SELF_CHECKS
        # Set by tokenize_pool.masks.template_is_local on first use.
        self.local_template: bool | None = None
        self._compiled = compiled_template(hf_tokenizer)
        self._native = native_template(hf_tokenizer)
        references = self._references(RENDER_CHECKS)  # once, for both checks
        self._check_compiled(references)
        self._check_native(references)
        # The kind of assistant rewrite that last reproduced a sampled turn (masks._search).
        self.rewrite_hint = ""
        warm_ids_text(len(hf_tokenizer))

    def _find_boundary_ids(self) -> frozenset[int]:
        """Special tokens that split tokenization cleanly: nothing before or after them can merge
        with them or with each other, because the added-token pass cuts the text there first.
        Tokens that strip or require word boundaries could swallow neighbouring whitespace, so
        they do not count."""
        ids = set()
        for token_id, added in self._hf.added_tokens_decoder.items():
            if added.special and not (added.lstrip or added.rstrip or added.single_word):
                ids.add(int(token_id))
        return frozenset(ids)

    @property
    def context_limit(self) -> int | None:
        """The tokenizer's ``model_max_length`` when it states a real one (unset, it is 1e30)."""
        limit = getattr(self._hf, "model_max_length", None)
        return limit if isinstance(limit, int) and 0 < limit <= 10_000_000 else None

    @property
    def eos_token(self) -> str | None:
        token = self._hf.eos_token
        return token if isinstance(token, str) else None

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The chat template's text for ``messages``, exactly as the trainer renders it.

        The fastest of three renderings that ``native_render_checked`` and
        ``compiled_render_checked`` found equal to ``apply_chat_template``: the template written
        out in Python (``tokenize_pool.templates``; a tenth of the Jinja time, for the templates
        and conversations it handles), the compiled Jinja template (which skips
        ``apply_chat_template``'s per-call conversions: a quarter to a third of its time), else
        ``apply_chat_template`` itself. With ``tools``, only the last renders them."""
        if tools:
            return self.render_reference(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        if self._native is not None:
            text = self._native(messages, add_generation_prompt)
            if text is not None:
                return text
        if self._compiled is None or not messages:
            return self.render_reference(messages, add_generation_prompt=add_generation_prompt)
        try:
            return self._compiled(messages, add_generation_prompt)
        except Exception as exc:  # jinja2 raises many types, and templates raise their own
            raise TemplateError(f"chat template of {self.key} failed: {exc}") from None

    def render_reference(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """``apply_chat_template`` itself, as a trainer calls it: what ``render`` must equal.

        With ``tools`` (OpenAI function schemas), the template renders them too (its ``tools``
        argument); only this Jinja path does, ``render``'s faster ones have no tools."""
        try:
            text = self._hf.apply_chat_template(
                messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as exc:  # jinja2 raises many types, and templates raise their own
            raise TemplateError(f"chat template of {self.key} failed: {exc}") from None
        if not isinstance(text, str):
            raise TemplateError(f"chat template of {self.key} returned {type(text).__name__}, not text")
        return text

    def compiled_render_checked(self, conversations: list[list[dict[str, Any]]]) -> bool:
        """Keep the compiled render only if it equals ``apply_chat_template`` on every one of
        ``conversations`` (with and without the generation prompt, errors included); checked
        once per tokenizer, on a probe conversation that exercises what templates look at."""
        return self._check_compiled(self._references(conversations))

    def native_render_checked(self, conversations: list[list[dict[str, Any]]]) -> bool:
        """Keep the Python rendering of the template only if, on every one of ``conversations``
        it handles, it equals ``apply_chat_template`` (and renders nothing where that fails)."""
        return self._check_native(self._references(conversations))

    def _check_compiled(self, references: list[Reference]) -> bool:
        if self._compiled is not None and not agrees(self._compiled, references, may_decline=False):
            logger.warning(
                "%s: the compiled chat template differs; rendering with apply_chat_template", self.key
            )
            self._compiled = None
        return self._compiled is not None

    def _check_native(self, references: list[Reference]) -> bool:
        if self._native is not None and not agrees(self._native, references, may_decline=True):
            logger.warning("%s: the Python chat template differs; rendering with Jinja", self.key)
            self._native = None
        return self._native is not None

    def _references(self, conversations: list[list[dict[str, Any]]]) -> list[Reference]:
        """``apply_chat_template``'s text of each conversation, with and without the generation
        prompt; None where it fails."""
        references = []
        for messages in conversations:
            for add_generation_prompt in (False, True):
                try:
                    text: str | None = self.render_reference(
                        messages, add_generation_prompt=add_generation_prompt
                    )
                except Exception:
                    text = None
                references.append(Reference(messages, add_generation_prompt, text))
        return references

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, no special tokens added.

        Through ``encode_batch_fast`` where ``tokenizers`` has it: the same ids without the
        character offsets ``encode`` also computes, for about a fifth less CPU."""
        # ``ids`` makes a new list on every read: no copy of it is needed.
        if self._fast_encode:
            ids: list[int] = self._backend.encode_batch_fast([text], add_special_tokens=False)[0].ids
        else:
            ids = self._backend.encode(text, add_special_tokens=False).ids
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """``encode(text)``, reusing the ids of long stretches between special tokens seen before.

        The tokenizer cuts the text at special tokens before anything else, so a stretch between
        two of them tokenizes the same wherever it stands: a system prompt shared by every
        rollout is tokenized once per worker, not once per rollout. The first few results are
        checked against a plain ``encode``; one difference turns the reuse off for good.
        """
        return _joined(self._prompt_pieces(text))

    def encode_prompt_text(self, text: str) -> tuple[list[int], bytes]:
        """``encode_prompt(text)`` and ``ids_text`` of those ids, the reused stretches' text
        made once with their ids (4k ids take 0.4 ms to write out)."""
        pieces = self._prompt_pieces(text)
        return _joined(pieces), b",".join(piece.text or ids_text(piece.ids) for piece in pieces if piece.ids)

    def _prompt_pieces(self, text: str) -> list[_Piece]:
        if self._boundaries is None or self._segment_checks < 0 or len(text) < SEGMENT_MIN_CHARS:
            return [_Piece(self.encode(text))]
        pieces: list[_Piece] = []
        pending = 0  # start of the text not yet encoded
        stretch = 0  # start of the current stretch between special tokens
        for match in [*self._boundaries.finditer(text), None]:
            end = len(text) if match is None else match.start()
            if end - stretch >= SEGMENT_MIN_CHARS:
                if pending < stretch:
                    pieces.append(_Piece(self.encode(text[pending:stretch])))
                pieces.append(self._segment(text[stretch:end]))
                pending = end
            stretch = len(text) if match is None else match.end()
        if pending < len(text):
            pieces.append(_Piece(self.encode(text[pending:])))
        if self._segment_checks > 0:
            self._segment_checks -= 1
            full = self.encode(text)
            if full != [token for piece in pieces for token in piece.ids]:
                logger.warning(
                    "tokenizer %s does not split cleanly at special tokens; reuse is off", self.key
                )
                self._segment_checks = -1
                return [_Piece(full)]
        return pieces

    def _segment(self, text: str) -> _Piece:
        piece = self._segments.get(text)
        if piece is None:
            ids = self.encode(text)
            piece = self._segments[text] = _Piece(ids, ids_text(ids))
            if len(self._segments) > SEGMENT_CACHE_ENTRIES:
                self._segments.popitem(last=False)
        else:
            self._segments.move_to_end(text)
        return piece

    def decode(self, ids: list[int]) -> str:
        return str(self._backend.decode(ids, skip_special_tokens=False))
