"""A finished rollout's typed outcome (``protocol.py``: ``ExtraFields``, ``AlignmentReport``,
``RolloutTiming``, ``ErrorBody``) writes the same bytes as the dicts it replaced (the metrics
that read it: test_metrics.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from sanic.helpers import json_dumps

from rollout_server import agent
from rollout_server.agent import RolloutState
from rollout_server.app import _error, _validation_response
from rollout_server.errors import RolloutError, TrainerNetworkError, TrainerServerError
from rollout_server.protocol import DriftEvent, FieldError, RolloutRequest, RolloutResponse
from rollout_server.trajectory import Trajectory
from tokenize_pool import TokenizerKey


class FakeTime:
    """The agent's clock while a response is made: 1 s after the start, 0.25 s after the mark."""

    @staticmethod
    def perf_counter() -> float:
        return 2.0


def request(**more: Any) -> RolloutRequest:
    body = {
        "rollout_id": "r-1",
        "server_url": "http://trainer:8000",
        "messages": [{"role": "user", "content": "héllo"}],
        "sampling_params": {},
    }
    return RolloutRequest.model_validate({**body, **more})


def state(req: RolloutRequest) -> RolloutState:
    """A rollout after two trainer calls, with every counter of the report set."""
    made = RolloutState(request=req, key=TokenizerKey("t"), messages=[{"role": "user", "content": "héllo"}])
    made.started, made.mark, made.queued = 1.0, 1.75, 0.0301
    made.set_seq([5, 6, 7, 8])
    made.turn_overheads = [0.0012345, 0.25]
    made.metrics.num_llm_calls = 2
    made.alignment.checks, made.alignment.rewrites, made.alignment.fast_turns = 2, 1, 1
    made.alignment.tokens_encoded, made.alignment.mask_zeros, made.alignment.mask_ones = 40, 3, 9
    return made


EVENT = {"turn": 2, "kind": "prefix_break", "first_mismatch": 3, "faithful_rewrite_found": False}
# The report and timing of ``state``, as the agent wrote them when they were dicts, in their order.
ALIGNMENT = {
    "checks": 2,
    "drift_events": 0,
    "events": [],
    "faithful_rewrites": 1,
    "fast_path_turns": 1,
    "full_render_turns": 0,
    "tokens_encoded": 40,
    "sequence_length": 4,
    "response_mask_zeros": 3,
    "response_mask_ones": 9,
}
TIMING = {"turn_overhead_ms": [1.234, 250.0], "tail_ms": 250.0, "server_ms": 501.235, "queued_ms": 30.1}
TRAJECTORY = {
    "prompt_ids": [5, 6, 7, 8],
    "response_ids": [9, 10, 11],
    "response_mask": [1, 1, 0],
    "response_logprobs": [-0.5, -0.25, 0.0],
    "rebuilt": [{"turn": 2, "kept": 4}],
}


