"""A warm tokenizer plus its chat template: render, encode, decode, and the split points.

``ChatCodec`` is the only place that touches transformers. Encoding goes straight to the Rust
``tokenizers`` backend with ``add_special_tokens=False``, which is what
``apply_chat_template(tokenize=True)`` does, minus the Python overhead and minus transformers
5's ``BatchEncoding`` return value (whose ``len()`` counts keys, not tokens).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

from tokenize_pool.errors import TemplateError, TokenizerLoadError
from tokenize_pool.templates import NativeRender, native_renderer

__all__ = ["PROBE", "ChatCodec", "CodecCache", "TokenizerKey", "ids_text", "load_codec", "warm_ids_text"]

logger = logging.getLogger(__name__)

FAILURE_TTL_SECONDS = 30.0
SEGMENT_MIN_CHARS = 1024
SEGMENT_CACHE_ENTRIES = 256
SEGMENT_SELF_CHECKS = 3


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": f"probe_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}


def _assistant(content: str, reasoning: str, *calls: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content,
        "reasoning_content": reasoning,
        "tool_calls": list(calls),
    }


def _tool(content: str) -> dict[str, Any]:
    return {"role": "tool", "content": content, "tool_call_id": "probe"}


# A conversation exercising what a template may look at: a system prompt, a tool turn, parallel
# tool results, reasoning and visible content, and a second user query.
PROBE: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a probe."},
    {"role": "user", "content": "First question?"},
    _assistant("", "\n", _call("add", a=1, b=2)),
    _tool("3"),
    _assistant("Two at once.", "Some reasoning.", _call("multiply", a=3, b=4), _call("divide", a=8, b=2)),
    _tool("12"),
    _tool("4"),
    {"role": "user", "content": "Second question?"},
    _assistant("", "\n", _call("subtract", a=5, b=1)),
    _tool("4"),
]


_STRING_CALL = {"id": "probe_s", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}

# Where a faster render must equal apply_chat_template: prefixes of the probe (each role last); an
# assistant turn whose content is None (dropped before rendering, as transformers does); reasoning
# under the names transformers aliases to reasoning_content, and string tool-call arguments
# (what one transformers version does with them, another may not).
_RENDER_CHECKS: list[list[dict[str, Any]]] = [
    PROBE[:2],
    PROBE[:3],
    PROBE[:4],
    PROBE[:7],
    PROBE,
    [PROBE[1], {**PROBE[2], "content": None}, PROBE[3]],
    [PROBE[1], {"role": "assistant", "content": "Sure.", "reasoning": "Because."}],
    [
        PROBE[1],
        {"role": "assistant", "content": "", "thinking": "Hm.", "tool_calls": [_STRING_CALL]},
        PROBE[3],
    ],
]


# ``str(i)`` for every token id below its length: a prompt's ids are written out through it in a
# quarter of the time ``str`` takes (1.6k ids: 32 µs against 130 µs). A codec fills it up to its
# vocabulary when it loads (Qwen3's 152k ids: 11 MB, 18 ms, paid by the pool worker before it is
# warm, not by its first request). Elsewhere (the Sanic process writes the trainer's ids) it grows
# on demand by 16k ids at a time: about 2 ms each, so the event loop never stalls long for it.
_ID_STRINGS: list[str] = []
_ID_STRINGS_STEP = 1 << 14
_ID_STRINGS_LIMIT = 1 << 20  # vocabularies are far smaller (Qwen3: 152k ids)


def warm_ids_text(size: int) -> None:
    """Let ``ids_text`` write ids below ``size`` (at most ``_ID_STRINGS_LIMIT``) without growing."""
    size = min(size, _ID_STRINGS_LIMIT)
    if len(_ID_STRINGS) < size:
        _ID_STRINGS.extend(map(str, range(len(_ID_STRINGS), size)))


def ids_text(ids: Sequence[int]) -> bytes:
    """Token ids as the inside of a compact JSON array, ``b"1,2,3"``: how the server compares
    the prompt ids a trainer echoes without parsing them.

    Ids are token ids: never negative (tokenizers make none, and the protocol's validation
    rejects a trainer's), which the table lookup relies on."""
    if len(ids) < 2:  # itemgetter of one index returns the item, not a tuple
        return b"%d" % ids[0] if ids else b""
    try:
        return ",".join(itemgetter(*ids)(_ID_STRINGS)).encode()
    except IndexError:
        top = max(ids)
        if top >= _ID_STRINGS_LIMIT:  # not a vocabulary's id: no table that large
            return ",".join(map(str, ids)).encode()
        warm_ids_text(top + _ID_STRINGS_STEP - top % _ID_STRINGS_STEP)
        return ",".join(itemgetter(*ids)(_ID_STRINGS)).encode()


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
        self._compiled = _compiled_template(hf_tokenizer)
        self._native = _native_template(hf_tokenizer)
        references = self._references(_RENDER_CHECKS)  # once, for both checks
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

    def _check_compiled(self, references: list[_Reference]) -> bool:
        if self._compiled is not None and not _agrees(self._compiled, references, may_decline=False):
            logger.warning(
                "%s: the compiled chat template differs; rendering with apply_chat_template", self.key
            )
            self._compiled = None
        return self._compiled is not None

    def _check_native(self, references: list[_Reference]) -> bool:
        if self._native is not None and not _agrees(self._native, references, may_decline=True):
            logger.warning("%s: the Python chat template differs; rendering with Jinja", self.key)
            self._native = None
        return self._native is not None

    def _references(self, conversations: list[list[dict[str, Any]]]) -> list[_Reference]:
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
                references.append(_Reference(messages, add_generation_prompt, text))
        return references

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, no special tokens added.

        Through ``encode_batch_fast`` where ``tokenizers`` has it: the same ids without the
        character offsets ``encode`` also computes, for a fifth less CPU (1.66 -> 1.33 ms on a
        20-turn conversation)."""
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


@dataclass(frozen=True, slots=True)
class _Reference:
    """``apply_chat_template``'s text for one conversation (None where it fails)."""

    messages: list[dict[str, Any]]
    add_generation_prompt: bool
    text: str | None


def _agrees(
    render: Callable[[list[dict[str, Any]], bool], str | None],
    references: list[_Reference],
    *,
    may_decline: bool,
) -> bool:
    """Whether ``render`` gives every reference's text, an error where it has none; with
    ``may_decline``, a None answer (not handled) agrees too, and an error does not."""
    for reference in references:
        try:
            text = render(reference.messages, reference.add_generation_prompt)
        except Exception:
            if may_decline:
                return False
            text = None
        if text != reference.text and not (may_decline and text is None):
            return False
    return True


def _compiled_template(hf_tokenizer: Any) -> Callable[[list[dict[str, Any]], bool], str] | None:
    """The tokenizer's default chat template compiled once (transformers' own sandboxed
    compilation) and called as ``apply_chat_template`` calls it for plain JSON messages without
    tools: keys whose value is None dropped, reasoning fields aliased, special tokens passed in.
    None when this transformers does not offer the pieces; ``ChatCodec.compiled_render_checked``
    decides whether it may be used."""
    try:
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _compile_jinja_template

        template = _compile_jinja_template(hf_tokenizer.get_chat_template(None, None))
        variables = dict(hf_tokenizer.special_tokens_map)
    except Exception:
        return None

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        chat = _alias_reasoning_fields([{k: v for k, v in m.items() if v is not None} for m in messages])
        text: str = template.render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
        return text

    return render


def _native_template(hf_tokenizer: Any) -> NativeRender | None:
    """The tokenizer's default chat template written out in Python, if ``tokenize_pool.templates`` has it."""
    try:
        template = hf_tokenizer.get_chat_template(None, None)
    except Exception:
        return None
    return native_renderer(template) if isinstance(template, str) else None


def load_codec(key: TokenizerKey, *, trust_remote_code: bool) -> ChatCodec:
    """Load a tokenizer with ``from_pretrained``; honours HF_HOME and HF_HUB_OFFLINE."""
    from transformers import AutoTokenizer  # heavy import; only pool worker processes pay it

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
