"""The token trajectory a rollout returns in ``extra_fields.trajectory``.

    prompt_ids         the first prompt
    response_ids       everything after it: sampled turns, and between them the growth
    response_mask      1 = sampled by the model, 0 = tool output and template glue
    response_logprobs  the engine's (or trainer's) logprob of each sampled token, 0.0 where mask is 0

The field names are verl's (its agent loop's ``AgentLoopOutput``), so a verl-style trainer can
train on the trajectory without a tokenizer. The arrays only grow; ``sync_prompt`` is the one
place where a message-mode trajectory follows the trainer when its prompt drifted.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from rollout_server.protocol import TokenTrajectory, TrajectoryRebuild

__all__ = ["Trajectory"]


@dataclass
class Trajectory:
    """Append-only token bookkeeping of one rollout; plain data, no I/O."""

    prompt_ids: array[int] = field(default_factory=lambda: array("i"))
    response_ids: array[int] = field(default_factory=lambda: array("i"))
    response_mask: array[int] = field(default_factory=lambda: array("b"))
    response_logprobs: array[float] = field(default_factory=lambda: array("d"))
    # Turns at which the trainer's prompt did not continue the trajectory (message mode under
    # ALIGNMENT_DRIFT_POLICY=flag), and how many tokens of it were kept.
    rebuilt: list[dict[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    def add_sampled(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Tokens the model generated (mask 1); no logprobs given counts as 0.0 each."""
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"{len(logprobs)} logprobs for {len(ids)} token ids")
        self.response_ids.extend(ids)
        self.response_mask.extend(b"\x01" * len(ids))
        self.response_logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def add_glue(self, ids: Sequence[int]) -> None:
        """Tokens from outside the model: tool output, template glue, the next generation prompt."""
        self.response_ids.extend(ids)
        self.response_mask.extend(bytes(len(ids)))
        self.response_logprobs.extend([0.0] * len(ids))

    def sync_prompt(self, prompt: array[int], turn: int) -> None:
        """Follow the prompt the trainer generated from at ``turn`` (message mode).

        It should continue the trajectory: the rest is growth (mask 0). When it does not (drift
        reported under the ``flag`` policy), the trajectory keeps its longest common prefix with
        that prompt and takes the prompt's rest as growth; if even the first prompt differs, the
        trainer's prompt becomes the first prompt and the earlier turns are dropped. Each such
        rebuild is listed in ``rebuilt``: the trajectory is what the trainer saw, not what the
        model sampled in those turns."""
        if not self.prompt_ids and not self.response_ids:
            self.prompt_ids = array("i", prompt)
            return
        n_prompt, total = len(self.prompt_ids), len(self)
        if (
            len(prompt) >= total
            and prompt[:n_prompt] == self.prompt_ids
            and (prompt[n_prompt:total] == self.response_ids)
        ):
            self.add_glue(prompt[total:])
            return
        keep = _common_prefix(self.prompt_ids + self.response_ids, prompt)
        self.rebuilt.append({"turn": turn, "kept": keep})
        if keep < n_prompt:
            self.prompt_ids = array("i", prompt)
            del self.response_ids[:], self.response_mask[:], self.response_logprobs[:]
            return
        cut = keep - n_prompt
        del self.response_ids[cut:], self.response_mask[cut:], self.response_logprobs[cut:]
        self.add_glue(prompt[keep:])

    def to_wire(self) -> TokenTrajectory:
        """The response's ``trajectory``; built without validating the arrays again (this
        module made them)."""
        return TokenTrajectory.model_construct(
            prompt_ids=self.prompt_ids.tolist(),
            response_ids=self.response_ids.tolist(),
            response_mask=self.response_mask.tolist(),
            response_logprobs=self.response_logprobs.tolist(),
            rebuilt=[TrajectoryRebuild(**rebuilt) for rebuilt in self.rebuilt] or None,
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    return next((i for i in range(limit) if a[i] != b[i]), limit)