def old_extra(made: RolloutState, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra_fields`` as the agent and the app wrote it, a dict: alignment, timing, then ``extra``."""
    events = [EVENT] * len(made.alignment.events)  # drifted() adds EVENT
    return {
        "alignment": {**ALIGNMENT, "drift_events": len(events), "events": events},
        "timing": TIMING,
        **extra,
    }


def old_wire(
    made: RolloutState, finish: str | None, error: RolloutError | None, extra: dict[str, Any]
) -> str:
    """The response's JSON as ``RolloutResponse`` wrote it with ``extra_fields: dict[str, Any]``."""
    body = {
        "rollout_id": "r-1",
        "status": "ERROR" if error else "COMPLETED",
        "final_messages": [{"role": "user", "content": "héllo"}],
        "finish_reason": finish,
        "error_message": error.public_message() if error else None,
        "metrics": {
            "total_latency_ms": 1000.0,
            "llm_latency_ms": 0.0,
            "tool_latency_ms": 0.0,
            "num_llm_calls": 2,
            "num_tool_calls": 0,
            "prompt_tokens": 0,
            "response_tokens": 0,
            "max_context_tokens": 0,
        },
        "extra_fields": old_extra(made, extra),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def token_mode() -> RolloutState:
    made = state(request(generation="tokens"))
    made.trajectory = Trajectory()
    made.trajectory.sync_prompt(made.seq, 1)
    made.trajectory.add_sampled([9, 10], [-0.5, -0.25])
    made.trajectory.add_glue([11])
    made.trajectory.rebuilt.append({"turn": 2, "kept": 4})
    return made


def drifted() -> RolloutState:
    made = state(request())
    made.alignment.events.append(DriftEvent(**EVENT))
    return made


CASES = {
    "completed": (lambda: state(request()), "stop", None, {}),
    "trainer_http_error": (
        drifted,
        None,
        TrainerServerError("trainer said 503", http_status=503),
        {"error_category": "trainer_server_error", "http_status": 503},
    ),
    "network_error": (
        lambda: state(request()),
        None,
        TrainerNetworkError("connection refused"),
        {"error_category": "network_error"},
    ),
    "token_mode": (token_mode, "max_turns", None, {"trajectory": TRAJECTORY}),
    "ignored_fields": (
        lambda: state(request(max_turn=3, Tools=[])),
        "stop",
        None,
        {"ignored_fields": ["Tools", "max_turn"]},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_wire_json_of_a_response_is_the_dict_shapes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make, finish, error, extra = CASES[case]
    monkeypatch.setattr(agent, "time", FakeTime)
    response = make().response(finish, error)
    assert response.model_dump_json() == old_wire(make(), finish, error, extra)
    # Python mode too (tests and the bench read it): an absent field is no key, not a None.
    assert response.model_dump()["extra_fields"] == old_extra(make(), extra)


def test_drift_events_count_the_events_the_report_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "time", FakeTime)
    report = drifted().response("stop").extra_fields.alignment
    assert report.drift_events == 1 and report.events == [DriftEvent(**EVENT)]
    assert report.model_dump() == {**ALIGNMENT, "drift_events": 1, "events": [EVENT]}


def test_extra_fields_always_carry_alignment_and_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "time", FakeTime)
    response = state(request()).response("stop")
    with pytest.raises(ValidationError):
        RolloutResponse.model_validate({**response.model_dump(), "extra_fields": {"timing": TIMING}})


@pytest.mark.parametrize(
    ("status", "kind", "message", "extra"),
    [
        (409, "rollout_running", "rollout 'ré/1' is running; retry after it ends", {}),
        (
            422,
            "validation_error",
            "server_url: must be an http:// or https:// URL with a host",
            {"fields": [{"field": "server_url", "message": "must be an http:// or https:// URL"}]},
        ),
    ],
)
def test_an_error_body_writes_the_bytes_of_the_dict_it_replaced(
    status: int, kind: str, message: str, extra: dict[str, Any]
) -> None:
    fields = [FieldError(**f) for f in extra["fields"]] if extra else None
    response = _error(status, kind, message, fields=fields)
    assert response.status == status
    assert response.body == json_dumps({"error": {"type": kind, "message": message, **extra}}).encode()


def test_a_validation_error_lists_its_fields_in_the_body() -> None:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate_json(b'{"rollout_id": "r", "server_url": "ftp://x"}')
    body = json.loads(_validation_response(info.value).body)
    assert body["error"]["fields"] == [
        {"field": "server_url", "message": "Value error, must be an http:// or https:// URL with a host"},
        {"field": "messages", "message": "Field required"},
        {"field": "sampling_params", "message": "Field required"},
    ]
    assert body["error"]["message"] == "; ".join(
        f"{f['field']}: {f['message']}" for f in body["error"]["fields"]
    )


@pytest.mark.parametrize(
    "event",
    [
        # As the agent wrote each kind when events were dicts, keys in that order.
        {
            "turn": 1,
            "kind": "trainer_prompt_mismatch",
            "expected_len": 9,
            "actual_len": 8,
            "first_mismatch": 7,
        },
        {"turn": 2, "kind": "prefix_break", "first_mismatch": 3, "faithful_rewrite_found": True},
        {
            "turn": 2,
            "kind": "trainer_ids_mismatch",
            "first_mismatch": 5,
            "faithful_rewrite_found": False,
            "decoded": "<tool_call>…",
            "rendered": "…",
            "detail": "the trainer's token_ids do not encode the message it returned",
        },
    ],
    ids=lambda event: event["kind"],
)
def test_a_drift_event_writes_the_keys_of_its_kind_in_their_order(event: dict[str, Any]) -> None:
    typed = DriftEvent(**event)
    assert typed.model_dump_json() == json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    assert typed.model_dump() == event
