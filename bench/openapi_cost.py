"""What sanic-ext would cost the server, against the OpenAPI routes it has (rollout_server.openapi).

    python -m bench.openapi_cost [--requests 3000]

Needs sanic-ext importable (it is not a dependency: ``pip install --target DIR sanic-ext``, then
``PYTHONPATH=DIR``). Serves one small POST route in a single Sanic process, plain and with
``sanic_ext.Extend``, and measures the server process's CPU time per request (its own clock,
read through a route) over keep-alive requests from this process; and the import and set-up
time of each variant in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

from rollout_server.sim.procs import free_port

SERVER = r"""
import os, sys, time
from sanic import Sanic
from sanic.response import json
t0 = time.perf_counter()
app = Sanic("cost")
if sys.argv[1] == "ext":
    from sanic_ext import Extend
    Extend(app)
else:
    from rollout_server.openapi import openapi_document
    openapi_document()
@app.post("/echo")
async def echo(request):
    return json({"n": len(request.body)})
@app.get("/cpu")
async def cpu(request):
    return json({"cpu": time.process_time()})
print("setup_s", time.perf_counter() - t0, flush=True)
app.run(host="127.0.0.1", port=int(sys.argv[2]), single_process=True, access_log=False, motd=False)
"""


def measure(variant: str, requests: int) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, variant, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])},
    )
    try:
        assert proc.stdout is not None
        setup = float(proc.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.get(url + "/cpu")
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            body = b'{"rollout_id": "r", "messages": []}' * 20
            for _ in range(200):
                client.post(url + "/echo", content=body)
            before = client.get(url + "/cpu").json()["cpu"]
            for _ in range(requests):
                client.post(url + "/echo", content=body)
            after = client.get(url + "/cpu").json()["cpu"]
        return {"setup_ms": setup * 1000, "cpu_us_per_request": (after - before) / (requests + 1) * 1e6}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    rows = [(variant, measure(variant, args.requests)) for variant in ("plain", "ext", "plain", "ext")]
    print(f"{'variant':8} {'set-up ms':>10} {'server CPU µs/request':>22}")
    for variant, row in rows:
        print(f"{variant:8} {row['setup_ms']:10.1f} {row['cpu_us_per_request']:22.1f}")


if __name__ == "__main__":
    main()
