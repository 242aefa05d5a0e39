"""What the server's own processes load: the code that runs in tokenize workers, and the heavy
libraries only workers need, stay out of the Sanic process and the pool host."""

from __future__ import annotations

import json
import subprocess
import sys

# transformers, tokenizers and jinja2 are the pool workers'; _worker is their code.
WORKER_ONLY = ("tokenize_pool._worker", "transformers", "tokenizers", "jinja2")


def test_the_server_and_the_pool_host_import_no_worker_code() -> None:
    script = (
        "import json, sys\n"
        "import rollout_server.server, rollout_server.app, tokenize_pool.host\n"
        f"print(json.dumps([m for m in {WORKER_ONLY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []
