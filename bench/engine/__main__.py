"""Token-mode rollouts against a real vLLM (CPU build, tiny random-weight Qwen3), all checked.

    bash bench/engine/setup.sh                 # once: vLLM into .venv-vllm
    python -m bench.engine [--rollouts 16] [--max-tokens 160] [--vllm-url URL]

Builds the model (once, in .engine/), starts vLLM unless ``--vllm-url`` names a running one,
puts the recording proxy in front of it, starts the rollout server, runs the rollouts at once
and checks every trajectory against what vLLM saw and sampled. Prints the timings and a table
per kind of rollout; exits 1 if any rollout is not exact.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench._report import print_table, write_results
from bench.engine.recorder import Recorder
from bench.engine.rollouts import KINDS, Outcome, run_rollouts, shape_request
from bench.engine.vllm import ROOT, SERVED_NAME, TOKENIZER, VllmServer, build_model, start_vllm, vllm_python
from rollout_server.sim.procs import Proc, free_port, spawn, wait_http
from tokenize_pool.codec import TokenizerKey, load_codec
from tokenize_pool.hf_cache import seed_cache

WORKDIR = ROOT / ".engine"


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group, in MB."""
    out = subprocess.run(["ps", "-o", "rss=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()) / 1024


def start_rollout_server(hf_home: Path, log: Path) -> Proc:
    """The rollout server on a free loopback port, with the seeded tokenizer cache."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLOUT_", "TOKENIZE", "HF_"))}
    env.update(
        {
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1",
            "ROLLOUT_SERVER_HOST": "127.0.0.1",
            "ROLLOUT_SERVER_PORT": str(port),
            "TOKENIZE_WORKERS": "2",
            "PRELOAD_TOKENIZERS": "Qwen/Qwen3-8B",
            "TOKENIZE_POOL_SOCKET": str(log.parent / "pool.sock"),
        }
    )
    proc = spawn([sys.executable, "-m", "rollout_server.server"], env, log, port, cwd=ROOT)
    wait_http(proc, "/ready")
    return proc


def summarize(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    rows = []
    for kind in KINDS:
        mine = [o for o in outcomes if o.rollout_id.startswith(kind + "-")]
        if not mine:
            continue
        finishes = Counter(str(o.finish_reason) for o in mine)
        rows.append(
            {
                "kind": kind,
                "rollouts": len(mine),
                "ok": sum(not o.breaches for o in mine),
                "finish": " ".join(f"{k}:{v}" for k, v in sorted(finishes.items())),
                "engine_calls": sum(o.engine_calls for o in mine),
                "response_tokens": sum(o.response_tokens for o in mine),
                "sampled": sum(o.sampled_tokens for o in mine),
                "non_canonical": sum(o.non_canonical for o in mine),
                "max_s": max(o.seconds for o in mine),
            }
        )
    return rows


def _engine(
    args: argparse.Namespace, hf_home: Path, timings: dict[str, float]
) -> tuple[str, VllmServer | None]:
    if args.vllm_url:
        return args.vllm_url.rstrip("/"), None
    started = time.monotonic()
    model = build_model(hf_home, WORKDIR / "tiny-qwen3")
    timings["model_s"] = time.monotonic() - started
    vllm = start_vllm(model, WORKDIR / "vllm.log", hf_home=hf_home)
    timings["vllm_ready_s"] = vllm.ready_seconds
    return vllm.url, vllm


def _run(
    url: str, vllm: VllmServer | None, hf_home: Path, args: argparse.Namespace, timings: dict[str, float]
) -> list[Outcome]:
    """The proxy and the rollout server in front of vLLM at ``url``, and the rollouts through them."""
    started = time.monotonic()
    httpx.post(
        url + "/v1/completions", json={"model": SERVED_NAME, "prompt": [9707], "max_tokens": 4}, timeout=600
    )
    timings["first_request_s"] = time.monotonic() - started
    if vllm is not None:
        timings["vllm_rss_mb"] = group_rss_mb(vllm.proc.popen.pid)
    codec = load_codec(TokenizerKey(TOKENIZER), trust_remote_code=False)
    recorder = Recorder(url, shape=shape_request)
    proxy = recorder.start()
    server: Proc | None = None
    try:
        server = start_rollout_server(hf_home, WORKDIR / "server.log")
        ids = [f"{KINDS[i % len(KINDS)]}-{i}" for i in range(args.rollouts)]
        started = time.monotonic()
        outcomes = asyncio.run(
            run_rollouts(
                server.url, recorder, proxy, ids, model=SERVED_NAME, max_tokens=args.max_tokens, codec=codec
            )
        )
        timings["rollouts_s"] = time.monotonic() - started
        return outcomes
    finally:
        if server is not None:
            server.stop()
        recorder.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rollouts", type=int, default=16, help="rollouts, spread over the kinds (default 16)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=160, help="sampling_params.max_tokens (default 160)"
    )
    parser.add_argument("--vllm-url", default=None, help="use this running vLLM instead of starting one")
    args = parser.parse_args(argv)
    if vllm_python() is None and not args.vllm_url:
        print("no vLLM venv: run bash bench/engine/setup.sh first", file=sys.stderr)
        return 2
    WORKDIR.mkdir(exist_ok=True)
    hf_home = WORKDIR / "hf"
    # The rollout server and the bench's own tokenizer (load_codec) read this cache, offline.
    seed_cache(hf_home / "hub")
    os.environ.update({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    timings: dict[str, float] = {}
    url, vllm = _engine(args, hf_home, timings)
    try:
        outcomes = _run(url, vllm, hf_home, args, timings)
    finally:
        if vllm is not None:
            vllm.stop()
    print_table([{k: round(v, 1) for k, v in timings.items()}], list(timings), title="timings")
    rows = summarize(outcomes)
    print_table(rows, list(rows[0]), title=f"{len(outcomes)} token-mode rollouts against vLLM, all at once")
    broken = [o for o in outcomes if o.breaches]
    for o in broken:
        print(f"NOT EXACT {o.rollout_id}: {'; '.join(o.breaches)}")
    path = write_results(
        "engine", {"timings": timings, "rows": rows, "outcomes": [o.__dict__ for o in outcomes]}
    )
    print(f"\nwrote {path}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
