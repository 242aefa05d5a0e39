"""Mask bookkeeping: the prompt the trainer will build, and how much it grew since the last turn.

The trainer trains on ``prompt_ids(1) + response`` where the response is every generated turn
and, between turns, everything the conversation grew by. For call k > 1 the growth is

    new_k = prompt_ids(k)[len(prompt_ids(k-1)) + len(token_ids(k-1)):]

and its mask is ``[0] * len(new_k)``. ``extend`` computes ``new_k`` before the call, from the
messages the server is about to send, so the mask goes out with the request.

Two things make that exact:

1. *Faithful rewrites.* The trainer re-renders the assistant turn from the message we send; the
   model's sampled text must come out again, token for token. Templates disagree on how
   (Qwen3 drops an empty ``<think>`` block from turns that are no longer last; Qwen2.5 applies
   ``tojson`` to tool-call arguments, so a JSON string comes out quoted; Qwen3.5 iterates the
   arguments' items and fails on a string). ``assistant_rewrites`` lists the few spellings of
   one message that templates understand, and ``extend`` keeps the first whose rendering
   continues the previous prompt with exactly the sampled text. When none does, the growth is
   computed from a full render and the prefix breach is reported: never hidden.

2. *Each token tokenized once.* When the sampled turn ends on a special token (Qwen's
   ``<|im_end|>``), the tokenizer's added-token pass splits the text there, so the tokens after
   it do not depend on the text before it. The growth is then the encoding of the new text
   alone. The junction — the text between the prompt's last special token and the end of the
   sampled turn — is encoded once to prove that the trainer's re-tokenization matches what the
   model sampled; if it does not, the full render decides.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tokenize_pool.codec import PROBE, ChatCodec, TokenizerKey
from tokenize_pool.errors import TemplateError
from tokenize_pool.ops import PoolOp, Steps, run_steps

__all__ = [
    "ExtendFull",
    "ExtendWindow",
    "Growth",
    "NeedFull",
    "Prompt",
    "assistant_rewrites",
    "extend",
    "growth_steps",
    "first_mismatch",
    "first_prompt",
    "template_is_local",
]

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Prompt:
    """The ids of the first prompt of a rollout, and their ``ids_text``."""

    ids: list[int]
    text: bytes


@dataclass(frozen=True, slots=True)
class Growth:
    """What the next trainer call's prompt adds behind the tokens the trainer already holds.

    When ``prefix_ok``, ``ids`` is the growth itself: its mask is ``[0] * len(ids)``. When the
    prefix broke, ``ids`` is the whole new prompt as the trainer will tokenize it, and the growth
    the trainer will see is ``prompt_len - len(seq)`` (negative if the prompt shrank).
    """

    assistant: Message
    ids: array[int]
    faithful: bool
    prefix_ok: bool
    mismatch_at: int | None
    fast: bool
    tokens_encoded: int
    prompt_len: int


@dataclass(frozen=True, slots=True)
class NeedFull:
    """The fast path could not prove itself: the full render must decide."""


def first_prompt(codec: ChatCodec, messages: list[Message], tools: list[Message] | None = None) -> Prompt:
    """The first prompt and the generation prompt, with ``tools`` (OpenAI function schemas) when
    the trainer renders them; none or an empty list renders none."""
    text = codec.render(messages, add_generation_prompt=True, tools=tools or None)
    return Prompt(*codec.encode_prompt_text(text))


def _with_tool_arguments(message: Message, *, as_object: bool) -> Message:
    calls = message.get("tool_calls")
    if not calls:
        return message
    out = dict(message)
    out["tool_calls"] = [_convert_call(call, as_object=as_object) for call in calls]
    return out


def _convert_call(call: Any, *, as_object: bool) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    args = function.get("arguments")
    if as_object and isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return call
        if not isinstance(parsed, dict):
            return call
        function["arguments"] = parsed
    elif not as_object and isinstance(args, dict):
        function["arguments"] = json.dumps(args, ensure_ascii=False)
    return {**call, "function": function}


def _reasoning_variants(message: Message) -> list[tuple[str, Message]]:
    """Spellings of the reasoning part, labelled: as given; an inline ``<think>`` block moved into
    ``reasoning_content``; an empty reasoning forced to render (Qwen3 drops a falsy one from
    earlier turns, while ``"\n"`` is truthy yet strips to nothing); and for each, ``content``
    ``""`` instead of None."""
    base = dict(message)
    if "reasoning_content" not in base and isinstance(base.get("reasoning"), str):
        base["reasoning_content"] = base.pop("reasoning")
    variants = [("given", base)]
    content = base.get("content")
    reasoning = base.get("reasoning_content")
    if reasoning is None and isinstance(content, str) and "</think>" in content:
        head, _, tail = content.partition("</think>")
        split = {
            **base,
            "reasoning_content": head.split("<think>")[-1].strip("\n"),
            "content": tail.lstrip("\n"),
        }
        variants.append(("split", split))
        reasoning = split["reasoning_content"]
    if reasoning is None or (isinstance(reasoning, str) and not reasoning.strip()):
        variants.append(("forced", {**variants[-1][1], "reasoning_content": "\n"}))
    if content is None:
        variants.extend((f"{label}+empty", {**v, "content": ""}) for label, v in list(variants))
    return variants


def _labelled_rewrites(message: Message) -> Iterator[tuple[str, Message]]:
    seen: list[Message] = []
    for label, variant in _reasoning_variants(message):
        for as_object in (True, False):
            candidate = _with_tool_arguments(variant, as_object=as_object)
            if all(candidate != other for other in seen):
                seen.append(candidate)
                yield f"{label}/{'object' if as_object else 'string'}", candidate


def _hint_first(rewrites: Iterable[tuple[str, Message]], hint: str) -> Iterator[tuple[str, Message]]:
    """``rewrites`` with the one labelled ``hint`` moved to the front, made only as far as needed:
    when the hinted rewrite is faithful, the later ones are never built."""
    held: list[tuple[str, Message]] = []
    found = False
    for item in rewrites:
        if found:
            yield item
        elif item[0] == hint:
            found = True
            yield item
            yield from held
        else:
            held.append(item)
    if not found:
        yield from held


def assistant_rewrites(message: Message) -> list[Message]:
    """Candidate spellings of one assistant message, most natural first, without duplicates.

    They share unchanged parts with ``message``; nothing here mutates either."""
    return [candidate for _, candidate in _labelled_rewrites(message)]


def first_mismatch(full: Sequence[int], prefix: Sequence[int]) -> int | None:
    """Index of the first position where ``full`` stops extending ``prefix``; None if it does."""
    n = len(prefix)
    if len(full) >= n and list(full[:n]) == list(prefix):
        return None
    for i in range(min(n, len(full))):
        if full[i] != prefix[i]:
            return i
    return min(n, len(full))


def _junction_tokens(
    codec: ChatCodec, prev_text: str, prompt_ids: Sequence[int], gen: list[int], sampled: str
) -> int | None:
    """Tokens encoded to prove that the trainer, re-tokenizing the prompt plus the sampled text,
    gets ``prompt_ids + gen`` back; None if not. ``prev_text`` is a rendering that ends with
    the same generation prompt as the one tokenized to ``prompt_ids``.

    Everything up to the prompt's last boundary token tokenizes the same in both (the split
    happens there first); the rest — generation prompt plus sampled turn — is encoded here.
    """
    if not gen or gen[-1] not in codec.boundary_ids:
        return None
    j = len(prompt_ids) - 1
    while j >= 0 and prompt_ids[j] not in codec.boundary_ids:
        j -= 1
    if j < 0:
        return None
    tail_ids = list(prompt_ids[j + 1 :])
    tail_text = codec.decode(tail_ids) if tail_ids else ""
    if not prev_text.endswith(tail_text):
        return None
    junction = codec.encode(tail_text + sampled)
    return len(junction) if junction == tail_ids + gen else None


def conversation_window(history: list[Message]) -> list[Message] | None:
    """The few messages the rendering of the next turn depends on: the last user query (which
    decides ``last_query_index``-style logic) and the message before the new turn (which decides
    how tool results group). None when there is no user message to anchor on."""
    last_user = next((i for i in range(len(history) - 1, -1, -1) if history[i].get("role") == "user"), None)
    if last_user is None:
        return None
    return [history[last_user]] if last_user == len(history) - 1 else [history[last_user], history[-1]]


def _delta(codec: ChatCodec, context: list[Message], new: list[Message]) -> str | None:
    before = codec.render(context, add_generation_prompt=True)
    after = codec.render([*context, *new], add_generation_prompt=True)
    return after[len(before) :] if after.startswith(before) else None


def template_is_local(codec: ChatCodec) -> bool:
    """Whether new turns render behind ``conversation_window(history)`` exactly as behind the whole history.

    Checked once per tokenizer on a probe conversation; a template that fails the probe (or
    cannot render it) always takes the full render.
    """
    if codec.local_template is None:
        try:
            starts = [i for i, m in enumerate(PROBE) if m["role"] == "assistant"]
            ends = [
                next((j for j in range(i + 1, len(PROBE)) if PROBE[j]["role"] != "tool"), len(PROBE))
                for i in starts
            ]
            codec.local_template = all(
                (window := conversation_window(PROBE[:i])) is not None
                and (full := _delta(codec, PROBE[:i], PROBE[i:j])) is not None
                and full == _delta(codec, window, PROBE[i:j])
                for i, j in zip(starts, ends, strict=True)
            )
        except TemplateError:
            codec.local_template = False
    return codec.local_template


def _search(
    codec: ChatCodec,
    context: list[Message],
    assistant: Message,
    tool_messages: list[Message],
    sampled: str,
    tools: list[Message] | None = None,
) -> tuple[Message, str, str, bool]:
    """Render ``context + [rewrite] + tool_messages`` for each rewrite of the assistant message;
    returns the rewrite, the text of ``context`` alone, the full text, and whether the rewrite
    is faithful (its text continues the context's prompt with exactly ``sampled``).

    The kind of rewrite that was faithful last time for this template is tried first: a model
    writes every turn the same way, so the search usually costs one render."""
    base = codec.render(context, add_generation_prompt=True, tools=tools)
    candidates = _hint_first(_labelled_rewrites(assistant), codec.rewrite_hint)
    fallback: tuple[Message, str] | None = None
    error: TemplateError | None = None
    for label, candidate in candidates:
        try:
            text = codec.render(
                [*context, candidate, *tool_messages], add_generation_prompt=True, tools=tools
            )
        except TemplateError as exc:
            error = exc
            continue
        if text.startswith(base + sampled):
            codec.rewrite_hint = label
            return candidate, base, text, True
        fallback = fallback or (candidate, text)
    if fallback is None:
        assert error is not None
        raise error
    return fallback[0], base, fallback[1], False


TAIL_TOKENS = 64
"""How much of the previous prompt the fast path needs: enough to reach back to its last
special token (the generation prompt is a few tokens long)."""


@dataclass(frozen=True, slots=True)
class ExtendWindow(PoolOp[Growth | NeedFull]):
    """The growth from a render of ``window`` (see ``conversation_window``) only, knowing just
    the end of the previous prompt (``prompt_tail``) and the sampled turn ``gen``: a few
    messages and tokens travel to the worker, not the conversation."""

    urgent: ClassVar[bool] = True
    key: TokenizerKey
    window: list[Message]
    prompt_tail: array[int]
    gen: array[int]
    seq_len: int
    assistant: Message
    tool_messages: list[Message]

    def run(self, codec: ChatCodec) -> Growth | NeedFull:
        if not template_is_local(codec):
            return NeedFull()
        gen = list(self.gen)
        sampled = codec.decode(gen)
        try:
            message, base, text, faithful = _search(
                codec, self.window, self.assistant, self.tool_messages, sampled
            )
        except TemplateError:
            return NeedFull()
        if not faithful:
            return NeedFull()
        junction = _junction_tokens(codec, base, self.prompt_tail, gen, sampled)
        if junction is None:
            return NeedFull()
        ids = array("i", codec.encode(text[len(base) + len(sampled) :]))
        return Growth(message, ids, True, True, None, True, junction + len(ids), self.seq_len + len(ids))


@dataclass(frozen=True, slots=True)
class ExtendFull(PoolOp[Growth]):
    """The growth from a render and tokenization of the whole conversation, with the prefix
    invariant checked against ``seq``."""

    urgent: ClassVar[bool] = True
    key: TokenizerKey
    history: list[Message]
    seq: array[int]
    prev_prompt_len: int
    assistant: Message
    tool_messages: list[Message]
    tools: list[Message] | None = None

    def run(self, codec: ChatCodec) -> Growth:
        sampled = codec.decode(list(self.seq[self.prev_prompt_len :]))
        message, base, text, faithful = _search(
            codec, self.history, self.assistant, self.tool_messages, sampled, self.tools
        )
        full = codec.encode_prompt(text)
        mismatch = first_mismatch(full, self.seq)
        ids = array("i", full[len(self.seq) :] if mismatch is None else full)
        return Growth(message, ids, faithful, mismatch is None, mismatch, False, len(full), len(full))


def growth_steps(
    key: TokenizerKey,
    *,
    history: list[Message],
    seq: array[int],
    prev_prompt_len: int,
    assistant: Message,
    tool_messages: list[Message],
    allow_fast: bool = True,
    tools: list[Message] | None = None,
) -> Steps[Growth]:
    """The next prompt after the assistant turn ``seq[prev_prompt_len:]`` and its tool results:
    the one place that decides between the fast path and the full render.

    ``history`` is the conversation as last sent, which the trainer tokenized to
    ``seq[:prev_prompt_len]``; ``seq`` also holds the sampled turn.

    Fast path (``ExtendWindow``): render only a window of the conversation behind which the new
    messages render as they do in the whole conversation — true of templates whose rendering
    of a message depends on its neighbours and on the last user query only, which
    ``template_is_local`` checks once per tokenizer — and encode only the new text. Only that
    window and the prompt's last ``TAIL_TOKENS`` travel to the worker. Otherwise, or whenever
    the fast path cannot prove itself, ``ExtendFull`` renders and tokenizes the whole
    conversation and checks the prefix invariant against ``seq``. ``tools`` (function schemas
    the trainer renders into the prompt) go into that full render; the window leaves them out,
    as the Qwen templates write them in the opening system block only.
    """
    window = conversation_window(history) if allow_fast else None
    if window is not None:
        fast = yield ExtendWindow(
            key=key,
            window=window,
            prompt_tail=seq[max(0, prev_prompt_len - TAIL_TOKENS) : prev_prompt_len],
            gen=seq[prev_prompt_len:],
            seq_len=len(seq),
            assistant=assistant,
            tool_messages=tool_messages,
        )
        if isinstance(fast, Growth):
            return fast
    full: Growth = yield ExtendFull(
        key=key,
        history=history,
        seq=seq,
        prev_prompt_len=prev_prompt_len,
        assistant=assistant,
        tool_messages=tool_messages,
        tools=tools,
    )
    return full


def extend(
    codec: ChatCodec,
    *,
    history: list[Message],
    seq: Sequence[int],
    prev_prompt_len: int,
    assistant: Message,
    tool_messages: list[Message],
    allow_fast: bool = True,
    tools: list[Message] | None = None,
) -> Growth:
    """``growth_steps`` run in this process on ``codec``: the requests the pool would run."""
    steps = growth_steps(
        codec.key,
        history=history,
        seq=array("i", seq),
        prev_prompt_len=prev_prompt_len,
        assistant=assistant,
        tool_messages=tool_messages,
        allow_fast=allow_fast,
        tools=tools,
    )
    return run_steps(steps, codec)
