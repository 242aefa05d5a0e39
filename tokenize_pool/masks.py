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

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenize_pool.codec import ChatCodec
from tokenize_pool.errors import TemplateError

__all__ = ["Growth", "Prompt", "assistant_rewrites", "extend", "first_prompt", "first_mismatch"]

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Prompt:
    """The text and ids of the first prompt of a rollout."""

    text: str
    ids: list[int]


@dataclass(frozen=True, slots=True)
class Growth:
    """What the next trainer call's prompt adds behind the tokens the trainer already holds.

    When ``prefix_ok``, ``ids`` is the growth itself: its mask is ``[0] * len(ids)``. When the
    prefix broke, ``ids`` is the whole new prompt as the trainer will tokenize it, and the growth
    the trainer will see is ``prompt_len - len(seq)`` (negative if the prompt shrank).
    """

    assistant: Message
    text: str
    ids: list[int]
    faithful: bool
    prefix_ok: bool
    mismatch_at: int | None
    fast: bool
    tokens_encoded: int
    prompt_len: int


def first_prompt(codec: ChatCodec, messages: list[Message]) -> Prompt:
    text = codec.render(messages, add_generation_prompt=True)
    return Prompt(text=text, ids=codec.encode(text))


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


def _reasoning_variants(message: Message) -> list[Message]:
    """Spellings of the reasoning part: as given; an empty reasoning forced to render (Qwen3 drops
    a falsy one from earlier turns, while ``"\\n"`` is truthy yet strips to nothing); an inline
    ``<think>`` block moved into ``reasoning_content``."""
    base = dict(message)
    if "reasoning_content" not in base and isinstance(base.get("reasoning"), str):
        base["reasoning_content"] = base.pop("reasoning")
    variants = [base]
    content = base.get("content")
    reasoning = base.get("reasoning_content")
    if reasoning is None and isinstance(content, str) and "</think>" in content:
        head, _, tail = content.partition("</think>")
        split = {
            **base,
            "reasoning_content": head.split("<think>")[-1].strip("\n"),
            "content": tail.lstrip("\n"),
        }
        variants.append(split)
        reasoning = split["reasoning_content"]
    if reasoning is None or (isinstance(reasoning, str) and not reasoning.strip()):
        variants.append({**variants[-1], "reasoning_content": "\n"})
    if content is None:
        variants.extend({**v, "content": ""} for v in list(variants))
    return variants


def assistant_rewrites(message: Message) -> list[Message]:
    """Candidate spellings of one assistant message, most natural first, without duplicates."""
    seen: list[Message] = []
    for variant in _reasoning_variants(message):
        for as_object in (True, False):
            candidate = _with_tool_arguments(variant, as_object=as_object)
            if candidate not in seen:
                seen.append(copy.deepcopy(candidate))
    return seen


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
    """Tokens encoded to prove ``encode(prev_text + sampled) == prompt_ids + gen``; None if not.

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


def extend(
    codec: ChatCodec,
    *,
    history: list[Message],
    prev_text: str,
    seq: Sequence[int],
    prev_prompt_len: int,
    assistant: Message,
    tool_messages: list[Message],
    allow_fast: bool = True,
) -> Growth:
    """The next prompt after the assistant turn ``seq[prev_prompt_len:]`` and its tool results.

    ``history`` is the conversation as last sent (rendering to ``prev_text``, tokenized by the
    trainer to ``seq[:prev_prompt_len]``); ``seq`` also holds the sampled turn.
    """
    gen = list(seq[prev_prompt_len:])
    sampled = codec.decode(gen)
    target = prev_text + sampled
    fallback: tuple[Message, str] | None = None
    chosen: tuple[Message, str] | None = None
    error: TemplateError | None = None
    for candidate in assistant_rewrites(assistant):
        try:
            text = codec.render([*history, candidate, *tool_messages], add_generation_prompt=True)
        except TemplateError as exc:
            error = exc
            continue
        fallback = fallback or (candidate, text)
        if text.startswith(target):
            chosen = (candidate, text)
            break
    if fallback is None:
        assert error is not None
        raise error
    message, text = chosen or fallback
    if chosen is not None and allow_fast:
        junction = _junction_tokens(codec, prev_text, seq[:prev_prompt_len], gen, sampled)
        if junction is not None:
            ids = codec.encode(text[len(target) :])
            return Growth(
                message, text, ids, True, True, None, True, junction + len(ids), len(seq) + len(ids)
            )
    full = codec.encode(text)
    mismatch = first_mismatch(full, seq)
    ids = full[len(seq) :] if mismatch is None else full
    return Growth(
        message, text, ids, chosen is not None, mismatch is None, mismatch, False, len(full), len(full)
    )
