"""End to end: the rollout server and the trainer simulator as real processes over real sockets.

Every completed rollout is checked on the trainer's side: the simulator saw no mask or prefix
error, and the token sequence it accumulated is the tokenization of the final conversation.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, free_port
from tokenize_pool.codec import ChatCodec

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"
SYSTEM = "You are a calculator agent. Use the tools add, subtract, multiply and divide."
_session_codecs: list[Callable[[str], ChatCodec]] = []


@pytest.fixture(autouse=True, scope="module")
def _use_session_codecs(codec_of: Callable[[str], ChatCodec]) -> None:
    """The module's helpers check with the session's tokenizers (``codec_of``), not their own."""
    _session_codecs[:] = [codec_of]


def codec(name: str) -> ChatCodec:
    return _session_codecs[0](name)


def body(server_url: str, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "rollout_id": f"r-{uuid.uuid4().hex}",
        "server_url": server_url,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is (2+3)*4?"}],
        "sampling_params": {"temperature": 1.0, "max_tokens": 512},
        "tokenizer_name": QWEN3,
    }
    request.update(overrides)
    return request


def scenario_url(sim: Proc, spec: str) -> str:
    return f"{sim.url}/s/{spec}"


def post_rollout(server: Proc, payload: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/rollout", json=payload, timeout=timeout)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["rollout_id"] == payload["rollout_id"]
    return result


def sim_record(sim: Proc, rollout_id: str) -> dict[str, Any]:
    response = httpx.get(f"{sim.url}/sim/rollouts/{rollout_id}", timeout=10)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def assert_trained_sequence_exact(
    sim: Proc, result: dict[str, Any], tokenizer: str = QWEN3
) -> dict[str, Any]:
    """The trainer saw no error, and its sequence is the tokenization of the final conversation."""
    record = sim_record(sim, result["rollout_id"])
    assert record["mask_errors"] == [] and record["prefix_breaks"] == [], record
    assert record["ok"]
    c = codec(tokenizer)
    final_ids = c.encode(c.render_reference(result["final_messages"], add_generation_prompt=False))
    seq = record["seq"]
    assert final_ids[: len(seq)] == seq, "final conversation does not re-tokenize to the trained sequence"
    tail = c.decode(final_ids[len(seq) :])
    allowed = str(c.eos_token) if result["finish_reason"] in ("length", "max_tokens") else ""
    assert tail.removeprefix(allowed).strip() == "", f"unexpected tail {tail!r}"
    # The mask has one bit per response token; ones are exactly the generated tokens.
    mask = record["mask"]
    assert len(mask) == len(seq) - record["prompt_len"]
    align = result["extra_fields"]["alignment"]
    assert sum(mask) == result["metrics"]["response_tokens"] == align["response_mask_ones"]
    assert mask.count(0) == align["response_mask_zeros"]
    assert align["sequence_length"] == len(seq)
    assert align["drift_events"] == 0
    return record


def test_no_tool_rollout(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(sim.url))
    assert (result["status"], result["finish_reason"], result["error_message"]) == ("COMPLETED", "stop", None)
    assert result["final_messages"][-1]["role"] == "assistant"
    assert result["final_messages"][-1]["content"] == "The answer is 42."
    metrics = result["metrics"]
    assert set(metrics) == {
        "total_latency_ms",
        "llm_latency_ms",
        "tool_latency_ms",
        "num_llm_calls",
        "num_tool_calls",
        "prompt_tokens",
        "response_tokens",
        "max_context_tokens",
    }
    assert metrics["num_llm_calls"] == 1 and metrics["num_tool_calls"] == 0
    record = assert_trained_sequence_exact(sim, result)
    assert record["mask"] == [1] * metrics["response_tokens"]


def test_two_turn_tool_rollout(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "one")))
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop")
    roles = [m["role"] for m in result["final_messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert result["final_messages"][3]["content"] == "5"
    timing = result["extra_fields"]["timing"]
    assert len(timing["turn_overhead_ms"]) == 2 and timing["server_ms"] >= sum(timing["turn_overhead_ms"])
    assert result["metrics"]["num_llm_calls"] == 2 and result["metrics"]["num_tool_calls"] == 1
    assert_trained_sequence_exact(sim, result)


@pytest.mark.parametrize(
    ("tokenizer", "spec"),
    [
        (QWEN3, "sequential/turns=10"),
        (QWEN3, "sequential/turns=10/think=1"),
        (QWEN25, "sequential/turns=10/tok=Qwen--Qwen2.5-7B-Instruct"),
        (QWEN35, "sequential/turns=10/think=1/tok=Qwen--Qwen3.5-9B"),
    ],
)
def test_ten_turn_tool_rollout_is_exact(server: Proc, sim: Proc, tokenizer: str, spec: str) -> None:
    result = post_rollout(server, body(scenario_url(sim, spec), tokenizer_name=tokenizer, max_turns=11))
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop"), result["error_message"]
    assert result["metrics"]["num_llm_calls"] == 11 and result["metrics"]["num_tool_calls"] == 10
    record = assert_trained_sequence_exact(sim, result, tokenizer)
    align = result["extra_fields"]["alignment"]
    assert align["fast_path_turns"] == 10
    assert align["tokens_encoded"] <= 1.1 * len(record["seq"])
    print(
        f"\n10-turn {tokenizer} {spec}: length {len(record['seq'])}, prompt {record['prompt_len']}, "
        f"mask ones {sum(record['mask'])}, mask zeros {record['mask'].count(0)}, "
        f"tokens encoded {align['tokens_encoded']}"
    )


def test_parallel_tool_calls(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "parallel/calls=4")))
    assert result["status"] == "COMPLETED" and result["metrics"]["num_tool_calls"] == 4
    tools = [m for m in result["final_messages"] if m["role"] == "tool"]
    calls = result["final_messages"][2]["tool_calls"]
    assert [t["tool_call_id"] for t in tools] == [c["id"] for c in calls]
    assert all(not t["content"].startswith("Error") for t in tools)
    assert_trained_sequence_exact(sim, result)


def test_failing_tools_become_tool_messages(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "failing")))
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop")
    contents = [m["content"] for m in result["final_messages"] if m["role"] == "tool"]
    assert len(contents) == 4 and all(c.startswith("Error:") for c in contents)
    assert "division by zero" in contents[0]
    assert "unknown tool" in contents[1]
    assert "must be a number" in contents[2]
    assert "not valid JSON" in contents[3]
    assert_trained_sequence_exact(sim, result)


def test_finish_max_turns(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "endless"), max_turns=3))
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "max_turns")
    assert result["metrics"]["num_llm_calls"] == 3
    assert result["final_messages"][-1]["role"] == "assistant"
    assert_trained_sequence_exact(sim, result)


def test_finish_length(server: Proc, sim: Proc) -> None:
    payload = body(scenario_url(sim, "long/words=300"), sampling_params={"max_tokens": 20})
    result = post_rollout(server, payload)
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "length")
    assert result["metrics"]["response_tokens"] == 20
    assert result["final_messages"][-1]["role"] == "assistant"
    assert_trained_sequence_exact(sim, result)


def test_finish_max_tokens_budget(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "budget/words=40"), max_tokens_total=150))
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "max_tokens")
    assert result["metrics"]["response_tokens"] <= 150
    assert result["final_messages"][-1]["role"] == "assistant"
    assert_trained_sequence_exact(sim, result)


def test_callback_api_key_is_sent_as_bearer(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "one/auth=s3cret"), callback_api_key="s3cret"))
    assert result["status"] == "COMPLETED"
    assert sim_record(sim, result["rollout_id"])["auth"] == "Bearer s3cret"


@pytest.mark.parametrize(
    ("spec", "category", "status"),
    [
        ("error/status=429", "rate_limited", 429),
        ("error/status=400", "trainer_client_error", 400),
        ("error/status=500", "trainer_server_error", 500),
        ("error/status=503/at=1", "trainer_server_error", 503),
        ("malformed/kind=nonjson", "trainer_server_error", None),
        ("malformed/kind=missing", "trainer_server_error", None),
    ],
)
def test_trainer_errors(server: Proc, sim: Proc, spec: str, category: str, status: int | None) -> None:
    result = post_rollout(server, body(scenario_url(sim, spec)))
    assert result["status"] == "ERROR" and result["finish_reason"] is None
    assert result["extra_fields"]["error_category"] == category
    assert result["extra_fields"].get("http_status") == status
    assert "Traceback" not in result["error_message"]
    if "at=1" in spec:  # the turn before the failure is kept
        assert [m["role"] for m in result["final_messages"]][-2:] == ["assistant", "tool"]


def test_refused_connection_is_network_error(server: Proc) -> None:
    result = post_rollout(server, body(f"http://127.0.0.1:{free_port()}"))
    assert result["extra_fields"]["error_category"] == "network_error"
    assert "http_status" not in result["extra_fields"]


def test_unknown_tokenizer_fails_fast_and_alone(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "one"), tokenizer_name="nobody/no-such-tokenizer"))
    assert result["extra_fields"]["error_category"] == "tokenizer_error"
    assert "no-such-tokenizer" in result["error_message"]
    assert result["metrics"]["num_llm_calls"] == 0  # fast: before any trainer call
    ok = post_rollout(server, body(scenario_url(sim, "one")))
    assert ok["status"] == "COMPLETED"


def test_a_tokenizer_that_cannot_load_ends_the_rollout_without_calling_the_trainer(
    server: Proc, sim: Proc
) -> None:
    # The tokenizer is resolved before the first call: the trainer (here answering only after
    # 30 s) is never called. A first prompt that fails later drops the call that is out
    # (test_agent_first_call.py).
    payload = body(scenario_url(sim, "one/latency=30"), tokenizer_name="nobody/still-no-such-tokenizer")
    result = post_rollout(server, payload)
    assert result["extra_fields"]["error_category"] == "tokenizer_error"
    assert result["metrics"]["num_llm_calls"] == 0 and result["final_messages"][-1]["role"] == "user"
    assert httpx.get(f"{sim.url}/sim/rollouts/{payload['rollout_id']}", timeout=10).status_code == 404


@pytest.fixture(scope="module")
def flag_server(start_server: Callable[..., Proc]) -> Proc:
    """Drift policy "flag" and a 1 s trainer timeout."""
    return start_server(ALIGNMENT_DRIFT_POLICY="flag", HTTP_CLIENT_TIMEOUT="1.0", TOKENIZE_WORKERS="1")


def test_trainer_timeout(flag_server: Proc, sim: Proc) -> None:
    result = post_rollout(flag_server, body(scenario_url(sim, "none/latency=3")))
    assert result["extra_fields"]["error_category"] == "timeout"


def test_drift_fails_the_rollout_by_default(server: Proc, sim: Proc) -> None:
    result = post_rollout(server, body(scenario_url(sim, "drift")))
    assert result["status"] == "ERROR"
    assert result["extra_fields"]["error_category"] == "alignment_error"
    align = result["extra_fields"]["alignment"]
    assert align["drift_events"] == 1 and align["events"][0]["kind"] == "prefix_break"
    assert align["events"][0]["faithful_rewrite_found"] is False
    record = sim_record(sim, result["rollout_id"])
    assert record["calls"] == 1 and record["mask_errors"] == []  # the drifted call was never sent


def test_drift_flagged_completes_with_correct_lengths(flag_server: Proc, sim: Proc) -> None:
    result = post_rollout(flag_server, body(scenario_url(sim, "drift/turns=2")))
    assert (result["status"], result["finish_reason"]) == ("COMPLETED", "stop")
    align = result["extra_fields"]["alignment"]
    assert align["drift_events"] == 2
    record = sim_record(sim, result["rollout_id"])
    assert record["mask_errors"] == []  # every mask had the length of the growth the trainer saw
    assert len(record["prefix_breaks"]) == 2  # and the trainer saw the breaks we reported


def test_qwen35_empty_think_drift_is_reported_not_hidden(flag_server: Proc, sim: Proc) -> None:
    spec = "one/tok=Qwen--Qwen3.5-9B"
    result = post_rollout(flag_server, body(scenario_url(sim, spec), tokenizer_name=QWEN35))
    assert result["status"] == "COMPLETED"
    assert result["extra_fields"]["alignment"]["drift_events"] == 1
    assert sim_record(sim, result["rollout_id"])["mask_errors"] == []


def _invalid_bodies(sim_url: str) -> list[tuple[str, Any]]:
    good = body(sim_url)
    without = {k: v for k, v in good.items() if k != "messages"}
    return [
        ("messages", without),
        ("server_url", {**good, "server_url": "ftp://example.com"}),
        ("server_url", {**good, "server_url": "localhost:8000"}),
        ("messages", {**good, "messages": []}),
        ("rollout_id", {**good, "rollout_id": "x" * 257}),
        ("rollout_id", {**good, "rollout_id": 12}),
        ("messages", {**good, "messages": "hello"}),
        ("max_turns", {**good, "max_turns": "many"}),
        ("messages.0.role", {**good, "messages": [{"role": "wizard", "content": "hi"}]}),
        ("sampling_params.temperature", {**good, "sampling_params": {"temperature": 3.5}}),
        ("max_tokens_total", {**good, "max_tokens_total": 0}),
        ("sampling_params.max_tokens", {**good, "sampling_params": {"max_tokens": 40000}}),
        ("max_turns", {**good, "max_turns": 101}),
        ("sampling_params", {k: v for k, v in good.items() if k != "sampling_params"}),
    ]


def test_invalid_bodies_get_4xx_naming_the_field(server: Proc, sim: Proc) -> None:
    for field, payload in _invalid_bodies(sim.url):
        response = httpx.post(f"{server.url}/rollout", json=payload, timeout=10)
        assert response.status_code == 422, (field, response.text)
        error = response.json()["error"]
        assert error["type"] == "validation_error"
        assert field in [f["field"] for f in error["fields"]], (field, error)
        assert "Traceback" not in response.text and 'File "' not in response.text
    for raw in (b"{not json", b"", b"[1, 2", '{"rollout_id": "\u00e9'.encode()):
        response = httpx.post(f"{server.url}/rollout", content=raw, timeout=10)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_json"
    response = httpx.post(f"{server.url}/rollout", json=[1, 2], timeout=10)
    assert response.status_code == 422


def test_health_and_metrics(server: Proc, sim: Proc) -> None:
    post_rollout(server, body(scenario_url(sim, "one")))
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "healthy" and health["service"] == "rollout-server"
    assert health["ready"] is True
    pool = health["tokenize_pool"]
    assert pool["pid"] == health["worker_pid"]  # one Sanic worker owns its pool in-process
    assert pool["workers_alive"] == 2 and all(QWEN3 in w["tokenizers"] for w in pool["workers"])
    assert 2 <= pool["pipeline_depth"] <= 32
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'rollout_requests_total{status="completed"}' in text
    assert "rollout_duration_seconds_bucket" in text and "tokenizer_cache_hits_total" in text
    assert "event_loop_lag_seconds_count" in text and "rollout_turn_overhead_seconds_count" in text
    assert "rollout_start_wait_seconds_count" in text
    assert "\ntokenize_requests_in_flight " in text and "\ntokenize_requests_queued 0\n" in text
    # The trainer connection pool: the rollout's connection is kept for the next call.
    gauge = {
        name: float(value)
        for name, value in re.findall(r"^trainer_connections_(\w+) (\S+)$", text, flags=re.MULTILINE)
    }
    assert gauge["open"] >= gauge["idle"] >= 1 and gauge["waiting"] == 0 and gauge["max"] >= gauge["open"]


async def _many(server: Proc, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        responses = await asyncio.gather(*(client.post(f"{server.url}/rollout", json=p) for p in payloads))
    assert all(r.status_code == 200 for r in responses)
    return [r.json() for r in responses]


def test_64_concurrent_rollouts(server: Proc, sim: Proc) -> None:
    payloads = [body(scenario_url(sim, f"sequential/turns={1 + i % 4}/latency=0.05")) for i in range(64)]
    results = asyncio.run(_many(server, payloads))
    assert [r["status"] for r in results] == ["COMPLETED"] * 64
    for result in results:
        assert_trained_sequence_exact(sim, result)


def test_several_sanic_workers_share_one_pool(
    start_server: Callable[..., Proc], sim: Proc, tmp_path: Path
) -> None:
    multi = start_server(ROLLOUT_SERVER_WORKERS="2", TOKENIZE_WORKERS="1")
    payloads = [body(scenario_url(sim, "sequential/turns=2")) for _ in range(8)]
    results = asyncio.run(_many(multi, payloads))
    assert [r["status"] for r in results] == ["COMPLETED"] * 8
    for result in results:
        assert_trained_sequence_exact(sim, result)
    health = httpx.get(f"{multi.url}/health", timeout=10).json()
    # The pool lives in the pool host, not in the Sanic worker that answered.
    assert health["tokenize_pool"]["pid"] != health["worker_pid"]
    assert health["tokenize_pool"]["workers_alive"] == 1


@pytest.mark.parametrize("sanic_workers", ["1", "2"], ids=["in-process-pool", "pool-host"])
def test_pool_processes_log_in_the_servers_json_format(
    start_server: Callable[..., Proc], sanic_workers: str
) -> None:
    """LOG_FORMAT=json holds for every process: a preload that fails in a tokenize worker is a
    JSON line with that worker's pid, and no line of the log is plain text."""
    missing = "nobody/not-a-tokenizer"
    server = start_server(
        wait_ready=False,
        ROLLOUT_SERVER_WORKERS=sanic_workers,
        TOKENIZE_WORKERS="1",
        PRELOAD_TOKENIZERS=f"Qwen/Qwen3-8B,{missing}",
    )
    deadline = time.monotonic() + 90
    while f"preloading {missing} failed" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.2)
    entries = [json.loads(line) for line in server.log_text().splitlines() if line.strip()]
    failures = [e for e in entries if f"preloading {missing} failed" in e["message"]]
    assert [e["level"] for e in failures] == ["ERROR"]
    assert failures[0]["pid"] != server.popen.pid
