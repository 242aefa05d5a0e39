"""The token cap of tool messages, as data on every seeded template family."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import pytest

from tokenize_pool.codec import TokenizerKey
from tokenize_pool.hf_cache import SEEDS
from tokenize_pool.tool_cap import CutTexts, CutTools, cut_to_tokens, fits_unseen

FAMILIES = [seed.repo_id for seed in SEEDS]  # Qwen3, Qwen2.5, Qwen3.5, GLM-4, DeepSeek-V3


def _samples() -> list[str]:
    rng = random.Random(13)
    texts = [
        "a" * 300,
        " " * 300,
        "\n\n" * 150,
        "<|im_end|><|endoftext|>" * 10,
        "中文的工具输出" * 40,
        "😀🎉" * 60,
        "\u0344" * 50,  # NFC turns each of these 2 bytes into 4
        "\U0001d160" * 30,  # and each of these 4 bytes into 12
        '{"rows": [1, 2, 3], "name": "température"}' * 8,
    ]
    for _ in range(200):
        codes = (rng.randrange(0x20, 0x30000) for _ in range(rng.randrange(1, 60)))
        texts.append("".join(chr(c) for c in codes if not 0xD800 <= c < 0xE000))
    return texts


SAMPLES = _samples()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_text_in_nfc_has_no_more_tokens_than_bytes(codec_of: Any, family: str) -> None:
    """The bound ``fits_unseen`` relies on, checked where it is used: the text's NFC form."""
    codec = codec_of(family)
    for text in SAMPLES:
        normal = unicodedata.normalize("NFC", text)
        assert len(codec.encode(normal)) <= len(normal.encode()), (family, normal[:20])


@pytest.mark.parametrize("family", FAMILIES)
def test_whatever_fits_unseen_is_within_the_cap(codec_of: Any, family: str) -> None:
    codec = codec_of(family)
    for text in SAMPLES:
        for limit in (8, 40, 200):
            if fits_unseen(text, limit):
                assert len(codec.encode(text)) <= limit
                assert cut_to_tokens(codec, text, limit) is None


def test_fits_unseen_as_data() -> None:
    assert fits_unseen("", 1) and fits_unseen("abcd", 4) and fits_unseen("é", 2)
    assert not fits_unseen("abcde", 4)
    assert not fits_unseen("中", 2)  # 3 bytes
    assert not fits_unseen("\U0001d160", 100)  # not NFC: its normal form may have more tokens
    assert not fits_unseen("e\u0301", 100)  # decomposed: NFC composes it, but says so only by tokenizing


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "text",
    ["word " * 400, "中文的工具输出" * 100, "😀🎉 ok " * 100, "e\u0301" * 300, "\U0001d160" * 40],
)
def test_a_long_text_is_cut_to_the_cap_with_a_marker(codec_of: Any, family: str, text: str) -> None:
    codec = codec_of(family)
    limit = 50
    cut = cut_to_tokens(codec, text, limit)
    assert cut is not None
    kept, marker = cut.rsplit("\n[truncated at 50 tokens: ", 1)
    assert len(codec.encode(kept)) <= limit
    assert "\ufffd" not in kept
    if unicodedata.is_normalized("NFC", text):
        assert text.startswith(kept) and len(kept) > 0
    assert marker == f"{len(text) - len(kept)} of {len(text)} characters not shown]"


@pytest.mark.parametrize("family", ["Qwen/Qwen3-8B", "zai-org/glm-4-9b-chat-hf"])
def test_the_pool_op_cuts_only_what_is_over(codec_of: Any, family: str) -> None:
    codec = codec_of(family)
    op = CutTools(key=TokenizerKey(family), texts=["short", "token " * 100, "x" * 12], limit=10)
    result = op.run(codec)
    assert isinstance(result, CutTexts)
    short, long, few = result.texts
    assert short is None and few is None  # "x" * 12 is a few tokens, though more than 10 bytes
    assert long is not None and long.startswith("token token") and long.endswith("characters not shown]")
