"""Mask bookkeeping on real tokenizers, with no server: every rule on more than one family.

The "model" is the simulator's: it samples a turn as the model's own template renders it as
the last message. The "trainer" is a full render + tokenization of the conversation as sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_server.sim.model import sample_turn
from rollout_server.sim.scenarios import ScriptedCall, Turn
from tests.conftest import examples
from tokenize_pool.codec import ChatCodec, TokenizerKey, load_codec
from tokenize_pool.errors import TemplateError
from tokenize_pool.masks import (
    Growth,
    _hint_first,
    assistant_rewrites,
    extend,
    first_prompt,
    template_is_local,
)

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"
FAMILIES = [QWEN3, QWEN25, QWEN35]


def trainer_prompt(codec: ChatCodec, messages: list[dict[str, Any]]) -> list[int]:
    return codec.encode(codec.render_reference(messages, add_generation_prompt=True))


class Conversation:
    """Drives turns the way the server does and checks each growth against the trainer."""

    def __init__(
        self, codec: ChatCodec, system: str = "You are a calculator agent.", user: str = "What is 2+3?"
    ) -> None:
        self.codec = codec
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        prompt = first_prompt(codec, self.messages)
        self.text = codec.render_reference(self.messages, add_generation_prompt=True)
        self.seq, self.prompt_len = list(prompt.ids), len(prompt.ids)
        assert self.seq == trainer_prompt(codec, self.messages)
        self.mask: list[int] = []

    def step(self, turn: Turn, results: list[str], *, think: bool = False, allow_fast: bool = True) -> Growth:
        tok = self.codec._hf
        sampled = sample_turn(tok, self.messages, self.text, turn, t=0, think=think, max_tokens=10_000)
        self.seq += sampled.token_ids
        self.mask += [1] * len(sampled.token_ids)
        calls = sampled.message["tool_calls"]
        tools = [
            {"role": "tool", "content": r, "tool_call_id": c["id"]}
            for r, c in zip(results, calls, strict=True)
        ]
        growth = extend(
            self.codec,
            history=self.messages,
            seq=self.seq,
            prev_prompt_len=self.prompt_len,
            assistant=sampled.message,
            tool_messages=tools,
            allow_fast=allow_fast,
        )
        self.messages = [*self.messages, growth.assistant, *tools]
        return growth

    def accept(self, growth: Growth) -> None:
        """Check the growth against the trainer's own render, then move on."""
        trainer = trainer_prompt(self.codec, self.messages)
        assert trainer[: len(self.seq)] == self.seq, "trainer prompt does not extend prompt + generated turn"
        assert len(trainer) - len(self.seq) == len(growth.ids), (
            "mask length differs from the trainer's growth"
        )
        assert trainer[len(self.seq) :] == list(growth.ids)
        self.mask += [0] * len(growth.ids)
        self.seq = trainer
        self.text = self.codec.render_reference(self.messages, add_generation_prompt=True)
        self.prompt_len = len(self.seq)


def call(op: str, a: Any, b: Any) -> ScriptedCall:
    return ScriptedCall(name=op, arguments={"a": a, "b": b})


@pytest.mark.parametrize("family", FAMILIES)
def test_qwen_templates_render_new_turns_locally(codec_of: Any, family: str) -> None:
    assert template_is_local(codec_of(family))


def test_a_template_that_looks_at_the_whole_history_is_not_local(codec_of: Any) -> None:
    tokenizer = load_codec(TokenizerKey(QWEN3), trust_remote_code=False)._hf
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }} (of {{ messages|length }})<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert not template_is_local(ChatCodec(TokenizerKey(QWEN3), tokenizer))


@pytest.mark.parametrize("family", FAMILIES)
def test_ten_tool_turns_are_exact_and_tokenized_once(codec_of: Any, family: str) -> None:
    # Qwen3.5 renders the think block of every turn; with an empty one see the drift test below.
    think = family == QWEN35
    convo = Conversation(codec_of(family))
    encoded = len(convo.seq)
    for t in range(10):
        growth = convo.step(
            Turn(content="", tool_calls=(call("add", t, t + 1),)), [str(2 * t + 1)], think=think
        )
        assert (growth.faithful, growth.prefix_ok, growth.fast) == (True, True, True)
        encoded += growth.tokens_encoded
        convo.accept(growth)
    assert len(convo.mask) == len(convo.seq) - len(first_prompt(convo.codec, convo.messages[:2]).ids)
    # Each token of the final sequence is tokenized once, plus a few generation-prompt tokens a turn.
    assert encoded <= 1.1 * len(convo.seq)


