"""Tools the model may call, behind a small registry.

A tool failure is the tool message's content, never a failed rollout: bad JSON arguments,
unknown tools, wrong argument types, a division by zero and a tool that overran its time all
come back as ``{"role": "tool", "content": "Error: …", "tool_call_id": …}``.

How a tool runs depends on what it is:

    inline   a plain function registered with ``register`` (the calculator): called on the event
             loop, its answer taken as it returns; only for instant pure computation
    thread   a plain function registered with ``tool`` (user tools): run in this process's tool
             threads under the timeout, so a slow one never blocks the event loop
    async    a coroutine function: awaited on the event loop under the timeout

A thread that overruns the timeout cannot be stopped: its call ends with an error message, and
the thread finishes in the background (at most ``TOOL_THREADS`` run at once).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import operator
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, overload

from rollout_server.tool_schema import ToolArgumentError, check_schema, function_spec, result_text

__all__ = [
    "TOOL_THREADS",
    "Tool",
    "ToolArgumentError",
    "ToolFailure",
    "ToolOutcome",
    "ToolRegistry",
    "calculator_registry",
    "run_tool_calls",
]

logger = logging.getLogger(__name__)

# A coroutine function (awaited under the timeout: I/O, subprocesses, anything slow) or a plain
# function; either takes the call's arguments as one dict.
ToolFn = Callable[[dict[str, Any]], Awaitable[Any] | Any]
ToolKind = Literal["inline", "thread", "async"]
TOOL_THREADS = 32


class ToolFailure(Exception):
    """A tool failed in a way the model may read: the tool message is ``Error: <message>`` (the
    message alone when it starts with "Error" already)."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One call's tool message; ``tool`` names the tool that ran ("" when the name was unknown),
    ``source`` where it ran ("local" or "mcp")."""

    message: dict[str, Any]
    ok: bool
    latency_ms: float
    tool: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool as offered to a model: its name, its OpenAI function schema, and how it runs."""

    name: str
    schema: dict[str, Any]
    fn: ToolFn
    kind: ToolKind = "async"
    source: str = "local"


@functools.cache
def _threads() -> ThreadPoolExecutor:
    """The process's tool threads, apart from asyncio's default executor: tools stuck past their
    timeout must not starve what else uses that one (DNS lookups of the trainer's host)."""
    return ThreadPoolExecutor(max_workers=TOOL_THREADS, thread_name_prefix="tool")


