"""What the server's own processes load at start: the code that runs in tokenize workers and the
libraries only workers need stay out of the Sanic process and the pool host, and the MCP SDK
(tens of MB) stays out of every process until a rollout uses a tool server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# transformers, tokenizers and jinja2 are the pool workers'; _worker is their code; mcp is
# imported by mcp_tools on a rollout's first tool-server session.
NOT_AT_START = ("tokenize_pool._worker", "transformers", "tokenizers", "jinja2", "mcp")


@pytest.mark.slow  # a fresh interpreter
def test_the_server_and_the_pool_host_start_without_worker_code_or_the_mcp_sdk() -> None:
    script = (
        "import json, sys\n"
        "import rollout_server.server, rollout_server.app, rollout_server.toolset, tokenize_pool.host\n"
        f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {NOT_AT_START!r} or m in {NOT_AT_START!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
