"""The agent loop: generate -> run tools -> extend the prompt -> generate ..., as named steps.

    PREPARE     render + tokenize the first prompt (pool), while the first GENERATE is out
    GENERATE    call the trainer; check its prompt ids against ours
    DECIDE      stop, length, max_tokens, max_turns, or go on with the tool calls
    TOOLS       run the turn's tool calls concurrently; cut messages over the token cap (pool,
                only for those that may be over it)
    EXTEND      faithful rewrite of the assistant turn + growth of the prompt (pool) -> mask

Every CPU-bound step runs in the tokenize pool; this module only awaits. ``RolloutState`` holds
the bookkeeping: ``seq`` is always what the trainer holds for the next growth computation,
``prompt_ids(k) + token_ids(k)`` after a generation, and the predicted ``prompt_ids(k+1)``
before the next call.

This is message mode. Token mode (``"generation": "tokens"``) runs in ``token_agent.py``, a
subclass that shares the state, the budgets and the tools; with ``return_trajectory`` this loop
also follows the trainer's sequence in ``RolloutState.trajectory``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from array import array
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core

from rollout_server.errors import (
    AlignmentError,
    ContextTooLong,
    InternalError,
    RolloutError,
    RolloutTimeout,
    TokenizerError,
    TrainerBadResponse,
    TrainerHTTPError,
)
from rollout_server.protocol import (
    AlignmentReport,
    DriftEvent,
    ExtraFields,
    RolloutMetrics,
    RolloutRequest,
    RolloutResponse,
    RolloutTiming,
    TrainerCompletion,
)
from rollout_server.settings import DriftPolicy
from rollout_server.toolset import ToolBox, ToolSet
from rollout_server.trainer import TrainerClient, TrainerReply
from rollout_server.trajectory import Trajectory
from tokenize_pool import (
    CutTools,
    FirstResult,
    Growth,
    Pending,
    PoolClient,
    PoolUnavailable,
    TokenizePoolError,
    TokenizerKey,
    TokenizerLoadError,
    fits_unseen,
    growth_steps,
    ids_text,
)

__all__ = ["AgentLoop", "AgentPolicy", "RolloutState"]

logger = logging.getLogger("rollout_server.agent")

Message = dict[str, Any]
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True)
class AgentPolicy:
    """The slice of settings the agent loop needs."""

    default_tokenizer: str = "Qwen/Qwen3-8B"
    drift_policy: DriftPolicy = "fail"
    rollout_timeout: float = 600.0
    # 0: the tokenizer's own limit, when it states one.
    max_context_tokens: int = 0


@dataclass(slots=True)
class _Alignment:
    """The alignment counters while the rollout runs: the steps bump them every turn, which a
    plain dataclass does in nanoseconds; ``report`` makes the response's model once, at the end."""

    checks: int = 0
    events: list[DriftEvent] = field(default_factory=list)
    rewrites: int = 0
    fast_turns: int = 0
    full_turns: int = 0
    tokens_encoded: int = 0
    mask_zeros: int = 0
    mask_ones: int = 0

    def report(self, seq_len: int) -> AlignmentReport:
        return AlignmentReport(
            checks=self.checks,
            drift_events=len(self.events),
            events=self.events,
            faithful_rewrites=self.rewrites,
            fast_path_turns=self.fast_turns,
            full_render_turns=self.full_turns,
            tokens_encoded=self.tokens_encoded,
            sequence_length=seq_len,
            response_mask_zeros=self.mask_zeros,
            response_mask_ones=self.mask_ones,
        )


