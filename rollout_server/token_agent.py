"""Token mode (``"generation": "tokens"``): the server tokenizes, an engine generates from ids.

    PREPARE     render the first prompt with the tool schemas and tokenize it (pool)
    GENERATE    post the prompt ids to the engine; keep the sampled ids as they are
    PARSE       decode them only to read the assistant message; close a turn the engine ended
                without its end-of-turn token (pool)
    DECIDE      stop, length, max_tokens, max_turns (as message mode), or go on with the calls
    TOOLS       run the turn's tool calls concurrently; cut messages over the token cap (as
                message mode: ``AgentLoop._run_tools``)
    GROW        tokenize only what the conversation grows by (pool); next prompt =
                prompt + sampled ids + closing ids + growth

The trajectory is the prompt the engine saw and everything after it, by construction: nothing is
re-rendered, so nothing can drift. Message mode's ``AgentLoop`` is left as it is; this subclass
only routes token-mode requests here.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

from rollout_server.agent import AgentLoop, Message, RolloutState
from rollout_server.engine import EngineClient, EngineRequest, EngineTurn
from rollout_server.errors import TokenizerError
from rollout_server.trajectory import Trajectory
from tokenize_pool import GrowTurn, ParseTurn

__all__ = ["TokenAgentLoop"]


class TokenAgentLoop(AgentLoop):
    """``AgentLoop`` that also runs token-mode rollouts against ``engine``."""

    def __init__(self, *, engine: EngineClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine

    async def _loop(self, state: RolloutState) -> str:
        if state.request.generation != "tokens":
            return await super()._loop(state)
        trajectory = state.trajectory
        assert trajectory is not None  # AgentLoop.run makes one for every token-mode request
        await self._set_context_limit(state)
        stop_ids = await self._prepare_tokens(state, trajectory)
        if state.context_limit is not None and len(state.seq) >= state.context_limit:
            raise self._context_too_long(state)
        while True:
            turn, capped = await self._sample(state, stop_ids)
            parsed = await self._pool_call(
                self.pool.run(
                    ParseTurn(
                        key=state.key,
                        ids=array("i", turn.ids),
                        finish_reason=turn.finish_reason,
                        turn=state.metrics.num_llm_calls,
                    )
                )
            )
            trajectory.add_sampled(turn.ids, turn.logprobs)
            trajectory.add_glue(parsed.close_ids)
            state.grow_seq(parsed.close_ids)
            state.alignment.mask_zeros += len(parsed.close_ids)
            finish = self._decide(state, turn.finish_reason, parsed.message, capped)
            if finish is not None:
                state.messages.append(parsed.message)
                return finish
            tool_messages = await self._run_tools(state, parsed.message["tool_calls"])
            state.messages.extend([parsed.message, *tool_messages])
            await self._grow(state, trajectory, tool_messages)
            if state.context_limit is not None and len(state.seq) >= state.context_limit:
                return "max_tokens"  # no room left to generate: the context ends it like the budget

    async def _prepare_tokens(self, state: RolloutState, trajectory: Trajectory) -> list[int]:
        first = await self._pool_call(
            self.pool.first_prompt(state.key, state.messages, tools=self.tool_schemas(state))
        )
        if not first.stop_ids:
            raise TokenizerError(
                f"token mode needs a chat template that ends an assistant turn with a special token; "
                f"{state.key}'s does not"
            )
        state.start_prompt(first)
        trajectory.prompt_ids.extend(first.ids)
        return list(first.stop_ids)

    async def _sample(self, state: RolloutState, stop_ids: list[int]) -> tuple[EngineTurn, bool]:
        """GENERATE: one engine call on ``state.seq``; the sampled ids join it."""
        request = state.request
        sampling = request.sampling_params
        max_tokens = min(sampling.max_tokens, request.max_tokens_total - state.generated)
        if state.context_limit is not None:
            max_tokens = min(max_tokens, state.context_limit - len(state.seq))
        call = EngineRequest(
            model=sampling.model or state.key.name,
            prompt_text=state.seq_text,
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            stop_token_ids=stop_ids,
            logprobs=sampling.logprobs,
            user=request.rollout_id,
        )
        started = time.perf_counter()
        state.turn_overheads.append(started - state.mark)
        try:
            turn = await self.engine.generate(request.server_url, call, api_key=request.callback_api_key)
        finally:
            state.mark = time.perf_counter()
            state.metrics.llm_latency_ms += (state.mark - started) * 1000
            state.metrics.num_llm_calls += 1
        state.count_generation(len(turn.ids))
        state.grow_seq(turn.ids)
        return turn, max_tokens < sampling.max_tokens

    async def _grow(self, state: RolloutState, trajectory: Trajectory, tool_messages: list[Message]) -> None:
        """GROW: the tool results, glue and next generation prompt behind the closed turn."""
        growth = await self._pool_call(self.pool.run(GrowTurn(key=state.key, tool_messages=tool_messages)))
        trajectory.add_glue(growth.ids)
        state.grow_seq(growth.ids)
        state.alignment.tokens_encoded += len(growth.ids)
        state.alignment.mask_zeros += len(growth.ids)
