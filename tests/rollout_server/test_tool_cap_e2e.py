"""End to end: tool messages over ``TOOL_OUTPUT_MAX_TOKENS`` are cut, in both modes, and the
masks stay exact on the strict simulator (message mode) and its engine mode (token mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Proc, Served
from tests.rollout_server.test_rollout_e2e import (  # noqa: F401 (an autouse fixture)
    QWEN3,
    QWEN25,
    QWEN35,
    _use_session_codecs,
    assert_trained_sequence_exact,
    body,
    post_rollout,
    scenario_url,
)
from tests.rollout_server.test_token_mode_e2e import assert_trajectory_exact
from tokenize_pool.codec import ChatCodec

CAP = 64
N = 300  # repeats: a few hundred tokens, far over the cap, within the 16384-character cap
# What the longtool scenario's tools answer uncut (rollout_server/sim/scenarios.py).
UNCUT = ["tool output " * N, "4", "工具输出😀" * N]


@pytest.fixture(scope="module")
def capped_server(start_server: Callable[..., Proc]) -> Proc:
    return start_server(TOOLS="calculator,tests.user_tools:word_count", TOOL_OUTPUT_MAX_TOKENS=str(CAP))


def _assert_cut(codec: ChatCodec, result: dict[str, Any]) -> None:
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop"), result["error_message"]
    contents = [m["content"] for m in result["final_messages"] if m["role"] == "tool"]
    assert len(contents) == 3 and contents[1] == "4"  # a short message is left as it is
    for content, uncut in zip(contents[::2], UNCUT[::2], strict=True):
        kept, marker = content.split(f"\n[truncated at {CAP} tokens: ")
        assert uncut.startswith(kept) and 0 < len(codec.encode(kept)) <= CAP
        assert marker == f"{len(uncut) - len(kept)} of {len(uncut)} characters not shown]"


@pytest.mark.parametrize(
    ("generation", "tokenizer", "tok"),
    [
        ("messages", QWEN3, ""),
        ("messages", QWEN25, "/tok=Qwen--Qwen2.5-7B-Instruct"),
        ("messages", QWEN35, "/think=1/tok=Qwen--Qwen3.5-9B"),
        ("tokens", QWEN3, "/strict=1"),
        ("tokens", QWEN25, "/strict=1/tok=Qwen--Qwen2.5-7B-Instruct"),
    ],
)
def test_long_tool_messages_are_cut_with_exact_masks(
    capped_server: Proc,
    sim: Proc,
    mcp_server: Served,
    codec_of: Callable[[str], ChatCodec],
    generation: str,
    tokenizer: str,
    tok: str,
) -> None:
    payload = body(
        scenario_url(sim, f"longtool/n={N}{tok}"),
        generation=generation,
        tokenizer_name=tokenizer,
        tool_server_url=f"{mcp_server.url}/mcp",
    )
    result = post_rollout(capped_server, payload)
    _assert_cut(codec_of(tokenizer), result)
    if generation == "tokens":
        assert_trajectory_exact(sim, result)
    else:
        assert_trained_sequence_exact(sim, result, tokenizer)
