"""Token mode's CPU work: the first prompt (both modes' request), reading a sampled turn, the growth after it.

In token mode the engine's sampled ids are kept as they are; nothing here re-tokenizes them. A
turn's ids are decoded only to read what the model said (its reasoning, content and tool calls),
and the next prompt is

    previous prompt ids + sampled ids [+ end-of-turn, when the engine left it out] + growth

where the growth (the separator after the end-of-turn token, the tool results, the next
generation prompt) is rendered behind a fixed window and tokenized alone. That is exact because
the growth starts right after the assistant turn's end-of-turn token, a special token at which
the tokenizer splits the text before anything else: no token of the growth can merge with one
before it. ``turn_format`` checks that property per tokenizer; tests prove the growth equal to
the tail of a full render on each template family.

What a template family writes inside a turn is learnt from the template itself, by rendering
probes: the end-of-turn token after an assistant message, the tool-call syntax (Qwen2.5/Qwen3's
``<tool_call>\\n{json}\\n</tool_call>`` or Qwen3.5's ``<function=…><parameter=…>`` XML), and
whether reasoning renders as ``<think>…</think>``.
"""

from __future__ import annotations

import json
import re
import weakref
from array import array
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from tokenize_pool.codec import ChatCodec, TokenizerKey
from tokenize_pool.errors import TemplateError
from tokenize_pool.masks import first_prompt
from tokenize_pool.ops import PoolOp

__all__ = [
    "FirstPrompt",
    "GrowTurn",
    "ParseTurn",
    "ParsedTurn",
    "TokenGrowth",
    "TokenPrompt",
    "TurnFormat",
    "parse_assistant",
    "tool_growth",
    "turn_format",
]

Message = dict[str, Any]
CallSyntax = Literal["json", "xml", "none"]

_MARK = "\u2063turn\u2063"  # assistant content no template writes by itself
_USER: Message = {"role": "user", "content": "?"}


@dataclass(frozen=True, slots=True)
class TurnFormat:
    """How a template family writes an assistant turn (learnt by ``turn_format``)."""

    end_of_turn: int  # the special token closing an assistant turn (Qwen: <|im_end|>)
    calls: CallSyntax
    think: bool  # reasoning renders as <think>…</think>


# Per codec: its format, or why it has none (both found once).
_formats: weakref.WeakKeyDictionary[ChatCodec, TurnFormat | str] = weakref.WeakKeyDictionary()


def _probe_call() -> Message:
    return {"id": "probe", "type": "function", "function": {"name": "probe_fn", "arguments": {"p": 1}}}


def turn_format(codec: ChatCodec) -> TurnFormat:
    """The template's ``TurnFormat``, found once per codec; a ``TemplateError`` when the template
    does not close an assistant turn with a special token the tokenizer splits at (token mode
    could not then tokenize the growth apart from the sampled ids). Every first prompt asks, in
    both modes: a template without a format (GLM-4) answers from the cache too."""
    known = _formats.get(codec)
    if known is None:
        try:
            known = _learn_format(codec)
        except TemplateError as exc:
            known = str(exc)
        _formats[codec] = known
    if isinstance(known, str):
        raise TemplateError(known)
    return known


def _learn_format(codec: ChatCodec) -> TurnFormat:
    text = codec.render([_USER, {"role": "assistant", "content": _MARK}], add_generation_prompt=False)
    after = text.find(_MARK)
    closing = codec.encode(text[after + len(_MARK) :])[:1] if after >= 0 else []
    if not closing or closing[0] not in codec.boundary_ids:
        raise TemplateError(
            f"chat template of {codec.key} does not end an assistant turn with a special token"
        )
    with_call = codec.render(
        [
            _USER,
            {"role": "assistant", "content": "", "reasoning_content": _MARK, "tool_calls": [_probe_call()]},
        ],
        add_generation_prompt=False,
    )
    calls: CallSyntax = "none"
    if "<function=probe_fn>" in with_call:
        calls = "xml"
    elif '"name": "probe_fn"' in with_call:
        calls = "json"
    return TurnFormat(closing[0], calls, f"<think>\n{_MARK}" in with_call)


_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')


def _json_call(body: str) -> tuple[str, str]:
    """Name and JSON-string arguments of ``{"name": …, "arguments": {…}}``; a call that does not
    parse keeps its text as arguments, so the tool answers with an error message."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        found = _NAME.search(body)
        return (found.group(1) if found else ""), body
    arguments = parsed.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return parsed["name"], text


def _xml_value(raw: str) -> Any:
    """A parameter's value as the template wrote it: JSON for numbers, objects, arrays, else text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _xml_call(body: str) -> tuple[str, str]:
    function = _FUNCTION.search(body)
    if function is None:
        return "", body
    arguments = {name.strip(): _xml_value(value) for name, value in _PARAMETER.findall(function.group(2))}
    return function.group(1).strip(), json.dumps(arguments, ensure_ascii=False)


