"""The trainer simulator: scenario scripting and bookkeeping without a server, then over HTTP.

The HTTP tests start ``python -m rollout_server.sim`` as a real subprocess on a free port with
a freshly seeded Hugging Face cache, and drive it like a correct rollout server would: mask
null on the first call, then the growth computed by rendering and tokenizing the conversation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import PreTrainedTokenizerBase

from rollout_server.sim.model import render_prompt, sample_turn
from rollout_server.sim.scenarios import (
    BAD_JSON_ARGUMENTS,
    FINAL_ANSWER,
    HttpFault,
    MalformedReply,
    RouteError,
    Turn,
    parse_route,
    script_turn,
    words,
)
from rollout_server.sim.state import RolloutState, SimState, check_prompt, commit_turn

REPO_ROOT = Path(__file__).resolve().parents[3]
QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"
USER = {"role": "user", "content": "What is 2 + 3, then times 4?"}


class Driver:
    """A correct client: renders and tokenizes the conversation itself to compute each mask."""

    def __init__(
        self, http: httpx.Client, base: str, path: str, tok: PreTrainedTokenizerBase, rollout_id: str
    ) -> None:
        self.http, self.base, self.tok, self.rollout_id = http, base, tok, rollout_id
        self.url = f"{base}/s/{path}/v1/completions" if path else f"{base}/v1/completions"
        self.messages: list[dict[str, Any]] = [USER]
        self.trained: int | None = None
        self.string_arguments = False
        self.keep_empty_think = False

    def mask(self) -> list[int] | None:
        if self.trained is None:
            return None
        text = self.tok.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=False)
        return [0] * (len(self.tok.encode(text, add_special_tokens=False)) - self.trained)

    def post(self, mask: Any = "auto", **extra: Any) -> httpx.Response:
        body = {
            "model": "default",
            "rollout_id": self.rollout_id,
            "messages": self.messages,
            "response_mask": self.mask() if mask == "auto" else mask,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_tokens": 512,
            "stop": None,
            "logprobs": True,
            **extra,
        }
        return self.http.post(self.url, json=body)

    def step(self) -> dict[str, Any]:
        response = self.post()
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        self.trained = len(data["prompt_token_ids"]) + len(data["token_ids"])
        self._append(data["choices"][0]["message"])
        return data

    def _append(self, message: dict[str, Any]) -> None:
        message = dict(message)
        if self.keep_empty_think and message.get("reasoning_content") == "":
            message["reasoning_content"] = "\n"
        calls = message.get("tool_calls") or []
        message["tool_calls"] = [self._as_template_call(c) for c in calls]
        self.messages.append(message)
        for call in calls:
            self.messages.append(
                {
                    "role": "tool",
                    "content": f"result of {call['function']['name']}",
                    "tool_call_id": call["id"],
                }
            )

    def _as_template_call(self, call: dict[str, Any]) -> dict[str, Any]:
        raw = call["function"]["arguments"]
        try:
            arguments = raw if self.string_arguments else json.loads(raw)
        except json.JSONDecodeError:
            arguments = raw
        return {**call, "function": {"name": call["function"]["name"], "arguments": arguments}}

    def run(self, max_calls: int = 20) -> list[dict[str, Any]]:
        answers = []
        for _ in range(max_calls):
            answers.append(self.step())
            if answers[-1]["choices"][0]["finish_reason"] != "tool_calls":
                break
        return answers

    def inspect(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(f"{self.base}/sim/rollouts/{self.rollout_id}").json()
        return data


def _url(base: str, path: str = "") -> str:
    return f"{base}/s/{path}/v1/completions" if path else f"{base}/v1/completions"


def test_parse_route_reads_common_and_scenario_options() -> None:
    route = parse_route("sequential/turns=10/latency=0.2/tok=Qwen--Qwen2.5-7B-Instruct/think=1/auth=s3cret")
    assert (route.scenario, route.latency, route.tokenizer, route.think, route.auth) == (
        "sequential",
        0.2,
        QWEN25,
        True,
        "s3cret",
    )
    assert dict(route.options) == {"turns": "10"}
    assert parse_route("") == parse_route("none")


@pytest.mark.parametrize(
    "path",
    [
        "nope",
        "sequential/turns=x",
        "one/turns=2",
        "malformed/kind=odd",
        "long/words",
        "none/latency=fast",
        "error/status=200",
    ],
)
def test_parse_route_rejects_bad_paths(path: str) -> None:
    with pytest.raises(RouteError):
        parse_route(path)


def test_scripts_follow_the_turn_count() -> None:
    seq = parse_route("sequential/turns=5")
    names = [script_turn(seq, t).tool_calls[0].name for t in range(5)]  # type: ignore[union-attr]
    assert names == ["add", "subtract", "multiply", "divide", "add"]
    assert script_turn(seq, 5) == Turn(content=FINAL_ANSWER)
    assert len(script_turn(parse_route("parallel/calls=4"), 0).tool_calls) == 4  # type: ignore[union-attr]
    failing = script_turn(parse_route("failing"), 0)
    assert isinstance(failing, Turn) and failing.tool_calls[-1].arguments == BAD_JSON_ARGUMENTS
    assert script_turn(parse_route("endless"), 99).tool_calls  # type: ignore[union-attr]
    assert script_turn(parse_route("long/words=7"), 0) == Turn(content=words(7))
    assert script_turn(parse_route("drift"), 0).compact_args  # type: ignore[union-attr]
    assert script_turn(parse_route("error/status=429/at=1"), 1) == HttpFault(status=429)
    assert isinstance(script_turn(parse_route("error/status=429/at=1"), 0), Turn)
    assert script_turn(parse_route("malformed/kind=missing"), 0) == MalformedReply(kind="missing")


def test_bookkeeping_accepts_exact_zero_mask_and_reports_breaks() -> None:
    state = RolloutState(rollout_id="r")
    assert check_prompt(state, [1, 2, 3], [0]).mask_error == "response_mask must be null on the first call"
    commit_turn(state, [1, 2, 3], [7, 8], [-0.5, -0.25])
    assert (state.prompt_len, state.seq, state.mask) == (3, [1, 2, 3, 7, 8], [1, 1])
    good = check_prompt(state, [1, 2, 3, 7, 8, 4, 5], [0, 0])
    assert (good.growth, good.prefix_break, good.mask_error) == (2, None, None)
    assert (
        check_prompt(state, [1, 2, 3, 7, 8, 4, 5], [0]).mask_error == "response_mask has length 1, expected 2"
    )
    assert "expected 0" in str(check_prompt(state, [1, 2, 3, 7, 8, 4, 5], [0, 1]).mask_error)
    assert check_prompt(state, [1, 2, 3, 4, 4, 5, 6], [0, 0]).prefix_break == 3
    commit_turn(state, [1, 2, 3, 7, 8, 4, 5], [9], [-1.0])
    assert state.mask == [1, 1, 0, 0, 1] and state.ok
    assert state.logprobs == [-0.5, -0.25, 0.0, 0.0, -1.0]
    store = SimState()
    store.open("a").mask_errors.append("x")
    assert store.stats() == {
        "rollouts": 1,
        "calls": 0,
        "prefix_breaks": 0,
        "mask_errors": 1,
        "rollouts_not_ok": 1,
    }


def test_sampled_text_is_the_template_rendering_of_the_last_turn(
    toks: dict[str, PreTrainedTokenizerBase],
) -> None:
    tok = toks[QWEN3]
    prompt, _ = render_prompt(tok, [USER])
    turn = script_turn(parse_route("drift"), 0)
    assert isinstance(turn, Turn)
    sampled = sample_turn(tok, [USER], prompt, turn, t=0, think=False, max_tokens=100)
    compact = '<tool_call>\n{"name": "add", "arguments": {"a":2,"b":1}}\n</tool_call><|im_end|>'
    assert tok.decode(sampled.token_ids) == "<think>\n\n</think>\n\n" + compact
    assert sampled.message["tool_calls"][0]["function"]["arguments"] == '{"a": 2, "b": 1}'
    assert sampled.message["reasoning_content"] == ""


def test_qwen25_multi_turn_with_correct_masks_is_ok(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "sequential/turns=3/tok=Qwen--Qwen2.5-7B-Instruct", toks[QWEN25], "q25-seq")
    answers = driver.run()
    assert [a["choices"][0]["finish_reason"] for a in answers] == ["tool_calls"] * 3 + ["stop"]
    assert "reasoning_content" not in answers[0]["choices"][0]["message"]
    report = driver.inspect()
    assert report["ok"] and report["calls"] == 4
    assert len(report["mask"]) == len(report["seq"]) - report["prompt_len"]
    assert sum(report["mask"]) == sum(len(a["token_ids"]) for a in answers)


def test_qwen25_parallel_calls_are_ok(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "parallel/calls=3/tok=Qwen--Qwen2.5-7B-Instruct", toks[QWEN25], "q25-par")
    answers = driver.run()
    assert len(answers[0]["choices"][0]["message"]["tool_calls"]) == 3
    assert driver.inspect()["ok"]


def test_qwen25_string_arguments_break_the_prefix(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "one/tok=Qwen--Qwen2.5-7B-Instruct", toks[QWEN25], "q25-str")
    driver.string_arguments = True
    driver.run()
    report = driver.inspect()
    assert not report["ok"] and report["prefix_breaks"][0]["call"] == 2 and not report["mask_errors"]


def test_qwen3_with_reasoning_is_ok(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "sequential/turns=2/think=1", toks[QWEN3], "q3-think")
    answers = driver.run()
    assert answers[0]["choices"][0]["message"]["reasoning_content"] == "Let me work this out step by step."
    assert driver.inspect()["ok"]


def test_qwen3_drops_an_empty_think_block_on_rerender(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "one", toks[QWEN3], "q3-empty")
    answers = driver.run()
    report = driver.inspect()
    assert report["prefix_breaks"] == [{"call": 2, "index": len(answers[0]["prompt_token_ids"])}]
    assert not report["mask_errors"]


def test_qwen3_keeps_an_empty_think_block_given_a_newline(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "one", toks[QWEN3], "q3-newline")
    driver.keep_empty_think = True
    driver.run()
    assert driver.inspect()["ok"]


def test_failing_calls_keep_raw_bad_json(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "failing/think=1", toks[QWEN3], "q3-fail")
    answers = driver.run()
    calls = answers[0]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["divide", "sqrt", "add", "multiply"]
    assert calls[3]["function"]["arguments"] == BAD_JSON_ARGUMENTS
    assert BAD_JSON_ARGUMENTS in toks[QWEN3].decode(answers[0]["token_ids"])
    assert driver.inspect()["ok"]


def test_drift_is_reported(sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]) -> None:
    driver = Driver(http, sim, "drift/think=1", toks[QWEN3], "q3-drift")
    driver.run()
    assert [b["call"] for b in driver.inspect()["prefix_breaks"]] == [2, 3]


def test_wrong_masks_are_rejected_and_recorded(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "sequential/think=1", toks[QWEN3], "q3-mask")
    first = driver.post(mask=[0])
    assert first.status_code == 422
    driver.step()
    right = driver.mask()
    assert right is not None
    wrong = driver.post(mask=right + [0])
    assert wrong.status_code == 422
    assert wrong.json()["error"] == {
        "type": "mask_error",
        "message": f"response_mask has length {len(right) + 1}, expected {len(right)}",
    }
    assert driver.post(mask=[1] * len(right)).status_code == 422
    before = driver.inspect()
    assert len(before["mask_errors"]) == 3 and not before["ok"]
    driver.step()
    after = driver.inspect()
    assert (
        len(after["seq"]) > len(before["seq"])
        and len(after["mask"]) == len(after["seq"]) - after["prompt_len"]
    )


def test_length_cut(sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]) -> None:
    driver = Driver(http, sim, "long/words=300", toks[QWEN3], "q3-long")
    data = driver.post(max_tokens=20).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert len(data["token_ids"]) == len(data["logprobs"]) == 20 and all(lp < 0 for lp in data["logprobs"])
    message = data["choices"][0]["message"]
    assert message["tool_calls"] == [] and message["content"].startswith("alpha bravo")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_error_scenario(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase], status: int
) -> None:
    driver = Driver(
        http, sim, f"error/status={status}/at=1/tok=Qwen--Qwen2.5-7B-Instruct", toks[QWEN25], f"err-{status}"
    )
    driver.step()
    response = driver.post()
    assert response.status_code == status and response.json()["error"]["type"] == "simulated_error"
    assert response.headers.get("retry-after") == ("1" if status == 429 else None)


def test_malformed_scenarios(sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]) -> None:
    nonjson = Driver(http, sim, "malformed", toks[QWEN3], "bad-1").post()
    assert nonjson.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(nonjson.content)
    missing = Driver(http, sim, "malformed/kind=missing", toks[QWEN3], "bad-2").post().json()
    assert "choices" in missing and "token_ids" not in missing and "prompt_token_ids" not in missing


def test_auth_latency_and_bad_requests(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "none/auth=tok3n/latency=0.2", toks[QWEN3], "auth")
    assert driver.post().status_code == 401
    started = time.monotonic()
    ok = http.post(
        driver.url, json={"rollout_id": "auth", "messages": [USER]}, headers={"Authorization": "Bearer tok3n"}
    )
    assert ok.status_code == 200 and time.monotonic() - started >= 0.2
    assert driver.inspect()["auth"] == "Bearer tok3n"
    assert http.post(_url(sim), content=b"{not json").status_code == 400
    assert http.post(_url(sim), json={"rollout_id": "x"}).status_code == 400
    assert http.post(_url(sim, "bogus"), json={"rollout_id": "x", "messages": [USER]}).status_code == 404


def test_template_error_is_a_400(sim: str, http: httpx.Client) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    messages = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "1", "tool_call_id": "c"},
    ]
    response = http.post(
        _url(sim, "none/tok=Qwen--Qwen3.5-9B"), json={"rollout_id": "q35", "messages": messages}
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "template_error"


def test_inspection_api(sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]) -> None:
    Driver(http, sim, "", toks[QWEN3], "inspect-me").step()
    assert http.get(f"{sim}/sim/rollouts/inspect-me").json()["calls"] == 1
    assert http.get(f"{sim}/sim/rollouts/never-seen").status_code == 404
    stats = http.get(f"{sim}/sim/stats").json()
    assert (
        set(stats) == {"rollouts", "calls", "prefix_breaks", "mask_errors", "rollouts_not_ok"}
        and stats["calls"] >= 1
    )
    assert http.delete(f"{sim}/sim/rollouts").status_code == 200
    assert http.get(f"{sim}/sim/stats").json()["rollouts"] == 0


@pytest.mark.parametrize(
    ("path", "name"),
    [("sequential/turns=2/tok=Qwen--Qwen3.5-9B/think=1", QWEN35), ("budget/words=20/think=1", QWEN3)],
)
def test_more_families_and_scenarios_stay_aligned(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase], path: str, name: str
) -> None:
    driver = Driver(http, sim, path, toks[name], f"more-{path}")
    answers = driver.run(max_calls=3)
    assert len(answers) == 3 and driver.inspect()["ok"]


def test_qwen35_empty_think_retokenizes_across_the_generation_prompt(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    driver = Driver(http, sim, "one/tok=Qwen--Qwen3.5-9B", toks[QWEN35], "q35-empty")
    answers = driver.run()
    # The prompt ends "<think>\n", the turn starts "\n</think>": alone they are two "\n" tokens,
    # rendered together "\n\n" is one, so even the last prompt token changes.
    prompt_len = len(answers[0]["prompt_token_ids"])
    assert driver.inspect()["prefix_breaks"] == [{"call": 2, "index": prompt_len - 1}]
