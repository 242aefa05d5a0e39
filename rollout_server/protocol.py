"""The wire format: pydantic models of PROTOCOL.md. Imports nothing from Sanic or the pool."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

__all__ = [
    "AlignmentReport",
    "DriftEvent",
    "EngineChoice",
    "EngineCompletion",
    "EngineLogprobs",
    "ErrorBody",
    "ErrorCategory",
    "ErrorDetail",
    "ExtraFields",
    "FieldError",
    "FunctionCall",
    "Message",
    "RolloutMetrics",
    "RolloutRequest",
    "RolloutResponse",
    "RolloutTiming",
    "SamplingParams",
    "TokenTrajectory",
    "ToolCall",
    "TrainerChoice",
    "TrainerCompletion",
    "TrajectoryRebuild",
]

Role = Literal["system", "user", "assistant", "tool", "function"]
# What a trainer sends is taken as it is typed: no "512" for 512, no true for 1, no NaN.
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)
# A token id as the server keeps it: an ``array("i")`` element, never negative.
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow", **_STRICT)

    name: str = Field(min_length=1, max_length=256)
    arguments: str | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow", **_STRICT)

    id: str = Field(default="", max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message; keys the protocol does not name (``name``, ``reasoning_content``…) are kept."""

    model_config = ConfigDict(extra="allow", **_STRICT)

    role: Role
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="ignore", **_STRICT)

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    stop: list[str] | None = None
    logprobs: bool = True
    # Token mode: the engine's model name (else the tokenizer's name).
    model: str | None = Field(default=None, max_length=512)


class RolloutRequest(BaseModel):
    """Top-level fields that no field declares are dropped; ``ignored_fields`` names them (for
    the warning log and the response's ``extra_fields``), so that a typo does not pass unseen."""

    model_config = ConfigDict(extra="allow", **_STRICT)

    rollout_id: str = Field(min_length=1, max_length=256)
    server_url: str = Field(min_length=1, max_length=2048)
    messages: list[Message] = Field(min_length=1)
    sampling_params: SamplingParams
    tokenizer_name: str | None = Field(default=None, max_length=512)
    tokenizer_revision: str | None = Field(default=None, max_length=256)
    max_turns: int = Field(default=10, ge=1, le=100)
    max_tokens_total: int = Field(default=8192, ge=1, le=1_000_000)
    callback_api_key: str | None = Field(default=None, max_length=4096)
    tool_server_url: str | None = Field(default=None, max_length=2048)
    # Narrows the tools offered to the model to these names (never widens them).
    tools: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=256
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    # "tokens": the server renders and tokenizes, an OpenAI-compatible engine (vLLM, SGLang)
    # generates from token ids (docs/token-mode.md). "messages": the protocol of PROTOCOL.md.
    generation: Literal["messages", "tokens"] = "messages"
    # Message mode: add extra_fields.trajectory (token mode always does).
    return_trajectory: bool = False
    # Message mode: send the tool schemas as ``tools`` and render the first prompt with them.
    tools_in_prompt: bool = False
    _ignored_fields: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _set_aside_unknown_fields(self) -> RolloutRequest:
        if self.__pydantic_extra__:
            self._ignored_fields = sorted(name[:64] for name in self.__pydantic_extra__)[:32]
            self.__pydantic_extra__.clear()
        return self

    @property
    def ignored_fields(self) -> list[str]:
        """Unknown top-level fields of the body (at most 32 names of at most 64 characters)."""
        return self._ignored_fields

    @field_validator("rollout_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("server_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.strip().rstrip("/")

    @field_validator("tool_server_url")
    @classmethod
    def _tool_server_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host (an MCP Streamable HTTP endpoint)"
            )
        return value.strip()

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """Names must be distinct; with ``context={"known_tools": names}`` (the app passes the
        server's tool names when no tool server can add others) they must be among them."""
        if value is None:
            return None
        if len(set(value)) != len(value):
            raise ValueError("names a tool twice")
        known = (info.context or {}).get("known_tools")
        if known is not None and not info.data.get("tool_server_url"):
            unknown = [name for name in value if name not in known]
            if unknown:
                raise ValueError(
                    f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}"
                )
        return value


@pydantic_dataclass(slots=True)
class RolloutMetrics:
    """A pydantic dataclass, not a model: the agent loop updates it several times a turn, and a
    model's ``__setattr__`` costs microseconds where a dataclass's costs nanoseconds."""

    total_latency_ms: float = 0.0
    llm_latency_ms: float = 0.0
    tool_latency_ms: float = 0.0
    num_llm_calls: int = 0
    num_tool_calls: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    max_context_tokens: int = 0


def _absent(value: object) -> bool:
    return value is None


def _never_null(schema: dict[str, Any]) -> None:
    """The JSON schema of an ``_omitted_when_absent`` field: its value's type; no null, no default."""
    schema.update(next(option for option in schema.pop("anyOf") if option != {"type": "null"}))
    schema.pop("default", None)


def _omitted_when_absent() -> Any:
    """An optional field of a response: left out of the output (``model_dump`` and JSON alike)
    while it is None, so the wire has either the key with a value or no key."""
    return Field(default=None, exclude_if=_absent, json_schema_extra=_never_null)


