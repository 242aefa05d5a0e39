"""Entry point: ``python -m rollout_server.server`` or the ``rollout-server`` console script.

Process layout (see README): this launcher process reads the settings, starts the tokenize
pool host (which owns a ProcessPoolExecutor of TOKENIZE_WORKERS processes), then serves Sanic:
in this process when ROLLOUT_SERVER_WORKERS=1, else as Sanic's manager of that many workers.
Sanic workers are daemon processes and cannot own a process pool; the launcher is not one.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from rollout_server.app import create_app
from rollout_server.logs import configure_logging
from rollout_server.settings import Settings, SettingsError
from tokenize_pool import PoolConfig, TokenizerKey, start_pool_host

__all__ = ["main", "pool_config"]


def pool_config(settings: Settings) -> PoolConfig:
    """The tokenize pool's slice of the settings."""
    return PoolConfig(
        socket_path=settings.pool_socket,
        workers=settings.tokenize_workers,
        cache_size=settings.tokenizer_cache_size,
        trust_remote_code=settings.tokenizer_trust_remote_code,
        preload=tuple(TokenizerKey(name) for name in settings.preload_tokenizers),
        log_level=settings.log_level,
    )


def serve(settings: Settings) -> None:
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    single = settings.workers == 1
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        single_process=single,
        access_log=False,
        motd=False,
    )
    if single:
        Sanic.serve_single(app)
    else:
        Sanic.serve(primary=app, app_loader=loader)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"rollout-server: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Sanic's workers and the pool host are both spawned. Starting the pool host fixes the global
    # start method, so set it to Sanic's (spawn) first and tell Sanic it is done.
    multiprocessing.set_start_method("spawn", force=True)
    Sanic.START_METHOD_SET = True
    pool = start_pool_host(pool_config(settings))
    try:
        serve(settings)
    finally:
        pool.terminate()
        pool.join(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
