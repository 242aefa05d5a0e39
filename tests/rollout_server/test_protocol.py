"""The wire models of PROTOCOL.md: what a RolloutRequest accepts, what it rejects, what it keeps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from rollout_server.protocol import Message, RolloutRequest, SamplingParams, TrainerCompletion


def minimal(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "rollout_id": "r-1",
        "server_url": "http://127.0.0.1:8000",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "sampling_params": {},
    }
    body.update(overrides)
    return body


def error_locs(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_minimal_request_and_its_defaults() -> None:
    request = RolloutRequest.model_validate(minimal())
    assert request.rollout_id == "r-1"
    assert request.server_url == "http://127.0.0.1:8000"
    assert request.max_turns == 10
    assert request.max_tokens_total == 8192
    assert request.tokenizer_name is None and request.tokenizer_revision is None
    assert request.callback_api_key is None and request.tool_server_url is None
    assert request.metadata == {}
    assert request.sampling_params == SamplingParams(
        temperature=1.0, top_p=1.0, max_tokens=512, stop=None, logprobs=True
    )


def test_minimal_request_from_json() -> None:
    request = RolloutRequest.model_validate_json(json.dumps(minimal()))
    assert request.messages[0].role == "user"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://trainer:8000/", "http://trainer:8000"),
        ("https://trainer.example.com/api/", "https://trainer.example.com/api"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("  http://trainer/  ", "http://trainer"),
    ],
)
def test_server_url_trailing_slash_is_dropped(url: str, expected: str) -> None:
    assert RolloutRequest.model_validate(minimal(server_url=url)).server_url == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://trainer/",
        "localhost:8000",
        "http://",
        "https://",
        "trainer",
        "",
        "http://trainer/?a=1",
        "http://trainer/#x",
    ],
)
def test_bad_server_url_is_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate(minimal(server_url=url))
    assert error_locs(info.value) == {"server_url"}


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"rollout_id": "x" * 257}, "rollout_id"),
        ({"rollout_id": ""}, "rollout_id"),
        ({"rollout_id": "   \t\n"}, "rollout_id"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "tool", "content": "5", "tool_call_id": "c" * 257}]},
            "messages.0.tool_call_id",
        ),
        ({"max_turns": "abc"}, "max_turns"),
        ({"max_turns": 0}, "max_turns"),
        ({"max_turns": 101}, "max_turns"),
        ({"max_tokens_total": 0}, "max_tokens_total"),
        ({"max_tokens_total": 1_000_001}, "max_tokens_total"),
        ({"sampling_params": {"temperature": 2.5}}, "sampling_params.temperature"),
        ({"sampling_params": {"temperature": -0.1}}, "sampling_params.temperature"),
        ({"sampling_params": {"top_p": -0.1}}, "sampling_params.top_p"),
        ({"sampling_params": {"top_p": 1.5}}, "sampling_params.top_p"),
        ({"sampling_params": {"max_tokens": 0}}, "sampling_params.max_tokens"),
        ({"sampling_params": {"max_tokens": 40000}}, "sampling_params.max_tokens"),
        ({"sampling_params": {"stop": "END"}}, "sampling_params.stop"),
        ({"sampling_params": "greedy"}, "sampling_params"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
    ],
)
def test_invalid_request_is_rejected_naming_the_field(overrides: dict[str, Any], loc: str) -> None:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate(minimal(**overrides))
    assert any(found == loc or found.startswith(loc + ".") for found in error_locs(info.value)), error_locs(
        info.value
    )


@pytest.mark.parametrize("missing", ["rollout_id", "server_url", "messages", "sampling_params"])
def test_required_field_missing_is_rejected(missing: str) -> None:
    body = minimal()
    del body[missing]
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate(body)
    assert error_locs(info.value) == {missing}


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_turns", 1), ("max_turns", 100), ("max_tokens_total", 1), ("max_tokens_total", 1_000_000)],
)
def test_range_bounds_are_inclusive(field: str, value: int) -> None:
    assert getattr(RolloutRequest.model_validate(minimal(**{field: value})), field) == value


def test_sampling_param_bounds_are_inclusive() -> None:
    low = SamplingParams.model_validate({"temperature": 0, "top_p": 0, "max_tokens": 1})
    high = SamplingParams.model_validate({"temperature": 2, "top_p": 1, "max_tokens": 32768})
    assert (low.temperature, low.top_p, low.max_tokens) == (0.0, 0.0, 1)
    assert (high.temperature, high.top_p, high.max_tokens) == (2.0, 1.0, 32768)


def test_tool_call_id_of_256_chars_is_accepted() -> None:
    message = Message.model_validate({"role": "tool", "content": "5", "tool_call_id": "c" * 256})
    assert message.tool_call_id == "c" * 256


@pytest.mark.parametrize("role", ["system", "user", "assistant", "tool", "function"])
def test_every_protocol_role_is_accepted(role: str) -> None:
    assert Message.model_validate({"role": role, "content": "x"}).role == role


@pytest.mark.parametrize("content", ["text", None, [{"type": "text", "text": "hi"}]])
def test_content_may_be_a_string_parts_or_null(content: Any) -> None:
    assert Message.model_validate({"role": "user", "content": content}).content == content


def test_extra_message_keys_are_kept() -> None:
    raw = {"role": "assistant", "content": "5", "name": "calc-bot", "reasoning_content": "2 + 3 = 5"}
    request = RolloutRequest.model_validate(minimal(messages=[{"role": "user", "content": "hi"}, raw]))
    dumped = request.messages[1].model_dump(exclude_none=True)
    assert dumped["name"] == "calc-bot"
    assert dumped["reasoning_content"] == "2 + 3 = 5"


@pytest.mark.parametrize("arguments", ['{"a": 5, "b": 3}', {"a": 5, "b": 3}])
def test_tool_call_arguments_may_be_a_string_or_an_object(arguments: Any) -> None:
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": arguments}}
        ],
    }
    request = RolloutRequest.model_validate(minimal(messages=[{"role": "user", "content": "hi"}, assistant]))
    calls = request.messages[1].tool_calls
    assert calls is not None
    assert calls[0].function.arguments == arguments
    assert calls[0].id == "call_1"


def test_tool_call_type_must_be_function() -> None:
    assistant = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "type": "retrieval", "function": {"name": "add"}}],
    }
    with pytest.raises(ValidationError):
        Message.model_validate(assistant)


def test_unknown_request_keys_are_ignored() -> None:
    request = RolloutRequest.model_validate(minimal(surprise=True))
    assert "surprise" not in request.model_dump()


def test_trainer_completion_requires_token_ids_and_prompt_token_ids() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "5"}, "finish_reason": "stop"}
    ok = TrainerCompletion.model_validate({"choices": [choice], "token_ids": [1, 2], "prompt_token_ids": [3]})
    assert ok.token_ids == [1, 2] and ok.logprobs is None
    with pytest.raises(ValidationError):
        TrainerCompletion.model_validate({"choices": [choice], "prompt_token_ids": [3]})
    with pytest.raises(ValidationError):
        TrainerCompletion.model_validate({"choices": [], "token_ids": [1], "prompt_token_ids": [3]})


non_blank_ids = st.text(min_size=1, max_size=256).filter(lambda s: s.strip() != "")


@given(rollout_id=non_blank_ids)
def test_any_non_blank_rollout_id_up_to_256_chars_is_accepted(rollout_id: str) -> None:
    assert RolloutRequest.model_validate(minimal(rollout_id=rollout_id)).rollout_id == rollout_id
    assert (
        RolloutRequest.model_validate_json(json.dumps(minimal(rollout_id=rollout_id))).rollout_id
        == rollout_id
    )


@given(rollout_id=st.text(min_size=257, max_size=400))
def test_any_rollout_id_longer_than_256_chars_is_rejected(rollout_id: str) -> None:
    with pytest.raises(ValidationError) as info:
        RolloutRequest.model_validate(minimal(rollout_id=rollout_id))
    assert error_locs(info.value) == {"rollout_id"}