# The error categories of a failed rollout (one type each in errors.py).
ErrorCategory = Literal[
    "rate_limited",
    "trainer_server_error",
    "trainer_client_error",
    "network_error",
    "timeout",
    "tokenizer_error",
    "tool_error",
    "alignment_error",
    "validation_error",
    "internal_error",
]
DriftKind = Literal["trainer_prompt_mismatch", "prefix_break", "trainer_ids_mismatch"]


class DriftEvent(BaseModel):
    """One drift of the trainer's token sequence from the server's (docs/protocol.md)."""

    turn: int
    kind: DriftKind
    # trainer_prompt_mismatch: the lengths of the prompt the server expected and the trainer's.
    expected_len: int | None = _omitted_when_absent()
    actual_len: int | None = _omitted_when_absent()
    first_mismatch: int | None = None
    # prefix_break, trainer_ids_mismatch: whether a rewrite of the assistant turn re-rendered
    # its sampled text exactly, and (when the pool could say) the turn's ids as text beside
    # its message as rendered.
    faithful_rewrite_found: bool | None = _omitted_when_absent()
    decoded: str | None = _omitted_when_absent()
    rendered: str | None = _omitted_when_absent()
    detail: str | None = _omitted_when_absent()


class AlignmentReport(BaseModel):
    """How the server's token sequence kept in step with the trainer's (docs/protocol.md)."""

    # Trainer prompts compared with ours, one per trainer call.
    checks: int
    drift_events: int
    events: list[DriftEvent]
    faithful_rewrites: int
    fast_path_turns: int
    full_render_turns: int
    tokens_encoded: int
    sequence_length: int
    response_mask_zeros: int
    response_mask_ones: int


class RolloutTiming(BaseModel):
    """The server's own time, in milliseconds: the trainer's time is not in it."""

    # Per trainer call, from the end of the previous one (or the start) to the request.
    turn_overhead_ms: list[float]
    # From the last trainer answer to the response.
    tail_ms: float
    server_ms: float
    # From the request's arrival to the rollout's start (admission, validation, a free slot).
    queued_ms: float


class TrajectoryRebuild(BaseModel):
    """A turn at which the trainer's prompt did not continue the trajectory (message mode under
    ``ALIGNMENT_DRIFT_POLICY=flag``), and how many of its tokens were kept."""

    turn: int
    kept: int


class TokenTrajectory(BaseModel):
    """``extra_fields.trajectory``: verl's arrays (``AgentLoopOutput``'s names), what a trainer
    trains on without a tokenizer (docs/token-mode.md)."""

    prompt_ids: list[int]
    # Everything after the first prompt: sampled turns, and between them the growth.
    response_ids: list[int]
    # 1: sampled by the model; 0: tool output and template glue.
    response_mask: list[int]
    # The sampled tokens' logprobs, 0.0 where the mask is 0 (or no logprobs were asked for).
    response_logprobs: list[float]
    rebuilt: list[TrajectoryRebuild] | None = _omitted_when_absent()


class ExtraFields(BaseModel):
    """``RolloutResponse.extra_fields``; a field that is None is left out of the response."""

    alignment: AlignmentReport
    timing: RolloutTiming
    # Token mode, or return_trajectory.
    trajectory: TokenTrajectory | None = _omitted_when_absent()
    error_category: ErrorCategory | None = _omitted_when_absent()
    # The trainer's HTTP status, when its answer was an error.
    http_status: int | None = _omitted_when_absent()
    # Unknown top-level fields of the request, dropped (RolloutRequest.ignored_fields).
    ignored_fields: list[str] | None = _omitted_when_absent()


class RolloutResponse(BaseModel):
    """The answer to ``POST /rollout`` (HTTP 200) for every rollout that ran, failed ones too."""

    rollout_id: str
    status: Literal["COMPLETED", "ERROR"]
    final_messages: list[dict[str, Any]]
    finish_reason: str | None = None
    error_message: str | None = None
    metrics: RolloutMetrics
    extra_fields: ExtraFields


class FieldError(BaseModel):
    """One invalid field of a request body (a 422 answer)."""

    field: str
    message: str


class ErrorDetail(BaseModel):
    type: str
    message: str
    fields: list[FieldError] | None = _omitted_when_absent()


class ErrorBody(BaseModel):
    """The body of every answer that is not a 200: ``{"error": {"type", "message"[, "fields"]}}``."""

    error: ErrorDetail


class TrainerChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int = 0
    message: dict[str, Any]
    finish_reason: str | None = None


class TrainerCompletion(BaseModel):
    """The trainer's answer: OpenAI chat-completion shape plus the three training fields."""

    model_config = ConfigDict(extra="allow")

    choices: list[TrainerChoice] = Field(min_length=1)
    token_ids: list[TokenId]
    logprobs: list[float] | None = None
    prompt_token_ids: list[TokenId]


class EngineLogprobs(BaseModel):
    """The ``logprobs`` of a ``/v1/completions`` choice; only the sampled tokens' are used."""

    model_config = ConfigDict(extra="ignore")

    token_logprobs: list[float | None] = Field(default_factory=list)


class EngineChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: EngineLogprobs | None = None
    token_ids: list[TokenId] | None = None


class EngineCompletion(BaseModel):
    """An engine's ``/v1/completions`` answer (vLLM's shape; SGLang's is the same)."""

    model_config = ConfigDict(extra="ignore")

    choices: list[EngineChoice] = Field(min_length=1)
