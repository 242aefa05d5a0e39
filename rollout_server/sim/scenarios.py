"""Scripted model behaviour of the trainer simulator, chosen by the request URL.

Pure: no HTTP, no tokenizer. A URL path such as ``sequential/turns=10/latency=0.2`` becomes a
:class:`Route`; :func:`script_turn` maps a route and ``t`` (the number of assistant messages
already in the conversation) to what the simulated trainer does on that call:

    Action
     +-- Turn           the model samples an assistant message (content, tool calls)
     +-- HttpFault      the trainer answers an HTTP error status
     +-- MalformedReply the trainer answers 200 with a body the client cannot use
     +-- WireFault      the trainer's answer breaks on the wire (hangs, resets, drips...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from .splits import SPLIT_KINDS, SplitKind

__all__ = [
    "BAD_JSON_ARGUMENTS",
    "WIRE_FAULTS",
    "FINAL_ANSWER",
    "REASONING_TEXT",
    "SCENARIOS",
    "Action",
    "HttpFault",
    "MalformedReply",
    "Route",
    "RouteError",
    "ScriptedCall",
    "Turn",
    "WireFault",
    "parse_route",
    "script_turn",
    "words",
]

FINAL_ANSWER = "The answer is 42."
REASONING_TEXT = "Let me work this out step by step."
BAD_JSON_ARGUMENTS = '{"a": 1, "b":'

_OPS = ("add", "subtract", "multiply", "divide")
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
_COMMON_OPTIONS = frozenset({"latency", "tok", "think", "auth", "split", "eot", "ids", "strict", "gate"})


class RouteError(ValueError):
    """The URL names an unknown scenario or carries an option that cannot be parsed."""


@dataclass(frozen=True, kw_only=True)
class ScriptedCall:
    """One tool call the model samples; ``arguments`` is a raw string only for invalid JSON."""

    name: str
    arguments: dict[str, Any] | str


@dataclass(frozen=True, kw_only=True)
class Turn:
    """An assistant message the model samples; ``compact_args`` samples JSON without spaces."""

    content: str
    tool_calls: tuple[ScriptedCall, ...] = ()
    compact_args: bool = False


@dataclass(frozen=True, kw_only=True)
class HttpFault:
    """Answer this HTTP status with a JSON error body (429 also carries ``Retry-After``)."""

    status: int


@dataclass(frozen=True, kw_only=True)
class MalformedReply:
    """Answer 200 with a non-JSON body, or JSON lacking the training fields."""

    kind: Literal["nonjson", "missing"]


WireFaultKind = Literal["hang", "reset", "drip", "huge", "badutf8"]
WIRE_FAULTS: tuple[WireFaultKind, ...] = ("hang", "reset", "drip", "huge", "badutf8")


@dataclass(frozen=True, kw_only=True)
class WireFault:
    """Sample ``turn`` as usual, then deliver the answer broken on the wire (``sim/faults.py``):
    ``hang`` stops mid-body, ``reset`` sends part of it then a TCP reset, ``drip`` sends it
    64 bytes at a time every ``ms`` milliseconds, ``huge`` pads it to ``mb`` megabytes,
    ``badutf8`` puts bytes that are not UTF-8 in its text."""

    kind: WireFaultKind
    turn: Turn


Action = Turn | HttpFault | MalformedReply | WireFault


@dataclass(frozen=True, kw_only=True)
class Route:
    """A scenario and its options, parsed from the URL path.

    ``split`` samples ids that do not survive re-encoding (see ``splits``), in both modes. The
    rest apply to engine mode only: ``end_of_turn`` False stops without the end-of-turn id,
    ``token_ids`` False answers without the generated ids, ``strict`` rejects a prompt that
    does not extend the rollout's previous prompt and generated ids."""

    scenario: str = "none"
    options: Mapping[str, str] = field(default_factory=dict)
    latency: float = 0.0
    tokenizer: str | None = None
    think: bool = False
    auth: str | None = None
    split: SplitKind | None = None
    end_of_turn: bool = True
    token_ids: bool = True
    strict: bool = False
    gate: str | None = None  # calls wait until POST /sim/gates/<gate> opens it (tests)

    def int_option(self, name: str, default: int) -> int:
        """An integer scenario option, ``default`` when absent."""
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise RouteError(f"option {name}={raw!r} is not an integer") from exc