@pytest.mark.parametrize("family", FAMILIES)
def test_parallel_calls_render_grouped_and_exact(codec_of: Any, family: str) -> None:
    convo = Conversation(codec_of(family))
    turn = Turn(content="", tool_calls=(call("add", 1, 2), call("multiply", 3, 4), call("divide", 8, 2)))
    growth = convo.step(turn, ["3", "12", "4"], think=True)
    assert growth.prefix_ok and growth.faithful
    convo.accept(growth)
    growth_text = convo.codec.decode(list(growth.ids))
    # The template groups consecutive tool results into one user turn.
    assert growth_text.count("<tool_response>") == 3
    assert growth_text.count("<|im_start|>user") == 1


@pytest.mark.parametrize("family", [QWEN3, QWEN25])
def test_separator_after_end_of_turn_belongs_to_the_growth(codec_of: Any, family: str) -> None:
    convo = Conversation(codec_of(family))
    growth = convo.step(Turn(content="", tool_calls=(call("add", 2, 3),)), ["5"])
    convo.accept(growth)
    assert convo.codec.decode(list(growth.ids[:1])) == "\n"
    assert convo.codec.decode(list(growth.ids[-3:])).endswith("<|im_start|>assistant\n")


def test_qwen3_empty_think_block_is_kept_by_the_rewrite(codec_of: Any) -> None:
    codec = codec_of(QWEN3)
    convo = Conversation(codec)
    turn = Turn(content="", tool_calls=(call("add", 2, 3),))
    sampled = sample_turn(codec._hf, convo.messages, convo.text, turn, t=0, think=False, max_tokens=1000)
    assert codec.decode(sampled.token_ids).startswith("<think>\n\n</think>\n\n")
    assert sampled.message["reasoning_content"] == ""
    naive = [*convo.messages, sampled.message, {"role": "tool", "content": "5", "tool_call_id": "call_0_0"}]
    # The template drops a falsy reasoning from turns that are no longer last: the naive prompt drifts.
    assert not codec.render_reference(naive, add_generation_prompt=True).startswith(
        convo.text + codec.decode(sampled.token_ids)
    )
    growth = convo.step(turn, ["5"])
    assert growth.faithful and growth.prefix_ok
    assert growth.assistant["reasoning_content"] == "\n"
    convo.accept(growth)


def test_qwen25_string_arguments_are_sent_as_objects(codec_of: Any) -> None:
    codec = codec_of(QWEN25)
    convo = Conversation(codec)
    growth = convo.step(Turn(content="", tool_calls=(call("add", 2, 3),)), ["5"])
    assert growth.prefix_ok
    assert growth.assistant["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 3}
    stringy = assistant_rewrites(growth.assistant)[1]
    quoted = codec.render_reference([*convo.messages[:2], stringy], add_generation_prompt=False)
    assert '"arguments": "{\\"a\\": 2, \\"b\\": 3}"' in quoted  # tojson of a string: the known trap
    convo.accept(growth)


def test_qwen35_fails_on_string_arguments_and_gets_an_object(codec_of: Any) -> None:
    codec = codec_of(QWEN35)
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
        ],
    }
    with pytest.raises(TemplateError):
        codec.render_reference([{"role": "user", "content": "hi"}, message], add_generation_prompt=False)
    convo = Conversation(codec)
    growth = convo.step(Turn(content="", tool_calls=(call("add", 2, 3),)), ["5"], think=True)
    assert growth.prefix_ok and isinstance(growth.assistant["tool_calls"][0]["function"]["arguments"], dict)
    convo.accept(growth)


@pytest.mark.parametrize("family", [QWEN3, QWEN25])
def test_compact_arguments_cannot_round_trip_and_are_reported(codec_of: Any, family: str) -> None:
    convo = Conversation(codec_of(family))
    growth = convo.step(Turn(content="", tool_calls=(call("add", 2, 3),), compact_args=True), ["5"])
    assert not growth.faithful and not growth.prefix_ok and not growth.fast
    assert growth.mismatch_at is not None and growth.mismatch_at < len(convo.seq)
    # The growth still has the length the trainer will see, so a flagged rollout stays aligned.
    trainer = trainer_prompt(convo.codec, convo.messages)
    assert list(growth.ids) == trainer and growth.prompt_len == len(trainer)


