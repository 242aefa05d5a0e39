"""The Sanic application: factory, per-worker resources, routes, and the one error renderer.

Routes parse, call the agent loop, serialise; the agent loop never sees a request object.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError
from sanic import HTTPResponse, Request, Sanic
from sanic.config import Config
from sanic.exceptions import PayloadTooLarge, RequestCancelled, SanicException
from sanic.handlers import ErrorHandler
from sanic.response import json as json_response
from sanic.response import raw, text

from rollout_server import __version__
from rollout_server.admission import Admission
from rollout_server.agent import AgentLoop, AgentPolicy
from rollout_server.drain import RETRY_AFTER_S, Drain
from rollout_server.engine import EngineClient
from rollout_server.idempotency import (
    LedgerLimits,
    LocalLedger,
    RolloutLedger,
    SocketLedger,
    body_digest,
    ledger_socket,
)
from rollout_server.logs import configure_logging
from rollout_server.mcp_tools import McpLimits
from rollout_server.metrics import Metrics
from rollout_server.openapi import DOCS_HTML, openapi_document
from rollout_server.protocol import ErrorBody, ErrorDetail, FieldError, RolloutRequest
from rollout_server.security import ApiKeys, OutboundURLRefused, UrlAllowlist
from rollout_server.settings import Settings
from rollout_server.token_agent import TokenAgentLoop
from rollout_server.tool_loader import load_tools
from rollout_server.tools import ToolOutcome
from rollout_server.toolset import ToolBox, ToolLimits
from rollout_server.trainer import TrainerClient, TrainerLimits
from tokenize_pool import (
    HostedPool,
    PoolClient,
    PoolConfig,
    TokenizePoolError,
    TokenizerKey,
    WorkerPool,
)
from tokenize_pool.heap import freeze_live_objects

__all__ = ["AppContext", "create_app", "ledger_limits", "pool_config", "tool_box"]

logger = logging.getLogger("rollout_server.app")


@dataclass
class AppContext:
    """Per-worker state on ``app.ctx``; the resources are opened in ``before_server_start``."""

    settings: Settings
    pool: PoolClient | None = None
    trainer: TrainerClient | None = None
    agent: AgentLoop | None = None
    tools: ToolBox | None = None
    slots: asyncio.Semaphore | None = None
    lag_watch: asyncio.Task[None] | None = None
    in_flight: int = 0
    queued: int = 0
    admission: Admission = field(default_factory=Admission)
    drain: Drain = field(default_factory=Drain)
    metrics: Metrics = field(default_factory=Metrics)
    ledger: LocalLedger | SocketLedger | None = None
    api_keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))
    metrics_keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))
    allowlist: UrlAllowlist = field(default_factory=UrlAllowlist)


RolloutApp = Sanic[Config, AppContext]
AppRequest = Request[RolloutApp, SimpleNamespace]


def _error(status: int, kind: str, message: str, fields: list[FieldError] | None = None) -> HTTPResponse:
    body = ErrorBody(error=ErrorDetail(type=kind, message=message, fields=fields))
    return json_response(body.model_dump(), status=status)


class JSONErrorHandler(ErrorHandler):
    """Renders every error that escapes a route as JSON; a stack trace never reaches a client."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, RequestCancelled):
            # The client went away (the rollout was cancelled and logged): nobody reads this.
            return _error(499, "client_closed_request", "the client closed the connection")
        if isinstance(exception, SanicException):
            status = exception.status_code
            message = str(exception) if status < 500 else "Internal server error"
            if isinstance(exception, PayloadTooLarge):
                limit = request.app.config.REQUEST_MAX_SIZE
                message = f"request body larger than {limit} bytes (MAX_REQUEST_BODY_BYTES)"
            return _error(status, type(exception).__name__, message)
        logger.error("unhandled error on %s %s", request.method, request.path, exc_info=exception)
        return _error(500, "internal_error", "Internal server error")


# Pydantic's wording where it does not say enough for a trainer's developer.
_MESSAGES = {
    "finite_number": "must be a finite number (NaN and infinities are not accepted)",
    "int_type": "must be a JSON integer (not a string, boolean or float)",
    "bool_type": "must be true or false (not a string or number)",
    "float_type": "must be a JSON number (not a string or boolean)",
    "string_type": "must be a JSON string",
}


def _validation_response(exc: ValidationError) -> HTTPResponse:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return _error(400, "invalid_json", "request body is not valid JSON")
    fields = [
        FieldError(
            field=".".join(str(p) for p in e["loc"]) or "body", message=_MESSAGES.get(e["type"], e["msg"])
        )
        for e in errors
    ]
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
    return _error(422, "validation_error", summary, fields=fields)


