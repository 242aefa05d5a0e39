"""Load generator: N concurrent rollouts against a rollout server, run in its own process.

``python -m bench.loadgen --server URL --trainer URL[,URL…] --spec sequential/turns=5 \\
--concurrency 64 --rollouts 64 --system-tokens 1000 --out result.json``

It keeps ``--concurrency`` rollouts in flight until ``--rollouts`` have finished (``--group``
consecutive rollouts share a prompt, as a GRPO group does), and writes one
record per rollout (status, error category, latency, tokens, the server's per-turn overhead and
its wait before the start) so
that the caller (``bench.e2e``) can aggregate. Its own CPU is not the server's: it runs apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.workloads import system_prompt

__all__ = ["main", "run"]

# Prompts differ from one load-generator run to the next, so that the server's cache of recent
# first prompts only ever helps within a run (a GRPO group), never across scenarios.
RUN = uuid.uuid4().hex[:8]


def _body(trainer: str, spec: str, system: str, turns: int, question: int, generation: str) -> dict[str, Any]:
    user = f"Question {question} of run {RUN}: what is (2+3)*4?"
    return {
        "generation": generation,
        "rollout_id": f"bench-{uuid.uuid4().hex}",
        "server_url": f"{trainer}/s/{spec}",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "sampling_params": {"temperature": 1.0, "max_tokens": 512},
        "tokenizer_name": "Qwen/Qwen3-8B",
        "max_turns": turns + 1,
        "max_tokens_total": 100_000,
    }


def _record(response: dict[str, Any], latency: float, index: int) -> dict[str, Any]:
    extra = response.get("extra_fields", {})
    align = extra.get("alignment", {})
    timing = extra.get("timing", {})
    return {
        "index": index,  # in the order sent: the first ``concurrency`` are the opening wave
        "rollout_id": response.get("rollout_id"),
        "status": response.get("status"),
        "error_category": extra.get("error_category"),
        "finish_reason": response.get("finish_reason"),
        "latency_s": latency,
        "metrics": response.get("metrics", {}),
        "sequence_length": align.get("sequence_length", 0),
        "tokens_encoded": align.get("tokens_encoded", 0),
        "drift_events": align.get("drift_events", 0),
        "turn_overhead_ms": timing.get("turn_overhead_ms", []),
        "queued_ms": timing.get("queued_ms"),
        "final_messages": response.get("final_messages"),
    }


async def run(
    server: str,
    trainers: list[str],
    spec: str,
    *,
    concurrency: int,
    rollouts: int,
    system: str,
    turns: int,
    group: int = 1,
    generation: str = "messages",
) -> dict[str, Any]:
    """Run the load; every failure (HTTP or rollout) is a record, never an exception."""
    records: list[dict[str, Any]] = []
    pending = iter(range(rollouts))
    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            for i in pending:
                trainer = trainers[i % len(trainers)]
                body = _body(trainer, spec, system, turns, question=i // group, generation=generation)
                started = time.perf_counter()
                try:
                    async with session.post(f"{server}/rollout", json=body) as response:
                        payload = await response.json(content_type=None)
                        latency = time.perf_counter() - started
                        if response.status != 200:
                            payload = {"status": f"HTTP {response.status}", "extra_fields": {}}
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    latency = time.perf_counter() - started
                    payload = {"status": f"client error: {type(exc).__name__}", "extra_fields": {}}
                records.append(_record(payload, latency, i))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"wall_s": wall, "records": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--trainer", required=True, help="simulator base URL(s), comma-separated")
    parser.add_argument(
        "--spec", required=True, help="simulator scenario path, e.g. sequential/turns=5/latency=1"
    )
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rollouts", type=int, required=True)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument(
        "--group",
        type=int,
        default=1,
        help="rollouts sharing one prompt, as in a GRPO group (1: all distinct)",
    )
    parser.add_argument(
        "--generation",
        choices=("messages", "tokens"),
        default="messages",
        help="the rollouts' protocol: the trainer's messages, or token ids to an engine",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    system = system_prompt(args.system_tokens, seed=7)
    result = asyncio.run(
        run(
            args.server,
            args.trainer.split(","),
            args.spec,
            concurrency=args.concurrency,
            rollouts=args.rollouts,
            system=system,
            turns=args.turns,
            group=args.group,
            generation=args.generation,
        )
    )
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
