"""``PoolClient`` on ``TokenizePool`` stand-ins, without processes: what production runs for a
turn's growth is ``masks.growth_steps`` in the pool, the same steps the mask tests drive in one
process; errors come out as ``TokenizePoolError``s; a first prompt is cached, and promoted on
demand."""

from __future__ import annotations

import asyncio
import pickle
from array import array
from collections.abc import Callable
from typing import Any

import pytest

from tests.stand_in_pool import InlinePool, StandInPool
from tokenize_pool import PoolTimeout, PoolUnavailable, TemplateError, TokenizePoolError, TokenizerKey
from tokenize_pool.codec import ChatCodec
from tokenize_pool.masks import ExtendFull, ExtendWindow, NeedFull, extend, growth_steps
from tokenize_pool.ops import Ping, PoolOp, Promotion, Resolve, Resolved
from tokenize_pool.tokens import FirstPrompt, TokenPrompt

FAMILIES = [TokenizerKey("Qwen/Qwen3-8B"), TokenizerKey("Qwen/Qwen2.5-7B-Instruct")]
CodecOf = Callable[[str], ChatCodec]
CALL = {"id": "c0", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}


def _turn(codec: ChatCodec, *, trainer_drifted: bool = False) -> dict[str, Any]:
    """A first prompt and a sampled tool-call turn as the trainer tokenizes them."""
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 1 and 2"}]
    prompt = codec.encode_prompt(codec.render(history, add_generation_prompt=True))
    assistant = {"role": "assistant", "content": "", "tool_calls": [CALL]}
    full = codec.encode_prompt(codec.render([*history, assistant], add_generation_prompt=False))
    gen = full[len(prompt) :]
    while gen[-1] not in codec.boundary_ids:  # the model stops at its end-of-turn token
        gen.pop()
    if trainer_drifted:
        prompt = prompt[:-1] + [prompt[-1] + 1]
    return {
        "history": history,
        "seq": array("i", prompt + gen),
        "prev_prompt_len": len(prompt),
        "assistant": assistant,
        "tool_messages": [{"role": "tool", "tool_call_id": "c0", "content": "3"}],
    }


@pytest.mark.parametrize("key", FAMILIES, ids=str)
@pytest.mark.parametrize("allow_fast", [True, False])
def test_the_client_runs_the_same_steps_as_the_in_process_extend(
    codec_of: CodecOf, key: TokenizerKey, allow_fast: bool
) -> None:
    turn = _turn(codec_of(key.name))
    pool = InlinePool(codec_of)

    async def through_the_client() -> Any:
        return await pool.client().steps(growth_steps(key, allow_fast=allow_fast, **turn))

    growth = asyncio.run(through_the_client())
    assert growth == extend(codec_of(key.name), allow_fast=allow_fast, **turn)
    assert growth.prefix_ok and growth.fast is allow_fast
    asked = [type(request) for request, _ in pool.requests]
    assert asked == ([ExtendWindow] if allow_fast else [ExtendFull])
    assert all(urgent for _, urgent in pool.requests)  # a rollout's next turn waits for each


@pytest.mark.parametrize("key", FAMILIES, ids=str)
def test_a_fast_path_that_cannot_prove_itself_asks_for_the_full_render(
    codec_of: CodecOf, key: TokenizerKey
) -> None:
    turn = _turn(codec_of(key.name), trainer_drifted=True)  # the junction no longer re-tokenizes to the ids
    pool = InlinePool(codec_of)

    async def through_the_client() -> Any:
        return await pool.client().steps(growth_steps(key, allow_fast=True, **turn))

    growth = asyncio.run(through_the_client())
    assert [type(request) for request, _ in pool.requests] == [ExtendWindow, ExtendFull]
    assert not growth.fast and not growth.prefix_ok and growth.mismatch_at == turn["prev_prompt_len"] - 1
    assert growth == extend(codec_of(key.name), allow_fast=True, **turn)


class Failing(StandInPool):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        raise self.error


