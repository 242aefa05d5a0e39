"""Strict input: no silent coercion, NaN and infinities named, unknown top-level fields named
(not refused), and a body over MAX_REQUEST_BODY_BYTES refused with a clear 413."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from rollout_server.protocol import RolloutRequest
from tests.conftest import Proc
from tests.rollout_server.guarded import MAX_BODY, auth, error_of, guarded_server, post, rollout_body

BASE = rollout_body("http://127.0.0.1:9")


def with_field(path: str, raw: str) -> bytes:
    """BASE as JSON with the field at ``path`` (``a.b``) set to the raw JSON text ``raw``."""
    marker = "__RAW_VALUE__"
    body: dict[str, Any] = json.loads(json.dumps(BASE))
    node = body
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = marker
    return json.dumps(body).replace(f'"{marker}"', raw).encode()


COERCIONS = [
    ("sampling_params.max_tokens", "true"),
    ("sampling_params.max_tokens", '"512"'),
    ("sampling_params.max_tokens", "512.0"),
    ("sampling_params.logprobs", '"yes"'),
    ("sampling_params.logprobs", "1"),
    ("sampling_params.temperature", '"0.5"'),
    ("sampling_params.temperature", "true"),
    ("max_turns", '"3"'),
    ("max_turns", "false"),
    ("max_tokens_total", "1e3"),
    ("rollout_id", "123"),
    ("tokenizer_name", "7"),
]


@pytest.mark.parametrize(("path", "raw"), COERCIONS)
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(path: str, raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate_json(with_field(path, raw))
    assert [".".join(map(str, e["loc"])) for e in info.value.errors()] == [path]


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("path", ["sampling_params.temperature", "sampling_params.top_p"])
def test_nan_and_infinities_are_their_own_error(path: str, raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate_json(with_field(path, raw))
    assert [e["type"] for e in info.value.errors()] == ["finite_number"]


def test_exact_types_are_accepted_and_an_integer_is_a_number() -> None:
    request = RolloutRequest.model_validate_json(with_field("sampling_params.temperature", "1"))
    assert request.sampling_params.temperature == 1.0
    assert request.ignored_fields == []


def test_unknown_top_level_fields_are_named_and_dropped() -> None:
    raw = json.dumps({**BASE, "max_turn": 3, "zeta": {}, "metadata": {"kept": True}}).encode()
    request = RolloutRequest.model_validate_json(raw)
    assert request.ignored_fields == ["max_turn", "zeta"]
    assert "max_turn" not in request.model_dump() and request.max_turns == 10
    assert request.metadata == {"kept": True}


def test_declared_fields_are_never_reported_as_unknown() -> None:
    """The rule reads the model's declared fields: a field added to the model is known at once."""
    values = {name: BASE.get(name) for name in RolloutRequest.model_fields if name in BASE}
    assert RolloutRequest.model_validate_json(json.dumps(values)).ignored_fields == []


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


def test_the_server_names_each_refused_field_with_a_message_that_says_why(guarded: Proc) -> None:
    response = post(guarded, with_field("sampling_params.max_tokens", '"512"'))
    assert response.status_code == 422
    error = error_of(response)
    assert error["fields"] == [
        {
            "field": "sampling_params.max_tokens",
            "message": "must be a JSON integer (not a string, boolean or float)",
        }
    ]
    nan = error_of(post(guarded, with_field("sampling_params.temperature", "NaN")))
    assert nan["fields"][0]["message"].startswith("must be a finite number")


def test_a_typo_is_visible_in_the_response_and_the_log(guarded: Proc, sim: Proc) -> None:
    body = rollout_body(f"{sim.url}/s/sequential/turns=1", max_turn=3)
    response = post(guarded, body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "COMPLETED"
    assert result["extra_fields"]["ignored_fields"] == ["max_turn"]
    assert any(
        "ignored unknown request fields: max_turn" in line and body["rollout_id"] in line
        for line in guarded.log_text().splitlines()
    )


def test_a_body_over_the_limit_is_a_413_naming_the_limit(guarded: Proc, sim: Proc) -> None:
    body = rollout_body(sim.url, metadata={"padding": "x" * MAX_BODY})
    response = post(guarded, body)
    assert response.status_code == 413
    error = error_of(response)
    assert str(MAX_BODY) in error["message"] and "MAX_REQUEST_BODY_BYTES" in error["message"]


def test_a_chunked_body_over_the_limit_is_a_413_too(guarded: Proc) -> None:
    host, port = guarded.url.removeprefix("http://").split(":")
    chunk = b"x" * 8192
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            "POST /rollout HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/json\r\nAuthorization: {auth()['authorization']}\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = b""
        try:
            for _ in range(2 * MAX_BODY // len(chunk)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed while the body was still coming
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
