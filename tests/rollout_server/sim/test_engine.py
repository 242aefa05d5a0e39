"""The simulator's engine mode: token-id prompts answered as vLLM answers them.

Pure pieces (id splitting, route options, request parsing) are tested as data; sampling with
the real tokenizers in process; the HTTP answers on the simulator as a real process, driven
like a token-mode client: each prompt is the previous prompt + the generated ids + glue.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from transformers import PreTrainedTokenizerBase

from rollout_server.sim.engine import (
    EngineRequestError,
    assistant_turns,
    parse_engine_call,
    sample_engine_turn,
)
from rollout_server.sim.model import render_prompt, sampled_ids
from rollout_server.sim.scenarios import FINAL_ANSWER, RouteError, Turn, parse_route
from rollout_server.sim.splits import split_first

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
QWEN35 = "Qwen/Qwen3.5-9B"
USER = {"role": "user", "content": "What is 2 + 3, then times 4?"}
TOOL_GLUE = "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"

VOCAB = {"ĠThe": 1, "Ġanswer": 2, "Ġans": 3, "wer": 4, "ĊĊ": 5, "Ċ": 6, "Ġis": 7, "Ġcat": 8, "Ġan": 9}


# --- pure: splitting as data -------------------------------------------------------------


def _tokens(ids: list[int]) -> list[str]:
    names = {v: k for k, v in VOCAB.items()}
    return [names[i] for i in ids]


@pytest.mark.parametrize(
    ("ids", "kind", "expected"),
    [
        ([1, 2, 7], "word", [1, 3, 4, 7]),  # "Ġanswer" -> "Ġans" + "wer" ("ĠThe" is too short)
        ([5, 1, 5], "newlines", [6, 6, 1, 5]),  # only the first "\n\n"
        ([1, 7, 6], "word", [1, 7, 6]),  # no word of four letters
        ([1, 7, 6], "newlines", [1, 7, 6]),  # a single newline is not split
        ([8, 2], "word", [8, 3, 4]),  # "Ġcat" is three letters: the next word is split
    ],
)
def test_split_first_as_data(ids: list[int], kind: Any, expected: list[int]) -> None:
    assert split_first(ids, _tokens(ids), VOCAB.get, kind) == expected


def test_split_first_skips_a_token_without_two_vocabulary_halves() -> None:
    vocab = {"Ġwords": 1, "Ġanswer": 2, "Ġans": 3, "wer": 4}
    assert split_first([1, 2], ["Ġwords", "Ġanswer"], vocab.get, "word") == [1, 3, 4]
    assert split_first([1], ["Ġwords"], vocab.get, "word") == [1]


def test_route_engine_options() -> None:
    route = parse_route("one/split=word/eot=0/ids=0/strict=1")
    assert (route.split, route.end_of_turn, route.token_ids, route.strict) == ("word", False, False, True)
    default = parse_route("one")
    assert (default.split, default.end_of_turn, default.token_ids, default.strict) == (
        None,
        True,
        True,
        False,
    )
    assert parse_route("none/split=newlines").split == "newlines"
    with pytest.raises(RouteError, match="split"):
        parse_route("none/split=bytes")


def _call(**overrides: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": [1, 2, 3], "max_tokens": 8, "user": "r", **overrides}


def test_parse_engine_call_as_data() -> None:
    call = parse_engine_call(
        _call(logprobs=1, stop_token_ids=[9], return_token_ids=True, skip_special_tokens=False), 10
    )
    assert (call.rollout_id, call.prompt, call.max_tokens, call.logprobs) == ("r", [1, 2, 3], 8, 1)
    assert call.stop_token_ids == {9} and call.return_token_ids and not call.skip_special_tokens
    plain = parse_engine_call({"prompt": [1], "user": "r"}, 10)
    assert (plain.max_tokens, plain.logprobs, plain.return_token_ids, plain.skip_special_tokens) == (
        16,
        None,
        False,
        True,
    )
    for bad, match in [
        (_call(prompt=[]), "non-empty"),
        (_call(prompt="hello"), "non-empty"),
        (_call(prompt=[1, 10]), r"prompt\[1\]"),
        (_call(prompt=[1, -1]), r"prompt\[1\]"),
        (_call(user=None), "user"),
        (_call(max_tokens=0), "max_tokens"),
        (_call(logprobs=-1), "logprobs"),
        (_call(stop_token_ids=["x"]), "stop_token_ids"),
    ]:
        with pytest.raises(EngineRequestError, match=match):
            parse_engine_call(bad, 10)


# --- real tokenizers, in process -----------------------------------------------------------


def _encode(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        (QWEN3, "<think>\n\n</think>\n\nThe answer is 42.<|im_end|>", "word"),
        (QWEN3, "<think>\n\n</think>\n\nThe answer is 42.<|im_end|>", "newlines"),
        (QWEN25, '<tool_call>\n{"name": "add"}\n</tool_call><|im_end|>', "word"),
        (QWEN35, "\n</think>\n\nThe answer is 42.<|im_end|>", "newlines"),
        (QWEN35, "\n</think>\n\nThe answer is 42.<|im_end|>", "word"),
    ],
)
def test_split_samples_decode_alike_but_do_not_re_encode(
    toks: dict[str, PreTrainedTokenizerBase], name: str, text: str, kind: Any
) -> None:
    tok = toks[name]
    canonical = sampled_ids(tok, text, None)
    split = sampled_ids(tok, text, kind)
    assert len(split) == len(canonical) + 1
    assert tok.decode(split) == tok.decode(canonical) == text
    assert _encode(tok, tok.decode(split)) == canonical != split


@pytest.mark.parametrize("name", [QWEN3, QWEN25, QWEN35])
def test_assistant_turns_counts_turns_before_the_generation_prompt(
    toks: dict[str, PreTrainedTokenizerBase], name: str
) -> None:
    tok = toks[name]
    call = {"id": "c", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    messages: list[dict[str, Any]] = [USER]
    for t in range(3):
        _, ids = render_prompt(tok, messages)
        assert assistant_turns(tok, ids) == t
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "5", "tool_call_id": "c"},
        ]


@pytest.mark.parametrize("name", [QWEN3, QWEN25, QWEN35])
def test_engine_turn_is_the_message_modes_turn(toks: dict[str, PreTrainedTokenizerBase], name: str) -> None:
    from rollout_server.sim.model import sample_turn

    tok = toks[name]
    prompt, _ = render_prompt(tok, [USER])
    turn = Turn(content=FINAL_ANSWER)
    chat = sample_turn(tok, [USER], prompt, turn, t=0, think=True, max_tokens=512)
    engine = sample_engine_turn(tok, turn, parse_route("none/think=1"), 512)
    assert engine.token_ids == chat.token_ids and engine.finish_reason == "stop"
    cut = sample_engine_turn(tok, turn, parse_route("none"), 3)
    assert (len(cut.token_ids), cut.finish_reason, cut.stop_reason) == (3, "length", None)
    open_ended = sample_engine_turn(tok, turn, parse_route("none/eot=0"), 512)
    assert open_ended.finish_reason == "stop" and open_ended.stop_reason == tok.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert (
        open_ended.token_ids + [open_ended.stop_reason]
        == sample_engine_turn(tok, turn, parse_route("none"), 512).token_ids
    )


# --- over HTTP ---------------------------------------------------------------------------------


class IdClient:
    """A token-mode client: keeps every id, sends previous prompt + generated ids + glue."""

    def __init__(self, http: httpx.Client, base: str, path: str, tok: PreTrainedTokenizerBase, rollout: str):
        self.http, self.base, self.tok, self.rollout = http, base, tok, rollout
        self.url = f"{base}/s/{path}/v1/completions" if path else f"{base}/v1/completions"
        self.end = int(tok.convert_tokens_to_ids("<|im_end|>"))
        text, self.prompt = render_prompt(tok, [USER])
        closed = tok.apply_chat_template([USER], add_generation_prompt=False, tokenize=False)
        self.generation_prompt = text[len(closed) :]
        self.generated: list[int] = []

    def post(self, prompt: list[int] | None = None, **extra: Any) -> httpx.Response:
        body = {
            "model": "sim",
            "prompt": self.prompt if prompt is None else prompt,
            "max_tokens": 512,
            "temperature": 1.0,
            "top_p": 1.0,
            "stop_token_ids": [self.end],
            "logprobs": 1,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "return_token_ids": True,
            "user": self.rollout,
            **extra,
        }
        return self.http.post(self.url, json=body)

    def step(self, **extra: Any) -> dict[str, Any]:
        response = self.post(**extra)
        assert response.status_code == 200, response.text
        choice: dict[str, Any] = response.json()["choices"][0]
        self.generated = choice["token_ids"]
        return choice

    def next_prompt(self) -> None:
        closing = [] if self.generated[-1:] == [self.end] else [self.end]
        glue = _encode(self.tok, TOOL_GLUE + self.generation_prompt)
        self.prompt = self.prompt + self.generated + closing + glue

    def inspect(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(f"{self.base}/sim/rollouts/{self.rollout}").json()
        return data


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("sequential/turns=2", QWEN3),
        ("sequential/turns=2/think=1/split=word", QWEN3),
        ("sequential/turns=2/tok=Qwen--Qwen2.5-7B-Instruct/split=word", QWEN25),
        ("sequential/turns=2/tok=Qwen--Qwen3.5-9B/split=newlines", QWEN35),
        ("sequential/turns=2/eot=0", QWEN3),
    ],
)
def test_a_token_rollout_is_exact(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase], path: str, name: str
) -> None:
    client = IdClient(http, sim, path, toks[name], f"ids-{path}")
    reasons = []
    for _ in range(3):
        choice = client.step()
        reasons.append(choice["finish_reason"])
        assert len(choice["logprobs"]["token_logprobs"]) == len(choice["token_ids"])
        assert choice["text"] == client.tok.decode(choice["token_ids"], skip_special_tokens=False)
        assert choice["prompt_token_ids"] == client.prompt
        last_prompt = client.prompt
        client.next_prompt()
    assert reasons == ["stop"] * 3 and choice["text"].endswith(
        FINAL_ANSWER + ("<|im_end|>" if "eot" not in path else "")
    )
    record = client.inspect()
    assert record["ok"] and record["calls"] == 3
    seq = record["seq"]
    assert seq == last_prompt + client.generated
    generated = len(client.generated)
    assert record["mask"][-generated:] == [1] * generated
    assert len(record["mask"]) == len(record["logprobs"]) == len(seq) - record["prompt_len"]
    assert all(lp == 0.0 for lp, bit in zip(record["logprobs"], record["mask"], strict=True) if bit == 0)
    assert record["logprobs"][-generated:] == choice["logprobs"]["token_logprobs"]


def test_a_split_turn_does_not_survive_re_encoding_over_http(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    client = IdClient(http, sim, "none/split=word", toks[QWEN3], "ids-split")
    ids = client.step()["token_ids"]
    assert _encode(client.tok, client.tok.decode(ids)) != ids


def test_prefix_breaks_are_recorded_and_strict_rejects_them(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    for strict in (False, True):
        path = "sequential/turns=2" + ("/strict=1" if strict else "")
        client = IdClient(http, sim, path, toks[QWEN3], f"ids-break-{strict}")
        client.step()
        client.next_prompt()
        at = len(client.prompt) - 20
        client.prompt[at] += 1  # one id of the previous turn re-tokenized differently
        response = client.post()
        assert response.status_code == (422 if strict else 200), response.text
        if strict:
            assert response.json()["error"]["type"] == "prefix_break"
        record = client.inspect()
        assert record["prefix_breaks"] == [{"call": 2, "index": at}] and not record["ok"]


def test_response_fields_follow_the_request(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    client = IdClient(http, sim, "long/words=50", toks[QWEN3], "ids-fields")
    response = client.post(max_tokens=7)
    data = response.json()
    assert (data["object"], data["model"], data["usage"]["completion_tokens"]) == (
        "text_completion",
        "sim",
        7,
    )
    assert data["usage"]["prompt_tokens"] == len(client.prompt)
    choice = data["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"], len(choice["token_ids"])) == ("length", None, 7)
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][0] == 0 and len(logprobs["top_logprobs"]) == 7
    bare = client.post(logprobs=None, return_token_ids=False).json()["choices"][0]
    assert (bare["logprobs"], bare["token_ids"], bare["prompt_token_ids"]) == (None, None, None)
    stop = IdClient(http, sim, "", toks[QWEN3], "ids-stop").post().json()["choices"][0]
    assert (stop["finish_reason"], stop["stop_reason"]) == ("stop", client.end)
    unasked = IdClient(http, sim, "none/ids=0", toks[QWEN3], "ids-none").post().json()["choices"][0]
    assert unasked["token_ids"] is None and unasked["text"].endswith(FINAL_ANSWER + "<|im_end|>")


@pytest.mark.parametrize(
    ("path", "status", "check"),
    [
        ("error/status=503", 503, "simulated trainer error 503"),
        ("error/status=400", 400, "simulated trainer error 400"),
        ("malformed/kind=nonjson", 200, '"choices": ['),
        ("malformed/kind=missing", 200, '"text_completion"'),
    ],
)
def test_faults_in_engine_mode(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase], path: str, status: int, check: str
) -> None:
    response = IdClient(http, sim, path, toks[QWEN3], f"ids-{path}").post()
    assert response.status_code == status and check in response.text
    if path.endswith("missing"):
        assert "token_ids" not in response.json()["choices"][0]


def test_bad_engine_requests_get_400(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    client = IdClient(http, sim, "", toks[QWEN3], "ids-bad")
    for extra, match in [
        ({"prompt": [len(client.tok) + 5]}, "prompt[0]"),
        ({"user": ""}, "user"),
        ({"max_tokens": -1}, "max_tokens"),
    ]:
        response = client.post(**extra)
        assert response.status_code == 400 and match in response.json()["error"]["message"], response.text
    assert http.get(f"{sim}/sim/rollouts/ids-bad").status_code == 404  # nothing was recorded


def test_chat_requests_with_tools_render_them(
    sim: str, http: httpx.Client, toks: dict[str, PreTrainedTokenizerBase]
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two numbers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                },
            },
        }
    ]
    body = {"rollout_id": "chat-tools", "messages": [USER], "tools": tools, "max_tokens": 64}
    data = http.post(f"{sim}/v1/completions", json=body).json()
    _, expected = render_prompt(toks[QWEN3], [USER], tools)
    assert data["prompt_token_ids"] == expected and expected != render_prompt(toks[QWEN3], [USER])[1]
    bad = http.post(f"{sim}/v1/completions", json={**body, "rollout_id": "chat-bad", "tools": "add"})
    assert bad.status_code == 400 and "tools" in bad.json()["error"]["message"]
