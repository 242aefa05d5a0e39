"""The simulated policy model: renders prompts and "samples" scripted turns with a real tokenizer.

The sampled text of a turn is what the model's own chat template renders for that assistant
message when it is the *last* message, cut just after the first end-of-turn token. That is
exactly what a model trained on the template emits, so a client that re-renders the
conversation faithfully gets the same tokens back, and one that does not shows up as a prefix
break in the trainer's bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .scenarios import REASONING_TEXT, ScriptedCall, Turn
from .splits import SplitKind, split_first

__all__ = [
    "Sampled",
    "SimTemplateError",
    "SimTokenizerError",
    "Tokenizers",
    "fake_logprobs",
    "render_prompt",
    "sample_turn",
    "sampled_ids",
    "sampled_text",
]


class SimTokenizerError(Exception):
    """The tokenizer could not be loaded."""


class SimTemplateError(Exception):
    """The chat template failed on the messages, or does not extend the prompt with the turn."""


class Tokenizers:
    """Tokenizers loaded once per repo id and kept for the life of the process."""

    def __init__(self) -> None:
        self._cache: dict[str, PreTrainedTokenizerBase] = {}

    def get(self, name: str) -> PreTrainedTokenizerBase:
        """The tokenizer of hub repo ``name``, loaded on first use."""
        tok = self._cache.get(name)
        if tok is None:
            try:
                tok = AutoTokenizer.from_pretrained(name)
            except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors
                raise SimTokenizerError(f"cannot load tokenizer {name!r}: {exc}") from exc
            self._cache[name] = tok
        return tok


@dataclass(frozen=True, kw_only=True)
class Sampled:
    """One generated turn: its token ids, their logprobs and the OpenAI message returned."""

    token_ids: list[int]
    logprobs: list[float]
    message: dict[str, Any]
    finish_reason: str


# OpenAI function schemas, as a request's ``tools`` carries them (transformers' own annotation).
Tools = list[dict[Any, Any] | Callable[..., Any]] | None


def _render(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]], *, generation_prompt: bool, tools: Tools
) -> str:
    try:
        text = tok.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as exc:  # jinja2 errors, TypeError on unexpected shapes, raise_exception()
        raise SimTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(text, str):
        raise SimTemplateError(f"chat template returned {type(text).__name__}, not text")
    return text


def render_prompt(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: Tools = None
) -> tuple[str, list[int]]:
    """The trainer's prompt: ``messages`` (and ``tools``) rendered with the generation prompt, and its ids."""
    text = _render(tok, messages, generation_prompt=True, tools=tools)
    return text, list(tok.encode(text, add_special_tokens=False))


def _template_message(turn: Turn, think: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": turn.content,
        "reasoning_content": REASONING_TEXT if think else "",
    }
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(turn.tool_calls)
        ]
    return message


def _arguments_text(call: ScriptedCall) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def sampled_text(
    tok: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    prompt: str,
    turn: Turn,
    *,
    think: bool,
    tools: Tools = None,
) -> str:
    """The text the model samples after ``prompt`` (the rendering of ``messages``): the
    template's rendering of ``turn`` as the last message, cut after the end-of-turn token."""
    full = _render(tok, [*messages, _template_message(turn, think)], generation_prompt=False, tools=tools)
    if not full.startswith(prompt):
        raise SimTemplateError("the template does not render the assistant turn behind the generation prompt")
    rest = full[len(prompt) :]
    eos = str(tok.eos_token or "")
    end = rest.find(eos) if eos else -1
    text = rest[: end + len(eos)] if end >= 0 else rest + eos
    if turn.compact_args:
        for call in turn.tool_calls:
            if isinstance(call.arguments, dict):
                compact = json.dumps(call.arguments, separators=(",", ":"))
                text = text.replace(json.dumps(call.arguments), compact, 1)
    return text


def sampled_ids(tok: PreTrainedTokenizerBase, text: str, split: SplitKind | None) -> list[int]:
    """The ids the model samples for ``text``: the tokenizer's own, or with one token split so
    that they no longer survive decode + re-encode (``split``)."""
    ids = list(tok.encode(text, add_special_tokens=False))
    if split is None:
        return ids
    tokens = [str(t) for t in tok.convert_ids_to_tokens(ids)]
    vocab_size = len(tok)

    def lookup(token: str) -> int | None:
        found = tok.convert_tokens_to_ids(token)
        # Slow tokenizers answer the unknown token's id for a string outside the vocabulary.
        if not isinstance(found, int) or found >= vocab_size or found == tok.unk_token_id:
            return None
        return found

    return split_first(ids, tokens, lookup, split)


def fake_logprobs(token_ids: list[int]) -> list[float]:
    """Deterministic stand-ins for the sampled tokens' logprobs: in [-2.01, -0.01], from id and place."""
    return [-round(0.01 + ((tid * 7919 + i * 104729) % 1000) / 500, 4) for i, tid in enumerate(token_ids)]


def _split_reasoning(text: str) -> tuple[str | None, str]:
    if "</think>" not in text:
        return None, text
    head, _, content = text.partition("</think>")
    return head.split("<think>")[-1].strip("\n"), content.lstrip("\n")


def _message(turn: Turn, t: int, *, reasoning: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    message["tool_calls"] = [
        {
            "id": f"call_{t}_{i}",
            "type": "function",
            "function": {"name": c.name, "arguments": _arguments_text(c)},
        }
        for i, c in enumerate(turn.tool_calls)
    ]
    return message


def _cut_message(tok: PreTrainedTokenizerBase, token_ids: list[int]) -> dict[str, Any]:
    text = tok.decode(token_ids)
    if not isinstance(text, str):
        raise SimTemplateError("the tokenizer decoded a flat id list into a batch")
    reasoning, content = _split_reasoning(text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    message["tool_calls"] = []
    return message


def sample_turn(
    tok: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    prompt: str,
    turn: Turn,
    *,
    t: int,
    think: bool,
    max_tokens: int,
    split: SplitKind | None = None,
    tools: Tools = None,
) -> Sampled:
    """Generate the scripted ``turn`` after ``prompt`` (the rendering of ``messages``)."""
    text = sampled_text(tok, messages, prompt, turn, think=think, tools=tools)
    token_ids = sampled_ids(tok, text, split)
    if len(token_ids) > max_tokens:
        cut = token_ids[:max_tokens]
        return Sampled(
            token_ids=cut, logprobs=fake_logprobs(cut), message=_cut_message(tok, cut), finish_reason="length"
        )
    # Only templates that render a think block get a reasoning field back (Qwen2.5 has none).
    reasoning, _ = _split_reasoning(text)
    message = _message(turn, t, reasoning=reasoning)
    finish = "tool_calls" if turn.tool_calls else "stop"
    return Sampled(
        token_ids=token_ids, logprobs=fake_logprobs(token_ids), message=message, finish_reason=finish
    )
