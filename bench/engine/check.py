"""Checks a rollout's returned trajectory against what the engine was actually sent and sampled.

Pure data in, a list of breaches out (empty = exact). The engine's side comes from the recorded
``/v1/completions`` exchanges of the rollout, in order; vLLM echoes the prompt it tokenized as
``prompt_token_ids`` and the sampled ids as ``token_ids`` when asked with ``return_token_ids``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EngineCall", "check_trajectory", "engine_calls", "non_canonical_turns"]


@dataclass(frozen=True)
class EngineCall:
    """One generation as the engine saw it."""

    sent: list[int]  # the prompt ids in the request body
    seen: list[int]  # the prompt ids the engine echoed back
    sampled: list[int]
    logprobs: list[float]


def engine_calls(exchanges: Sequence[Any]) -> list[EngineCall]:
    """The successful generations among recorded exchanges (``Exchange`` objects)."""
    calls = []
    for ex in exchanges:
        if ex.status != 200 or ex.response is None:
            continue
        choice = ex.response["choices"][0]
        lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
        calls.append(
            EngineCall(
                sent=list(ex.request["prompt"]),
                seen=list(choice.get("prompt_token_ids") or []),
                sampled=list(choice.get("token_ids") or []),
                logprobs=[float(x) for x in lps],
            )
        )
    return calls


def _lengths(traj: dict[str, Any]) -> list[str]:
    n = len(traj["response_ids"])
    return [
        f"{name} has {len(traj[name])} entries for {n} response ids"
        for name in ("response_mask", "response_logprobs")
        if len(traj[name]) != n
    ]


def check_trajectory(traj: dict[str, Any], calls: Sequence[EngineCall], tol: float = 1e-6) -> list[str]:
    """Every way ``traj`` differs from the engine's calls; [] when it is exact.

    Exact means: each prompt the engine saw is the trajectory up to that point; each call's
    sampled ids follow its prompt in the trajectory; the mask is 1 on exactly those positions;
    the logprobs there are the engine's, 0.0 elsewhere; nothing sampled is missing."""
    errors = _lengths(traj)
    if errors:
        return errors
    if not calls:
        return ["no successful engine call recorded"]
    full = list(traj["prompt_ids"]) + list(traj["response_ids"])
    n_prompt = len(traj["prompt_ids"])
    if calls[0].sent[:n_prompt] != full[:n_prompt] or len(calls[0].sent) != n_prompt:
        errors.append("prompt_ids differ from the first prompt sent to the engine")
    expect_mask = [0] * len(full)
    expect_lp = [0.0] * len(full)
    for k, call in enumerate(calls):
        if call.seen and call.seen != call.sent:
            errors.append(f"call {k}: the engine echoed another prompt than the one sent")
        start, end = len(call.sent), len(call.sent) + len(call.sampled)
        if full[:start] != call.sent:
            errors.append(f"call {k}: its prompt ({start} ids) is not the trajectory's prefix")
        if full[start:end] != call.sampled:
            errors.append(f"call {k}: the sampled ids are not in the trajectory after its prompt")
        if len(call.logprobs) != len(call.sampled):
            errors.append(f"call {k}: {len(call.logprobs)} logprobs for {len(call.sampled)} ids")
        for i in range(start, min(end, len(full))):
            expect_mask[i] = 1
            expect_lp[i] = call.logprobs[i - start] if i - start < len(call.logprobs) else 0.0
    mask = [int(m) for m in traj["response_mask"]]
    if mask != expect_mask[n_prompt:]:
        bad = next(i for i, (a, b) in enumerate(zip(mask, expect_mask[n_prompt:], strict=True)) if a != b)
        errors.append(f"response_mask differs first at response position {bad}")
    lps = [float(x) for x in traj["response_logprobs"]]
    off = [i for i, (a, b) in enumerate(zip(lps, expect_lp[n_prompt:], strict=True)) if abs(a - b) > tol]
    if off:
        errors.append(f"response_logprobs differ at {len(off)} positions, first {off[0]}")
    return errors


def non_canonical_turns(
    calls: Sequence[EngineCall], encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]
) -> int:
    """How many calls sampled ids that decode + re-encode would change: the turns that
    re-tokenizing the text (message mode's way) could not have kept."""
    return sum(encode(decode(call.sampled)) != call.sampled for call in calls)
