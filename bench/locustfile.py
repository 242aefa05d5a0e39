"""Locust load test of ``POST /rollout``: 5-turn and 20-turn tool rollouts under a ~4k-token system prompt.

For teams that drive load with locust (``pip install -e '.[locust]'``). Start the trainer
simulator and the server, then locust headless, from the repository root::

    python -m rollout_server.sim --port 8100 &
    HF_HUB_OFFLINE=1 ROLLOUT_SERVER_PORT=9000 python -m rollout_server.server &   # wait for GET /ready = 200
    locust -f bench/locustfile.py --headless -u 64 -r 64 -t 60s --host http://127.0.0.1:9000

``--host`` is the rollout server. Two user classes, one per scenario, equally weighted; name one
after the options to run it alone (``locust -f bench/locustfile.py ... TwentyTurnRollouts``):

- ``FiveTurnRollouts``: the simulator's ``sequential/turns=5``: five turns that each call the
  calculator, then the answer (6 trainer calls);
- ``TwentyTurnRollouts``: ``sequential/turns=20`` (21 trainer calls).

Every rollout starts from a ~4k-token system prompt (``bench.workloads.system_prompt``, one of
16 seeded variants) and a calculator question, uses the ``Qwen/Qwen3-8B`` tokenizer and has its
own ``rollout_id``. Each user sends its next rollout as soon as the last one is answered.

Environment: ``ROLLOUT_SIM_URL`` (default ``http://127.0.0.1:8100``), the simulator as the
server reaches it; ``ROLLOUT_SIM_LATENCY`` (seconds, default 0), the simulated LLM latency of
every trainer call.

A rollout counts as a failure when the HTTP status is not 200, the body's ``status`` is not
``COMPLETED``, or ``extra_fields.alignment.drift_events`` is not 0.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, task

try:
    from bench.workloads import system_prompt
except ModuleNotFoundError:  # locust puts the working directory on sys.path, not the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.workloads import system_prompt

TOKENIZER = "Qwen/Qwen3-8B"
SYSTEM_TOKENS = 4000
SYSTEM_VARIANTS = 16
MAX_TOKENS_PER_TURN = 512
ROLLOUT_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True, kw_only=True)
class Config:
    """Where the simulated trainer is and how slow its model is, read once from the environment."""

    sim_url: str = "http://127.0.0.1:8100"
    latency: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        return cls(
            sim_url=env.get("ROLLOUT_SIM_URL", cls.sim_url).rstrip("/"),
            latency=float(env.get("ROLLOUT_SIM_LATENCY", cls.latency)),
        )

    def server_url(self, turns: int) -> str:
        """The simulator scenario: ``turns`` calculator turns, then the answer."""
        path = f"{self.sim_url}/s/sequential/turns={turns}/tok={TOKENIZER.replace('/', '--')}"
        return f"{path}/latency={self.latency:g}" if self.latency > 0 else path


CONFIG = Config.from_env(os.environ)
SYSTEM_PROMPTS = [system_prompt(SYSTEM_TOKENS, seed) for seed in range(SYSTEM_VARIANTS)]
_next_prompt = itertools.cycle(SYSTEM_PROMPTS)
_questions = random.Random("locust-questions")


def rollout_request(turns: int) -> dict[str, Any]:
    """One ``RolloutRequest`` of the ``turns``-turn scenario, with a fresh ``rollout_id``."""
    a, b, c = (_questions.randint(2, 999) for _ in range(3))
    return {
        "rollout_id": f"locust-{turns}t-{uuid.uuid4().hex}",
        "server_url": CONFIG.server_url(turns),
        "messages": [
            {"role": "system", "content": next(_next_prompt)},
            {"role": "user", "content": f"What is ({a} + {b}) × {c}? Use the calculator for every step."},
        ],
        "sampling_params": {"temperature": 1.0, "max_tokens": MAX_TOKENS_PER_TURN},
        "tokenizer_name": TOKENIZER,
        "max_turns": turns + 1,
    }


def failure_reason(body: Any) -> str | None:
    """Why the body of a 200 ``/rollout`` answer is a failure, or None when it is a success."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if body.get("status") != "COMPLETED":
        category = body.get("extra_fields", {}).get("error_category")
        return f"status {body.get('status')} ({category}): {body.get('error_message')}"
    alignment = body.get("extra_fields", {}).get("alignment")
    if not isinstance(alignment, dict) or "drift_events" not in alignment:
        return "no extra_fields.alignment.drift_events"
    if alignment["drift_events"] != 0:
        return f"alignment drift: {alignment['drift_events']} events"
    return None


class _Rollouts(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    network_timeout = ROLLOUT_TIMEOUT_SECONDS
    turns = 0

    @task
    def rollout(self) -> None:
        name = f"/rollout {self.turns}-turn"
        with self.client.post(
            "/rollout", json=rollout_request(self.turns), name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                # Status 0: no answer at all (connection refused or reset, timeout).
                detail = getattr(response, "error", None) or (response.text or "")[:200]
                response.failure(f"HTTP {response.status_code}: {detail}")
                return
            try:
                reason = failure_reason(response.json())
            except ValueError:
                reason = "body is not JSON"
            if reason is None:
                response.success()
            else:
                response.failure(reason)


class FiveTurnRollouts(_Rollouts):
    turns = 5


class TwentyTurnRollouts(_Rollouts):
    turns = 20
