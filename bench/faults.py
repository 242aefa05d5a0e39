"""Faults under load: 256 concurrent rollouts while a trainer, a client or a process misbehaves.

``python -m bench.faults [--concurrency 256] [--rollouts 512] [--only NAME,...]`` starts the
trainer simulator and the rollout server as ``bench.e2e`` does (``HTTP_CLIENT_TIMEOUT`` from
``--client-timeout``, 60 s: a hanging trainer costs that, not 5 minutes; on a shared 2-core
machine the simulator, which tokenizes every prompt on one core, took over 30 s to answer some
plain calls at 256 concurrent) and runs one scenario after another, each with
``--concurrency`` rollouts in flight until ``--rollouts`` are sent. In the fault scenarios every
``--every``-th rollout meets the fault; the others are plain ``sequential`` rollouts beside it:

- ``trainer-hang``, ``-reset``, ``-drip``, ``-50mb``, ``-badutf8``: the simulator's ``fault``
  scenario breaks the answer to the rollout's second call on the wire (``sim/faults.py``);
- ``client-disconnect``: the client closes its connection mid-rollout (after
  ``--disconnect-after`` s); the bench counts the trainer calls made for it afterwards;
- ``client-slow``: the client sends its request in ten pieces over a second;
- ``tokenize-worker-kill``: SIGKILL of one tokenize worker, twice, while the load runs;
- ``sigterm`` (last): SIGTERM to the server while the load runs; the clients go on sending.

Each row: rollouts completed exactly (status COMPLETED, no drift), failed by error category,
cancelled (disconnected clients), refused (503 while draining; connection refused once the server
has exited), lost (a request sent that got no answer, or an answer that is not the protocol's:
must be 0), the plain rollouts that did not complete, the simulator's mask errors and prefix
breaks, the trainer calls made after a disconnect, rollouts still in flight after the scenario,
and the RSS of the Sanic process and of the server's whole tree before and after. Writes
``bench/results/faults-*.json`` and ``bench/results/faults-latest.png``.

The clients speak HTTP/1.1 on raw asyncio streams (one connection per rollout, ``Connection:
close``): they must be able to send slowly and to hang up mid-rollout, and nothing a client
library retries or hides may blur what the server answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

from bench._report import RESULTS_DIR, Progress, Series, plot_panels, print_table, write_results
from bench.e2e import Placement, offline_hf_home, start_processes
from bench.soak import outcome, rollout_body, tree_rss_mb
from bench.workloads import system_prompt
from rollout_server.sim.procs import Proc

NAME = "faults"
TURNS = 3
LATENCY = 0.5
Client = Literal["plain", "disconnect", "slow"]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What every ``every``-th rollout meets: a fault route, a kind of client, or neither."""

    name: str
    route: str = ""  # the simulator route of the faulty rollouts ("" = plain)
    client: Client = "plain"
    expected: str = "completed"  # what a faulty rollout should end as
    action: Literal["", "kill-worker", "sigterm"] = ""


SCENARIOS = (
    Scenario(name="baseline"),
    Scenario(name="trainer-hang", route="fault/kind=hang/at=1", expected="timeout"),
    Scenario(name="trainer-reset", route="fault/kind=reset/at=1", expected="network_error"),
    Scenario(name="trainer-drip", route="fault/kind=drip/at=1/ms=5000", expected="timeout"),
    Scenario(name="trainer-50mb", route="fault/kind=huge/at=1/mb=50", expected="trainer_server_error"),
    Scenario(name="trainer-badutf8", route="fault/kind=badutf8/at=1", expected="trainer_server_error"),
    Scenario(name="client-disconnect", client="disconnect", expected="cancelled"),
    Scenario(name="client-slow", client="slow"),
    Scenario(name="tokenize-worker-kill", action="kill-worker"),
    Scenario(name="sigterm", action="sigterm"),
)


@dataclass
class Record:
    """One rollout as its client saw it."""

    rollout_id: str
    faulty: bool
    kind: str = ""  # completed, an error category, cancelled, HTTP <status>, refused, lost: ...
    sim_calls_at_disconnect: int | None = None


@dataclass
class Load:
    server: Proc
    trainer: Proc
    system: str
    records: list[Record] = field(default_factory=list)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any] | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    payload = await reader.read()  # Connection: close: the body ends with the connection
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


