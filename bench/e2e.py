"""End to end: the rollout server and the trainer simulator under N concurrent rollouts.

``python -m bench.e2e [--quick]`` starts the simulator and the server as their own processes,
drives them with ``bench.loadgen`` (a third process), and reports per scenario: rollouts/s,
tokens/s, the server's per-turn overhead p50/p95/p99 (its own accounting: time between trainer
calls), event-loop lag p99 (from the server's histogram), CPU seconds per rollout of the
server's whole process tree, RSS of every server process, and errors. Beside each, in the same
run and on the same rollouts, the naive baseline: re-rendering and re-tokenizing the whole
conversation before every trainer call, with the standard calls (``apply_chat_template``, the
tokenizer's ``encode``) and with this project's own faster render and encode (``naive-fast``).

The first scenarios are the CPU target: an 11-call tool rollout with a ~4k-token system prompt at
concurrency 64, every rollout with its own prompt, then in GRPO groups of 8 rollouts sharing a
prompt. Then the grid: concurrency x simulated LLM latency x turns (all prompts distinct).

Every scenario runs in message mode and then in token mode (``"generation": "tokens"``: the
server renders and tokenizes, the simulator answers as an engine), on rollouts of the same shape
in the same run; a token-mode row carries its ratios to the message-mode row before it: server
CPU per rollout and tokens tokenized per final token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench._report import RESULTS_DIR, Progress, Series, plot_panels, print_table, write_results
from rollout_server.sim.procs import Proc, free_port, sim_command, spawn, wait_http
from tokenize_pool.hf_cache import seed_cache

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = "Qwen/Qwen3-8B"


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    concurrency: int
    latency: float
    turns: int
    system_tokens: int
    rollouts: int
    group: int = 1
    generation: str = "messages"

    @property
    def spec(self) -> str:
        return f"sequential/turns={self.turns}/latency={self.latency:g}"


# The CPU target: an 11-call tool rollout with a ~4k-token system prompt, 64 concurrent.
CPU_TARGET = Scenario(
    name="cpu-target", concurrency=64, latency=0.0, turns=10, system_tokens=4000, rollouts=64
)


def _env(hf_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLOUT_", "TOKENIZE", "HF_"))}
    env.update({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


@dataclass(frozen=True)
class Placement:
    """Command prefixes that pin the server and the load (simulator, load generator) to CPUs."""

    server: tuple[str, ...] = ()
    load: tuple[str, ...] = ()

    @classmethod
    def pinned(cls) -> Placement:
        # The server's whole tree on CPU 0, the trainer stand-in and the load generator on CPU 1:
        # the server's overhead is then measured on a core of its own, as beside a real trainer.
        return cls(server=("taskset", "-c", "0"), load=("taskset", "-c", "1"))


def start_processes(
    hf_home: Path, logs: Path, sims: int, place: Placement, **server_env: str
) -> tuple[Proc, list[Proc], dict[str, float]]:
    """The simulators and the server (``server_env`` overrides its environment), once warm."""
    trainers = []
    for i in range(sims):
        port = free_port()
        args = [*place.load, *sim_command(port)]
        trainers.append(spawn(args, _env(hf_home), logs / f"sim{i}.log", port, cwd=ROOT))
    port = free_port()
    env = _env(
        hf_home,
        ROLLOUT_SERVER_HOST="127.0.0.1",
        ROLLOUT_SERVER_PORT=str(port),
        MAX_CONCURRENT_ROLLOUTS="4096",
        HTTP_MAX_CONNECTIONS="4096",
        ROLLOUT_TIMEOUT_SECONDS="3600",
        HTTP_CLIENT_TIMEOUT="3600",
        TOKENIZE_POOL_SOCKET=str(logs / "pool.sock"),
        PRELOAD_TOKENIZERS=TOKENIZER,
        LOG_LEVEL="WARNING",
    )
    env.update(server_env)
    server = spawn(
        [*place.server, sys.executable, "-m", "rollout_server.server"],
        env,
        logs / "server.log",
        port,
        cwd=ROOT,
    )
    startup = {"health_s": wait_http(server, "/health"), "ready_s": 0.0}
    startup["ready_s"] = startup["health_s"] + wait_http(server, "/ready")
    for trainer in trainers:
        wait_http(trainer, "/health")
    return server, trainers, startup


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the server's process (``main``) and of its children (``pool``)."""
    total = {"main": 0.0, "pool": 0.0}
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total["main" if proc.pid == pid else "pool"] += times.user + times.system
    return total