def words(n: int) -> str:
    """``n`` deterministic words separated by single spaces."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(n))


def _op_call(index: int, a: int, b: int) -> ScriptedCall:
    return ScriptedCall(name=_OPS[index % len(_OPS)], arguments={"a": a, "b": b})


def _final() -> Turn:
    return Turn(content=FINAL_ANSWER)


def _none(route: Route, t: int) -> Action:
    return _final()


def _one(route: Route, t: int) -> Action:
    return Turn(content="", tool_calls=(_op_call(0, 2, 3),)) if t == 0 else _final()


def _sequential(route: Route, t: int) -> Turn:
    if t < route.int_option("turns", 2):
        return Turn(content="", tool_calls=(_op_call(t, t + 2, t + 1),))
    return _final()


def _parallel(route: Route, t: int) -> Action:
    if t > 0:
        return _final()
    calls = tuple(_op_call(i, i + 2, i + 1) for i in range(route.int_option("calls", 3)))
    return Turn(content="", tool_calls=calls)


def _failing(route: Route, t: int) -> Action:
    if t > 0:
        return _final()
    calls = (
        ScriptedCall(name="divide", arguments={"a": 1, "b": 0}),
        ScriptedCall(name="sqrt", arguments={"x": 4}),
        ScriptedCall(name="add", arguments={"a": "x", "b": 1}),
        ScriptedCall(name="multiply", arguments=BAD_JSON_ARGUMENTS),
    )
    return Turn(content="", tool_calls=calls)


# Tools other than the calculator: a user tool loaded from TOOLS (tests/user_tools.py) and the
# tools of the simulated MCP server (rollout_server/sim/mcp_server.py), failures included.
_TOOLBOX_TURNS: tuple[tuple[ScriptedCall, ...], ...] = (
    (
        ScriptedCall(name="word_count", arguments={"text": "the quick brown fox"}),
        ScriptedCall(name="lookup", arguments={"key": "capital of france"}),
    ),
    (
        ScriptedCall(name="reverse", arguments={"text": "Paris"}),
        ScriptedCall(name="fail", arguments={"message": "the sandbox is gone"}),
        ScriptedCall(name="picture", arguments={}),
    ),
)


# The MCP server's failures: a slow tool, a tool error, bad arguments, then the server dies.
_TOOLFAIL_TURNS: tuple[tuple[ScriptedCall, ...], ...] = (
    (
        ScriptedCall(name="sleep", arguments={"seconds": 600}),
        ScriptedCall(name="lookup", arguments={"key": "nothing"}),
        ScriptedCall(name="reverse", arguments={"text": 5}),
    ),
    (ScriptedCall(name="crash", arguments={}),),
    (ScriptedCall(name="lookup", arguments={"key": "capital of france"}),),
)


def _toolbox(route: Route, t: int) -> Action:
    if t < len(_TOOLBOX_TURNS):
        return Turn(content="", tool_calls=_TOOLBOX_TURNS[t])
    return _final()


def _toolfail(route: Route, t: int) -> Action:
    if t < len(_TOOLFAIL_TURNS):
        return Turn(content="", tool_calls=_TOOLFAIL_TURNS[t])
    return _final()


def _longtool(route: Route, t: int) -> Action:
    """Tool results longer than a token cap (the MCP server's ``repeat``), beside a short one."""
    n = route.int_option("n", 500)
    if t == 0:
        calls = (
            ScriptedCall(name="repeat", arguments={"text": "tool output ", "n": n}),
            ScriptedCall(name="word_count", arguments={"text": "the quick brown fox"}),
        )
        return Turn(content="", tool_calls=calls)
    if t == 1:
        return Turn(
            content="", tool_calls=(ScriptedCall(name="repeat", arguments={"text": "工具输出😀", "n": n}),)
        )
    return _final()


def _endless(route: Route, t: int) -> Action:
    return Turn(content="", tool_calls=(_op_call(t, t + 2, t + 1),))


def _long(route: Route, t: int) -> Action:
    return Turn(content=words(route.int_option("words", 300)))


def _budget(route: Route, t: int) -> Action:
    return Turn(content=words(route.int_option("words", 100)), tool_calls=(_op_call(t, t + 2, t + 1),))


def _drift(route: Route, t: int) -> Action:
    turn = _sequential(route, t)
    return Turn(content=turn.content, tool_calls=turn.tool_calls, compact_args=True)


def _error(route: Route, t: int) -> Action:
    if t == route.int_option("at", 0):
        return HttpFault(status=route.int_option("status", 500))
    return _sequential(route, t)


def _malformed(route: Route, t: int) -> Action:
    if t == 0:
        return MalformedReply(kind="missing" if route.options.get("kind") == "missing" else "nonjson")
    return _final()


def _fault(route: Route, t: int) -> Action:
    turn = _sequential(route, t)
    if t != route.int_option("at", 0):
        return turn
    kind = route.options.get("kind", "hang")
    return WireFault(kind=kind, turn=turn)  # type: ignore[arg-type]  # checked by _check_options


SCENARIOS: Mapping[str, Callable[[Route, int], Action]] = {
    "none": _none,
    "one": _one,
    "sequential": _sequential,
    "parallel": _parallel,
    "failing": _failing,
    "toolbox": _toolbox,
    "toolfail": _toolfail,
    "longtool": _longtool,
    "endless": _endless,
    "long": _long,
    "budget": _budget,
    "drift": _drift,
    "error": _error,
    "malformed": _malformed,
    "fault": _fault,
}


_OPTIONS: Mapping[str, frozenset[str]] = {
    "none": frozenset(),
    "one": frozenset(),
    "sequential": frozenset({"turns"}),
    "parallel": frozenset({"calls"}),
    "failing": frozenset(),
    "toolbox": frozenset(),
    "toolfail": frozenset(),
    "longtool": frozenset({"n"}),
    "endless": frozenset(),
    "long": frozenset({"words"}),
    "budget": frozenset({"words"}),
    "drift": frozenset({"turns"}),
    "error": frozenset({"status", "at", "turns"}),
    "malformed": frozenset({"kind"}),
    "fault": frozenset({"kind", "at", "turns", "ms", "mb"}),
}

# The scenarios whose ``kind`` option names a variant, and the variants.
_KINDS: Mapping[str, tuple[str, ...]] = {"malformed": ("nonjson", "missing"), "fault": WIRE_FAULTS}


def _check_options(route: Route) -> None:
    for key, value in route.options.items():
        if key not in _OPTIONS[route.scenario]:
            raise RouteError(f"scenario {route.scenario!r} takes no option {key!r}")
        if key == "kind":
            kinds = _KINDS[route.scenario]
            if value not in kinds:
                raise RouteError(f"option kind={value!r} must be {' or '.join(kinds)}")
        elif route.int_option(key, 0) < 0:
            raise RouteError(f"option {key}={value!r} must not be negative")
        elif key == "status" and not 400 <= route.int_option(key, 0) <= 599:
            raise RouteError(f"option status={value!r} must be an HTTP error status (400-599)")


def _split_option(segment: str) -> tuple[str, str]:
    key, sep, value = segment.partition("=")
    if not sep or not key:
        raise RouteError(f"path segment {segment!r} is not <key>=<value>")
    return key, value


def _flag(options: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = options.get(name)
    return default if raw is None else raw not in ("0", "", "false")


def parse_route(path: str) -> Route:
    """Parse ``<scenario>[/<key>=<value>...]`` (no leading ``/s/``, no ``/v1/completions``)."""
    segments = [s for s in path.strip("/").split("/") if s]
    scenario = segments[0] if segments else "none"
    if scenario not in SCENARIOS:
        raise RouteError(f"unknown scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}")
    options = dict(_split_option(s) for s in segments[1:])
    common = {k: v for k, v in options.items() if k in _COMMON_OPTIONS}
    try:
        latency = float(common.get("latency", "0"))
    except ValueError as exc:
        raise RouteError(f"option latency={common['latency']!r} is not a number") from exc
    tok = common.get("tok")
    split = common.get("split") or None
    if split is not None and split not in SPLIT_KINDS:
        raise RouteError(f"option split={split!r} must be one of {', '.join(SPLIT_KINDS)}")
    route = Route(
        scenario=scenario,
        options={k: v for k, v in options.items() if k not in _COMMON_OPTIONS},
        latency=max(latency, 0.0),
        tokenizer=tok.replace("--", "/") if tok else None,
        think=_flag(common, "think", default=False),
        auth=common.get("auth") or None,
        split=cast("SplitKind | None", split),
        end_of_turn=_flag(common, "eot", default=True),
        token_ids=_flag(common, "ids", default=True),
        strict=_flag(common, "strict", default=False),
        gate=common.get("gate") or None,
    )
    _check_options(route)
    return route


def script_turn(route: Route, t: int) -> Action:
    """What the simulated trainer does on a call whose conversation holds ``t`` assistant turns."""
    return SCENARIOS[route.scenario](route, t)
