"""Token mode's pool work on real tokenizers, as data: every rule on Qwen3, Qwen2.5 and Qwen3.5.

The reference is a full render of the conversation by ``apply_chat_template`` (with the tools'
schemas), tokenized in one go: where that render is canonical (the model's turn written as the
template writes it), token mode's ``prompt + sampled + growth`` must be exactly its ids.
"""

from __future__ import annotations

import asyncio
import copy
import json
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_server.tools import calculator_registry
from tests.conftest import examples
from tokenize_pool.codec import ChatCodec
from tokenize_pool.errors import TemplateError
from tokenize_pool.tokens import FirstPrompt, GrowTurn, ParseTurn, parse_assistant, turn_format

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"
FAMILIES = [QWEN3, QWEN25, QWEN35]
TOOLS = calculator_registry().schemas()
START = [
    {"role": "system", "content": "You are a calculator agent."},
    {"role": "user", "content": "What is 2+3?"},
]


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def tool(content: str, i: int = 0) -> dict[str, Any]:
    return {"role": "tool", "content": content, "tool_call_id": f"call_{i}"}


def assistant(
    content: str, *calls: dict[str, Any], reasoning: str | None = "Let me compute."
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": list(calls)}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def render(codec: ChatCodec, messages: list[dict[str, Any]]) -> str:
    return codec.render_reference(messages, add_generation_prompt=True, tools=TOOLS)


def sampled_turn(codec: ChatCodec, before: list[dict[str, Any]], message: dict[str, Any]) -> tuple[str, str]:
    """The text the model samples for ``message`` (as the template writes it, up to its
    end-of-turn), and the full render's text after that end-of-turn (the growth's reference)."""
    base = render(codec, before)
    full = render(codec, [*before, message, tool("x")])
    assert full.startswith(base)
    end = full.index("<|im_end|>", len(base))
    return full[len(base) : end], full[end + len("<|im_end|>") :]


class TokenConversation:
    """Drives token mode's pool steps like the server and checks them against full renders."""

    def __init__(self, codec: ChatCodec) -> None:
        self.codec = codec
        self.fmt = turn_format(codec)
        self.messages = list(START)
        first = FirstPrompt(key=codec.key, messages=self.messages, tools=TOOLS).run(codec)
        assert first.stop_ids == (self.fmt.end_of_turn,)
        self.seq = list(first.ids)
        assert self.seq == codec.encode(render(codec, self.messages))

    def turn(self, message: dict[str, Any], results: list[str]) -> dict[str, Any]:
        text = render(self.codec, self.messages)
        full_before_tools = render(self.codec, [*self.messages, message])
        end = full_before_tools.index("<|im_end|>", len(text))
        sampled = self.codec.encode(full_before_tools[len(text) : end]) + [self.fmt.end_of_turn]
        parsed = ParseTurn(key=self.codec.key, ids=array("i", sampled), finish_reason="stop", turn=1).run(
            self.codec
        )
        assert parsed.close_ids == []
        tool_messages = [tool(r, i) for i, r in enumerate(results)]
        growth = GrowTurn(key=self.codec.key, tool_messages=tool_messages).run(self.codec)
        self.seq += sampled + list(growth.ids)
        self.messages += [message, *tool_messages]
        assert self.seq == self.codec.encode(render(self.codec, self.messages))
        return parsed.message


def test_turn_formats_are_learnt_from_the_templates(codec_of: Any) -> None:
    formats = {name: turn_format(codec_of(name)) for name in FAMILIES}
    assert [(f.calls, f.think) for f in formats.values()] == [("json", True), ("json", False), ("xml", True)]
    for name, fmt in formats.items():
        assert codec_of(name).decode([fmt.end_of_turn]) == "<|im_end|>"


def test_a_template_without_a_turn_format_is_probed_once(codec_of: Any) -> None:
    """GLM-4 does not end an assistant turn with a special token: every first prompt asks (both
    modes), and the answer comes from the cache after the first probe."""
    codec = copy.copy(codec_of("zai-org/glm-4-9b-chat-hf"))  # a codec of its own: a cold cache
    renders: list[int] = []
    render = codec.render
    codec.render = lambda *args, **kwargs: renders.append(1) or render(*args, **kwargs)  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(TemplateError, match="does not end an assistant turn"):
            turn_format(codec)
    assert len(renders) == 1
    first = FirstPrompt(key=codec.key, messages=START).run(codec)
    assert first.stop_ids == () and len(renders) == 2  # the prompt's own render, no probe


@pytest.mark.parametrize("family", FAMILIES)
def test_first_prompt_renders_the_tool_schemas(codec_of: Any, family: str) -> None:
    codec = codec_of(family)
    first = FirstPrompt(key=codec.key, messages=START, tools=TOOLS).run(codec)
    text = codec.decode(list(first.ids))
    assert all(json.dumps(schema, ensure_ascii=False) in text for schema in TOOLS)
    assert list(first.ids) == codec.encode(
        codec.render_reference(START, add_generation_prompt=True, tools=TOOLS)
    )
    bare = FirstPrompt(key=codec.key, messages=START, tools=[]).run(codec)
    assert list(bare.ids) == codec.encode(codec.render_reference(START, add_generation_prompt=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_turns_grow_exactly_as_a_full_render(codec_of: Any, family: str) -> None:
    conversation = TokenConversation(codec_of(family))
    conversation.turn(assistant("", call("add", a=2, b=3)), ["5"])
    parsed = conversation.turn(
        assistant("Two at once.", call("multiply", a=3, b=4), call("divide", a=8, b=2)), ["12", "4"]
    )
    assert [c["function"]["name"] for c in parsed["tool_calls"]] == ["multiply", "divide"]
    conversation.turn(assistant("", call("subtract", a=5, b=1.5)), ["Error: division by zero"])


@pytest.mark.parametrize("family", FAMILIES)
def test_parsing_reads_back_what_the_template_wrote(codec_of: Any, family: str) -> None:
    codec = codec_of(family)
    fmt = turn_format(codec)
    message = assistant("Sure.", call("add", a=1, b=2.5), call("divide", a=7, b=[1, 2]))
    text, _ = sampled_turn(codec, START, message)
    parsed = parse_assistant(fmt, text, turn=3)
    assert parsed["content"] == "Sure."
    assert parsed.get("reasoning_content") == ("Let me compute." if fmt.think else None)
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed["tool_calls"]
    ] == [
        ("call_3_0", "add", {"a": 1, "b": 2.5}),
        ("call_3_1", "divide", {"a": 7, "b": [1, 2]}),
    ]


def test_a_turn_without_calls_is_its_content(codec_of: Any) -> None:
    codec = codec_of(QWEN3)
    text, _ = sampled_turn(codec, START, assistant("It is 5.", reasoning="Easy."))
    assert parse_assistant(turn_format(codec), text, 1) == {
        "role": "assistant",
        "reasoning_content": "Easy.",
        "content": "It is 5.",
    }


@pytest.mark.parametrize(
    ("family", "text", "name"),
    [
        (QWEN3, '<tool_call>\n{"name": "add", "arguments": {"a": 1,\n</tool_call>', "add"),
        (QWEN25, "<tool_call>\nnot json at all\n</tool_call>", ""),
        (QWEN35, "<tool_call>\n<function=add>\n<parameter=a>\n1\n</parameter>\n", "add"),
        (QWEN35, "<tool_call>\nadd(1, 2)\n</tool_call>", ""),
    ],
)
def test_a_malformed_call_is_answered_by_a_tool_error(
    codec_of: Any, family: str, text: str, name: str
) -> None:
    parsed = parse_assistant(turn_format(codec_of(family)), text, 1)
    [only] = parsed["tool_calls"]
    assert only["function"]["name"] == name
    [outcome] = asyncio.run(calculator_registry().run_calls(parsed["tool_calls"]))
    assert not outcome.ok
    assert outcome.message["content"].startswith("Error: ")
    assert outcome.message["tool_call_id"] == "call_1_0"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_turn_stopped_without_end_of_turn_is_closed_by_the_server(codec_of: Any, family: str) -> None:
    codec = codec_of(family)
    fmt = turn_format(codec)
    message = assistant("", call("add", a=2, b=3))
    text, after = sampled_turn(codec, START, message)
    ids = array("i", codec.encode(text))
    parsed = ParseTurn(key=codec.key, ids=ids, finish_reason="stop", turn=1).run(codec)
    assert parsed.close_ids == [fmt.end_of_turn]
    assert parsed.message["tool_calls"][0]["function"]["name"] == "add"
    growth = GrowTurn(key=codec.key, tool_messages=[tool("x")]).run(codec)
    prompt = codec.encode(render(codec, START))
    assert prompt + list(ids) + parsed.close_ids + list(growth.ids) == codec.encode(
        render(codec, [*START, message, tool("x")])
    )
    assert list(growth.ids) == codec.encode(after)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_turn_cut_by_length_is_not_closed(codec_of: Any, family: str) -> None:
    codec = codec_of(family)
    text, _ = sampled_turn(codec, START, assistant("", call("add", a=2, b=3)))
    ids = array("i", codec.encode(text)[:7])
    parsed = ParseTurn(key=codec.key, ids=ids, finish_reason="length", turn=1).run(codec)
    assert parsed.close_ids == []
    assert parsed.message["role"] == "assistant"


def test_sampled_ids_that_do_not_round_trip_are_read_all_the_same(codec_of: Any) -> None:
    codec = codec_of(QWEN35)
    # "\n" + "\n" where the tokenizer writes one "\n\n": the ids are kept, the text is the same.
    newline = codec.encode("\n")
    ids = codec.encode("Thinking.") + newline + newline + codec.encode("</think>\n\nIt is 5.")
    assert codec.encode(codec.decode(ids)) != ids
    parsed = ParseTurn(key=codec.key, ids=array("i", ids), finish_reason="stop", turn=1).run(codec)
    assert parsed.message == {"role": "assistant", "reasoning_content": "Thinking.", "content": "It is 5."}


tool_text = st.text(alphabet=st.sampled_from(list("ab 1.\n\t<>/{}\"'é🙂")), min_size=0, max_size=30)


@pytest.mark.parametrize("family", FAMILIES)
@settings(
    max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(results=st.lists(tool_text, min_size=1, max_size=3))
def test_growth_is_the_tail_of_a_full_render(codec_of: Any, family: str, results: list[str]) -> None:
    codec = codec_of(family)
    message = assistant("", *(call("add", a=i, b=1) for i in range(len(results))))
    before = [
        *START,
        assistant("", call("add", a=2, b=3)),
        tool("5"),
        {"role": "user", "content": "And 7*6?"},
    ]
    tool_messages = [tool(r, i) for i, r in enumerate(results)]
    base = render(codec, before)
    full = render(codec, [*before, message, *tool_messages])
    assert full.startswith(base)
    end = full.index("<|im_end|>", len(base)) + len("<|im_end|>")
    growth = GrowTurn(key=codec.key, tool_messages=tool_messages).run(codec)
    assert list(growth.ids) == codec.encode(full[end:])
    assert codec.encode(full[:end]) + list(growth.ids) == codec.encode(full)
