"""``RolloutState`` keeps its sequence's JSON text in step with the ids, through every change."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from rollout_server.agent import RolloutState
from rollout_server.protocol import RolloutRequest
from tokenize_pool import TokenizerKey, ids_text

REQUEST = RolloutRequest.model_validate(
    {
        "rollout_id": "r",
        "server_url": "http://trainer:8000",
        "messages": [{"role": "user", "content": "hi"}],
        "sampling_params": {},
    }
)
ids = st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=40)


@given(first=ids, steps=st.lists(st.tuples(st.booleans(), ids), max_size=12))
def test_seq_text_is_the_json_of_seq(first: list[int], steps: list[tuple[bool, list[int]]]) -> None:
    state = RolloutState(request=REQUEST, key=TokenizerKey("t"), messages=[])
    state.set_seq(first)
    for replace, more in steps:
        if replace:
            state.set_seq(more)
        else:
            state.grow_seq(more)
        assert bytes(state.seq_text) == ids_text(state.seq)
        # What a trainer's JSON holds between the brackets of prompt_token_ids, compactly written.
        assert json.dumps(list(state.seq), separators=(",", ":"))[1:-1].encode() == state.seq_text


def test_set_seq_takes_the_pools_text_as_is() -> None:
    state = RolloutState(request=REQUEST, key=TokenizerKey("t"), messages=[])
    state.set_seq([1, 2, 3], b"1,2,3")
    state.grow_seq([4])
    assert bytes(state.seq_text) == b"1,2,3,4" and list(state.seq) == [1, 2, 3, 4]
