"""What a faster rendering of a chat template must reproduce, and the checks that admit it.

``apply_chat_template`` is the reference: it is what the trainer calls. ``ChatCodec`` may render
with the template written out in Python (``templates.py``) or with the compiled Jinja template
instead, only after each gave the reference's text on every conversation below (errors
included). Built here, checked by ``ChatCodec`` when it loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenize_pool.templates import NativeRender, native_renderer

__all__ = ["PROBE", "RENDER_CHECKS", "Reference", "agrees", "compiled_template", "native_template"]


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
RENDER_CHECKS: list[list[dict[str, Any]]] = [
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


@dataclass(frozen=True, slots=True)
class Reference:
    """``apply_chat_template``'s text for one conversation (None where it fails)."""

    messages: list[dict[str, Any]]
    add_generation_prompt: bool
    text: str | None


def agrees(
    render: Callable[[list[dict[str, Any]], bool], str | None],
    references: list[Reference],
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


def compiled_template(hf_tokenizer: Any) -> Callable[[list[dict[str, Any]], bool], str] | None:
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


def native_template(hf_tokenizer: Any) -> NativeRender | None:
    """The tokenizer's default chat template written out in Python, if ``tokenize_pool.templates`` has it."""
    try:
        template = hf_tokenizer.get_chat_template(None, None)
    except Exception:
        return None
    return native_renderer(template) if isinstance(template, str) else None
