"""The trainer simulator's HTTP app: ``/v1/completions`` like a real trainer, plus inspection.

Routes:

- ``POST /v1/completions``: scenario ``none``; a body with ``messages`` speaks the trainer's
  message protocol, a body with a ``prompt`` of token ids is answered as vLLM does (``engine``);
- ``POST /s/<scenario>[/<key>=<value>...]/v1/completions``: a scripted scenario;
- ``GET /health``; ``GET /sim/rollouts/<rollout_id>``; ``GET /sim/stats``; ``DELETE /sim/rollouts``;
- ``POST /sim/gates/<name>``: opens a gate, releasing the calls of routes with ``gate=<name>``.

Rendering and tokenizing run inline on the event loop: this is a single-process test stand-in,
and keeping it simple keeps its behaviour easy to reason about.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from json import dumps as json_dumps
from types import SimpleNamespace
from typing import Any

from sanic import Request, Sanic
from sanic.config import Config
from sanic.response import HTTPResponse, json, raw
from transformers import PreTrainedTokenizerBase

from .engine import (
    EngineCall,
    EngineRequestError,
    assistant_turns,
    completion_body,
    is_engine_request,
    missing_fields_body,
    parse_engine_call,
    sample_engine_turn,
)
from .faults import deliver
from .model import Sampled, SimTemplateError, SimTokenizerError, Tokenizers, render_prompt, sample_turn
from .scenarios import (
    HttpFault,
    MalformedReply,
    Route,
    RouteError,
    Turn,
    WireFault,
    parse_route,
    script_turn,
)
from .state import PrefixBreak, RolloutState, SimState, check_prompt, commit_turn, prefix_break

__all__ = ["SimApp", "SimContext", "create_app"]

_COMPLETIONS_SUFFIX = "v1/completions"
_DEFAULT_MAX_TOKENS = 512


@dataclass(kw_only=True)
class SimContext:
    """What the handlers share: the rollout bookkeeping and the warm tokenizers."""

    state: SimState
    tokenizers: Tokenizers
    default_tokenizer: str
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        """The gate of this name, closed until ``POST /sim/gates/<name>`` opens it."""
        return self.gates.setdefault(name, asyncio.Event())


SimApp = Sanic[Config, SimContext]
SimRequest = Request[SimApp, SimpleNamespace]


class _Reject(Exception):
    """Answer the current request with an error status and body."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    return json({"error": {"type": kind, "message": message}}, status=status, headers=headers)


def _parse_object(request: SimRequest) -> dict[str, Any]:
    try:
        body = request.json
    except Exception as exc:  # Sanic raises BadRequest on invalid JSON
        raise _Reject(400, "invalid_request", "request body is not JSON") from exc
    if not isinstance(body, dict):
        raise _Reject(400, "invalid_request", "request body must be a JSON object")
    return body


def _check_chat_body(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _Reject(400, "invalid_request", "messages must be a non-empty list of objects")
    if not isinstance(body.get("rollout_id"), str) or not body["rollout_id"]:
        raise _Reject(400, "invalid_request", "rollout_id must be a non-empty string")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise _Reject(400, "invalid_request", "tools must be a list of objects")


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    if value is None:
        return _DEFAULT_MAX_TOKENS
    if type(value) is not int or value < 1:
        raise _Reject(400, "invalid_request", "max_tokens must be a positive integer")
    return value


def _fault_response(fault: HttpFault) -> HTTPResponse:
    headers = {"Retry-After": "1"} if fault.status == 429 else None
    return _error(fault.status, "simulated_error", f"simulated trainer error {fault.status}", headers)


def _malformed_response(reply: MalformedReply) -> HTTPResponse:
    if reply.kind == "nonjson":
        return raw(b'{"id": "chatcmpl-sim", "choices": [', status=200, content_type="application/json")
    message = {"role": "assistant", "content": "The answer is 42.", "tool_calls": []}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return json({"id": "chatcmpl-sim", "object": "chat.completion", "choices": [choice]})


def _completion(
    body: dict[str, Any], state: RolloutState, prompt_ids: list[int], sampled: Sampled
) -> dict[str, Any]:
    completion = len(sampled.token_ids)
    return {
        "id": f"chatcmpl-sim-{state.rollout_id}-{state.calls}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "default",
        "choices": [{"index": 0, "message": sampled.message, "finish_reason": sampled.finish_reason}],
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion,
            "total_tokens": len(prompt_ids) + completion,
        },
        "token_ids": sampled.token_ids,
        "logprobs": sampled.logprobs,
        "prompt_token_ids": prompt_ids,
    }