def parse_assistant(fmt: TurnFormat, text: str, turn: int) -> Message:
    """The assistant message in ``text`` (a sampled turn without its end-of-turn token):
    reasoning, visible content, and tool calls in the family's syntax with JSON-string
    arguments, ids ``call_{turn}_{i}`` as message mode names them."""
    message: Message = {"role": "assistant"}
    if fmt.think and "</think>" in text:
        head, _, text = text.partition("</think>")
        message["reasoning_content"] = head.split("<think>")[-1].strip("\n")
        text = text.lstrip("\n")
    bodies = _CALL.findall(text) if fmt.calls != "none" else []
    if not bodies:
        message["content"] = text
        return message
    message["content"] = text[: text.find("<tool_call>")].strip()
    read = _xml_call if fmt.calls == "xml" else _json_call
    message["tool_calls"] = []
    for i, body in enumerate(bodies):
        name, arguments = read(body.strip())
        message["tool_calls"].append(
            {"id": f"call_{turn}_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return message


def tool_growth(codec: ChatCodec, tool_messages: list[Message]) -> list[int]:
    """The ids the conversation grows by after an assistant turn's end-of-turn token: the
    separator, ``tool_messages`` and the next generation prompt.

    Rendered behind a fixed window (a user query, then an assistant turn), since these Qwen
    families render a tool message from its neighbours only; the text after the window's
    assistant turn is tokenized alone, which its leading split point makes exact."""
    fmt = turn_format(codec)
    window = [_USER, {"role": "assistant", "content": _MARK}, *tool_messages]
    text = codec.render(window, add_generation_prompt=True)
    close = codec.decode([fmt.end_of_turn])
    mark = text.find(_MARK)
    at = text.find(close, mark) if mark >= 0 else -1
    if at < 0:
        raise TemplateError(f"chat template of {codec.key} lost the assistant turn of the growth window")
    return codec.encode(text[at + len(close) :])


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    """A first prompt's ids (with their ``ids_text``) and the ids that end an assistant turn."""

    ids: array[int]
    text: bytes
    stop_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FirstPrompt(PoolOp[TokenPrompt]):
    """The first prompt of a rollout, in either mode: ``masks.first_prompt`` (with the tools'
    OpenAI schemas when given), and the ids that end an assistant turn (token mode stops the
    engine there; message mode does without them)."""

    key: TokenizerKey
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None

    def run(self, codec: ChatCodec) -> TokenPrompt:
        prompt = first_prompt(codec, self.messages, self.tools)
        try:
            stops: tuple[int, ...] = (turn_format(codec).end_of_turn,)
        except TemplateError:
            stops = ()  # message mode can do without; token mode fails at its first parse
        return TokenPrompt(array("i", prompt.ids), prompt.text, stops)


@dataclass(frozen=True, slots=True)
class ParsedTurn:
    """A sampled turn read: the assistant message, and the ids that close the turn when the
    engine stopped without the end-of-turn token (mask 0; empty otherwise)."""

    message: Message
    close_ids: list[int]


@dataclass(frozen=True, slots=True)
class ParseTurn(PoolOp[ParsedTurn]):
    """Decode a turn's sampled ``ids`` (only to read them) and parse the assistant message."""

    urgent: ClassVar[bool] = True
    key: TokenizerKey
    ids: array[int]
    finish_reason: str
    turn: int

    def run(self, codec: ChatCodec) -> ParsedTurn:
        fmt = turn_format(codec)
        body = list(self.ids)
        closed = bool(body) and body[-1] == fmt.end_of_turn
        while body and body[-1] in codec.boundary_ids:  # the end-of-turn, or another stop token
            body.pop()
        close = [fmt.end_of_turn] if self.finish_reason != "length" and not closed else []
        return ParsedTurn(parse_assistant(fmt, codec.decode(body), self.turn), close)


@dataclass(frozen=True, slots=True)
class TokenGrowth:
    ids: array[int]


@dataclass(frozen=True, slots=True)
class GrowTurn(PoolOp[TokenGrowth]):
    """The growth after a closed assistant turn and its ``tool_messages`` (see ``tool_growth``)."""

    urgent: ClassVar[bool] = True
    key: TokenizerKey
    tool_messages: list[Message]

    def run(self, codec: ChatCodec) -> TokenGrowth:
        return TokenGrowth(array("i", tool_growth(codec, self.tool_messages)))
