"""ChatCodec.render (the template written out in Python, or compiled Jinja) equals
apply_chat_template, or is not used."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import examples
from tokenize_pool.codec import PROBE, ChatCodec
from tokenize_pool.templates import native_renderer

FAMILIES = [
    "Qwen/Qwen3-8B",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen3.5-9B",
    "zai-org/glm-4-9b-chat-hf",
    "deepseek-ai/DeepSeek-V3",
]

NATIVE = ["Qwen/Qwen3-8B", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3.5-9B"]

_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "\n",
            "<think>\nx\n</think>\n\nok",
            "<think>a</think>b</think>c",
            "\n\nlead",
            "数学 🙂",
            '{"a": 1}',
            "</tool_call>",
            "<tool_response>\n3\n</tool_response>",
        ]
    ),
)
_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)
_args = st.dictionaries(st.sampled_from(["a", "b", "expr", "k y"]), _value, max_size=3)
_function = st.one_of(
    st.builds(
        lambda name, arguments, as_text: {
            "name": name,
            "arguments": str(arguments) if as_text else arguments,
        },
        st.sampled_from(["add", "divide"]),
        _args,
        st.booleans(),
    ),
    # What a renderer written out in Python must hand back to Jinja, to fail or render alike.
    st.sampled_from([{}, {"name": "add"}, {"name": 3, "arguments": {}}, {"name": "add", "arguments": [1]}]),
)
_call = st.builds(lambda function: {"id": "c", "type": "function", "function": function}, _function)
_odd = st.sampled_from([None, 7, ["a"], [{"type": "text", "text": "hi"}]])
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "tool"]), "content": _text}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
        optional={
            "reasoning_content": st.one_of(st.none(), _text),
            "reasoning": _text,
            "thinking": _text,
            "tool_calls": st.one_of(st.lists(_call, max_size=2), st.none()),
        },
    ),
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "tool", "developer"]),
            "content": st.one_of(_text, _odd),
        }
    ),
)


@pytest.mark.parametrize("family", FAMILIES)
@settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=st.lists(_message, min_size=1, max_size=6), add_generation_prompt=st.booleans())
def test_render_equals_apply_chat_template(
    codec_of: Callable[[str], ChatCodec],
    family: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> None:
    codec = codec_of(family)
    try:
        reference: str | None = codec.render_reference(messages, add_generation_prompt=add_generation_prompt)
    except Exception:
        reference = None
    try:
        rendered: str | None = codec.render(messages, add_generation_prompt=add_generation_prompt)
    except Exception:
        rendered = None
    assert rendered == reference


_opening = st.sampled_from(
    [
        [{"role": "user", "content": "Q?"}],
        [{"role": "system", "content": " Be brief. \n"}, {"role": "user", "content": "Q?"}],
    ]
)


@pytest.mark.parametrize("family", NATIVE)
@settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(opening=_opening, rest=st.lists(_message, max_size=7), add_generation_prompt=st.booleans())
def test_python_templates_on_conversations_that_open_with_a_query(
    codec_of: Callable[[str], ChatCodec],
    family: str,
    opening: list[dict[str, Any]],
    rest: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> None:
    # Conversations as rollouts have them, where the Python templates take most of the work.
    codec = codec_of(family)
    messages = opening + rest
    try:
        reference: str | None = codec.render_reference(messages, add_generation_prompt=add_generation_prompt)
    except Exception:
        reference = None
    assert codec._native is not None
    native = codec._native(messages, add_generation_prompt)
    assert native is None or native == reference
    if reference is not None:
        assert codec.render(messages, add_generation_prompt=add_generation_prompt) == reference


@pytest.mark.parametrize("family", FAMILIES)
def test_the_compiled_template_is_in_use(codec_of: Callable[[str], ChatCodec], family: str) -> None:
    # Else the property above would only compare apply_chat_template with itself.
    assert codec_of(family).compiled_render_checked([PROBE[:2]])


@pytest.mark.parametrize("family", NATIVE)
def test_the_python_template_is_in_use(codec_of: Callable[[str], ChatCodec], family: str) -> None:
    codec = codec_of(family)
    assert codec.native_render_checked([PROBE])
    assert codec._native is not None and codec._native(PROBE, True) == codec.render_reference(
        PROBE, add_generation_prompt=True
    )


def test_the_python_template_is_only_used_for_its_exact_text(codec_of: Callable[[str], ChatCodec]) -> None:
    template = codec_of("Qwen/Qwen3-8B")._hf.get_chat_template(None, None)
    assert native_renderer(template) is not None
    assert native_renderer(template + " ") is None
    assert native_renderer(template.replace("<think>", "<thinking>")) is None


@pytest.mark.parametrize(
    ("render", "checked"),
    [("_native", "native_render_checked"), ("_compiled", "compiled_render_checked")],
    ids=["python-template", "compiled-jinja"],
)
def test_a_fast_render_that_differs_is_dropped(
    codec_of: Callable[[str], ChatCodec], render: str, checked: str
) -> None:
    codec = copy.copy(codec_of("Qwen/Qwen3-8B"))  # the session's codec keeps its renders
    setattr(codec, render, lambda messages, add_generation_prompt: "something else")
    assert not getattr(codec, checked)([PROBE[:2]])
    assert codec.render(PROBE[:2], add_generation_prompt=True) == codec.render_reference(
        PROBE[:2], add_generation_prompt=True
    )


def test_a_python_template_may_decline_a_conversation(codec_of: Callable[[str], ChatCodec]) -> None:
    codec = codec_of("Qwen/Qwen3-8B")
    listed = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert codec._native is not None and codec._native(listed, True) is None
    assert codec.native_render_checked([listed])
