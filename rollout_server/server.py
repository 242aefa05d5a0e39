"""Entry point: ``python -m rollout_server.server`` or the ``rollout-server`` console script.

Process layout (docs/architecture.md): with ROLLOUT_SERVER_WORKERS=1 (the default) Sanic serves in this
launcher process, which owns the tokenize pool (a ProcessPoolExecutor of TOKENIZE_WORKERS
processes). With more, Sanic's workers are daemon processes and may not start children, so the
launcher (not a daemon) starts one pool host that owns the pool and serves them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from functools import partial
from typing import Any

from sanic import Sanic
from sanic.worker.loader import AppLoader

from rollout_server.app import create_app, ledger_limits, pool_config
from rollout_server.idempotency import ledger_socket, serve_ledger
from rollout_server.logs import configure_logging
from rollout_server.settings import Settings, SettingsError
from rollout_server.tool_loader import load_tools
from tokenize_pool import start_pool_host

__all__ = ["main"]

logger = logging.getLogger("rollout_server.server")


def _listening(settings: Settings) -> None:
    logger.info(
        "rollout-server listening on http://%s:%d (%d Sanic worker%s, %d tokenize workers)",
        settings.host,
        settings.port,
        settings.workers,
        "s" * (settings.workers > 1),
        settings.tokenize_workers,
    )


def _warn_if_open(settings: Settings) -> None:
    """One line each for the two doors a deployment should close (docs/security.md)."""
    if not settings.api_keys:
        logger.warning("ROLLOUT_API_KEY is not set: anyone who can reach this port may start rollouts")
    if not settings.trainer_url_allowlist:
        logger.warning("TRAINER_URL_ALLOWLIST is not set: rollouts may make this server call any URL")


def serve(settings: Settings) -> None:
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    single = not settings.shared_pool

    async def listening(*_: Any) -> None:
        _listening(settings)

    # Said once the socket is bound: by the one process that serves, or by the launcher once
    # every Sanic worker is up.
    if single:
        app.after_server_start(listening)
    else:
        app.main_process_ready(listening)
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        single_process=single,
        access_log=False,
        motd=False,
        # Thousands of rollouts may connect at once; Sanic's default listen backlog (100) would
        # drop their handshakes under load.
        backlog=min(65535, max(1024, settings.max_concurrent_rollouts)),
    )
    if single:
        Sanic.serve_single(app)
    else:
        Sanic.serve(primary=app, app_loader=loader)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env(os.environ)
        # Every worker loads the tools again; this load is the start-up check of TOOLS.
        load_tools(settings.tools, timeout=settings.tool_timeout_seconds)
    except SettingsError as exc:
        print(f"rollout-server: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    _warn_if_open(settings)
    # Sanic's workers and the pool host are both spawned. Starting the pool host fixes the global
    # start method, so set it to Sanic's (spawn) first and tell Sanic it is done.
    multiprocessing.set_start_method("spawn", force=True)
    Sanic.START_METHOD_SET = True
    # One Sanic worker owns its pool (it runs in this process); several share one pool host.
    host = start_pool_host(pool_config(settings)) if settings.shared_pool else None
    # Several workers share one rollout ledger, served from this process (idempotency.py).
    stop_ledger = (
        serve_ledger(ledger_socket(settings.pool_socket), ledger_limits(settings))
        if settings.shared_pool
        else None
    )
    try:
        serve(settings)
    finally:
        if stop_ledger is not None:
            stop_ledger()
        if host is not None:
            host.terminate()
            host.join(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