def rss_by_role(pid: int) -> dict[str, float]:
    """RSS in MB of the Sanic process, the pool host (with several Sanic workers) and each
    tokenize worker; multiprocessing's resource tracker is left out."""
    root = psutil.Process(pid)
    roles = {"sanic": root.memory_info().rss / 2**20}
    workers = 0
    for proc in root.children(recursive=True):
        if "resource_tracker" in " ".join(proc.cmdline()):
            continue
        if proc.children():
            roles["pool_host"] = proc.memory_info().rss / 2**20
        else:
            roles[f"tokenize_worker_{workers}"] = proc.memory_info().rss / 2**20
            workers += 1
    return roles


def histogram(metrics_text: str, name: str) -> dict[float, float]:
    buckets = {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    return next(b for b, c in zip(bounds, counts, strict=True) if c >= target)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _naive_rollout_ms(render: Any, encode: Any, messages: list[dict[str, Any]]) -> float:
    started = time.process_time()
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            encode(render(messages[:i]))
    return (time.process_time() - started) * 1000


def _codec() -> Any:
    from tokenize_pool.codec import TokenizerKey, load_codec

    return load_codec(TokenizerKey(TOKENIZER), trust_remote_code=False)


def naive_ms(records: list[dict[str, Any]], sample: int = 16, passes: int = 3) -> dict[str, float] | None:
    """CPU ms per rollout to re-render and re-tokenize the whole conversation before each call,
    measured after the scenario: the median of ``passes`` passes over ``sample`` conversations.

    Two ways: ``naive``, as a naive server does it with the standard calls (``apply_chat_template``
    then the tokenizer's ``encode``); ``naive_fast``, the same loop on this project's own fastest
    render and encode (``ChatCodec.render``: the template written out in Python where there is
    one; ``ChatCodec.encode``: ``encode_batch_fast``), so that the savings of tokenizing only the
    growth are seen apart from those of faster parts."""
    conversations = [r["final_messages"] for r in records if r["final_messages"]][:sample]
    if not conversations:
        return None
    codec = _codec()
    ways = {
        "naive": (
            lambda m: codec.render_reference(m, add_generation_prompt=True),
            lambda text: codec._backend.encode(text, add_special_tokens=False).ids,
        ),
        "naive_fast": (lambda m: codec.render(m, add_generation_prompt=True), codec.encode),
    }
    return {
        name: statistics.median(
            statistics.mean(_naive_rollout_ms(render, encode, m) for m in conversations)
            for _ in range(passes)
        )
        for name, (render, encode) in ways.items()
    }


def run_scenario(
    server: Proc, trainers: list[Proc], scenario: Scenario, workdir: Path, place: Placement
) -> dict[str, Any]:
    out = workdir / f"{scenario.name}.json"
    lag_before = histogram(httpx.get(f"{server.url}/metrics", timeout=30).text, "event_loop_lag_seconds")
    cpu_before = cpu_seconds(server.popen.pid)
    subprocess.run(
        [
            *place.load,
            sys.executable,
            "-m",
            "bench.loadgen",
            "--server",
            server.url,
            "--trainer",
            ",".join(t.url for t in trainers),
            "--spec",
            scenario.spec,
            "--turns",
            str(scenario.turns),
            "--concurrency",
            str(scenario.concurrency),
            "--rollouts",
            str(scenario.rollouts),
            "--system-tokens",
            str(scenario.system_tokens),
            "--group",
            str(scenario.group),
            "--generation",
            scenario.generation,
            "--out",
            str(out),
        ],
        check=True,
        cwd=ROOT,
    )
    cpu_after = cpu_seconds(server.popen.pid)
    lag_after = histogram(httpx.get(f"{server.url}/metrics", timeout=30).text, "event_loop_lag_seconds")
    result = json.loads(out.read_text())
    records = result["records"]
    ok = [r for r in records if r["status"] == "COMPLETED" and r["drift_events"] == 0]
    overheads = [o for r in records for o in r["turn_overhead_ms"]]
    # The first turn of a rollout also waits for every first prompt that arrived with it; the
    # later turns show the steady state.
    first_turns = [r["turn_overhead_ms"][0] for r in records if r["turn_overhead_ms"]]
    later_turns = [o for r in records for o in r["turn_overhead_ms"][1:]]
    # The opening wave arrives all at once; the rollouts sent after it, one as another ends, are
    # what a long run at this concurrency looks like.
    steady = [o for r in records if r["index"] >= scenario.concurrency for o in r["turn_overhead_ms"]]
    queued = [r["queued_ms"] for r in records if r["queued_ms"] is not None]
    # Token-mode rows are compared with their message-mode twin instead (compare_generations).
    naive = naive_ms(ok) if scenario.generation == "messages" else None
    cpu_parts = {
        role: (cpu_after[role] - cpu_before[role]) / max(1, len(records)) * 1000 for role in cpu_after
    }
    cpu_ms = sum(cpu_parts.values())
    encoded_ratio = [r["tokens_encoded"] / r["sequence_length"] for r in ok if r["sequence_length"]]
    encoded = sum(r["tokens_encoded"] for r in ok)
    final = sum(r["sequence_length"] for r in ok)
    lag_p99 = histogram_quantile(lag_before, lag_after, 0.99)
    lag_max = histogram_quantile(lag_before, lag_after, 1.0)
    return {
        "scenario": scenario.name,
        "generation": scenario.generation,
        "concurrency": scenario.concurrency,
        "latency_s": scenario.latency,
        "turns": scenario.turns,
        "system_tokens": scenario.system_tokens,
        "group": scenario.group,
        "rollouts": len(records),
        "errors": len(records) - len(ok),
        "error_kinds": sorted({str(r["error_category"] or r["status"]) for r in records if r not in ok}),
        "wall_s": result["wall_s"],
        "rollouts_per_s": len(ok) / result["wall_s"],
        "tokens_per_s": sum(r["sequence_length"] for r in ok) / result["wall_s"],
        "overhead_p50_ms": percentile(overheads, 0.50),
        "overhead_p95_ms": percentile(overheads, 0.95),
        "overhead_p99_ms": percentile(overheads, 0.99),
        "first_turn_p50_ms": percentile(first_turns, 0.50),
        "first_turn_max_ms": max(first_turns, default=None),
        "later_turns_p99_ms": percentile(later_turns, 0.99),
        "steady_p99_ms": percentile(steady, 0.99),
        "queued_p99_ms": percentile(queued, 0.99),
        "queued_max_ms": max(queued, default=None),
        "loop_lag_p99_ms": None if lag_p99 is None else lag_p99 * 1000,
        "loop_lag_max_ms": None if lag_max is None else lag_max * 1000,
        "loop_lag_samples": lag_after.get(float("inf"), 0.0) - lag_before.get(float("inf"), 0.0),
        "cpu_ms_per_rollout": cpu_ms,
        "cpu_ms_main": cpu_parts["main"],
        "cpu_ms_pool": cpu_parts["pool"],
        "naive_ms_per_rollout": naive and naive["naive"],
        "cpu_vs_naive": None if not naive else cpu_ms / naive["naive"],
        "naive_fast_ms_per_rollout": naive and naive["naive_fast"],
        "cpu_vs_naive_fast": None if not naive else cpu_ms / naive["naive_fast"],
        "encoded_per_final_token": encoded / final if final else None,
        "encoded_per_final_token_max": max(encoded_ratio, default=None),
        "rss_mb": rss_by_role(server.popen.pid),
    }


def _with_generations(found: list[Scenario], generations: list[str]) -> list[Scenario]:
    """Each scenario once per generation, side by side; token mode's twin is named ``…-tokens``."""
    return [
        dataclasses.replace(s, name=s.name if g == "messages" else f"{s.name}-tokens", generation=g)
        for s in found
        for g in generations
    ]


def compare_generations(rows: list[dict[str, Any]]) -> None:
    """Add to each token-mode row its ratios to the message-mode row of the same scenario."""
    by_name = {r["scenario"]: r for r in rows if r["generation"] == "messages"}
    for row in rows:
        twin = by_name.get(row["scenario"].removesuffix("-tokens"))
        if row["generation"] != "tokens" or twin is None:
            continue
        row["cpu_vs_messages"] = row["cpu_ms_per_rollout"] / twin["cpu_ms_per_rollout"]
        mine, theirs = row["encoded_per_final_token"], twin["encoded_per_final_token"]
        row["encoded_vs_messages"] = mine / theirs if mine is not None and theirs else None


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    # Four waves of 64: one wave is a burst whose start and end dominate the figure. The grid
    # runs --waves waves up to 256 concurrent (one above: 2,048 rollouts take minutes a wave).
    found = [
        dataclasses.replace(CPU_TARGET, name="cpu-target", rollouts=256),
        dataclasses.replace(CPU_TARGET, name="cpu-target-grpo8", rollouts=256, group=8),
    ]
    for turns in args.turns:
        for latency in args.latency:
            for n in args.concurrency:
                name = f"n{n}-lat{latency:g}-t{turns}"
                # With simulated latency a lone rollout takes turns x latency seconds: fewer repeats.
                waves = args.waves if n <= 256 else 1
                rollouts = max(
                    n * waves, args.min_rollouts if latency == 0 else max(1, args.min_rollouts // 4)
                )
                found.append(
                    Scenario(
                        name=name,
                        concurrency=n,
                        latency=latency,
                        turns=turns,
                        system_tokens=args.system_tokens,
                        rollouts=rollouts,
                    )
                )
    return _with_generations(found, args.generation)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _generations(text: str) -> list[str]:
    found = [g for g in text.split(",") if g]
    if not found or any(g not in ("messages", "tokens") for g in found):
        raise argparse.ArgumentTypeError("expected messages, tokens or messages,tokens")
    return found


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def offline_hf_home(workdir: Path) -> Path:
    """``HF_HOME`` (or ``workdir/hf``) seeded with the tokenizers, offline, for this process and
    the servers it starts."""
    hf_home = Path(os.environ.get("HF_HOME") or workdir / "hf")
    seed_cache(hf_home / "hub")
    os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = str(hf_home), "1"
    return hf_home


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (about 4 minutes)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 16, 64, 256, 1024, 2048])
    parser.add_argument("--latency", type=_floats, default=[0.0, 1.0])
    parser.add_argument("--turns", type=_ints, default=[5, 20])
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--min-rollouts", type=int, default=16)
    parser.add_argument(
        "--waves",
        type=int,
        default=4,
        help="rollouts per scenario = waves x concurrency (up to 256 concurrent; 1 above)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=64,
        help="unmeasured rollouts (cpu-target shape) run first: connections, templates, caches",
    )
    parser.add_argument(
        "--sims", type=int, default=1, help="trainer simulator processes to spread rollouts over"
    )
    parser.add_argument(
        "--pin", action="store_true", help="server on CPU 0, simulator and load generator on CPU 1 (taskset)"
    )
    parser.add_argument(
        "--generation",
        type=_generations,
        default=["messages", "tokens"],
        help="run each scenario in these modes, side by side (messages,tokens)",
    )
    parser.add_argument(
        "--only", default="", help="run only scenarios whose name contains one of these (comma-separated)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.latency, args.turns = [1, 16, 64, 256], [0.0, 1.0], [5]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    hf_home = offline_hf_home(workdir)
    todo = [s for s in scenarios(args) if not args.only or any(o in s.name for o in args.only.split(","))]
    place = Placement.pinned() if args.pin else Placement()
    progress = Progress(len(todo) + 2)
    server, trainers, startup = start_processes(hf_home, workdir, args.sims, place)
    progress.step(
        f"server up: /health after {startup['health_s']:.2f} s, warm after {startup['ready_s']:.2f} s"
    )
    rows = []
    try:
        if args.warmup:
            # Like any steady-state measurement: the first rollouts also open the trainer
            # connections and fill per-process caches; they are not what a long run costs.
            for generation in args.generation:
                warm = dataclasses.replace(
                    CPU_TARGET, name="warmup", rollouts=args.warmup, generation=generation
                )
                run_scenario(server, trainers, warm, workdir, place)
        progress.step(f"warm-up: {args.warmup} rollouts, not measured")
        for scenario in todo:
            rows.append(run_scenario(server, trainers, scenario, workdir, place))
            row = rows[-1]
            progress.step(f"{scenario.name}: {row['rollouts_per_s']:.1f} rollouts/s, errors {row['errors']}")
    finally:
        server.stop()
        for trainer in trainers:
            trainer.stop()
    compare_generations(rows)
    report(rows, startup, pinned=args.pin)
    return 0


def report(rows: list[dict[str, Any]], startup: dict[str, float], *, pinned: bool) -> None:
    columns = {
        "scenario": "scenario",
        "rollouts": "n",
        "errors": "err",
        "rollouts_per_s": "rollouts/s",
        "tokens_per_s": "tokens/s",
        "overhead_p50_ms": "ovh p50 ms",
        "overhead_p95_ms": "p95",
        "overhead_p99_ms": "p99",
        "later_turns_p99_ms": "p99 turns 2+",
        "first_turn_p50_ms": "turn 1 p50",
        "first_turn_max_ms": "max",
        "steady_p99_ms": "p99 after wave 1",
        "queued_p99_ms": "start wait p99",
        "queued_max_ms": "max",
        "loop_lag_p99_ms": "lag p99 ms",
        "loop_lag_max_ms": "max",
        "loop_lag_samples": "samples",
        "cpu_ms_per_rollout": "cpu ms/rollout",
        "cpu_ms_main": "(sanic",
        "cpu_ms_pool": "pool)",
        "naive_ms_per_rollout": "naive ms",
        "cpu_vs_naive": "cpu/naive",
        "naive_fast_ms_per_rollout": "naive-fast ms",
        "cpu_vs_naive_fast": "cpu/naive-fast",
        "encoded_per_final_token": "encoded/final",
        "cpu_vs_messages": "cpu tokens/messages",
        "encoded_vs_messages": "encoded tokens/messages",
    }
    where = "server pinned to CPU 0, load to CPU 1" if pinned else "all processes share the CPUs"
    print_table(rows, columns, title=f"End to end (server CPU = its whole process tree; {where})")
    rss = rows[-1]["rss_mb"] if rows else {}
    print(
        f"\nstartup: /health {startup['health_s']:.2f} s, warm {startup['ready_s']:.2f} s; "
        f"RSS MB at the end: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
    )
    path = write_results("e2e", {"startup": startup, "pinned": pinned, "rows": rows})
    panels: dict[str, list[Series]] = {"server CPU ms per rollout": [], "per-turn overhead p99 ms": []}
    grid = [r for r in rows if not r["scenario"].startswith("cpu-target")]
    for key in sorted({(r["turns"], r["latency_s"], r["generation"]) for r in grid}):
        line = [r for r in grid if (r["turns"], r["latency_s"], r["generation"]) == key]
        label = f"{key[0]} turns, latency {key[1]:g} s, {key[2]}"
        xs = [r["concurrency"] for r in line]
        panels["server CPU ms per rollout"].append(
            Series(label=label, xs=xs, ys=[r["cpu_ms_per_rollout"] for r in line])
        )
        panels["per-turn overhead p99 ms"].append(
            Series(label=label, xs=xs, ys=[r["overhead_p99_ms"] or 0.0 for r in line])
        )
    plot = plot_panels(RESULTS_DIR / "e2e-latest.png", panels, xlabel="concurrent rollouts", ylabel="")
    print(f"results: {path}\nplot: {plot}")


if __name__ == "__main__":
    raise SystemExit(main())
