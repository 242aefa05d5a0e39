"""End to end, token mode: the rollout server against the simulator's engine mode, real processes.

The simulator answers ``/v1/completions`` with a prompt of token ids as vLLM does and checks on
every call that the prompt starts with exactly the previous prompt + the ids it generated. A
token-mode rollout is exact when the simulator recorded no break and the returned trajectory is
what it saw and produced: ``prompt_ids + response_ids`` is its last prompt + its last generated
ids, the mask is 1 exactly on the generated ids, the logprobs are its own. The ids the simulator
samples may not survive decode + re-encode (``split=``, Qwen3.5's empty think block): token mode
stays exact where message mode can only report drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from tests.conftest import Proc, free_port
from tests.rollout_server.test_rollout_e2e import (
    QWEN3,
    QWEN25,
    QWEN35,
    body,
    post_rollout,
    scenario_url,
    sim_record,
)

TRAJECTORY_FIELDS = ("prompt_ids", "response_ids", "response_mask", "response_logprobs")
Q25 = "tok=Qwen--Qwen2.5-7B-Instruct"
Q35 = "tok=Qwen--Qwen3.5-9B"


def tokens_body(server_url: str, **overrides: Any) -> dict[str, Any]:
    return body(server_url, generation="tokens", **overrides)


def assert_trajectory_exact(sim: Proc, result: dict[str, Any]) -> dict[str, Any]:
    """The engine saw no break, and the trajectory is what it saw and produced."""
    assert result["status"] == "COMPLETED", result["error_message"]
    record = sim_record(sim, result["rollout_id"])
    assert record["prefix_breaks"] == [] and record["ok"], record["prefix_breaks"]
    assert record["calls"] == result["metrics"]["num_llm_calls"]
    trajectory = result["extra_fields"]["trajectory"]
    assert set(trajectory) == set(TRAJECTORY_FIELDS)
    ids, mask, logprobs = (trajectory[k] for k in TRAJECTORY_FIELDS[1:])
    assert len(ids) == len(mask) == len(logprobs)
    assert trajectory["prompt_ids"] == record["seq"][: record["prompt_len"]]
    # The simulator's sequence is its last prompt + its last generated ids (it saw every prompt
    # extend the one before); the trajectory is that, then only what closes an open last turn.
    seen = len(record["seq"]) - record["prompt_len"]
    assert ids[:seen] == record["seq"][record["prompt_len"] :]
    assert mask[:seen] == record["mask"] and logprobs[:seen] == record["logprobs"]
    assert mask[seen:] == [0] * len(ids[seen:]) and logprobs[seen:] == [0.0] * len(ids[seen:])
    assert len(ids[seen:]) <= 2, ids[seen:]
    assert sum(mask) == result["metrics"]["response_tokens"]
    assert all(lp == 0.0 for lp, bit in zip(logprobs, mask, strict=True) if not bit)
    return record


@pytest.mark.parametrize(
    ("tokenizer", "spec", "calls"),
    [
        (QWEN3, "sequential/turns=3", 4),
        (QWEN3, "sequential/turns=3/think=1", 4),
        (QWEN3, "parallel/calls=3", 2),
        (QWEN3, "failing", 2),
        (QWEN25, f"sequential/turns=3/{Q25}", 4),
        (QWEN25, f"parallel/calls=3/{Q25}", 2),
        (QWEN25, f"failing/{Q25}", 2),
        (QWEN35, f"sequential/turns=3/think=1/{Q35}", 4),
        (QWEN35, f"parallel/calls=3/{Q35}", 2),
        (QWEN35, f"one/{Q35}", 2),  # the empty think block's "\n" + "\n"
    ],
)
def test_token_rollouts_are_exact(server: Proc, sim: Proc, tokenizer: str, spec: str, calls: int) -> None:
    result = post_rollout(server, tokens_body(scenario_url(sim, spec), tokenizer_name=tokenizer))
    assert result["finish_reason"] == "stop" and result["metrics"]["num_llm_calls"] == calls
    assert result["final_messages"][-1]["content"] == "The answer is 42."
    assert_trajectory_exact(sim, result)
    if spec.startswith("parallel"):
        tools = [m for m in result["final_messages"] if m["role"] == "tool"]
        assert len(tools) == 3 and all(not t["content"].startswith("Error") for t in tools)
    if spec.startswith("failing"):
        contents = [m["content"] for m in result["final_messages"] if m["role"] == "tool"]
        assert len(contents) == 4 and all(c.startswith("Error:") for c in contents)


@pytest.mark.parametrize(
    ("tokenizer", "spec"),
    [
        (QWEN3, "sequential/turns=2/split=word"),
        (QWEN3, "sequential/turns=2/think=1/split=newlines"),
        (QWEN25, f"sequential/turns=2/split=word/{Q25}"),
        (QWEN35, f"sequential/turns=2/split=newlines/{Q35}"),
        (QWEN35, f"parallel/calls=2/think=1/split=word/{Q35}"),
    ],
)
def test_ids_that_do_not_round_trip_stay_exact(server: Proc, sim: Proc, tokenizer: str, spec: str) -> None:
    result = post_rollout(
        server, tokens_body(scenario_url(sim, spec + "/strict=1"), tokenizer_name=tokenizer)
    )
    assert result["finish_reason"] == "stop"
    assert_trajectory_exact(sim, result)


@pytest.mark.parametrize("tokenizer", [QWEN3, QWEN25, QWEN35])
def test_a_stop_without_the_end_of_turn_id_is_closed_with_mask_zero(
    server: Proc, sim: Proc, tokenizer: str
) -> None:
    tok = {QWEN3: "", QWEN25: f"/{Q25}", QWEN35: f"/{Q35}"}[tokenizer]
    spec = f"sequential/turns=2/eot=0/strict=1{tok}"
    result = post_rollout(server, tokens_body(scenario_url(sim, spec), tokenizer_name=tokenizer))
    assert result["finish_reason"] == "stop" and result["metrics"]["num_llm_calls"] == 3
    assert_trajectory_exact(sim, result)
    # Every generated run is followed by the end-of-turn id the server added, with mask 0; the
    # last one too.
    end = AutoTokenizer.from_pretrained(tokenizer).convert_tokens_to_ids("<|im_end|>")
    trajectory = result["extra_fields"]["trajectory"]
    ids, mask = trajectory["response_ids"], trajectory["response_mask"]
    ends = [i + 1 for i in range(len(mask)) if mask[i] == 1 and (i + 1 == len(mask) or mask[i + 1] == 0)]
    assert len(ends) == 3 and all(ids[i] == end and mask[i] == 0 for i in ends)


def test_length_cut(server: Proc, sim: Proc) -> None:
    payload = tokens_body(scenario_url(sim, "long/words=300"), sampling_params={"max_tokens": 20})
    result = post_rollout(server, payload)
    assert (result["finish_reason"], result["metrics"]["response_tokens"]) == ("length", 20)
    assert result["final_messages"][-1]["role"] == "assistant"
    assert_trajectory_exact(sim, result)


@pytest.mark.parametrize("tokenizer", [QWEN3, QWEN35])
def test_budget_and_max_turns(server: Proc, sim: Proc, tokenizer: str) -> None:
    tok = "" if tokenizer == QWEN3 else f"/{Q35}"
    budget = post_rollout(
        server,
        tokens_body(
            scenario_url(sim, f"budget/words=40{tok}"), tokenizer_name=tokenizer, max_tokens_total=150
        ),
    )
    assert (budget["finish_reason"], budget["metrics"]["response_tokens"]) == ("max_tokens", 150)
    assert_trajectory_exact(sim, budget)
    turns = post_rollout(
        server, tokens_body(scenario_url(sim, f"endless{tok}"), tokenizer_name=tokenizer, max_turns=3)
    )
    assert (turns["finish_reason"], turns["metrics"]["num_llm_calls"]) == ("max_turns", 3)
    assert_trajectory_exact(sim, turns)


def test_the_first_prompt_shows_the_tools_and_the_model_name_is_sent(server: Proc, sim: Proc) -> None:
    result = post_rollout(
        server, tokens_body(scenario_url(sim, "one"), sampling_params={"model": "policy-7b"})
    )
    assert assert_trajectory_exact(sim, result)["model"] == "policy-7b"
    assert sim_record(sim, post_rollout(server, tokens_body(sim.url))["rollout_id"])["model"] == QWEN3
    prompt = result["extra_fields"]["trajectory"]["prompt_ids"]
    text = AutoTokenizer.from_pretrained(QWEN3).decode(prompt)
    assert "<tools>" in text and '"name": "divide"' in text


@pytest.mark.parametrize(
    ("spec", "category", "status", "words"),
    [
        ("error/status=429", "rate_limited", 429, "429"),
        ("error/status=400", "trainer_client_error", 400, "400"),
        ("error/status=500", "trainer_server_error", 500, "500"),
        ("error/status=503/at=1", "trainer_server_error", 503, "503"),
        ("malformed/kind=nonjson", "trainer_server_error", None, "JSON"),
        ("malformed/kind=missing", "trainer_server_error", None, "token_ids"),
        ("one/ids=0", "trainer_server_error", None, "return_token_ids"),
    ],
)
def test_engine_faults_end_in_their_categories(
    server: Proc, sim: Proc, spec: str, category: str, status: int | None, words: str
) -> None:
    result = post_rollout(server, tokens_body(scenario_url(sim, spec)))
    assert result["status"] == "ERROR" and result["finish_reason"] is None
    assert result["extra_fields"]["error_category"] == category
    assert result["extra_fields"].get("http_status") == status
    message = result["error_message"]
    assert words in message and "Traceback" not in message, message
    if "at=1" in spec:  # the turn before the failure is kept
        assert [m["role"] for m in result["final_messages"]][-2:] == ["assistant", "tool"]
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "healthy"


def test_refused_connection_is_a_network_error(server: Proc) -> None:
    result = post_rollout(server, tokens_body(f"http://127.0.0.1:{free_port()}"))
    assert result["extra_fields"]["error_category"] == "network_error"


@pytest.fixture(scope="module")
def flag_server(start_server: Callable[..., Proc]) -> Proc:
    """Drift policy "flag" and a 1 s engine timeout."""
    return start_server(ALIGNMENT_DRIFT_POLICY="flag", HTTP_CLIENT_TIMEOUT="1.0", TOKENIZE_WORKERS="1")


def test_engine_timeout(flag_server: Proc, sim: Proc) -> None:
    result = post_rollout(flag_server, tokens_body(scenario_url(sim, "none/latency=3")))
    assert result["extra_fields"]["error_category"] == "timeout"


@pytest.mark.parametrize(
    ("tokenizer", "spec"),
    [
        (QWEN3, "sequential/turns=2/split=word"),
        (QWEN25, f"sequential/turns=2/split=word/{Q25}"),
        (QWEN35, f"one/{Q35}"),
    ],
)
def test_message_mode_reports_as_drift_what_token_mode_keeps_exact(
    flag_server: Proc, sim: Proc, tokenizer: str, spec: str
) -> None:
    url = scenario_url(sim, spec)
    messages = post_rollout(flag_server, body(url, tokenizer_name=tokenizer, return_trajectory=True))
    assert messages["status"] == "COMPLETED"
    assert messages["extra_fields"]["alignment"]["drift_events"] >= 1
    assert sim_record(sim, messages["rollout_id"])["prefix_breaks"] != []
    tokens = post_rollout(flag_server, tokens_body(url, tokenizer_name=tokenizer))
    assert tokens["extra_fields"]["alignment"]["drift_events"] == 0
    assert_trajectory_exact(sim, tokens)


def test_message_mode_with_tools_in_prompt_and_its_trajectory(server: Proc, sim: Proc) -> None:
    result = post_rollout(
        server, body(scenario_url(sim, "sequential/turns=2"), tools_in_prompt=True, return_trajectory=True)
    )
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop"), result["error_message"]
    record = sim_record(sim, result["rollout_id"])
    assert record["ok"] and result["extra_fields"]["alignment"]["drift_events"] == 0
    trajectory = result["extra_fields"]["trajectory"]
    assert trajectory["prompt_ids"] + trajectory["response_ids"] == record["seq"]
    assert trajectory["response_mask"] == record["mask"]
    assert trajectory["response_logprobs"] == record["logprobs"]
    plain = post_rollout(server, body(scenario_url(sim, "one")))
    assert "trajectory" not in plain["extra_fields"]


def test_32_concurrent_token_rollouts(server: Proc, sim: Proc) -> None:
    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=120) as client:
            payloads = [
                tokens_body(
                    scenario_url(sim, "sequential/turns=3/split=word" if i % 2 else "parallel/calls=2")
                )
                for i in range(32)
            ]
            answers = await asyncio.gather(*(client.post(f"{server.url}/rollout", json=p) for p in payloads))
        return [a.json() for a in answers]

    for result in asyncio.run(run()):
        assert_trajectory_exact(sim, result)
