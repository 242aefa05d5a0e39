"""Chat templates written out in plain Python, for the exact template texts they reproduce.

A Jinja chat template evaluated in transformers' sandbox costs 30–40 µs per message (every
attribute access goes through the sandbox's checks): three quarters of a rollout turn's CPU in
the pool, and as much as encoding the whole conversation on a 20-turn one. The functions here
produce the same text with Python string operations, about a tenth of that.

They are used only under three guards:

1. *Exact template.* ``native_renderer`` looks a template up by the SHA-256 of its text; any
   other template, or an edited one, renders through Jinja.
2. *Plain conversations.* A renderer handles the inputs whose Jinja semantics it spells out
   (the four roles, string contents, reasoning as a string, tool calls as ``{"function":
   {"name": str, "arguments": dict | str}}``) and returns None for anything else — a missing
   content, list contents, another role, ``tools`` — which then renders through Jinja, errors
   included.
3. *Checked at load.* ``ChatCodec`` compares it with ``apply_chat_template`` on probe
   conversations when the tokenizer loads and drops it on any difference; the tests compare
   the two over random conversations for every family listed here.

Inputs are what ``apply_chat_template`` hands its template: messages with None values dropped
and reasoning aliased (``reasoning_content`` taken from the first of ``reasoning_content``,
``thinking``, ``reasoning`` that is not None).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["NativeRender", "native_renderer"]

Message = dict[str, Any]
NativeRender = Callable[[Sequence[Message], bool], "str | None"]

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class _Unsupported(Exception):
    """The conversation holds something this renderer does not spell out: use Jinja."""


def _text(message: Message, key: str) -> str:
    value = message.get(key)
    if type(value) is not str:
        raise _Unsupported
    return value


def _role(message: Any) -> str:
    if type(message) is not dict:
        raise _Unsupported
    role = message.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise _Unsupported
    return role  # type: ignore[no-any-return]


def _reasoning(message: Message) -> str | None:
    for key in _REASONING_FIELDS:
        value = message.get(key)
        if value is not None:
            if type(value) is not str:
                raise _Unsupported
            return value
    return None


def _tool_calls(message: Message) -> list[Any]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if type(calls) is not list:
        raise _Unsupported
    return calls


def _function(call: Any) -> tuple[str, Any]:
    """Name and arguments of a call given as ``{"function": {"name": ..., "arguments": ...}}``."""
    function = call.get("function") if type(call) is dict else None
    if type(function) is not dict:
        raise _Unsupported
    name, arguments = function.get("name"), function.get("arguments")
    if type(name) is not str or not isinstance(arguments, (dict, str)):
        raise _Unsupported
    return name, arguments


def _tojson(value: Any) -> str:
    """transformers' ``tojson`` filter."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        raise _Unsupported from None


def _tool_response(out: list[str], messages: Sequence[Message], i: int) -> None:
    """Qwen's tool message: consecutive tool results share one user turn."""
    if i == 0 or messages[i - 1].get("role") != "tool":
        out.append("<|im_start|>user")
    out.append("\n<tool_response>\n")
    out.append(_text(messages[i], "content"))
    out.append("\n</tool_response>")
    if i == len(messages) - 1 or messages[i + 1].get("role") != "tool":
        out.append("<|im_end|>\n")


def _qwen3_last_query(messages: Sequence[Message]) -> int:
    """The template's ``ns.last_query_index``: the last user message that is not a wrapped tool response."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message["role"] == "user":
            content = _text(message, "content")
            if not (content.startswith("<tool_response>") and content.endswith("</tool_response>")):
                return index
    return len(messages) - 1


def _split_reasoning(message: Message, content: str) -> tuple[str, str]:
    """Qwen's reasoning and visible content of an assistant turn: the reasoning given, else an
    inline ``<think>…</think>`` cut out of ``content``, else none."""
    reasoning = _reasoning(message)
    if reasoning is not None:
        return reasoning, content
    if "</think>" not in content:
        return "", content
    thought = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return thought, content.split("</think>")[-1].lstrip("\n")


def _qwen3_assistant(out: list[str], message: Message, index: int, last: bool, last_query: int) -> None:
    reasoning, content = _split_reasoning(message, _text(message, "content"))
    if index > last_query and (last or reasoning):
        out.append("<|im_start|>assistant\n<think>\n" + reasoning.strip("\n") + "\n</think>\n\n")
        out.append(content.lstrip("\n"))
    else:
        out.append("<|im_start|>assistant\n" + content)
    for j, call in enumerate(_tool_calls(message)):
        name, arguments = _function(call)
        if j or content:
            out.append("\n")
        text = arguments if type(arguments) is str else _tojson(arguments)
        out.append('<tool_call>\n{"name": "' + name + '", "arguments": ' + text + "}\n</tool_call>")
    out.append("<|im_end|>\n")


def _opening(messages: Sequence[Message], default_system: str | None = None) -> list[str]:
    """Checks every message's role; the start of the text: a leading system message (or the
    template's default one) in Qwen's framing."""
    for message in messages:
        _role(message)
    if messages[0]["role"] == "system":
        return ["<|im_start|>system\n" + _text(messages[0], "content") + "<|im_end|>\n"]
    return [] if default_system is None else ["<|im_start|>system\n" + default_system + "<|im_end|>\n"]


def _qwen3(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """Qwen3 (hybrid thinking: Qwen3-0.6B … Qwen3-235B-A22B), without ``tools``."""
    out = _opening(messages)
    last_query = _qwen3_last_query(messages)
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "user" or (role == "system" and i):
            out.append("<|im_start|>" + role + "\n" + _text(message, "content") + "<|im_end|>\n")
        elif role == "assistant":
            _qwen3_assistant(out, message, i, i == last, last_query)
        elif role == "tool":
            _tool_response(out, messages, i)
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _qwen25(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """Qwen2.5 Instruct, without ``tools``."""
    out = _opening(messages, default_system=_QWEN25_DEFAULT_SYSTEM)
    for i, message in enumerate(messages):
        role = message["role"]
        calls = _tool_calls(message) if role == "assistant" else []
        if role == "user" or (role == "system" and i) or (role == "assistant" and not calls):
            out.append("<|im_start|>" + role + "\n" + _text(message, "content") + "<|im_end|>\n")
        elif role == "assistant":
            content = message.get("content")
            if content is not None and type(content) is not str:
                raise _Unsupported
            out.append("<|im_start|>assistant" + ("\n" + content if content else ""))
            for call in calls:
                name, arguments = _function(call)
                out.append('\n<tool_call>\n{"name": "' + name + '", "arguments": ' + _tojson(arguments))
                out.append("}\n</tool_call>")
            out.append("<|im_end|>\n")
        elif role == "tool":
            _tool_response(out, messages, i)
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _qwen35_content(message: Message) -> str:
    """``render_content(message.content)|trim`` for a string or missing content."""
    content = message.get("content")
    if content is None:
        return ""
    if type(content) is not str:
        raise _Unsupported  # lists of parts (images, video) render through Jinja
    return content.strip()


def _qwen35_value(value: Any) -> str:
    """A tool-call argument's value: JSON for objects and arrays, ``str()`` for the rest."""
    if isinstance(value, (dict, list, tuple)):
        return _tojson(value)
    return str(value)