async def _send(writer: asyncio.StreamWriter, data: bytes, slow: bool) -> None:
    if not slow:
        writer.write(data)
        return
    piece = -(-len(data) // 10)
    for at in range(0, len(data), piece):
        writer.write(data[at : at + piece])
        await writer.drain()
        await asyncio.sleep(0.1)


async def post_rollout(load: Load, body: dict[str, Any], client: Client, disconnect_after: float) -> str:
    """Send one rollout; what came of it (see ``Record.kind``)."""
    content = json.dumps(body).encode()
    head = (
        b"POST /rollout HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(content)
    )
    host, port = load.server.url.removeprefix("http://").split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return "gone"  # nothing sent: the server has exited (after a drain) or is not listening
    try:
        await _send(writer, head + content, slow=client == "slow")
        if client == "disconnect":
            await asyncio.sleep(disconnect_after)
            return "cancelled"
        status, payload = await _read_answer(reader)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        return f"lost: {type(exc).__name__}"
    finally:
        writer.close()
    kind = outcome(status, payload)
    if status == 503 and payload and payload.get("error", {}).get("type") == "shutting_down":
        return "refused"  # draining: nothing was started
    return kind if status in (200, 503) or kind.startswith("HTTP 4") else f"lost: {kind}"


async def sim_calls(load: Load, rollout_id: str) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{load.trainer.url}/sim/rollouts/{rollout_id}", timeout=30)
    return int(response.json()["calls"]) if response.status_code == 200 else 0


async def drive(load: Load, scenario: Scenario, args: argparse.Namespace) -> None:
    """``args.concurrency`` clients until ``args.rollouts`` are sent; every ``args.every``-th faulty."""
    plain = f"sequential/turns={TURNS}/latency={LATENCY:g}"
    pending = iter(range(args.rollouts))

    async def client() -> None:
        for i in pending:
            faulty = i % args.every == 0 and (scenario.route != "" or scenario.client != "plain")
            route = (
                f"{scenario.route}/turns={TURNS}/latency={LATENCY:g}" if faulty and scenario.route else plain
            )
            body = rollout_body(load.trainer.url, route, load.system, TURNS, i, name=scenario.name)
            record = Record(rollout_id=body["rollout_id"], faulty=faulty)
            load.records.append(record)
            kind = scenario.client if faulty else "plain"
            record.kind = await post_rollout(load, body, kind, args.disconnect_after)
            if record.kind == "cancelled":
                # Let the server see the connection end, then count what the trainer got so far.
                await asyncio.sleep(0.5)
                record.sim_calls_at_disconnect = await sim_calls(load, record.rollout_id)

    await asyncio.gather(*(client() for _ in range(args.concurrency)))


def tokenize_workers(server: Proc) -> list[psutil.Process]:
    """The server's tokenize worker processes (children without children; not the resource
    tracker)."""
    found = []
    for proc in psutil.Process(server.popen.pid).children(recursive=True):
        if "resource_tracker" not in " ".join(proc.cmdline()) and not proc.children():
            found.append(proc)
    return found


async def act(load: Load, scenario: Scenario, args: argparse.Namespace) -> list[str]:
    """The scenario's action on the server's processes while the load runs; what was done."""
    done: list[str] = []
    if scenario.action == "kill-worker":
        for delay in (1.0, 1.5):
            await asyncio.sleep(delay)
            victim = tokenize_workers(load.server)[0]
            victim.send_signal(signal.SIGKILL)
            done.append(f"SIGKILL tokenize worker {victim.pid}")
    elif scenario.action == "sigterm":
        await asyncio.sleep(1.5)
        load.server.popen.send_signal(signal.SIGTERM)
        done.append("SIGTERM server")
    return done


async def run_scenario(load: Load, scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    httpx.delete(f"{load.trainer.url}/sim/rollouts", timeout=30)
    load.records = []
    rss_before = tree_rss_mb(load.server.popen.pid)
    started = time.perf_counter()
    actions, _ = await asyncio.gather(act(load, scenario, args), drive(load, scenario, args))
    wall = time.perf_counter() - started
    # Every rollout has been answered or its client is gone: none may still hold a slot.
    await asyncio.sleep(1.0)
    rss_after: tuple[float | None, float | None] = (None, None)
    in_flight = None
    if load.server.popen.poll() is None:  # after SIGTERM, the server has exited
        with contextlib.suppress(httpx.HTTPError, psutil.Error):  # unless it exits meanwhile
            rss_after = tree_rss_mb(load.server.popen.pid)
            in_flight = httpx.get(f"{load.server.url}/health", timeout=30).json()["rollouts"]["in_flight"]
    further = 0
    for record in load.records:
        if record.sim_calls_at_disconnect is not None:
            further += await sim_calls(load, record.rollout_id) - record.sim_calls_at_disconnect
    stats = httpx.get(f"{load.trainer.url}/sim/stats", timeout=30).json()
    return row(scenario, load.records, actions, wall, stats, further, in_flight, rss_before, rss_after)


def row(
    scenario: Scenario,
    records: list[Record],
    actions: list[str],
    wall: float,
    stats: dict[str, int],
    further: int,
    in_flight: int | None,
    rss_before: tuple[float, float],
    rss_after: tuple[float | None, float | None],
) -> dict[str, Any]:
    kinds = Counter(r.kind for r in records)
    failed = {
        k: v for k, v in kinds.items() if k not in ("completed", "cancelled", "refused") and "lost" not in k
    }
    plain_not_completed = sum(1 for r in records if not r.faulty and r.kind not in ("completed", "refused"))
    faulty_as_expected = sum(1 for r in records if r.faulty and r.kind == scenario.expected)
    return {
        "scenario": scenario.name,
        "rollouts": len(records),
        "faulty": sum(r.faulty for r in records),
        "faulty_as_expected": faulty_as_expected,
        "completed": kinds["completed"],
        "failed": sum(failed.values()),
        "failed_by_category": failed,
        "failed_text": ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "-",
        "cancelled": kinds["cancelled"],
        "refused": kinds["refused"],
        "gone": kinds["gone"],
        "lost": sum(v for k, v in kinds.items() if "lost" in k),
        "lost_kinds": {k: v for k, v in kinds.items() if "lost" in k},
        "plain_not_completed": plain_not_completed,
        "mask_errors": stats.get("mask_errors", 0),
        "prefix_breaks": stats.get("prefix_breaks", 0),
        "calls_after_disconnect": further,
        "in_flight_after": in_flight,
        "wall_s": wall,
        "rss_main_mb_before": rss_before[0],
        "rss_main_mb_after": rss_after[0],
        "rss_tree_mb_before": rss_before[1],
        "rss_tree_mb_after": rss_after[1],
        "actions": actions,
    }


async def run_all(
    load: Load, todo: list[Scenario], args: argparse.Namespace, progress: Progress
) -> list[dict[str, Any]]:
    rows = []
    for scenario in todo:
        rows.append(await run_scenario(load, scenario, args))
        r = rows[-1]
        progress.step(f"{scenario.name}: completed {r['completed']}, failed {r['failed']}, lost {r['lost']}")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=512, help="rollouts sent per scenario")
    parser.add_argument("--every", type=int, default=4, help="every N-th rollout meets the fault")
    parser.add_argument(
        "--client-timeout", type=float, default=60.0, help="the server's HTTP_CLIENT_TIMEOUT (s)"
    )
    parser.add_argument("--system-tokens", type=int, default=200, help="system prompt of every rollout")
    parser.add_argument("--disconnect-after", type=float, default=1.5, help="seconds into its rollout")
    parser.add_argument(
        "--only", default="", help="scenarios whose name contains one of these (comma-separated)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    todo = [s for s in SCENARIOS if not args.only or any(o in s.name for o in args.only.split(","))]
    workdir = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    hf_home = offline_hf_home(workdir)
    progress = Progress(len(todo) + 1)
    server, trainers, _ = start_processes(
        hf_home,
        workdir,
        1,
        Placement(),
        HTTP_CLIENT_TIMEOUT=f"{args.client_timeout:g}",
        LOG_LEVEL="INFO",
    )
    progress.step(f"server up (logs in {workdir})")
    load = Load(server=server, trainer=trainers[0], system=system_prompt(args.system_tokens, seed=7))
    try:
        rows = asyncio.run(run_all(load, todo, args, progress))
    finally:
        exit_code = server.popen.poll()
        server.stop()
        trainers[0].stop()
    report(rows, args, exit_code)
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace, exit_code: int | None) -> None:
    columns = {
        "scenario": "scenario",
        "rollouts": "sent",
        "faulty": "faulty",
        "faulty_as_expected": "as expected",
        "completed": "completed",
        "failed_text": "failed by category",
        "cancelled": "cancelled",
        "refused": "503 draining",
        "gone": "refused at connect",
        "lost": "lost",
        "plain_not_completed": "plain not completed",
        "mask_errors": "mask err",
        "calls_after_disconnect": "calls after disconnect",
        "in_flight_after": "in flight after",
        "rss_main_mb_before": "sanic MB before",
        "rss_main_mb_after": "after",
        "rss_tree_mb_before": "tree MB before",
        "rss_tree_mb_after": "after",
    }
    title = (
        f"Faults under load: {args.concurrency} concurrent, {args.rollouts} rollouts per scenario, "
        f"every {args.every}th faulty; HTTP_CLIENT_TIMEOUT={args.client_timeout:g} s"
    )
    print_table(rows, columns, title=title)
    if rows and rows[-1]["scenario"] == "sigterm":
        print(f"server exit code after SIGTERM: {exit_code}")
    path = write_results(NAME, {"args": vars(args), "server_exit_code": exit_code, "rows": rows})
    xs = list(range(len(rows)))
    panels = {
        "rollouts by outcome (x: scenario in table order)": [
            Series(label=key, xs=xs, ys=[float(r[key]) for r in rows])
            for key in ("completed", "failed", "cancelled", "refused", "gone", "lost")
        ],
        "server RSS MB after each scenario": [
            Series(label="Sanic process", xs=xs, ys=[r["rss_main_mb_after"] or 0.0 for r in rows]),
            Series(label="whole tree", xs=xs, ys=[r["rss_tree_mb_after"] or 0.0 for r in rows]),
        ],
    }
    plot = plot_panels(RESULTS_DIR / f"{NAME}-latest.png", panels, xlabel="scenario", ylabel="")
    print(f"results: {path}\nplot: {plot}")


if __name__ == "__main__":
    raise SystemExit(main())