def _parse_arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise ToolArgumentError(f"arguments must be a JSON object, got {type(raw).__name__}")
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ToolArgumentError(f"arguments are not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(parsed, dict):
        raise ToolArgumentError("arguments must be a JSON object")
    return parsed


async def _invoke(tool: Tool, arguments: dict[str, Any], inline_answer: Any) -> Any:
    """A thread or async tool's answer, or an inline tool's answer that has to be awaited."""
    if tool.kind == "thread":
        return await asyncio.get_running_loop().run_in_executor(_threads(), tool.fn, arguments)
    if tool.kind == "async":
        return await tool.fn(arguments)
    return await inline_answer if isinstance(inline_answer, Awaitable) else inline_answer


async def _run_one(call: Mapping[str, Any], tools: Mapping[str, Tool], timeout: float) -> ToolOutcome:
    started = time.perf_counter()
    call_id = str(call.get("id") or "")
    raw_function = call.get("function")
    function: Mapping[str, Any] = raw_function if isinstance(raw_function, Mapping) else {}
    name = str(function.get("name", ""))
    tool = tools.get(name)
    ok = False
    try:
        if tool is None:
            raise ToolArgumentError(f"unknown tool {name!r}; available: {', '.join(sorted(tools)) or 'none'}")
        arguments = _parse_arguments(function.get("arguments"))
        # An inline tool's answer is taken as it returns: no coroutine, task or timer (the
        # calculator's tools: their work is a few microseconds).
        answer = tool.fn(arguments) if tool.kind == "inline" else None
        if isinstance(answer, str):
            content = answer
        else:
            # asyncio.timeout, not wait_for: no extra task per call.
            async with asyncio.timeout(timeout):
                content = result_text(await _invoke(tool, arguments, answer))
        ok = True
    except ToolArgumentError as exc:
        content = f"Error: {exc}"
    except ToolFailure as exc:
        # An MCP server's own wording often starts so already ("Error executing tool …").
        content = str(exc) if str(exc).startswith("Error") else f"Error: {exc}"
    except TimeoutError:
        content = f"Error: tool {name!r} did not finish within {timeout:g} s"
    except ZeroDivisionError:
        content = "Error: division by zero"
    except OverflowError:
        content = "Error: result out of range"
    except Exception as exc:
        # A tool's own bug is still the tool's message, never a failed rollout.
        logger.exception("tool %r failed", name)
        content = f"Error: tool {name!r} failed ({type(exc).__name__})"
    message = {"role": "tool", "content": content, "tool_call_id": call_id}
    latency_ms = (time.perf_counter() - started) * 1000
    if tool is None:
        return ToolOutcome(message, ok, latency_ms)
    return ToolOutcome(message, ok, latency_ms, tool.name, tool.source)


async def run_tool_calls(
    calls: Sequence[Mapping[str, Any]], tools: Mapping[str, Tool], *, timeout: float
) -> list[ToolOutcome]:
    """Every call's outcome, in order; parallel calls run concurrently."""
    if len(calls) == 1:
        return [await _run_one(calls[0], tools, timeout)]
    return list(await asyncio.gather(*(_run_one(call, tools, timeout) for call in calls)))


class ToolRegistry:
    """Name -> tool. ``run_calls`` runs one turn's calls concurrently, in order of the calls."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._tools: dict[str, Tool] = {}
        self.timeout = timeout

    def register(self, name: str, fn: ToolFn, schema: dict[str, Any] | None = None) -> None:
        """Add ``fn``, which takes the arguments as one dict: a plain function runs inline (on the
        event loop), a coroutine function under the timeout. ``schema`` is the tool's OpenAI
        function schema (``{"type": "function", "function": {"name", "description",
        "parameters"}}``), what a chat template renders as ``tools``."""
        schema = schema or {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        kind: ToolKind = "async" if inspect.iscoroutinefunction(fn) else "inline"
        self.add(Tool(name, check_schema(name, schema), fn, kind))

    @overload
    def tool(self, fn: Callable[..., Any], /) -> Callable[..., Any]: ...

    @overload
    def tool(
        self, fn: None = None, /, *, name: str | None = None, schema: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        schema: dict[str, Any] | None = None,
    ) -> Any:
        """Add a function taking keyword arguments; usable as ``@registry.tool`` or
        ``@registry.tool(name=…, schema=…)``. Its schema comes from its signature, type hints and
        docstring unless ``schema`` is given; a plain function runs in a thread."""

        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            spec = function_spec(target, name=name, schema=schema)
            self.add(Tool(spec.name, spec.schema, spec.call, "async" if spec.is_async else "thread"))
            return target

        return add if fn is None else add(fn)

    def add(self, tool: Tool) -> None:
        """Add a tool; a second tool of the same name is refused."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is defined twice")
        self._tools[tool.name] = tool

    def include(self, tools: Iterable[Tool]) -> None:
        """Add every tool of another registry (``registry.tools.values()``)."""
        for tool in tools:
            self.add(tool)

    @property
    def tools(self) -> Mapping[str, Tool]:
        return self._tools

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI function schemas of every tool, in name order."""
        return [self._tools[name].schema for name in self.names]

    async def run_calls(self, calls: Sequence[Mapping[str, Any]]) -> list[ToolOutcome]:
        """Every call's outcome, in order; parallel calls run concurrently."""
        return await run_tool_calls(calls, self._tools, timeout=self.timeout)


_FLOAT_MAX = int(sys.float_info.max)


def _number(args: dict[str, Any], key: str) -> float | int:
    if key not in args:
        raise ToolArgumentError(f"missing argument {key!r}")
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolArgumentError(f"argument {key!r} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolArgumentError(f"argument {key!r} must be finite")
    if isinstance(value, int) and abs(value) > _FLOAT_MAX:
        raise ToolArgumentError(f"argument {key!r} is out of range")
    return value


def _format(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _binary(op: Callable[[Any, Any], Any]) -> ToolFn:
    def tool(args: dict[str, Any]) -> str:
        extra = set(args) - {"a", "b"}
        if extra:
            raise ToolArgumentError(f"unexpected argument(s): {', '.join(sorted(extra))}")
        return _format(op(_number(args, "a"), _number(args, "b")))

    return tool


def _binary_schema(name: str, description: str) -> dict[str, Any]:
    number = {"type": "number"}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {**number, "description": "first operand"},
                    "b": {**number, "description": "second operand"},
                },
                "required": ["a", "b"],
            },
        },
    }


def calculator_registry(*, timeout: float = 30.0) -> ToolRegistry:
    """The default tool set: add, subtract, multiply, divide on numbers ``a`` and ``b``."""
    registry = ToolRegistry(timeout=timeout)
    for name, op, description in (
        ("add", operator.add, "Add two numbers: a + b."),
        ("subtract", operator.sub, "Subtract two numbers: a - b."),
        ("multiply", operator.mul, "Multiply two numbers: a * b."),
        ("divide", operator.truediv, "Divide two numbers: a / b."),
    ):
        registry.register(name, _binary(op), _binary_schema(name, description))
    return registry