@dataclass
class RolloutState:
    """Everything one rollout knows; plain data, mutated only by ``AgentLoop``'s steps."""

    request: RolloutRequest
    key: TokenizerKey
    messages: list[Message]
    # The rollout's tools, opened by ``AgentLoop.run`` (``ToolBox.open``).
    tools: ToolSet = field(default_factory=ToolSet)
    started: float = field(default_factory=time.perf_counter)
    seq: array[int] = field(default_factory=lambda: array("i"))
    # ``seq`` as the trainer's JSON writes it (``ids_text``), grown with it: the trainer's echo
    # of the prompt is compared as bytes. Change both through ``set_seq`` and ``grow_seq``.
    seq_text: bytearray = field(default_factory=bytearray)
    prompt_len: int = 0
    mask_len: int | None = None
    generated: int = 0
    fast_ok: bool = True
    metrics: RolloutMetrics = field(default_factory=RolloutMetrics)
    alignment: _Alignment = field(default_factory=_Alignment)
    # Server time between trainer calls: from the end of the last call (or the start) to the
    # next request, i.e. tools, mask building and our own HTTP handling, per turn.
    mark: float = field(default_factory=time.perf_counter)
    turn_overheads: list[float] = field(default_factory=list)
    # Before the start: from the request's arrival (admission, validation, a free slot).
    queued: float = 0.0
    # The context limit (prompt + generation), and an upper bound of the first prompt's tokens
    # while they are not known (``_prompt_bound``).
    context_limit: int | None = None
    prompt_bound: int = 0
    # The token trajectory, when the response returns it (token mode, or return_trajectory).
    trajectory: Trajectory | None = None

    def set_seq(self, ids: Iterable[int], text: bytes | None = None) -> None:
        """``text``, when given, is ``ids_text(ids)`` already made (by the pool)."""
        self.seq = array("i", ids)
        self.seq_text = bytearray(ids_text(self.seq) if text is None else text)

    def start_prompt(self, first: FirstResult) -> None:
        """The first prompt is in: it is the sequence, and the prompt of the first call."""
        self.set_seq(first.ids, first.text)
        self.prompt_len = len(self.seq)
        self.alignment.tokens_encoded += first.tokens_encoded

    def grow_seq(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        if self.seq:
            self.seq_text += b","
        self.seq_text += ids_text(ids)
        self.seq.extend(ids)

    def count_generation(self, generated: int) -> None:
        """A generation's metrics, from the prompt in ``seq`` and ``generated`` new tokens."""
        self.metrics.prompt_tokens += len(self.seq)
        self.metrics.max_context_tokens = max(self.metrics.max_context_tokens, len(self.seq))
        self.metrics.response_tokens += generated
        self.generated += generated
        self.alignment.mask_ones += generated
        self.prompt_len = len(self.seq)

    def timing(self) -> RolloutTiming:
        tail = time.perf_counter() - self.mark
        return RolloutTiming(
            turn_overhead_ms=[round(s * 1000, 3) for s in self.turn_overheads],
            tail_ms=round(tail * 1000, 3),
            server_ms=round((sum(self.turn_overheads) + tail) * 1000, 3),
            queued_ms=round(self.queued * 1000, 3),
        )

    def response(self, finish_reason: str | None, error: RolloutError | None = None) -> RolloutResponse:
        self.metrics.total_latency_ms = round((time.perf_counter() - self.started) * 1000, 3)
        extra = ExtraFields(
            alignment=self.alignment.report(len(self.seq)),
            timing=self.timing(),
            trajectory=None if self.trajectory is None else self.trajectory.to_wire(),
            error_category=None if error is None else error.category,
            http_status=error.http_status if isinstance(error, TrainerHTTPError) else None,
            ignored_fields=self.request.ignored_fields or None,
        )
        return RolloutResponse(
            rollout_id=self.request.rollout_id,
            status="ERROR" if error else "COMPLETED",
            final_messages=self.messages,
            finish_reason=finish_reason,
            error_message=error.public_message() if error else None,
            metrics=self.metrics,
            extra_fields=extra,
        )


def _expected_text(first: Pending[FirstResult]) -> bytes | None:
    """The first prompt's ``ids_text``, which the trainer's echo is compared with, once in."""
    ready = _first_in(first)
    return ready.text if ready is not None else None


def _first_in(first: Pending[FirstResult] | None) -> FirstResult | None:
    """The first prompt once the pool has made it; None while it has not (or failed)."""
    return first.task.result() if first is not None and first.succeeded() else None


def _prompt_bound(messages: list[Message]) -> int:
    """At least the first prompt's token count, without tokenizing it: a token covers at least one
    byte of the rendered text, which is the messages' text (no longer than their JSON) and the
    template's own (taken as at most 64 tokens a message and 2,048 in all)."""
    return len(pydantic_core.to_json(messages)) + 64 * len(messages) + 2048


def _compact(text: str) -> str:
    return "".join(text.split())


def _missing_from_ids(decoded: str, assistant: Message) -> bool:
    """Whether the generated ids, as text, lack part of the message they came with: its content
    or a tool call's arguments (compared without whitespace, so that a template's spacing of
    the same JSON is not taken for a trainer's error)."""
    parts = [assistant["content"]] if isinstance(assistant.get("content"), str) else []
    for call in assistant.get("tool_calls") or ():
        arguments = call["function"].get("arguments", "")
        try:
            value = json.loads(arguments) if isinstance(arguments, str) else arguments
            parts.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        except (TypeError, ValueError):
            parts.append(str(arguments))
    text = _compact(decoded)
    return any(_compact(part) not in text for part in parts)


def _pool_error(exc: TokenizePoolError) -> RolloutError:
    """A pool failure as the rollout reports it: a pool that cannot answer is the server's
    fault; anything else is about the tokenizer or its template."""
    if isinstance(exc, PoolUnavailable):
        logger.error("tokenize pool unavailable: %s", exc)
        return InternalError(str(exc))
    return TokenizerError(str(exc))


def _follow_trainer(
    trajectory: Trajectory, prompt: array[int], completion: TrainerCompletion, turn: int
) -> None:
    """Message mode's trajectory: the trainer's prompt (its growth, mask 0), then its sampled ids."""
    trajectory.sync_prompt(prompt, turn)
    try:
        trajectory.add_sampled(completion.token_ids, completion.logprobs)
    except ValueError as exc:
        raise TrainerBadResponse(f"malformed response from trainer: logprobs: {exc}") from None


def _wire_message(message: Any) -> Message:
    out: Message = message.model_dump(exclude_none=True)
    out.setdefault("content", None)
    return out


def _assistant_message(completion: TrainerCompletion, turn: int) -> Message:
    raw = dict(completion.choices[0].message)
    raw["role"] = "assistant"
    raw.setdefault("content", None)
    calls = raw.get("tool_calls")
    if not calls:
        raw.pop("tool_calls", None)
        return raw
    if not isinstance(calls, list) or not all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls
    ):
        raise TrainerBadResponse("malformed response from trainer: choices.0.message.tool_calls")
    raw["tool_calls"] = [
        {**call, "id": call.get("id") or f"call_{turn}_{i}", "type": call.get("type") or "function"}
        for i, call in enumerate(calls)
    ]
    return raw