class Broken(StandInPool):
    """A worker that answers with a bug: not a pool error (a worker sends its type only)."""

    async def call(
        self, payload: bytes, *, urgent: bool = False, promotion: Promotion | None = None
    ) -> bytes:
        return pickle.dumps((False, KeyError("x")))


class Silent(StandInPool):
    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("pool", "error", "says"),
    [
        (Failing(TemplateError("template of x failed")), TemplateError, "template of x failed"),
        (Failing(PoolUnavailable("connection lost")), PoolUnavailable, "connection lost"),
        (Broken(), TokenizePoolError, "'x'"),
        (Silent(), PoolTimeout, "did not answer within"),
    ],
    ids=["worker-error", "unavailable", "not-a-pool-error", "timeout"],
)
def test_every_failure_comes_out_as_a_pool_error(
    pool: StandInPool, error: type[Exception], says: str
) -> None:
    async def scenario() -> None:
        client = pool.client()
        client.timeout = 0.01  # Silent never answers: only the timeout ends it
        await client.run(Resolve(key=FAMILIES[0]))

    with pytest.raises(error) as raised:
        asyncio.run(scenario())
    assert isinstance(raised.value, TokenizePoolError) and says in str(raised.value)


class Prompts(StandInPool):
    """First prompts answered once promoted; resolves and pings at once."""

    async def answer(self, request: PoolOp[Any], promotion: Promotion | None) -> Any:
        match request:
            case FirstPrompt():
                assert promotion is not None
                promoted = asyncio.Event()
                promotion.when_promoted(promoted.set)
                await promoted.wait()
                return TokenPrompt(array("i", [1, 2, 3]), b"1,2,3", (9,))
            case Resolve():
                return Resolved(4096)
            case Ping():
                return None
        return await super().answer(request, promotion)


def test_a_first_prompt_waits_until_promoted_and_repeats_come_from_the_cache() -> None:
    pool = Prompts()

    async def scenario() -> list[Any]:
        client = pool.client()
        messages = [{"role": "user", "content": "the same GRPO prompt"}]
        pending = client.first_prompt(FAMILIES[0], messages)
        async with asyncio.timeout(10):  # a promotion that never arrives fails, not hangs
            while not pool.requests:  # the request is in the pool, held there
                await asyncio.sleep(0)
            await asyncio.sleep(0.01)
            waiting = not pending.done()
            pending.promote()
            first = await pending
        first.ids.append(7)  # the agent extends its sequence: the cache must not see it
        again = await client.first_prompt(FAMILIES[0], messages)  # no promotion needed
        return [waiting, first, again]

    waiting, first, again = asyncio.run(scenario())
    assert waiting and first.tokens_encoded == 3 and first.stop_ids == (9,)
    assert list(again.ids) == [1, 2, 3] and again.tokens_encoded == 0 and again.text == b"1,2,3"
    assert [urgent for _, urgent in pool.requests] == [False]  # asked once, as a first prompt


def test_a_resolved_tokenizer_is_asked_once() -> None:
    pool = Prompts()

    async def scenario() -> list[int | None]:
        client = pool.client()
        return [await client.resolve(FAMILIES[0]) for _ in range(3)]

    assert asyncio.run(scenario()) == [4096] * 3
    assert len(pool.asked(Resolve)) == 1


def test_a_ping_round_trips() -> None:
    pool = Prompts()
    asyncio.run(pool.client().ping())
    assert pool.asked(Ping) == [Ping()]


def test_pool_requests_pickle_to_themselves(codec_of: CodecOf) -> None:
    """What crosses to a worker: every request type survives the trip unchanged."""
    turn = _turn(codec_of(FAMILIES[0].name))
    requests: list[PoolOp[Any]] = [
        Ping(),
        Resolve(key=FAMILIES[0]),
        FirstPrompt(key=FAMILIES[0], messages=turn["history"], tools=[]),
        ExtendFull(key=FAMILIES[0], tools=None, **turn),
    ]
    for request in requests:
        assert pickle.loads(pickle.dumps(request)) == request
    assert pickle.loads(pickle.dumps(NeedFull())) == NeedFull()
