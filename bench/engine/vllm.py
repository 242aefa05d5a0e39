"""vLLM's CPU build as a real engine for benches and tests: its venv, a tiny model, its server.

vLLM lives in its own venv (``.venv-vllm``, made by ``bench/engine/setup.sh``) because it pins
its own torch and transformers. This module, imported from the project's venv, only runs that
venv's interpreter: once to write the tiny model (``make_model.py``), once to serve it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rollout_server.sim.procs import Proc, free_port, wait_http
from tokenize_pool.hf_cache import seed_cache

__all__ = ["ROOT", "SERVED_NAME", "TOKENIZER", "VllmServer", "build_model", "start_vllm", "vllm_python"]

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = "Qwen/Qwen3-8B"
SERVED_NAME = "tiny-qwen3"
MAX_MODEL_LEN = 4096


def vllm_python() -> Path | None:
    """The vLLM venv's interpreter ($VLLM_VENV, default .venv-vllm), or None when absent."""
    venv = Path(os.environ.get("VLLM_VENV", ROOT / ".venv-vllm"))
    python = venv / "bin" / "python"
    return python if python.is_file() else None


def _require_python() -> Path:
    python = vllm_python()
    if python is None:
        raise FileNotFoundError("no vLLM venv: run bash bench/engine/setup.sh first")
    return python


def build_model(hf_home: Path, out: Path) -> Path:
    """The tiny random-weight Qwen3 model in ``out`` (written once, reused after)."""
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    snapshot = seed_cache(hf_home / "hub")[TOKENIZER]
    script = ROOT / "bench" / "engine" / "make_model.py"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [str(_require_python()), str(script), "--tokenizer", str(snapshot), "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class VllmServer:
    """A running vLLM OpenAI server and how long it took to answer."""

    proc: Proc
    ready_seconds: float

    @property
    def url(self) -> str:
        return self.proc.url

    def stop(self) -> None:
        """Stops the server and its engine-core and worker children (its own process group)."""
        popen = self.proc.popen
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)
        # Children that outlived the parent are still in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


def start_vllm(
    model: Path, log: Path, *, hf_home: Path, port: int | None = None, timeout: float = 600.0
) -> VllmServer:
    """Starts vLLM's OpenAI server on 127.0.0.1 and waits until ``/v1/models`` answers."""
    port = port or free_port()
    args = [
        str(_require_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        # Also under the tokenizer's name: a token-mode rollout without sampling_params.model
        # asks for the model by its tokenizer name.
        "--served-model-name",
        SERVED_NAME,
        TOKENIZER,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
    ]
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("ROLLOUT_")}
    handle = log.open("wb")
    popen = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen=popen, url=f"http://127.0.0.1:{port}", log=log)
    started = time.monotonic()
    try:
        wait_http(proc, "/v1/models", timeout=timeout)
    except BaseException:
        VllmServer(proc, 0.0).stop()
        raise
    return VllmServer(proc, time.monotonic() - started)
