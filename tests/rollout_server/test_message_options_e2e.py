"""Message mode's opt-ins against the trainer simulator, end to end: ``return_trajectory`` and
``tools_in_prompt``.

The simulator keeps, per rollout, the sequence it trains on and its mask: the trajectory the
server returns must be exactly that, with the trainer's logprobs where the mask is 1. With
``tools_in_prompt`` the simulator renders the ``tools`` it is sent, as a real trainer would, and
the server's first-prompt check must still hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Proc
from tests.rollout_server.test_rollout_e2e import QWEN3, QWEN35, body, post_rollout, scenario_url, sim_record
from tokenize_pool.codec import ChatCodec


@pytest.fixture(scope="module")
def flag_server(start_server: Callable[..., Proc]) -> Proc:
    return start_server(ALIGNMENT_DRIFT_POLICY="flag", TOKENIZE_WORKERS="1")


def check_aligned(trajectory: dict[str, Any]) -> None:
    mask, logprobs = trajectory["response_mask"], trajectory["response_logprobs"]
    assert len(trajectory["response_ids"]) == len(mask) == len(logprobs)
    assert set(mask) <= {0, 1}
    assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=True) if not m)


def test_without_asking_there_is_no_trajectory(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "one")))
    assert result["status"] == "COMPLETED" and "trajectory" not in result["extra_fields"]


@pytest.mark.parametrize("spec", ["one", "parallel", "sequential", "one/think=1"])
def test_the_trajectory_is_what_the_trainer_trains_on(server: Proc, sim: Proc, spec: str) -> None:
    result = post_rollout(server, body(scenario_url(sim, spec), return_trajectory=True))
    assert result["status"] == "COMPLETED", result
    trajectory = result["extra_fields"]["trajectory"]
    check_aligned(trajectory)
    record = sim_record(sim, result["rollout_id"])
    assert trajectory["prompt_ids"] == record["seq"][: record["prompt_len"]]
    assert trajectory["response_ids"] == record["seq"][record["prompt_len"] :]
    assert trajectory["response_mask"] == record["mask"]
    assert sum(trajectory["response_mask"]) == result["metrics"]["response_tokens"]
    assert "rebuilt" not in trajectory


def check_follows_last_prompt(codec: ChatCodec, result: dict[str, Any]) -> None:
    """The trajectory is the trainer's last prompt (its rendering of the conversation as sent)
    and the ids it sampled last, masked 1: what the trainer saw, not the broken concatenation."""
    trajectory = result["extra_fields"]["trajectory"]
    whole = trajectory["prompt_ids"] + trajectory["response_ids"]
    last = codec.encode(codec.render_reference(result["final_messages"][:-1], add_generation_prompt=True))
    assert whole[: len(last)] == last
    tail = trajectory["response_mask"][len(last) - len(trajectory["prompt_ids"]) :]
    assert tail and tail == [1] * len(tail)


def test_drift_rebuilds_the_trajectory_from_the_trainers_prompt_and_says_so(
    flag_server: Proc, sim: Proc, codec_of: Callable[[str], ChatCodec]
) -> None:
    result = post_rollout(flag_server, body(scenario_url(sim, "drift/turns=2"), return_trajectory=True))
    assert result["status"] == "COMPLETED"
    trajectory = result["extra_fields"]["trajectory"]
    check_aligned(trajectory)
    assert [event["turn"] for event in trajectory["rebuilt"]] == [2, 3]
    assert len(sim_record(sim, result["rollout_id"])["prefix_breaks"]) == 2
    check_follows_last_prompt(codec_of(QWEN3), result)


def test_qwen35_empty_think_drift_rebuilds_even_the_first_prompt(
    flag_server: Proc, sim: Proc, codec_of: Callable[[str], ChatCodec]
) -> None:
    spec = "one/tok=Qwen--Qwen3.5-9B"
    result = post_rollout(
        flag_server, body(scenario_url(sim, spec), tokenizer_name=QWEN35, return_trajectory=True)
    )
    assert result["extra_fields"]["alignment"]["drift_events"] == 1
    trajectory = result["extra_fields"]["trajectory"]
    check_aligned(trajectory)
    # The sampled "\n" + "\n" re-tokenize as one "\n\n" whose first half was the first prompt's
    # last token: even the first prompt is no prefix of the trainer's second one, which becomes
    # the trajectory's prompt (the first turn's tokens are no longer trainable as sampled).
    [rebuilt] = trajectory["rebuilt"]
    assert rebuilt["turn"] == 2 and rebuilt["kept"] < len(trajectory["prompt_ids"])
    assert trajectory["response_mask"] == [1] * len(trajectory["response_mask"])
    check_follows_last_prompt(codec_of(QWEN35), result)


@pytest.mark.parametrize("tokenizer", [QWEN3, QWEN35])
def test_tools_in_prompt_are_rendered_by_both_sides(server: Proc, sim: Proc, tokenizer: str) -> None:
    spec = "parallel" if tokenizer == QWEN3 else "parallel/think=1/tok=Qwen--Qwen3.5-9B"
    request = body(
        scenario_url(sim, spec), tokenizer_name=tokenizer, tools_in_prompt=True, return_trajectory=True
    )
    result = post_rollout(server, request)
    assert result["status"] == "COMPLETED", result
    assert result["extra_fields"]["alignment"]["drift_events"] == 0
    record = sim_record(sim, result["rollout_id"])
    assert record["ok"], record
    trajectory = result["extra_fields"]["trajectory"]
    assert trajectory["prompt_ids"] == record["seq"][: record["prompt_len"]]
    assert trajectory["response_mask"] == record["mask"]


def test_tools_in_prompt_go_into_the_full_render_too(
    flag_server: Proc, sim: Proc, codec_of: Callable[[str], ChatCodec]
) -> None:
    """The drift scenario takes the full-render path: with the tools rendered there as well, the
    only breaks are the scenario's own, in the sampled turns, none in the first prompt."""
    result = post_rollout(flag_server, body(scenario_url(sim, "drift/turns=2"), tools_in_prompt=True))
    assert result["status"] == "COMPLETED"
    events = result["extra_fields"]["alignment"]["events"]
    record = sim_record(sim, result["rollout_id"])
    assert len(events) == len(record["prefix_breaks"]) == 2
    assert all(event["first_mismatch"] >= record["prompt_len"] for event in events), events
    assert record["mask_errors"] == []