def _generate(
    sim: SimContext, route: Route, body: dict[str, Any], state: RolloutState, turn: Turn
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = body["messages"]
    max_tokens = _max_tokens(body)
    tools = body.get("tools")
    tok = sim.tokenizers.get(route.tokenizer or sim.default_tokenizer)
    prompt, prompt_ids = render_prompt(tok, messages, tools)
    check = check_prompt(state, prompt_ids, body.get("response_mask"))
    if check.prefix_break is not None:
        state.prefix_breaks.append(PrefixBreak(call=state.calls, index=check.prefix_break))
    if check.mask_error is not None:
        state.mask_errors.append(f"call {state.calls}: {check.mask_error}")
        raise _Reject(422, "mask_error", check.mask_error)
    t = _assistant_turns(messages)
    sampled = sample_turn(
        tok,
        messages,
        prompt,
        turn,
        t=t,
        think=route.think,
        max_tokens=max_tokens,
        split=route.split,
        tools=tools,
    )
    commit_turn(state, prompt_ids, sampled.token_ids, sampled.logprobs)
    return _completion(body, state, prompt_ids, sampled)


def _assistant_turns(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("role") == "assistant")


def _generate_ids(
    tok: PreTrainedTokenizerBase, route: Route, call: EngineCall, state: RolloutState, turn: Turn
) -> dict[str, Any]:
    broken = prefix_break(state, call.prompt)
    if broken is not None:
        state.prefix_breaks.append(PrefixBreak(call=state.calls, index=broken))
        if route.strict:
            raise _Reject(
                422,
                "prefix_break",
                f"prompt departs at index {broken} from the previous prompt + generated ids",
            )
    sample = sample_engine_turn(tok, turn, route, call.max_tokens)
    commit_turn(state, call.prompt, sample.token_ids, sample.logprobs)
    return completion_body(tok, call, sample, with_ids=route.token_ids, serial=state.calls)


async def _open_call(request: SimRequest, route: Route, rollout_id: str, model: Any) -> RolloutState:
    """Count the call on its rollout, check auth, then wait out the simulated latency."""
    state = request.app.ctx.state.open(rollout_id)
    state.calls += 1
    state.model = model if isinstance(model, str) else None
    state.auth = request.headers.get("authorization")
    if route.auth is not None and state.auth != f"Bearer {route.auth}":
        raise _Reject(401, "unauthorized", "missing or wrong bearer token")
    if route.latency > 0:
        await asyncio.sleep(route.latency)
    if route.gate is not None:
        # A test holds the call here, deterministically, until it opens the gate.
        await request.app.ctx.gate(route.gate).wait()
    return state


async def _complete_chat(request: SimRequest, route: Route, body: dict[str, Any]) -> HTTPResponse | None:
    sim: SimContext = request.app.ctx
    _check_chat_body(body)
    state = await _open_call(request, route, body["rollout_id"], body.get("model"))
    action = script_turn(route, _assistant_turns(body["messages"]))
    if isinstance(action, HttpFault):
        return _fault_response(action)
    if isinstance(action, MalformedReply):
        return _malformed_response(action)
    if isinstance(action, WireFault):
        completion = _generate(sim, route, body, state, action.turn)
        await deliver(request, route, action.kind, json_dumps(completion).encode())
        return None  # sent by deliver
    return json(_generate(sim, route, body, state, action))


async def _complete_ids(request: SimRequest, route: Route, body: dict[str, Any]) -> HTTPResponse | None:
    sim: SimContext = request.app.ctx
    tok = sim.tokenizers.get(route.tokenizer or sim.default_tokenizer)
    try:
        call = parse_engine_call(body, len(tok))
    except EngineRequestError as exc:
        raise _Reject(400, "invalid_request", str(exc)) from exc
    state = await _open_call(request, route, call.rollout_id, call.model)
    action = script_turn(route, assistant_turns(tok, call.prompt))
    if isinstance(action, HttpFault):
        return _fault_response(action)
    if isinstance(action, MalformedReply):
        if action.kind == "nonjson":
            return _malformed_response(action)
        return json(missing_fields_body(call))
    if isinstance(action, WireFault):
        completion = _generate_ids(tok, route, call, state, action.turn)
        await deliver(request, route, action.kind, json_dumps(completion).encode())
        return None  # sent by deliver
    return json(_generate_ids(tok, route, call, state, action))


async def _complete(request: SimRequest, route: Route) -> HTTPResponse | None:
    body = _parse_object(request)
    try:
        if is_engine_request(body):
            return await _complete_ids(request, route, body)
        return await _complete_chat(request, route, body)
    except SimTokenizerError as exc:
        raise _Reject(400, "tokenizer_error", str(exc)) from exc
    except SimTemplateError as exc:
        raise _Reject(400, "template_error", str(exc)) from exc


async def _handle(request: SimRequest, path: str) -> HTTPResponse | None:
    try:
        route = parse_route(path)
    except RouteError as exc:
        return _error(404, "unknown_scenario", str(exc))
    try:
        return await _complete(request, route)
    except _Reject as exc:
        return _error(exc.status, exc.kind, str(exc))


def _register_routes(app: SimApp) -> None:
    @app.get("/health")
    async def health(request: SimRequest) -> HTTPResponse:
        return json({"status": "ok"})

    @app.post("/v1/completions")
    async def completions(request: SimRequest) -> HTTPResponse | None:
        return await _handle(request, "none")

    @app.post("/s/<path:path>")
    async def scenario_completions(request: SimRequest, path: str) -> HTTPResponse | None:
        if not path.rstrip("/").endswith(_COMPLETIONS_SUFFIX):
            return _error(
                404, "not_found", f"expected /s/<scenario>[/<key>=<value>...]/{_COMPLETIONS_SUFFIX}"
            )
        return await _handle(request, path.rstrip("/")[: -len(_COMPLETIONS_SUFFIX)])

    @app.get("/sim/rollouts/<rollout_id:path>")
    async def rollout(request: SimRequest, rollout_id: str) -> HTTPResponse:
        state = request.app.ctx.state.get(rollout_id)
        if state is None:
            return _error(404, "unknown_rollout", f"no call named rollout {rollout_id!r}")
        return json(state.to_json())

    @app.post("/sim/gates/<name>")
    async def open_gate(request: SimRequest, name: str) -> HTTPResponse:
        request.app.ctx.gate(name).set()
        return json({"opened": name})

    @app.get("/sim/stats")
    async def stats(request: SimRequest) -> HTTPResponse:
        return json(request.app.ctx.state.stats())

    @app.delete("/sim/rollouts")
    async def clear(request: SimRequest) -> HTTPResponse:
        request.app.ctx.state.clear()
        return json({"cleared": True})


def create_app(*, default_tokenizer: str, tokenizers: Tokenizers | None = None) -> SimApp:
    """The simulator app; ``default_tokenizer`` serves every route without a ``tok=`` option."""
    ctx = SimContext(
        state=SimState(), tokenizers=tokenizers or Tokenizers(), default_tokenizer=default_tokenizer
    )
    app: SimApp = Sanic("trainer-sim", ctx=ctx)
    # The latency option must be able to outlast any client timeout under test.
    app.config.RESPONSE_TIMEOUT = 3600
    app.config.REQUEST_TIMEOUT = 3600
    app.config.FALLBACK_ERROR_FORMAT = "json"
    _register_routes(app)
    return app