def test_qwen35_empty_think_retokenizes_and_is_reported(codec_of: Any) -> None:
    # "<think>\n" ends the generation prompt; the model samples "\n</think>"; re-tokenized, the two
    # newlines merge into one token. The text round-trips, the tokens do not: real drift.
    convo = Conversation(codec_of(QWEN35))
    growth = convo.step(Turn(content="", tool_calls=(call("add", 2, 3),)), ["5"], think=False)
    assert growth.faithful and not growth.prefix_ok and not growth.fast


@pytest.mark.parametrize("family", [QWEN3, QWEN25])
def test_visible_content_and_reasoning_round_trip(codec_of: Any, family: str) -> None:
    convo = Conversation(codec_of(family))
    for t in range(3):
        turn = Turn(content=f"Step {t}: I will add.", tool_calls=(call("add", t, 1),))
        growth = convo.step(turn, [str(t + 1)], think=True)
        assert growth.prefix_ok and growth.faithful
        convo.accept(growth)


def test_apply_chat_template_tokenize_returns_a_mapping_not_ids(codec_of: Any) -> None:
    codec = codec_of(QWEN3)
    messages = [{"role": "user", "content": "What is 2+3?"}]
    encoded = codec._hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = first_prompt(codec, messages).ids
    assert len(ids) > 2
    if not isinstance(encoded, list):  # transformers 5: BatchEncoding; len() counts its keys
        assert len(encoded) != len(ids)
        encoded = encoded["input_ids"]
    assert list(encoded) == ids


_pieces = st.sampled_from(
    [
        "a",
        "bc",
        " ",
        "xyz",
        "\n",
        "\t",
        "{",
        "}",
        "[",
        "]",
        '"',
        ":",
        ",",
        ".",
        "!",
        "?",
        "数学",
        "答え",
        "🙂",
        "é",
        "ß",
        "def f(x):\n    return x",
        "  ",
        "\n\n",
        "<tool_call>",
        "</think>",
        "42",
        "-3.5",
    ]
)
_text = st.one_of(st.lists(_pieces, max_size=12).map("".join), st.text(max_size=20)).map(
    lambda s: s.strip() or "ok"
)
_number = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 3))
)
_turn = st.builds(
    lambda content, calls: Turn(content=content, tool_calls=tuple(calls)),
    _text,
    st.lists(
        st.builds(
            lambda op, a, b: call(op, a, b),
            st.sampled_from(["add", "subtract", "multiply", "divide"]),
            _number,
            _number,
        ),
        min_size=1,
        max_size=3,
    ),
)


@pytest.mark.parametrize("family", [QWEN3, QWEN25])
@settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fast_path_equals_full_render(codec_of: Any, family: str, data: st.DataObject) -> None:
    codec = codec_of(family)
    user = data.draw(_text, label="user")
    fast_convo = Conversation(codec, user=user)
    full_convo = Conversation(codec, user=user)
    for _ in range(data.draw(st.integers(1, 3), label="turns")):
        turn = data.draw(_turn, label="turn")
        results = [data.draw(_text, label="result") for _ in turn.tool_calls]
        think = data.draw(st.booleans(), label="think")
        fast = fast_convo.step(turn, results, think=think, allow_fast=True)
        full = full_convo.step(turn, results, think=think, allow_fast=False)
        assert not full.fast
        assert (list(fast.ids), fast.prompt_len) == (list(full.ids), full.prompt_len)
        assert json.dumps(fast.assistant, sort_keys=True) == json.dumps(full.assistant, sort_keys=True)
        assert fast.prefix_ok
        fast_convo.accept(fast)
        full_convo.accept(full)


@pytest.mark.parametrize("hint", ["", "a", "b", "c", "d", "absent"])
def test_the_hinted_rewrite_comes_first_and_the_rest_keep_their_order(hint: str) -> None:
    items = [(label, {"n": i}) for i, label in enumerate("abcd")]
    expected = sorted(items, key=lambda item: item[0] != hint)  # stable: the others keep their order
    assert list(_hint_first(iter(items), hint)) == expected