class AgentLoop:
    """Runs rollouts; one instance per Sanic worker, shared by all its rollouts."""

    def __init__(
        self, *, pool: PoolClient, trainer: TrainerClient, tools: ToolBox, policy: AgentPolicy
    ) -> None:
        self.pool = pool
        self.trainer = trainer
        self.tools = tools
        self.policy = policy

    async def run(self, request: RolloutRequest, *, received: float | None = None) -> RolloutResponse:
        """Run one rollout to its end; never raises (errors become ``status: ERROR``).

        ``received`` (``time.perf_counter()``) is when the request arrived, if it waited before
        this start: that wait is reported as ``queued_ms`` and counts in ``total_latency_ms``."""
        key = TokenizerKey(
            request.tokenizer_name or self.policy.default_tokenizer, request.tokenizer_revision
        )
        state = RolloutState(request=request, key=key, messages=[_wire_message(m) for m in request.messages])
        if request.return_trajectory or request.generation == "tokens":
            state.trajectory = Trajectory()
        if received is not None:
            state.started, state.queued = received, max(0.0, state.mark - received)
        try:
            async with asyncio.timeout(self.policy.rollout_timeout), self.tools.open(request) as tools:
                state.tools = tools
                finish = await self._loop(state)
            return state.response(finish)
        except TimeoutError:
            error: RolloutError = RolloutTimeout(f"rollout exceeded {self.policy.rollout_timeout:g} s")
        except RolloutError as exc:
            error = exc
        except Exception:
            logger.exception(
                "rollout failed with an internal error", extra={"rollout_id": request.rollout_id}
            )
            error = InternalError("internal error")
        logger.warning(
            "rollout ended with %s: %s",
            error.category,
            error.message,
            extra={"rollout_id": request.rollout_id},
        )
        return state.response(None, error)

    async def _loop(self, state: RolloutState) -> str:
        # The first call carries no mask and no ids: it goes out while the pool tokenizes the
        # first prompt, which the trainer's echo is then checked against (PREPARE overlaps the
        # first GENERATE; a failed PREPARE fails the rollout with its own error). The first
        # prompt waits behind other rollouts' next turns in the pool until this rollout waits
        # for it (``Pending.promote``).
        await self._set_context_limit(state)
        tools = self.tool_schemas(state) if state.request.tools_in_prompt else None
        first = self.pool.first_prompt(state.key, state.messages, tools=tools)
        try:
            fits = await self._check_first_prompt(state, first)
            completion, capped = await self._generate(state, None if fits else first)
        finally:
            first.cancel()  # when the call failed first; nothing once it is done
        while True:
            assistant = _assistant_message(completion, state.metrics.num_llm_calls)
            finish = self._decide(state, completion.choices[0].finish_reason, assistant, capped)
            if finish is not None:
                state.messages.append(assistant)
                return finish
            tool_messages = await self._run_tools(state, assistant["tool_calls"])
            await self._extend(state, assistant, tool_messages)
            if state.context_limit is not None and len(state.seq) >= state.context_limit:
                return "max_tokens"  # no room left to generate: the context ends it like the budget
            completion, capped = await self._generate(state)

    async def _pool_call(self, request: Awaitable[R]) -> R:
        try:
            return await request
        except TokenizePoolError as exc:
            raise _pool_error(exc) from exc

    async def _set_context_limit(self, state: RolloutState) -> None:
        """Resolves the tokenizer before any call (``_resolve_tokenizer``) and sets the rollout's
        context limit: MAX_CONTEXT_TOKENS, else the tokenizer's own when it states one."""
        stated = await self._resolve_tokenizer(state.key)
        state.context_limit = self.policy.max_context_tokens or stated

    def _context_too_long(self, state: RolloutState) -> ContextTooLong:
        return ContextTooLong(
            f"the first prompt is {len(state.seq)} tokens, at or over the context limit of "
            f"{state.context_limit} (MAX_CONTEXT_TOKENS, or the tokenizer's own): nothing was sent "
            "to the trainer"
        )

    async def _check_first_prompt(self, state: RolloutState, first: Pending[FirstResult]) -> bool:
        """Whether the first prompt is in and fits: one that may not fit the context is waited
        for, and ends the rollout before any call if it does not; any other (False) goes out
        while it is tokenized."""
        if state.context_limit is None:
            return False
        state.prompt_bound = _prompt_bound(state.messages)
        if state.prompt_bound < state.context_limit:
            return False
        first.promote()  # the rollout waits for it now: ahead of other work in the pool
        state.start_prompt(await self._pool_call(first))
        if len(state.seq) >= state.context_limit:
            raise self._context_too_long(state)
        return True

    async def _resolve_tokenizer(self, key: TokenizerKey) -> int | None:
        """Before the first trainer call: a tokenizer that cannot be loaded fails the rollout
        before the trainer generates for nothing (the pool client remembers keys that loaded)."""
        try:
            limit: int | None = await self._pool_call(self.pool.resolve(key))
            return limit
        except TokenizerError as exc:
            cause = exc.__cause__
            if isinstance(cause, TokenizerLoadError) and str(cause).startswith("cannot load tokenizer"):
                raise TokenizerError(
                    f"cannot load tokenizer {key}: it is not in this server's Hugging Face cache and could "
                    "not be fetched. Check the name and revision; to run offline, seed the cache "
                    "(rollout-seed-cache, or a download on a connected machine), mount a cache that "
                    "holds it, or set HF_HOME to one"
                ) from cause
            raise

    def tool_schemas(self, state: RolloutState) -> list[dict[str, Any]]:
        """The OpenAI function schemas of the tools this rollout may call: what the prompt shows
        the model (token mode; message mode with ``tools_in_prompt``)."""
        return state.tools.schemas()

    async def _first_answer(
        self, first: Pending[FirstResult], call: Coroutine[Any, Any, TrainerReply]
    ) -> TrainerReply:
        """The trainer's answer to the first call, or the first prompt's error if that fails,
        before the answer (the call is then dropped) or after (the trainer's own error gives way
        to it)."""
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait((first.task, task), return_when=asyncio.FIRST_COMPLETED)
            if first.done():
                await self._pool_call(first)  # its error, if it failed
            return await task
        except RolloutError:
            first.promote()  # the rollout waits for it now
            await asyncio.wait((first.task,))
            if not first.task.cancelled() and first.task.exception() is not None:
                await self._pool_call(first)
            raise
        finally:
            task.cancel()

    async def _generate(
        self, state: RolloutState, first: Pending[FirstResult] | None = None
    ) -> tuple[TrainerCompletion, bool]:
        """One trainer call. With ``first`` (the first call), the first prompt is still being
        tokenized: its failure cancels the call and is the rollout's error, whichever ends first,
        and waiting for it after the answer counts as server time, not the trainer's."""
        request = state.request
        sampling = request.sampling_params
        max_tokens = min(sampling.max_tokens, request.max_tokens_total - state.generated)
        if state.context_limit is not None:
            # The prompt's length, or its upper bound while the first one is being tokenized.
            ready = _first_in(first)
            prompt = len(state.seq) if first is None else len(ready.ids) if ready else state.prompt_bound
            max_tokens = min(max_tokens, state.context_limit - prompt)
        payload = {
            "model": "default",
            "rollout_id": request.rollout_id,
            "messages": state.messages,
            "response_mask": None if state.mask_len is None else [0] * state.mask_len,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": max_tokens,
            "stop": sampling.stop,
            "logprobs": sampling.logprobs,
        }
        if request.tools_in_prompt:
            payload["tools"] = self.tool_schemas(state)
        started = time.perf_counter()
        state.turn_overheads.append(started - state.mark)
        # The trainer's echo is compared as bytes with ours when ours is known by its answer.
        expected = state.seq_text if first is None else (lambda: _expected_text(first))
        call = self.trainer.complete(
            request.server_url, payload, api_key=request.callback_api_key, expected_prompt=expected
        )
        try:
            reply = await (call if first is None else self._first_answer(first, call))
        finally:
            state.mark = time.perf_counter()
            state.metrics.llm_latency_ms += (state.mark - started) * 1000
            state.metrics.num_llm_calls += 1
        if first is not None:
            first.promote()  # the rollout waits for it now: ahead of other work in the pool
            state.start_prompt(await self._pool_call(first))
        completion = reply.completion
        self._check_prompt(state, reply)
        if state.trajectory is not None:
            _follow_trainer(state.trajectory, state.seq, completion, state.metrics.num_llm_calls)
        state.count_generation(len(completion.token_ids))
        state.grow_seq(completion.token_ids)
        return completion, max_tokens < sampling.max_tokens

    def _check_prompt(self, state: RolloutState, reply: TrainerReply) -> None:
        """Afterwards ``state.seq`` is the prompt the trainer used (ours, unless it drifted)."""
        state.alignment.checks += 1
        if reply.prompt_as_expected:
            return
        actual = array("i", reply.completion.prompt_token_ids)
        if actual == state.seq:
            return
        limit = min(len(actual), len(state.seq))
        at = next((i for i in range(limit) if actual[i] != state.seq[i]), limit)
        event = DriftEvent(
            turn=state.metrics.num_llm_calls,
            kind="trainer_prompt_mismatch",
            expected_len=len(state.seq),
            actual_len=len(actual),
            first_mismatch=at,
        )
        self._drift(state, event)
        state.set_seq(actual)

    def _drift(self, state: RolloutState, event: DriftEvent) -> None:
        state.alignment.events.append(event)
        state.fast_ok = False
        logger.warning(
            "alignment drift: %s",
            event.model_dump(exclude_none=True),
            extra={"rollout_id": state.request.rollout_id},
        )
        if self.policy.drift_policy == "fail":
            raise AlignmentError(f"alignment drift at turn {event.turn}: {event.detail or event.kind}")

    async def _prefix_break(
        self, state: RolloutState, assistant: Message, tools: int, growth: Growth
    ) -> DriftEvent:
        """The drift event of a broken prefix, with the broken turn's ids as text beside its
        message as rendered, and whether the trainer's ids even encode that message (a trainer
        that returns the ids of its content alone, while the message carries tool calls, breaks
        every turn); without them if the pool cannot say."""
        event = DriftEvent(
            turn=state.metrics.num_llm_calls + 1,
            kind="prefix_break",
            first_mismatch=growth.mismatch_at,
            faithful_rewrite_found=growth.faithful,
        )
        try:
            explained = await self.pool.explain_turn(
                state.key,
                history=state.messages[: -(1 + tools)],
                gen=state.seq[state.prompt_len :],
                assistant=assistant,
            )
        except TokenizePoolError:
            return event
        decoded, rendered = explained.decoded, explained.rendered
        shown = f"token_ids decode to {decoded[:300]!r}; the message renders as {rendered[:300]!r}"
        event.decoded, event.rendered = decoded[:2000], rendered[:2000]
        if _missing_from_ids(decoded, assistant):
            event.kind = "trainer_ids_mismatch"
            event.detail = (
                f"the trainer's token_ids do not encode the message it returned: its {shown} "
                "(ALIGNMENT_DRIFT_POLICY=flag runs such a trainer, with the drift reported)"
            )
        else:
            event.detail = (
                "prefix_break: the re-rendered conversation differs from the trainer's tokens; "
                f"the turn's {shown}"
            )
        return event

    def _decide(
        self, state: RolloutState, finish_reason: str | None, assistant: Message, capped: bool
    ) -> str | None:
        request = state.request
        if finish_reason == "length":
            return "max_tokens" if capped else "length"
        if not assistant.get("tool_calls"):
            return "stop"
        if state.generated >= request.max_tokens_total:
            return "max_tokens"
        if state.metrics.num_llm_calls >= request.max_turns:
            return "max_turns"
        return None

    async def _run_tools(self, state: RolloutState, calls: list[Message]) -> list[Message]:
        started = time.perf_counter()
        outcomes = await state.tools.run_calls(calls)
        state.metrics.tool_latency_ms += (time.perf_counter() - started) * 1000
        state.metrics.num_tool_calls += len(outcomes)
        return await self._cap_tokens(state, [outcome.message for outcome in outcomes])

    async def _cap_tokens(self, state: RolloutState, messages: list[Message]) -> list[Message]:
        """The tool messages with each content cut to ``max_output_tokens`` tokens of the
        rollout's tokenizer (both modes: what the conversation, the trainer and the growth get).
        Only a content that may be longer goes to the pool (``fits_unseen``)."""
        limit = state.tools.limits.max_output_tokens
        if not limit:
            return messages
        unsure = [i for i, message in enumerate(messages) if not fits_unseen(message["content"], limit)]
        if not unsure:
            return messages
        texts = [messages[i]["content"] for i in unsure]
        cut = await self._pool_call(self.pool.run(CutTools(key=state.key, texts=texts, limit=limit)))
        capped = list(messages)
        for i, text in zip(unsure, cut.texts, strict=True):
            if text is not None:
                capped[i] = {**messages[i], "content": text}
                logger.info(
                    "tool message cut to %d tokens", limit, extra={"rollout_id": state.request.rollout_id}
                )
        return capped

    async def _extend(self, state: RolloutState, assistant: Message, tool_messages: list[Message]) -> None:
        steps = growth_steps(
            state.key,
            history=state.messages,
            seq=state.seq,
            prev_prompt_len=state.prompt_len,
            assistant=assistant,
            tool_messages=tool_messages,
            allow_fast=state.fast_ok,
            tools=self.tool_schemas(state) if state.request.tools_in_prompt else None,
        )
        growth = await self._pool_call(self.pool.steps(steps))
        align = state.alignment
        align.tokens_encoded += growth.tokens_encoded
        align.rewrites += growth.assistant != assistant
        align.fast_turns += growth.fast
        align.full_turns += not growth.fast
        state.messages.extend([growth.assistant, *tool_messages])
        grown = growth.prompt_len - len(state.seq)
        if not growth.prefix_ok:
            event = await self._prefix_break(state, assistant, len(tool_messages), growth)
            if grown < 0:
                state.alignment.events.append(event)
                raise AlignmentError(
                    f"alignment drift at turn {event.turn}: the re-rendered prompt is shorter than the sequence"
                )
            self._drift(state, event)
            state.set_seq(growth.ids)
        else:
            state.grow_seq(growth.ids)
        state.mask_len = grown
        align.mask_zeros += grown
