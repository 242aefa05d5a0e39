"""Errors of the rollout server, one type per error category of the protocol (``ErrorCategory``).

    RolloutError                      category             the rollout ran and failed
    ├── TrainerError
    │   ├── TrainerHTTPError          (carries http_status)
    │   │   ├── TrainerRateLimited    rate_limited         trainer answered 429
    │   │   ├── TrainerClientError    trainer_client_error trainer answered 4xx
    │   │   └── TrainerServerError    trainer_server_error trainer answered 5xx
    │   ├── TrainerBadResponse        trainer_server_error 2xx with a body we cannot use
    │   ├── TrainerNetworkError       network_error        refused, reset, DNS
    │   └── TrainerTimeout            timeout              HTTP_CLIENT_TIMEOUT passed
    ├── RolloutTimeout                timeout              ROLLOUT_TIMEOUT_SECONDS passed
    ├── TokenizerError                tokenizer_error      cannot load or render
    ├── ToolServerError               tool_error           the rollout's MCP tool server cannot be listed
    ├── ToolSelectionError            validation_error     the request names tools the server lacks
    ├── AlignmentError                alignment_error      mask/prefix drift (policy "fail")
    ├── ContextTooLong                validation_error     the first prompt fills the context
    └── InternalError                 internal_error       a bug; clients see a generic message

A tool that fails (bad arguments, unknown tool, its own bug, a timeout, an MCP server that went
down mid-rollout) answers with an ``Error: …`` tool message, and the rollout goes on
(``tools.py``). ``tool_error`` is only a tool server that cannot be listed when the rollout
starts: the model would be offered other tools than the trainer asked for (``toolset.py``).

Foreign errors are translated once, where they enter: httpx errors in ``trainer.py``, pool
errors in ``agent.py``. The category in a response comes from the type, never from a message.
"""

from __future__ import annotations

from typing import ClassVar

from rollout_server.protocol import ErrorCategory

__all__ = [
    "AlignmentError",
    "ContextTooLong",
    "InternalError",
    "RolloutError",
    "RolloutTimeout",
    "TokenizerError",
    "ToolSelectionError",
    "ToolServerError",
    "TrainerBadResponse",
    "TrainerClientError",
    "TrainerError",
    "TrainerHTTPError",
    "TrainerNetworkError",
    "TrainerRateLimited",
    "TrainerServerError",
    "TrainerTimeout",
]


class RolloutError(Exception):
    """A rollout that ran and failed; rendered as HTTP 200 with ``status: ERROR``."""

    category: ClassVar[ErrorCategory] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def public_message(self) -> str:
        return self.message


class TrainerError(RolloutError):
    """The call to the trainer's /v1/completions failed."""


class TrainerHTTPError(TrainerError):
    def __init__(self, message: str, *, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


class TrainerRateLimited(TrainerHTTPError):
    category = "rate_limited"


class TrainerClientError(TrainerHTTPError):
    category = "trainer_client_error"


class TrainerServerError(TrainerHTTPError):
    category = "trainer_server_error"


class TrainerBadResponse(TrainerError):
    category = "trainer_server_error"


class TrainerNetworkError(TrainerError):
    category = "network_error"


class TrainerTimeout(TrainerError):
    category = "timeout"


class RolloutTimeout(RolloutError):
    category = "timeout"


class TokenizerError(RolloutError):
    category = "tokenizer_error"


class ToolServerError(RolloutError):
    category = "tool_error"


class ToolSelectionError(RolloutError):
    category = "validation_error"


class AlignmentError(RolloutError):
    category = "alignment_error"


class ContextTooLong(RolloutError):
    category = "validation_error"


class InternalError(RolloutError):
    category = "internal_error"

    def public_message(self) -> str:
        return "Internal server error"
