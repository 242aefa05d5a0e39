"""The simulated policy model: renders prompts and "samples" scripted turns with a real tokenizer.

The sampled text of a turn is what the model's own chat template renders for that assistant
message when it is the *last* message, cut just after the first end-of-turn token. That is
exactly what a model trained on the template emits, so a client that re-renders the
conversation faithfully gets the same tokens back, and one that does not shows up as a prefix
break in the trainer's bookkeeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .scenarios import REASONING_TEXT, ScriptedCall, Turn

__all__ = ["Sampled", "SimTemplateError", "SimTokenizerError", "Tokenizers", "render_prompt", "sample_turn"]


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


def _render(tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
    try:
        text = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    except Exception as exc:  # jinja2 errors, TypeError on unexpected shapes, raise_exception()
        raise SimTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(text, str):
        raise SimTemplateError(f"chat template returned {type(text).__name__}, not text")
    return text


def render_prompt(tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """The trainer's prompt: ``messages`` rendered with the generation prompt, and its ids."""
    text = _render(tok, messages, generation_prompt=True)
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


def _sampled_text(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]], prompt: str, turn: Turn, think: bool
) -> str:
    full = _render(tok, [*messages, _template_message(turn, think)], generation_prompt=False)
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


def _logprobs(token_ids: list[int]) -> list[float]:
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
) -> Sampled:
    """Generate the scripted ``turn`` after ``prompt`` (the rendering of ``messages``)."""
    text = _sampled_text(tok, messages, prompt, turn, think)
    token_ids = list(tok.encode(text, add_special_tokens=False))
    if len(token_ids) > max_tokens:
        cut = token_ids[:max_tokens]
        return Sampled(
            token_ids=cut, logprobs=_logprobs(cut), message=_cut_message(tok, cut), finish_reason="length"
        )
    # Only templates that render a think block get a reasoning field back (Qwen2.5 has none).
    reasoning, _ = _split_reasoning(text)
    message = _message(turn, t, reasoning=reasoning)
    finish = "tool_calls" if turn.tool_calls else "stop"
    return Sampled(token_ids=token_ids, logprobs=_logprobs(token_ids), message=message, finish_reason=finish)
