"""The engine bench's trajectory check, as data: what it accepts and every breach it names."""

from __future__ import annotations

import copy
from typing import Any

from bench.engine.check import EngineCall, check_trajectory, non_canonical_turns

# Two engine calls: prompt [1, 2], sampled [10, 11] (ends with the stop id 11); tool growth
# [3, 4]; then sampled [12] (a length cut).
CALLS = [
    EngineCall(sent=[1, 2], seen=[1, 2], sampled=[10, 11], logprobs=[-0.5, -0.25]),
    EngineCall(sent=[1, 2, 10, 11, 3, 4], seen=[1, 2, 10, 11, 3, 4], sampled=[12], logprobs=[-2.0]),
]
GOOD: dict[str, Any] = {
    "prompt_ids": [1, 2],
    "response_ids": [10, 11, 3, 4, 12],
    "response_mask": [1, 1, 0, 0, 1],
    "response_logprobs": [-0.5, -0.25, 0.0, 0.0, -2.0],
}


def changed(**fields: Any) -> dict[str, Any]:
    traj = copy.deepcopy(GOOD)
    traj.update(fields)
    return traj


def test_an_exact_trajectory_passes() -> None:
    assert check_trajectory(GOOD, CALLS) == []


def test_a_closing_token_the_server_added_after_the_last_call_is_glue() -> None:
    traj = changed(
        response_ids=[*GOOD["response_ids"], 99],
        response_mask=[*GOOD["response_mask"], 0],
        response_logprobs=[*GOOD["response_logprobs"], 0.0],
    )
    assert check_trajectory(traj, CALLS) == []


def test_every_breach_is_named() -> None:
    cases = {
        "response_mask differs first at response position 2": changed(response_mask=[1, 1, 1, 0, 1]),
        "response_logprobs differ at 1 positions, first 1": changed(
            response_logprobs=[-0.5, 0.0, 0.0, 0.0, -2.0]
        ),
        "response_mask has 4 entries for 5 response ids": changed(response_mask=[1, 1, 0, 0]),
        "call 1: its prompt (6 ids) is not the trajectory's prefix": changed(response_ids=[10, 11, 3, 5, 12]),
        "call 1: the sampled ids are not in the trajectory after its prompt": changed(
            response_ids=[10, 11, 3, 4, 13]
        ),
        "prompt_ids differ from the first prompt sent to the engine": changed(
            prompt_ids=[1],
            response_ids=[2, 10, 11, 3, 4, 12],
            response_mask=[0, 1, 1, 0, 0, 1],
            response_logprobs=[0.0, -0.5, -0.25, 0.0, 0.0, -2.0],
        ),
    }
    for expected, traj in cases.items():
        assert expected in check_trajectory(traj, CALLS), expected


def test_the_engine_must_have_seen_what_was_sent() -> None:
    calls = [CALLS[0], EngineCall(sent=CALLS[1].sent, seen=[1, 2], sampled=[12], logprobs=[-2.0])]
    assert check_trajectory(GOOD, calls) == ["call 1: the engine echoed another prompt than the one sent"]


def test_no_recorded_call_is_a_breach() -> None:
    assert check_trajectory(GOOD, []) == ["no successful engine call recorded"]


def test_a_turn_is_non_canonical_when_decode_and_encode_change_its_ids() -> None:
    text = {10: "a", 11: "b", 12: "ab"}

    def decode(ids: list[int]) -> str:
        return "".join(text[i] for i in ids)

    def encode(s: str) -> list[int]:
        return [12] if s == "ab" else [k for ch in s for k, v in text.items() if v == ch]

    calls = [EngineCall([1], [1], [10, 11], [0.0, 0.0]), EngineCall([1], [1], [12], [0.0])]
    assert non_canonical_turns(calls, encode, decode) == 1
