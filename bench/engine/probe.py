"""What the rollout server relies on in vLLM's ``/v1/completions``, asked of a running server.

    python -m bench.engine.probe URL [--tokenizer-dir DIR]

Prints one JSON object per probe: the request (shortened) and what came back. The facts are
summarised in docs/engines.md; tests/engine/test_vllm.py asserts the ones the server needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

__all__ = ["ENDOFTURN", "PROMPT_IDS", "complete", "request_body", "run_probes"]

# "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" in the Qwen3 tokenizer.
PROMPT_IDS = [151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]
ENDOFTURN = 151645  # <|im_end|>, the eos of the model's generation config


def complete(url: str, body: dict[str, Any], timeout: float = 120.0) -> httpx.Response:
    """One ``POST /v1/completions``; the response whatever its status."""
    return httpx.post(url + "/v1/completions", json=body, timeout=timeout)


def request_body(**extra: Any) -> dict[str, Any]:
    """The body token mode sends (on ``PROMPT_IDS``), with ``extra`` fields changed or added."""
    body: dict[str, Any] = {
        "model": "tiny-qwen3",
        "prompt": PROMPT_IDS,
        "max_tokens": 16,
        "temperature": 1.0,
        "top_p": 1.0,
        "logprobs": 1,
        "skip_special_tokens": False,
        "return_token_ids": True,
    }
    body.update(extra)
    return body


def _choice(resp: httpx.Response) -> dict[str, Any]:
    choice: dict[str, Any] = resp.json()["choices"][0]
    return choice


def _summary(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code != 200:
        return {"status": resp.status_code, "body": resp.json()}
    choice = _choice(resp)
    lp = choice.get("logprobs") or {}
    return {
        "status": 200,
        "finish_reason": choice["finish_reason"],
        "stop_reason": choice.get("stop_reason"),
        "text": choice["text"],
        "token_ids": choice.get("token_ids"),
        "prompt_token_ids": choice.get("prompt_token_ids"),
        "n_token_logprobs": len(lp.get("token_logprobs") or []),
        "tokens": lp.get("tokens"),
        "keys": sorted(choice),
    }


def run_probes(url: str) -> dict[str, dict[str, Any]]:
    """Every probe, by name: a request and the summary of its answer."""
    found: dict[str, dict[str, Any]] = {}
    found["plain"] = _summary(complete(url, request_body()))
    # Greedy sampling repeats itself: make its 4th id a stop id, the same prefix leads to it.
    # (Not a per-request "seed": see the long-prompt probe below.)
    greedy = complete(url, request_body(temperature=0.0))
    found["greedy"] = _summary(greedy)
    stop_id = _choice(greedy)["token_ids"][3]
    found["stop_token_ids"] = _summary(complete(url, request_body(temperature=0.0, stop_token_ids=[stop_id])))
    found["stop_token_ids_include"] = _summary(
        complete(
            url, request_body(temperature=0.0, stop_token_ids=[stop_id], include_stop_str_in_output=True)
        )
    )
    found["stop_token_ids_skip_special"] = _summary(
        complete(url, request_body(temperature=0.0, stop_token_ids=[stop_id], skip_special_tokens=True))
    )
    found["eos_forced"] = _summary(
        complete(url, request_body(stop_token_ids=[ENDOFTURN], logit_bias={str(ENDOFTURN): 100}))
    )
    found["eos_forced_include"] = _summary(
        complete(
            url,
            request_body(
                stop_token_ids=[ENDOFTURN], logit_bias={str(ENDOFTURN): 100}, include_stop_str_in_output=True
            ),
        )
    )
    found["eos_forced_no_stop_ids"] = _summary(complete(url, request_body(logit_bias={str(ENDOFTURN): 100})))
    found["stop_string"] = _summary(complete(url, request_body(temperature=0.0, stop=["\n"])))
    found["user_field"] = _summary(complete(url, request_body(user="rollout-123")))
    found["without_return_token_ids"] = _summary(complete(url, request_body(return_token_ids=False)))
    found["too_long_prompt"] = _summary(complete(url, request_body(prompt=[198] * 5000)))
    found["long_prompt"] = _summary(complete(url, request_body(prompt=[198] * 3000)))
    found["prompt_plus_max_tokens_too_long"] = _summary(
        complete(url, request_body(prompt=[198] * 4090, max_tokens=16))
    )
    found["bad_token_id"] = _summary(complete(url, request_body(prompt=[10**7])))
    found["unknown_model"] = _summary(complete(url, request_body(model="nope")))
    found["empty_prompt"] = _summary(complete(url, request_body(prompt=[])))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="vLLM's base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    for name, summary in run_probes(args.url.rstrip("/")).items():
        print(json.dumps({"probe": name, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
