"""Command line: ``python -m rollout_server.sim --host 127.0.0.1 --port 8100 --tokenizer Qwen/Qwen3-8B``."""

from __future__ import annotations

import argparse
import os
import sys

# Only tokenizers are used here: transformers' notice that PyTorch is missing is noise. The
# variable must be set before transformers is imported, below.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from tokenize_pool.heap import freeze_live_objects  # noqa: E402

from .app import SimApp, create_app  # noqa: E402
from .model import SimTokenizerError, Tokenizers  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100
DEFAULT_TOKENIZER = "Qwen/Qwen3-8B"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rollout-trainer-sim",
        description="Trainer simulator: serves /v1/completions with scripted turns and checks response masks.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--tokenizer", default=DEFAULT_TOKENIZER, help="hub repo id used unless the URL says tok="
    )
    return parser.parse_args(argv)


def _announce(app: SimApp, host: str, port: int) -> None:
    @app.after_server_start
    async def listening(app: SimApp) -> None:
        freeze_live_objects()  # no full-collection stalls from the tokenizer's objects
        print(f"trainer-sim listening on http://{host}:{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Load the default tokenizer, then serve until interrupted."""
    args = _parse_args(argv)
    tokenizers = Tokenizers()
    try:
        tokenizers.get(args.tokenizer)
    except SimTokenizerError as exc:
        print(f"trainer-sim: {exc}", file=sys.stderr, flush=True)
        return 2
    app = create_app(default_tokenizer=args.tokenizer, tokenizers=tokenizers)
    _announce(app, args.host, args.port)
    # A trainer faces thousands of rollouts connecting at once; Sanic's default backlog is 100.
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False, backlog=4096)
    return 0


if __name__ == "__main__":
    sys.exit(main())
