"""Soak: the rollout server under a steady load for minutes; does its memory grow, does it err?

``python -m bench.soak [--minutes 15] [--concurrency 256] [--latency 1] [--turns 5]`` starts the
trainer simulator and the server as in ``bench.e2e`` and keeps ``--concurrency`` rollouts in
flight (``sequential/turns=T/latency=L``) for ``--minutes``. Every ``--sample-seconds`` it
records the rollouts finished so far, the RSS of the Sanic process and of the server's whole
process tree, and the event-loop lag histogram. It reports the RSS slope in MB per 10,000
rollouts (least squares over the samples after the first ``--warmup-fraction`` of the run), the
loop lag p99 and max (bucket upper bounds), and every rollout that did not complete exactly
(status, error category, drift). Writes ``bench/results/soak-*.json`` and
``bench/results/soak-latest.png`` (RSS against rollouts finished).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench._report import RESULTS_DIR, Progress, Series, plot_panels, print_table, write_results
from bench.e2e import Placement, histogram, histogram_quantile, offline_hf_home, start_processes
from bench.loadgen import RUN
from bench.workloads import system_prompt
from rollout_server.sim.procs import Proc

NAME = "soak"


@dataclass
class Tally:
    """What the load saw: rollouts finished, and the ones that did not complete exactly, by kind."""

    finished: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)


def rollout_body(
    trainer_url: str, spec: str, system: str, turns: int, index: int, *, name: str = "soak"
) -> dict[str, Any]:
    """One rollout request of the steady load; every prompt distinct."""
    return {
        "rollout_id": f"{name}-{RUN}-{index}",
        "server_url": f"{trainer_url}/s/{spec}",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Question {index} of run {RUN}: what is (2+3)*4?"},
        ],
        "sampling_params": {"temperature": 1.0, "max_tokens": 512},
        "tokenizer_name": "Qwen/Qwen3-8B",
        "max_turns": turns + 1,
        "max_tokens_total": 100_000,
    }


def outcome(status: int, payload: dict[str, Any] | None) -> str:
    """``completed``, or the kind of failure: the rollout's error category, an HTTP status."""
    if status != 200 or payload is None:
        return f"HTTP {status}"
    extra = payload.get("extra_fields") or {}
    if payload.get("status") == "COMPLETED":
        drift = (extra.get("alignment") or {}).get("drift_events", 0)
        return "completed" if drift == 0 else "drift"
    return str(extra.get("error_category") or payload.get("status"))


async def drive(server: str, body: Any, *, concurrency: int, deadline: float, tally: Tally) -> None:
    """Keep ``concurrency`` rollouts in flight until ``deadline`` (monotonic); ``body(i)`` makes
    the i-th request. Every answer, or failure to get one, is counted in ``tally``."""
    counter = iter(range(10**12))
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                i = next(counter)
                try:
                    async with session.post(f"{server}/rollout", json=body(i)) as response:
                        payload = await response.json(content_type=None)
                        kind = outcome(response.status, payload)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    kind = f"client error: {type(exc).__name__}"
                tally.finished += 1
                if kind == "completed":
                    tally.completed += 1
                else:
                    tally.failed[kind] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """RSS in MB of the server's main process, and of its whole tree."""
    root = psutil.Process(pid)
    main = root.memory_info().rss / 2**20
    total = main
    for child in root.children(recursive=True):
        try:
            total += child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return main, total


async def take_sample(
    session: aiohttp.ClientSession, server: Proc, tally: Tally, started: float
) -> dict[str, Any]:
    """Rollouts finished so far, RSS, and the lag histogram as scraped now."""
    async with session.get(f"{server.url}/metrics") as response:
        lag = histogram(await response.text(), "event_loop_lag_seconds")
    main, total = tree_rss_mb(server.popen.pid)
    return {
        "t_s": time.monotonic() - started,
        "finished": tally.finished,
        "failed": sum(tally.failed.values()),
        "rss_main_mb": main,
        "rss_tree_mb": total,
        "lag": lag,
    }


def slope_per_10k(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y against x, times 10,000 (MB per 10k rollouts)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 10_000


def summarise(samples: list[dict[str, Any]], tally: Tally, warmup_fraction: float) -> dict[str, Any]:
    """The soak's figures from its samples (see the module docstring)."""
    steady = samples[int(len(samples) * warmup_fraction) :]
    first, last = steady[0], steady[-1]
    lag_p99 = histogram_quantile(first["lag"], last["lag"], 0.99)
    lag_max = histogram_quantile(first["lag"], last["lag"], 1.0)
    windows = [histogram_quantile(a["lag"], b["lag"], 0.99) for a, b in zip(steady, steady[1:], strict=False)]
    return {
        "rollouts": tally.finished,
        "completed": tally.completed,
        "errors": sum(tally.failed.values()),
        "errors_by_kind": dict(tally.failed),
        "steady_rollouts": last["finished"] - first["finished"],
        "steady_seconds": last["t_s"] - first["t_s"],
        "rss_main_mb_start": first["rss_main_mb"],
        "rss_main_mb_end": last["rss_main_mb"],
        "rss_tree_mb_start": first["rss_tree_mb"],
        "rss_tree_mb_end": last["rss_tree_mb"],
        "rss_main_slope_mb_per_10k": slope_per_10k([(s["finished"], s["rss_main_mb"]) for s in steady]),
        "rss_tree_slope_mb_per_10k": slope_per_10k([(s["finished"], s["rss_tree_mb"]) for s in steady]),
        "loop_lag_p99_ms": None if lag_p99 is None else lag_p99 * 1000,
        "loop_lag_max_ms": None if lag_max is None else lag_max * 1000,
        "loop_lag_window_p99_max_ms": max((w * 1000 for w in windows if w is not None), default=None),
    }


async def soak(server: Proc, trainer: Proc, args: argparse.Namespace) -> dict[str, Any]:
    spec = f"sequential/turns={args.turns}/latency={args.latency:g}"
    system = system_prompt(args.system_tokens, seed=7)
    tally, samples = Tally(), []
    started = time.monotonic()
    load = asyncio.create_task(
        drive(
            server.url,
            lambda i: rollout_body(trainer.url, spec, system, args.turns, i),
            concurrency=args.concurrency,
            deadline=started + args.minutes * 60,
            tally=tally,
        )
    )
    async with aiohttp.ClientSession() as session:
        while not load.done():
            samples.append(await take_sample(session, server, tally, started))
            await asyncio.wait([load], timeout=args.sample_seconds)
        await load
        samples.append(await take_sample(session, server, tally, started))
    return {"summary": summarise(samples, tally, args.warmup_fraction), "samples": samples}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency", type=float, default=1.0, help="simulated seconds per trainer call")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.1,
        help="the first part of the run left out of the slope (caches and pools filling)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    hf_home = offline_hf_home(workdir)
    progress = Progress(2)
    server, trainers, startup = start_processes(hf_home, workdir, 1, Placement())
    progress.step(f"server up; soaking {args.minutes:g} min at {args.concurrency} concurrent")
    try:
        result = asyncio.run(soak(server, trainers[0], args))
    finally:
        server.stop()
        trainers[0].stop()
    summary = result["summary"]
    progress.step(f"{summary['rollouts']} rollouts, {summary['errors']} errors")
    report(args, summary, result["samples"])
    return 0


def report(args: argparse.Namespace, summary: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    columns = {
        "rollouts": "rollouts",
        "errors": "errors",
        "rss_main_mb_start": "sanic MB start",
        "rss_main_mb_end": "end",
        "rss_main_slope_mb_per_10k": "MB/10k",
        "rss_tree_mb_start": "tree MB start",
        "rss_tree_mb_end": "end",
        "rss_tree_slope_mb_per_10k": "MB/10k",
        "loop_lag_p99_ms": "lag p99 ms",
        "loop_lag_max_ms": "max",
        "loop_lag_window_p99_max_ms": "worst window p99",
    }
    title = (
        f"Soak: {args.minutes:g} min, {args.concurrency} concurrent, {args.turns} turns, "
        f"latency {args.latency:g} s (slope after the first {args.warmup_fraction:.0%})"
    )
    print_table([summary], columns, title=title)
    if summary["errors_by_kind"]:
        print("errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors_by_kind"].items()))
    path = write_results(NAME, {"args": vars(args), "summary": summary, "samples": samples})
    xs = [s["finished"] for s in samples]
    panels = {
        "server RSS MB": [
            Series(label="Sanic process", xs=xs, ys=[s["rss_main_mb"] for s in samples]),
            Series(label="whole tree (with tokenize workers)", xs=xs, ys=[s["rss_tree_mb"] for s in samples]),
        ]
    }
    plot = plot_panels(RESULTS_DIR / f"{NAME}-latest.png", panels, xlabel="rollouts finished", ylabel="MB")
    print(f"results: {path}\nplot: {plot}")


if __name__ == "__main__":
    raise SystemExit(main())
