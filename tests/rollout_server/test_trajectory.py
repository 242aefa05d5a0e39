"""The trajectory's bookkeeping as data: append-only arrays, and following a drifted trainer."""

from __future__ import annotations

from array import array

import pytest

from rollout_server.trajectory import Trajectory


def grown(prompt: list[int], *steps: tuple[str, list[int]]) -> Trajectory:
    trajectory = Trajectory(prompt_ids=array("i", prompt))
    for kind, ids in steps:
        if kind == "sampled":
            trajectory.add_sampled(ids, [-0.5] * len(ids))
        else:
            trajectory.add_glue(ids)
    return trajectory


def test_sampled_ids_are_masked_1_with_their_logprobs_and_glue_0_with_zero() -> None:
    trajectory = grown([1, 2], ("sampled", [3, 4]), ("glue", [5]), ("sampled", [6]))
    assert trajectory.to_wire().model_dump() == {
        "prompt_ids": [1, 2],
        "response_ids": [3, 4, 5, 6],
        "response_mask": [1, 1, 0, 1],
        "response_logprobs": [-0.5, -0.5, 0.0, -0.5],
    }
    trajectory.add_sampled([7], None)
    assert trajectory.to_wire().model_dump()["response_logprobs"][-1] == 0.0


def test_logprobs_must_match_the_ids() -> None:
    with pytest.raises(ValueError, match="1 logprobs for 2 token ids"):
        Trajectory().add_sampled([1, 2], [-0.1])


def test_a_prompt_that_continues_the_trajectory_adds_its_growth() -> None:
    trajectory = Trajectory()
    trajectory.sync_prompt(array("i", [1, 2]), turn=1)
    trajectory.add_sampled([3], [-1.0])
    trajectory.sync_prompt(array("i", [1, 2, 3, 8, 9]), turn=2)
    assert trajectory.to_wire().model_dump()["response_mask"] == [1, 0, 0]
    assert trajectory.rebuilt == []


def test_a_prompt_that_breaks_the_response_keeps_the_common_prefix() -> None:
    trajectory = grown([1, 2], ("sampled", [3, 4]), ("glue", [5]), ("sampled", [6]))
    trajectory.sync_prompt(array("i", [1, 2, 3, 40, 5, 6, 7]), turn=3)
    out = trajectory.to_wire().model_dump()
    assert out["prompt_ids"] == [1, 2]
    assert out["response_ids"] == [3, 40, 5, 6, 7]
    assert out["response_mask"] == [1, 0, 0, 0, 0]
    assert out["rebuilt"] == [{"turn": 3, "kept": 3}]


def test_a_prompt_that_breaks_the_first_prompt_becomes_the_first_prompt() -> None:
    trajectory = grown([1, 2], ("sampled", [3]))
    trajectory.sync_prompt(array("i", [1, 9, 3, 4]), turn=2)
    trajectory.add_sampled([5], [-2.0])
    out = trajectory.to_wire().model_dump()
    assert (out["prompt_ids"], out["response_ids"], out["response_mask"]) == ([1, 9, 3, 4], [5], [1])
    assert out["rebuilt"] == [{"turn": 2, "kept": 1}]


def test_a_shorter_prompt_is_a_break_too() -> None:
    trajectory = grown([1, 2], ("sampled", [3, 4]))
    trajectory.sync_prompt(array("i", [1, 2, 3]), turn=2)
    assert trajectory.to_wire().model_dump()["response_ids"] == [3]
    assert trajectory.rebuilt == [{"turn": 2, "kept": 3}]
