"""What the simulated trainer remembers per rollout: the token sequence it trains on and its mask.

Plain data and pure checks, no HTTP. Per ``rollout_id``:

- ``seq``: the first prompt, then every generated turn and everything the conversation grew by
  between turns (the trainer's own tokenization of its own rendering of ``messages``);
- ``mask``: one bit per token of ``seq`` after the first prompt, 1 = generated, 0 = from outside;
- ``logprobs``: aligned with ``mask``, the sampled logprob of each generated token, 0.0 elsewhere.

A call is checked with :func:`check_prompt` before anything is stored; :func:`commit_turn`
then appends the prompt growth (zeros) and the sampled tokens (ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PrefixBreak",
    "PromptCheck",
    "RolloutState",
    "SimState",
    "check_prompt",
    "commit_turn",
    "prefix_break",
]


@dataclass(frozen=True, kw_only=True)
class PrefixBreak:
    """A call whose prompt did not start with the sequence stored so far."""

    call: int
    index: int


@dataclass
class RolloutState:
    """The trainer's bookkeeping for one rollout."""

    rollout_id: str
    prompt_len: int | None = None
    seq: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    calls: int = 0
    prefix_breaks: list[PrefixBreak] = field(default_factory=list)
    mask_errors: list[str] = field(default_factory=list)
    auth: str | None = None
    model: str | None = None  # as the last call named it

    @property
    def ok(self) -> bool:
        """No prefix break and no mask error so far."""
        return not self.prefix_breaks and not self.mask_errors

    def to_json(self) -> dict[str, Any]:
        """The inspection view served at ``GET /sim/rollouts/<rollout_id>``."""
        return {
            "rollout_id": self.rollout_id,
            "prompt_len": self.prompt_len,
            "seq": self.seq,
            "mask": self.mask,
            "logprobs": self.logprobs,
            "calls": self.calls,
            "prefix_breaks": [{"call": b.call, "index": b.index} for b in self.prefix_breaks],
            "mask_errors": self.mask_errors,
            "auth": self.auth,
            "model": self.model,
            "ok": self.ok,
        }


@dataclass(frozen=True, kw_only=True)
class PromptCheck:
    """The outcome of checking one call's prompt and mask against the stored sequence."""

    growth: int
    prefix_break: int | None = None
    mask_error: str | None = None


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _mask_error(response_mask: Any, growth: int) -> str | None:
    if not isinstance(response_mask, list):
        return f"response_mask must be a list of {growth} zeros, got {type(response_mask).__name__}"
    if len(response_mask) != growth:
        return f"response_mask has length {len(response_mask)}, expected {growth}"
    for i, bit in enumerate(response_mask):
        if type(bit) is not int or bit != 0:
            return f"response_mask[{i}] is {bit!r}, expected 0 (tokens between turns are not generated)"
    return None


def check_prompt(state: RolloutState, prompt_ids: list[int], response_mask: Any) -> PromptCheck:
    """Check a call's prompt against the stored sequence and its ``response_mask``; pure."""
    if state.prompt_len is None:
        error = None if response_mask is None else "response_mask must be null on the first call"
        return PromptCheck(growth=len(prompt_ids), mask_error=error)
    growth = len(prompt_ids) - len(state.seq)
    broken = prefix_break(state, prompt_ids)
    return PromptCheck(growth=growth, prefix_break=broken, mask_error=_mask_error(response_mask, growth))


def prefix_break(state: RolloutState, prompt_ids: list[int]) -> int | None:
    """Where ``prompt_ids`` first departs from the stored sequence (None: it extends it); pure."""
    if state.prompt_len is None:
        return None
    return _first_difference(prompt_ids[: len(state.seq)], state.seq)


def commit_turn(
    state: RolloutState, prompt_ids: list[int], token_ids: list[int], logprobs: list[float]
) -> None:
    """Store an accepted call: the prompt's growth as zeros, the sampled tokens as ones."""
    if state.prompt_len is None:
        state.prompt_len = len(prompt_ids)
        state.seq = list(prompt_ids)
    else:
        growth = prompt_ids[len(state.seq) :]
        state.seq.extend(growth)
        state.mask.extend([0] * len(growth))
        state.logprobs.extend([0.0] * len(growth))
    state.seq.extend(token_ids)
    state.mask.extend([1] * len(token_ids))
    state.logprobs.extend(logprobs)


class SimState:
    """Every rollout the simulator has seen, by ``rollout_id``; in memory, single process."""

    def __init__(self) -> None:
        self._rollouts: dict[str, RolloutState] = {}

    def get(self, rollout_id: str) -> RolloutState | None:
        """The rollout's state, or None if no call named it."""
        return self._rollouts.get(rollout_id)

    def open(self, rollout_id: str) -> RolloutState:
        """The rollout's state, created on first sight."""
        state = self._rollouts.get(rollout_id)
        if state is None:
            state = self._rollouts[rollout_id] = RolloutState(rollout_id=rollout_id)
        return state

    def clear(self) -> None:
        """Forget every rollout."""
        self._rollouts.clear()

    def stats(self) -> dict[str, int]:
        """Totals over all rollouts, served at ``GET /sim/stats``."""
        rollouts = list(self._rollouts.values())
        return {
            "rollouts": len(rollouts),
            "calls": sum(r.calls for r in rollouts),
            "prefix_breaks": sum(len(r.prefix_breaks) for r in rollouts),
            "mask_errors": sum(len(r.mask_errors) for r in rollouts),
            "rollouts_not_ok": sum(not r.ok for r in rollouts),
        }