def pool_config(settings: Settings) -> PoolConfig:
    """The tokenize pool's slice of the settings."""
    return PoolConfig(
        socket_path=settings.pool_socket,
        workers=settings.tokenize_workers,
        cache_size=settings.tokenizer_cache_size,
        trust_remote_code=settings.tokenizer_trust_remote_code,
        preload=tuple(TokenizerKey(name) for name in settings.preload_tokenizers),
        log_level=settings.log_level,
        # The pool's processes log as the server does (JSON by default).
        log_setup=functools.partial(configure_logging, settings.log_level, settings.log_format),
    )


def tool_box(settings: Settings, metrics: Metrics) -> ToolBox:
    """The tools' slice of the settings; loads the ``TOOLS`` entries (``ToolConfigError``)."""
    limits = ToolLimits(
        timeout=settings.tool_timeout_seconds,
        max_output_chars=settings.tool_output_max_chars,
        max_output_tokens=settings.tool_output_max_tokens,
    )

    def observe(outcome: ToolOutcome) -> None:
        metrics.observe_tool(
            outcome.tool, source=outcome.source, ok=outcome.ok, seconds=outcome.latency_ms / 1000
        )

    return ToolBox(
        load_tools(settings.tools, timeout=settings.tool_timeout_seconds),
        limits=limits,
        mcp=McpLimits(timeout=settings.tool_timeout_seconds, pool_size=settings.tool_server_pool_size),
        server_url=settings.tool_server_url,
        observe=observe,
    )


def ledger_limits(settings: Settings) -> LedgerLimits:
    """The rollout ledger's slice of the settings (finished responses kept for retries)."""
    return LedgerLimits(ttl_seconds=settings.result_ttl_seconds, max_bytes=settings.result_cache_bytes)


async def _open_pool(settings: Settings) -> PoolClient:
    """The tokenize pool, decided here once: in this process with one Sanic worker (no socket
    hop), else the pool host's, which the launcher started before Sanic (``server.py``)."""
    if not settings.shared_pool:
        pool = WorkerPool(pool_config(settings))
        await pool.start()
        return PoolClient(pool, timeout=settings.pool_timeout)
    return PoolClient(HostedPool(settings.pool_socket), timeout=settings.pool_timeout)


async def _open_resources(app: RolloutApp) -> None:
    settings = app.ctx.settings
    configure_logging(settings.log_level, settings.log_format)
    app.ctx.ledger = (
        SocketLedger(ledger_socket(settings.pool_socket))
        if settings.shared_pool
        else LocalLedger(RolloutLedger(ledger_limits(settings)))
    )
    if app.ctx.pool is None:  # else handed to create_app (tests)
        app.ctx.pool = await _open_pool(settings)
    app.ctx.trainer = TrainerClient(
        TrainerLimits(
            timeout=settings.http_client_timeout,
            max_connections=settings.http_max_connections,
            max_response_bytes=settings.trainer_max_response_bytes,
        )
    )
    app.ctx.tools = tool_box(settings, app.ctx.metrics)
    app.ctx.agent = TokenAgentLoop(
        engine=EngineClient(app.ctx.trainer),
        pool=app.ctx.pool,
        trainer=app.ctx.trainer,
        tools=app.ctx.tools,
        policy=AgentPolicy(
            default_tokenizer=settings.default_tokenizer,
            drift_policy=settings.drift_policy,
            rollout_timeout=settings.rollout_timeout_seconds,
            max_context_tokens=settings.max_context_tokens,
        ),
    )
    app.ctx.slots = asyncio.Semaphore(math.ceil(settings.max_concurrent_rollouts / settings.workers))
    app.ctx.lag_watch = asyncio.create_task(_watch_loop_lag(app.ctx.metrics))


async def _install_drain(app: RolloutApp) -> None:
    """SIGTERM lets the accepted rollouts finish and refuses new ones (rollout_server/drain.py)."""
    ctx = app.ctx
    ctx.drain.install(
        busy=lambda: ctx.in_flight + ctx.queued,
        stop=lambda: app.stop(terminate=False),
        grace=ctx.settings.rollout_timeout_seconds + 30,
    )


async def _freeze_heap(app: RolloutApp) -> None:
    """Once serving: what start-up loaded stays out of full garbage collections (tokenize_pool.heap)."""
    freeze_live_objects()