def _qwen35_calls(out: list[str], message: Message, content: str) -> None:
    for j, call in enumerate(_tool_calls(message)):
        function = call.get("function") if type(call) is dict else None
        if type(function) is not dict or type(function.get("name")) is not str:
            raise _Unsupported
        name = function["name"]
        lead = "\n" if j else ("\n\n" if content else "")
        out.append(lead + "<tool_call>\n<function=" + name + ">\n")
        if "arguments" in function:
            arguments = function["arguments"]
            if type(arguments) is not dict:
                raise _Unsupported  # the template's |items fails on anything but a mapping
            for key, value in arguments.items():
                if type(key) is not str:
                    raise _Unsupported
                out.append("<parameter=" + key + ">\n" + _qwen35_value(value) + "\n</parameter>\n")
        out.append("</function>\n</tool_call>")


def _qwen35(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """Qwen3.5, without ``tools``: every content trimmed, XML tool calls, an always-open think
    block after the last query. Conversations the template rejects (no user query, a system
    message not first) are declined, so that Jinja raises its own error."""
    roles = [_role(message) for message in messages]
    contents = [_qwen35_content(message) for message in messages]
    out: list[str] = []
    if roles[0] == "system":
        out.append("<|im_start|>system\n" + contents[0] + "<|im_end|>\n")
    last_query = next(
        (
            i
            for i in range(len(messages) - 1, -1, -1)
            if roles[i] == "user"
            and not (contents[i].startswith("<tool_response>") and contents[i].endswith("</tool_response>"))
        ),
        None,
    )
    if last_query is None:
        raise _Unsupported
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role, content = roles[i], contents[i]
        if role == "system":
            if i:
                raise _Unsupported
        elif role == "user":
            out.append("<|im_start|>user\n" + content + "<|im_end|>\n")
        elif role == "assistant":
            reasoning, content = _split_reasoning(message, content)
            if i > last_query:
                out.append(
                    "<|im_start|>assistant\n<think>\n" + reasoning.strip() + "\n</think>\n\n" + content
                )
            else:
                out.append("<|im_start|>assistant\n" + content)
            _qwen35_calls(out, message, content.strip())
            out.append("<|im_end|>\n")
        else:
            if i and roles[i - 1] != "tool":
                out.append("<|im_start|>user")
            out.append("\n<tool_response>\n" + content + "\n</tool_response>")
            if i == last or roles[i + 1] != "tool":
                out.append("<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n<think>\n")
    return "".join(out)


_RENDERERS: dict[str, Callable[[Sequence[Message], bool], str]] = {
    # Qwen/Qwen3-8B (and the other hybrid-thinking Qwen3 releases, which ship the same text).
    "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5": _qwen3,
    # Qwen/Qwen2.5-7B-Instruct (and the other Qwen2.5 Instruct sizes).
    "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f": _qwen25,
    # Qwen/Qwen3.5-9B.
    "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715": _qwen35,
}


def native_renderer(template: str) -> NativeRender | None:
    """The Python rendering of ``template`` when this module spells it out, else None.

    The result returns None for a conversation it does not handle (see the module docstring);
    an empty conversation is never handled."""
    function = _RENDERERS.get(hashlib.sha256(template.encode()).hexdigest())
    if function is None:
        return None

    def render(messages: Sequence[Message], add_generation_prompt: bool) -> str | None:
        if not messages:
            return None
        try:
            return function(messages, add_generation_prompt)
        except _Unsupported:
            return None

    render.__name__ = function.__name__
    return render
