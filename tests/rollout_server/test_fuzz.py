"""Property-based fuzzing of POST /rollout on a real guarded server, with the trainer simulator
as the only URL it may call: whatever the body, no answer is a 5xx, none carries a stack trace,
every refusal has the JSON error shape, and the server is healthy afterwards.

Bodies are built around a valid request: fields dropped, replaced by any JSON value (NaN and
infinities included), nested structures mangled, unknown fields added, or the bytes garbled.
Hypothesis runs derandomized (a fixed seed per test) with a bounded number of examples.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_server.protocol import RolloutRequest
from tests.conftest import Proc
from tests.rollout_server.guarded import API_KEY, guarded_server

FUZZ = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
LEAKS = ("Traceback", 'File "', "Internal server error")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ABSENT = object()
roles = st.sampled_from(["system", "user", "assistant", "tool"])
valid_calls = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(max_size=8), "type": st.just("function")},
        optional={},
    ).map(lambda c: {**c, "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}),
    max_size=2,
)
valid_message = st.fixed_dictionaries(
    {"role": roles, "content": st.text(max_size=30) | st.none()},
    optional={"tool_calls": valid_calls, "tool_call_id": st.text(max_size=8), "name": st.text(max_size=8)},
)
valid_sampling = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 64),
        "stop": st.lists(st.text(max_size=5), max_size=2) | st.none(),
        "logprobs": st.booleans(),
    },
)


def mangled(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, else any JSON value or absent: about half the bodies pass
    validation and run a rollout against the simulator."""
    return st.integers(0, 19).flatmap(
        lambda n: json_values if n == 19 else st.just(ABSENT) if n == 18 else valid
    )


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


@pytest.fixture(scope="module")
def client() -> Any:
    with httpx.Client(timeout=120, headers={"authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def body_strategy(sim: Proc) -> st.SearchStrategy[dict[str, Any]]:
    urls = st.sampled_from(
        [
            f"{sim.url}/s/none",
            f"{sim.url}/s/sequential/turns=1",
            f"{sim.url}/s/malformed",
            "http://10.255.255.1:9",
        ]
    )
    fields = {
        "rollout_id": mangled(st.builds(lambda: f"fuzz-{uuid.uuid4().hex}")),
        "server_url": mangled(urls),
        "messages": mangled(st.lists(valid_message, min_size=1, max_size=4)),
        "sampling_params": mangled(valid_sampling),
        "tokenizer_name": mangled(st.sampled_from(["Qwen/Qwen3-8B", None, "no-such/tokenizer"])),
        "max_turns": mangled(st.integers(1, 3)),
        "max_tokens_total": mangled(st.integers(1, 256)),
        "metadata": mangled(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
        "tool_server_url": st.one_of(st.just(ABSENT), st.just(ABSENT), st.just(ABSENT), urls, json_values),
    }
    unknown = st.dictionaries(
        st.text(max_size=12).filter(lambda k: k not in RolloutRequest.model_fields), json_values, max_size=2
    )
    return st.builds(
        lambda chosen, extra: {k: v for k, v in {**chosen, **extra}.items() if v is not ABSENT},
        st.fixed_dictionaries(fields),
        unknown,
    )


def check(response: httpx.Response) -> int:
    assert response.status_code < 500, response.text[:500]
    for leak in LEAKS:
        assert leak not in response.text, response.text[:500]
    body = response.json()
    if response.status_code == 200:
        assert body["status"] in ("COMPLETED", "ERROR") and "metrics" in body
    else:
        assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return response.status_code


def test_fuzzed_bodies_never_get_a_5xx_or_a_stack_trace(
    guarded: Proc, sim: Proc, client: httpx.Client
) -> None:
    statuses: list[int] = []

    @FUZZ
    @given(body=body_strategy(sim))
    def run(body: dict[str, Any]) -> None:
        statuses.append(check(client.post(f"{guarded.url}/rollout", content=json.dumps(body).encode())))

    run()
    print("fuzzed statuses", {code: statuses.count(code) for code in sorted(set(statuses))})
    assert statuses.count(200) >= 20, "too few fuzzed bodies reached the agent loop"


def test_fuzzed_bytes_never_get_a_5xx_or_a_stack_trace(guarded: Proc, client: httpx.Client) -> None:
    valid = json.dumps({"rollout_id": "x", "server_url": "http://x", "messages": [], "sampling_params": {}})

    @FUZZ
    @given(
        raw=st.binary(max_size=200)
        | st.builds(
            lambda cut, junk: valid.encode()[:cut] + junk, st.integers(0, len(valid)), st.binary(max_size=8)
        )
    )
    def run(raw: bytes) -> None:
        check(client.post(f"{guarded.url}/rollout", content=raw))

    run()


def test_the_server_is_healthy_and_logged_no_stack_trace_after_fuzzing(guarded: Proc, sim: Proc) -> None:
    """Runs after the two above (pytest keeps a module's order), on the same server."""
    health = httpx.get(guarded.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.json()["rollouts"]["in_flight"] == 0
    assert "Traceback" not in guarded.log_text()
