"""ChatCodec: reusing the ids of long stretches between special tokens gives exactly encode()."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenize_pool.codec as codec_module
import tokenize_pool.id_text as id_text_module
from tests.conftest import examples
from tokenize_pool.codec import ChatCodec


@pytest.fixture
def strict_codec(codec_of: Callable[[str], ChatCodec], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A codec that reuses stretches of 8+ characters and never falls back on its self-check."""
    monkeypatch.setattr(codec_module, "SEGMENT_MIN_CHARS", 8)

    def get(name: str) -> ChatCodec:
        codec = codec_of(name)
        monkeypatch.setattr(codec, "_segment_checks", 0)
        return codec

    return get


_pieces = st.sampled_from(
    [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<think>",
        "</think>",
        "<tool_call>",
        "\n",
        "\n\n",
        " ",
        "system",
        "user\n",
        "assistant\n",
        "hello world",
        "数学の問題",
        "🙂🙂",
        "def f(x):\n    return x",
        "  \t",
        '{"a": 1}',
        "é",
        "e\u0301",
    ]
)


@pytest.mark.parametrize("family", ["Qwen/Qwen3-8B", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3.5-9B"])
@settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(_pieces, max_size=40))
def test_encode_prompt_equals_encode(strict_codec: Any, family: str, parts: list[str]) -> None:
    codec = strict_codec(family)
    text = "".join(parts)
    assert codec.encode_prompt(text) == codec.encode(text)
    assert codec.encode_prompt(text) == codec.encode(text)  # the second time from the cache
    ids, ids_json = codec.encode_prompt_text(text)  # the reused stretches' text from the cache too
    assert ids == codec.encode(text)
    assert ids_json == json.dumps(ids, separators=(",", ":"))[1:-1].encode()


def test_a_shared_system_prompt_is_tokenized_once(strict_codec: Any) -> None:
    codec = strict_codec("Qwen/Qwen3-8B")
    system = "You are a careful calculator. " * 100
    calls: list[str] = []
    encode = codec.encode
    codec.encode = lambda text: calls.append(text) or encode(text)  # type: ignore[method-assign]
    try:
        for question in ("2+3?", "4*5?"):
            text = codec.render(
                [{"role": "system", "content": system}, {"role": "user", "content": question}],
                add_generation_prompt=True,
            )
            assert codec.encode_prompt(text) == encode(text)
    finally:
        del codec.encode
    assert sum(system in text for text in calls) == 1


@pytest.mark.parametrize("family", ["Qwen/Qwen3-8B", "Qwen/Qwen2.5-7B-Instruct", "zai-org/glm-4-9b-chat-hf"])
@settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.one_of(st.text(max_size=80), st.lists(_pieces, max_size=30).map("".join)))
def test_encode_gives_the_ids_of_the_tokenizers_own_encode(
    codec_of: Callable[[str], ChatCodec], family: str, text: str
) -> None:
    # ChatCodec.encode takes encode_batch_fast (no offsets); the ids must be those of encode.
    codec = codec_of(family)
    assert codec._fast_encode
    assert codec.encode(text) == codec._backend.encode(text, add_special_tokens=False).ids


@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1) | st.integers(min_value=0, max_value=300_000)))
def test_ids_text_is_the_inside_of_the_json_array_of_the_ids(ids: list[int]) -> None:
    expected = json.dumps(ids, separators=(",", ":"))[1:-1].encode()
    assert id_text_module.ids_text(ids) == expected
    assert id_text_module.ids_text(array("i", ids)) == expected
    # Ids beyond any vocabulary are written out without growing the table to them.
    assert (
        len(id_text_module._ID_STRINGS) <= id_text_module._ID_STRINGS_LIMIT + id_text_module._ID_STRINGS_STEP
    )


def test_a_codec_fills_the_id_table_to_its_vocabulary_when_it_loads(
    codec_of: Callable[[str], ChatCodec], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Filled at load, so that a worker's first request does not pay for it (18 ms with Qwen3).
    loaded = codec_of("Qwen/Qwen3-8B")
    monkeypatch.setattr(id_text_module, "_ID_STRINGS", [])
    codec_module.ChatCodec(loaded.key, loaded._hf)
    table = id_text_module._ID_STRINGS
    assert len(table) == len(loaded._hf) > 150_000
    assert id_text_module.ids_text([len(table) - 1, 7]) == f"{len(table) - 1},7".encode()
    assert len(id_text_module._ID_STRINGS) == len(table)
