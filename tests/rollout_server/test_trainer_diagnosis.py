"""A trainer whose token_ids do not encode the message it returns (the ids of its content alone,
while the message carries a tool call, as a naive mock trainer does) is named as the cause,
with the decoded ids and the rendered message side by side, not as a bare prefix break.

The trainer here is a small real HTTP server in this process that renders and tokenizes
prompts with the real Qwen3 tokenizer, as a trainer does; the rollout server is a real process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from rollout_server.agent import _missing_from_ids
from tests.conftest import Proc
from tokenize_pool.codec import ChatCodec

QWEN3 = "Qwen/Qwen3-8B"
CONTENT = "Let me add these."


def content_only_trainer(codec: ChatCodec) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            prompt = codec.render(request["messages"], add_generation_prompt=True)
            done = any(m["role"] == "tool" for m in request["messages"])
            message: dict[str, Any] = {"role": "assistant", "content": "5" if done else CONTENT}
            if not done:
                call = {"name": "add", "arguments": json.dumps({"a": 2, "b": 3})}
                message["tool_calls"] = [{"id": "call_1", "type": "function", "function": call}]
            ids = codec.encode(message["content"]) + codec.encode("<|im_end|>")
            body = json.dumps(
                {
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "token_ids": ids,
                    "logprobs": [-0.1] * len(ids),
                    "prompt_token_ids": codec.encode(prompt),
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def mock_trainer(codec_of: Callable[[str], ChatCodec]) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), content_only_trainer(codec_of(QWEN3)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_ids_that_miss_the_tool_call_are_blamed_on_the_trainer(server: Proc, mock_trainer: str) -> None:
    body = {
        "rollout_id": "diagnosis-1",
        "server_url": mock_trainer,
        "messages": [{"role": "user", "content": "What is 2+3?"}],
        "sampling_params": {},
        "tokenizer_name": QWEN3,
    }
    result = httpx.post(f"{server.url}/rollout", json=body, timeout=120).json()
    assert result["status"] == "ERROR" and result["extra_fields"]["error_category"] == "alignment_error"
    message = result["error_message"]
    assert "token_ids do not encode the message it returned" in message
    assert f"decode to '{CONTENT}<|im_end|>'" in message
    assert "<tool_call>" in message and '"add"' in message and "ALIGNMENT_DRIFT_POLICY=flag" in message
    event = result["extra_fields"]["alignment"]["events"][0]
    assert event["kind"] == "trainer_ids_mismatch"
    assert event["decoded"] == f"{CONTENT}<|im_end|>"
    assert CONTENT in event["rendered"] and "<tool_call>" in event["rendered"]


def call(arguments: Any) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": "add", "arguments": arguments}}


@pytest.mark.parametrize(
    ("decoded", "message", "missing"),
    [
        # The template's spacing of the same JSON is not the trainer's error.
        (
            'ok\n<tool_call>{"name":"add","arguments":{"a":2,"b":3}}',
            {"content": "ok", "tool_calls": [call('{"a": 2, "b": 3}')]},
            False,
        ),
        ('ok {"a": 2, "b": 3}', {"content": "ok", "tool_calls": [call({"a": 2, "b": 3})]}, False),
        ("<think>x</think>ok", {"content": "ok"}, False),
        ("ok<|im_end|>", {"content": "ok", "tool_calls": [call('{"a": 2, "b": 3}')]}, True),
        ("something else", {"content": "ok"}, True),
        ("ok {not json", {"content": "ok", "tool_calls": [call("{not json")]}, False),
    ],
)
def test_which_ids_miss_their_message(decoded: str, message: dict[str, Any], missing: bool) -> None:
    assert _missing_from_ids(decoded, {"role": "assistant", **message}) is missing
