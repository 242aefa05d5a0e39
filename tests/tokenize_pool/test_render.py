"""ChatCodec.render (the compiled template) equals apply_chat_template, or is not used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenize_pool.codec import PROBE, ChatCodec, TokenizerKey, load_codec

FAMILIES = [
    "Qwen/Qwen3-8B",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen3.5-9B",
    "zai-org/glm-4-9b-chat-hf",
    "deepseek-ai/DeepSeek-V3",
]

_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "\n", "<think>\nx\n</think>\n\nok", "数学 🙂", '{"a": 1}', "</tool_call>"]),
)
_args = st.dictionaries(
    st.sampled_from(["a", "b", "expr"]), st.one_of(st.integers(), st.text(max_size=8)), max_size=2
)
_call = st.builds(
    lambda name, arguments, as_text: {
        "id": "c",
        "type": "function",
        "function": {"name": name, "arguments": str(arguments) if as_text else arguments},
    },
    st.sampled_from(["add", "divide"]),
    _args,
    st.booleans(),
)
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "tool"]), "content": _text}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
        optional={
            "reasoning_content": st.one_of(st.none(), _text),
            "tool_calls": st.lists(_call, min_size=1, max_size=2),
        },
    ),
)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@pytest.mark.parametrize("family", FAMILIES)
def test_the_compiled_template_is_in_use(codec_of: Callable[[str], ChatCodec], family: str) -> None:
    # Else the property above would only compare apply_chat_template with itself.
    assert codec_of(family).compiled_render_checked([PROBE[:2]])


def test_a_compiled_render_that_differs_is_dropped(hf_home: Any) -> None:
    codec = load_codec(TokenizerKey("Qwen/Qwen3-8B"), trust_remote_code=False)
    codec._compiled = lambda messages, add_generation_prompt: "something else"
    assert not codec.compiled_render_checked([PROBE[:2]])
    assert codec.render(PROBE[:2], add_generation_prompt=True) == codec.render_reference(
        PROBE[:2], add_generation_prompt=True
    )
