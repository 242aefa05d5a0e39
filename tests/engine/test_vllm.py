"""Token mode against a real vLLM (CPU build, tiny random-weight Qwen3): what the server relies
on in vLLM's answers, and concurrent rollouts whose trajectories are checked against what vLLM
saw and sampled.

Runs only where vLLM's venv exists (``bash bench/engine/setup.sh``, or tests/run-engine.sh,
which installs it and runs this file): vLLM pins its own torch, so it never enters the
project's venv. Starting vLLM takes half a minute on a quiet 2-core machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.engine.probe import ENDOFTURN, PROMPT_IDS, complete, request_body
from bench.engine.recorder import Recorder
from bench.engine.rollouts import KINDS, Outcome, run_rollouts, shape_request
from bench.engine.vllm import SERVED_NAME, VllmServer, build_model, start_vllm, vllm_python
from tests.conftest import Proc
from tokenize_pool.codec import ChatCodec

# Room for a forced turn with two parallel calls in any split (about 90-130 ids).
MAX_TOKENS = 256

pytestmark = pytest.mark.skipif(
    vllm_python() is None,
    reason="no vLLM venv (.venv-vllm): run bash bench/engine/setup.sh or tests/run-engine.sh",
)


@pytest.fixture(scope="module")
def vllm(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    workdir = tmp_path_factory.mktemp("vllm")
    model = build_model(hf_home, workdir / "tiny-qwen3")
    server = start_vllm(model, workdir / "vllm.log", hf_home=hf_home)
    yield server
    server.stop()


def test_vllm_returns_the_sampled_ids_aligned_with_their_logprobs(vllm: VllmServer) -> None:
    choice = complete(vllm.url, request_body(max_tokens=8)).json()["choices"][0]
    assert choice["prompt_token_ids"] == PROMPT_IDS
    assert len(choice["token_ids"]) == 8 and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["token_logprobs"]) == 8
    assert all(isinstance(lp, float) for lp in choice["logprobs"]["token_logprobs"])


def test_a_stop_id_ends_token_ids_and_its_text_comes_with_include_stop_str(vllm: VllmServer) -> None:
    body = request_body(max_tokens=8, logit_bias={str(ENDOFTURN): 100}, include_stop_str_in_output=True)
    choice = complete(vllm.url, body).json()["choices"][0]
    assert choice["token_ids"] == [ENDOFTURN]
    assert (choice["finish_reason"], choice["text"]) == ("stop", "<|im_end|>")


def test_without_return_token_ids_there_are_no_ids(vllm: VllmServer) -> None:
    choice = complete(vllm.url, request_body(max_tokens=2, return_token_ids=False)).json()["choices"][0]
    assert choice["token_ids"] is None and choice["prompt_token_ids"] is None


def test_a_prompt_longer_than_the_context_is_a_400_with_a_message(vllm: VllmServer) -> None:
    resp = complete(vllm.url, request_body(prompt=[198] * 5000))
    assert resp.status_code == 400
    assert "maximum context length" in resp.json()["error"]["message"]


def test_token_mode_rollouts_are_exact_against_vllm(
    vllm: VllmServer, start_server: Callable[..., Proc], codec_of: Callable[[str], ChatCodec]
) -> None:
    """Every kind of rollout at once; each trajectory equals what vLLM saw and sampled."""
    server = start_server()
    codec = codec_of("Qwen/Qwen3-8B")
    recorder = Recorder(vllm.url, shape=shape_request)
    proxy = recorder.start()
    try:
        ids = [f"{kind}-{i}" for i, kind in enumerate(KINDS)]
        # No sampling_params.model on half of them: vLLM also serves the tokenizer's name.
        outcomes: list[Outcome] = asyncio.run(
            run_rollouts(
                server.url, recorder, proxy, ids[::2], model=SERVED_NAME, max_tokens=MAX_TOKENS, codec=codec
            )
        )
        outcomes += asyncio.run(
            run_rollouts(
                server.url, recorder, proxy, ids[1::2], model=None, max_tokens=MAX_TOKENS, codec=codec
            )
        )
    finally:
        recorder.stop()
    assert {o.rollout_id: o.breaches for o in outcomes if o.breaches} == {}
    by_kind = {o.rollout_id.split("-")[0]: o for o in outcomes}
    assert by_kind["tools"].engine_calls == 3
    assert by_kind["stop"].finish_reason == "stop"
    assert by_kind["budget"].finish_reason == "max_tokens"
    assert by_kind["edge"].finish_reason == "length" and by_kind["edge"].sampled_tokens < MAX_TOKENS
    # The stress was there: turns that re-tokenizing their text would have changed.
    assert sum(o.non_canonical for o in outcomes) > 0
    assert httpx.get(server.url + "/health").json()["status"] == "healthy"