async def _watch_loop_lag(metrics: Metrics, interval: float = 0.05) -> None:
    """Event-loop lag: how late a timer fires. Anything CPU-bound on the loop shows up here."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, loop.time() - started - interval))


async def _close_resources(app: RolloutApp) -> None:
    if app.ctx.lag_watch is not None:
        app.ctx.lag_watch.cancel()
    if app.ctx.ledger is not None:
        await app.ctx.ledger.close()
    if app.ctx.trainer is not None:
        await app.ctx.trainer.aclose()
    if app.ctx.tools is not None:
        await app.ctx.tools.aclose()
    if app.ctx.pool is not None:
        await app.ctx.pool.close()


def _unauthorized() -> HTTPResponse:
    response = _error(401, "unauthorized", "missing or wrong API key: send Authorization: Bearer <key>")
    response.headers["www-authenticate"] = "Bearer"
    return response


def _parse(
    raw: bytes, allowlist: UrlAllowlist, known_tools: frozenset[str] | None
) -> RolloutRequest | HTTPResponse:
    """The request; the top-level fields it carried that no model field declares are dropped, and
    logged here (the response names them: ``RolloutRequest.ignored_fields``)."""
    try:
        body = RolloutRequest.model_validate_json(raw, context={"known_tools": known_tools})
    except ValidationError as exc:
        return _validation_response(exc)
    ignored = body.ignored_fields
    if ignored:
        logger.warning(
            "ignored unknown request fields: %s", ", ".join(ignored), extra={"rollout_id": body.rollout_id}
        )
    try:
        allowlist.check_url(body.server_url)
        if body.tool_server_url is not None:
            allowlist.check_url(body.tool_server_url, field="tool_server_url")
    except OutboundURLRefused as exc:
        return _error(403, "url_not_allowed", str(exc))
    return body


def _not_started(verdict: str, rollout_id: str, stored: bytes) -> HTTPResponse:
    if verdict == "replay":
        return raw(stored, content_type="application/json", headers={"x-rollout-replayed": "true"})
    if verdict == "running":
        return _error(409, "rollout_running", f"rollout {rollout_id!r} is running; retry after it ends")
    return _error(
        409, "rollout_id_reused", f"rollout_id {rollout_id!r} was used by a different request; use a new one"
    )


async def rollout(request: AppRequest) -> HTTPResponse:
    ctx: AppContext = request.app.ctx
    assert ctx.agent is not None and ctx.slots is not None and ctx.tools is not None
    assert ctx.ledger is not None
    if not ctx.api_keys.authorizes(request.headers.get("authorization")):
        return _unauthorized()
    if ctx.drain.draining:
        refused = _error(503, "shutting_down", "the server is shutting down; nothing was started, retry")
        refused.headers["retry-after"] = str(RETRY_AFTER_S)
        return refused
    started = time.perf_counter()
    ctx.queued += 1
    try:
        # A wave of arrivals starts a few per event-loop iteration (rollout_server/admission.py).
        await ctx.admission.enter()
        parsed = _parse(request.body or b"", ctx.allowlist, ctx.tools.known_names())
        if isinstance(parsed, HTTPResponse):
            return parsed
        body = parsed
        digest = body_digest(request.body)
        outcome = await ctx.ledger.begin(body.rollout_id, digest)
        if outcome.verdict != "start":
            ctx.metrics.inc("rollout_retries_total", outcome=outcome.verdict)
            return _not_started(outcome.verdict, body.rollout_id, outcome.body)
        try:
            await ctx.slots.acquire()
        except BaseException:
            ctx.ledger.discard(body.rollout_id, digest)
            raise
    finally:
        ctx.queued -= 1
    ctx.in_flight += 1
    answer: bytes | None = None
    try:
        result = await ctx.agent.run(body, received=started)
        answer = result.model_dump_json().encode()
    except asyncio.CancelledError:
        # Sanic cancels the handler when the client's connection ends: the rollout stops here,
        # its trainer call is closed, its slot is freed, and nothing more goes to the trainer.
        logger.info("client disconnected: rollout cancelled", extra={"rollout_id": body.rollout_id})
        raise
    finally:
        ctx.in_flight -= 1
        ctx.slots.release()
        if answer is None:
            ctx.ledger.discard(body.rollout_id, digest)
    # Kept for a retry only when it completed (idempotency.py says why).
    await ctx.ledger.finish(body.rollout_id, digest, answer if result.status == "COMPLETED" else None)
    ctx.metrics.observe_outcome(result, time.perf_counter() - started)
    return raw(answer, content_type="application/json")


async def _pool_stats(ctx: AppContext) -> dict[str, Any] | None:
    assert ctx.pool is not None
    try:
        return await ctx.pool.stats(timeout=2.0)
    except TokenizePoolError as exc:
        logger.error("tokenize pool did not answer the health check: %s", exc)
        return None


async def health(request: AppRequest) -> HTTPResponse:
    ctx: AppContext = request.app.ctx
    pool = await _pool_stats(ctx)
    healthy = pool is not None and pool["workers_alive"] > 0
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "service": "rollout-server",
        "version": __version__,
        "worker_pid": os.getpid(),
        "ready": bool(pool and pool["warm"]) and not ctx.drain.draining,
        "draining": ctx.drain.draining,
        "rollouts": {
            "in_flight": ctx.in_flight,
            "queued": ctx.queued,
            "max_concurrent_per_worker": math.ceil(
                ctx.settings.max_concurrent_rollouts / ctx.settings.workers
            ),
        },
        "tokenize_pool": pool if pool is not None else {"error": "unreachable"},
        "tools": ctx.tools.stats() if ctx.tools is not None else {},
    }
    return json_response(body, status=200 if healthy else 503)


async def ready(request: AppRequest) -> HTTPResponse:
    pool = await _pool_stats(request.app.ctx)
    # A draining server is alive but takes no new rollouts: out of the load balancer's rotation.
    warm = bool(pool and pool["warm"]) and not request.app.ctx.drain.draining
    return json_response({"ready": warm}, status=200 if warm else 503)


async def metrics(request: AppRequest) -> HTTPResponse:
    ctx: AppContext = request.app.ctx
    if not ctx.metrics_keys.authorizes(request.headers.get("authorization")):
        return _unauthorized()
    pool = await _pool_stats(ctx) or {}
    workers = pool.get("workers", [])
    gauges = {
        "rollouts_in_flight": float(ctx.in_flight),
        "rollouts_queued": float(ctx.queued),
        "tokenize_workers_alive": float(pool.get("workers_alive", 0)),
        # Pool requests being answered or waiting for a worker's slot (a worker holds two).
        "tokenize_requests_in_flight": float(pool.get("in_flight", 0)),
        "tokenize_requests_queued": float(pool.get("queued", 0)),
        "tokenizer_cache_size": float(max((len(w.get("tokenizers", [])) for w in workers), default=0.0)),
    }
    # Totals of the live workers: a restarted worker starts again from zero, as a counter may.
    totals = {
        "tokenizer_cache_hits_total": float(sum(w.get("hits", 0) for w in workers)),
        "tokenizer_cache_misses_total": float(sum(w.get("misses", 0) for w in workers)),
    }
    if ctx.tools is not None:
        gauges["tool_server_sessions_idle"] = float(ctx.tools.pool.idle)
    connections = ctx.trainer.connection_stats() if ctx.trainer is not None else None
    for name, value in (connections or {}).items():
        gauges[f"trainer_connections_{name}"] = float(value)
    return text(ctx.metrics.render(gauges, totals), content_type="text/plain; version=0.0.4")


async def openapi_json(request: AppRequest) -> HTTPResponse:
    return raw(openapi_document(), content_type="application/json")


async def docs(request: AppRequest) -> HTTPResponse:
    return raw(DOCS_HTML, content_type="text/html; charset=utf-8")


def _security_context(settings: Settings, pool: PoolClient | None) -> AppContext:
    return AppContext(
        settings=settings,
        pool=pool,
        api_keys=ApiKeys(settings.api_keys),
        metrics_keys=ApiKeys(settings.metrics_api_keys),
        allowlist=UrlAllowlist(settings.trainer_url_allowlist),
    )


def create_app(
    settings: Settings, *, name: str = "rollout-server", pool: PoolClient | None = None
) -> RolloutApp:
    """The app factory; run in every Sanic worker, so it has no side effects beyond the app.

    ``pool``: a tokenize pool client to use instead of opening one from the settings (tests)."""
    app: RolloutApp = Sanic(
        name, ctx=_security_context(settings, pool), error_handler=JSONErrorHandler(), configure_logging=False
    )
    app.config.REQUEST_MAX_SIZE = settings.max_request_bytes
    # A rollout may legitimately run for ROLLOUT_TIMEOUT_SECONDS; Sanic's default 60 s would cut it.
    app.config.RESPONSE_TIMEOUT = int(settings.rollout_timeout_seconds) + 30
    # On SIGTERM, let in-flight rollouts finish (Sanic's default would cut them after 15 s).
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = float(settings.rollout_timeout_seconds) + 30
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.before_server_start(_open_resources)
    app.after_server_start(_install_drain)
    app.after_server_start(_freeze_heap)
    app.after_server_stop(_close_resources)
    app.add_route(rollout, "/rollout", methods=["POST"])
    app.add_route(health, "/health", methods=["GET"])
    app.add_route(ready, "/ready", methods=["GET"])
    app.add_route(openapi_json, "/openapi.json", methods=["GET"])
    app.add_route(docs, "/docs", methods=["GET"])
    if settings.metrics_enabled:
        app.add_route(metrics, "/metrics", methods=["GET"])
    return app
