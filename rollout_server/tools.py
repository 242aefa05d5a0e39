"""Tools the model may call, behind a small registry.

A tool failure is the tool message's content, never a failed rollout: bad JSON arguments,
unknown tools, wrong argument types, a division by zero and a tool that overran its time all
come back as ``{"role": "tool", "content": "Error: …", "tool_call_id": …}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import operator
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ToolOutcome", "ToolRegistry", "calculator_registry"]

logger = logging.getLogger(__name__)

# A coroutine function (awaited under the registry's timeout: I/O, subprocesses, anything slow)
# or a plain function (called on the event loop: only for instant pure computation).
ToolFn = Callable[[dict[str, Any]], Awaitable[str] | str]


class ToolArgumentError(ValueError):
    """The arguments do not fit the tool."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    message: dict[str, Any]
    ok: bool
    latency_ms: float


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


class ToolRegistry:
    """Name -> tool. ``run_calls`` runs one turn's calls concurrently, in order of the calls.

    An async tool runs under ``timeout``; a plain function's answer is taken as it returns, with
    no task or timer (the calculator's tools: their work is a few microseconds)."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._tools: dict[str, ToolFn] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self.timeout = timeout

    def register(self, name: str, fn: ToolFn, schema: dict[str, Any] | None = None) -> None:
        """``schema`` is the tool's OpenAI function schema (``{"type": "function", "function":
        {"name", "description", "parameters"}}``), what a chat template renders as ``tools``."""
        self._tools[name] = fn
        self._schemas[name] = schema or {"type": "function", "function": {"name": name, "parameters": {}}}

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI function schemas of every tool, in name order."""
        return [self._schemas[name] for name in self.names]

    async def _run_one(self, call: Mapping[str, Any]) -> ToolOutcome:
        started = time.perf_counter()
        call_id = str(call.get("id") or "")
        raw_function = call.get("function")
        function: Mapping[str, Any] = raw_function if isinstance(raw_function, Mapping) else {}
        name = str(function.get("name", ""))
        ok = False
        try:
            tool = self._tools.get(name)
            if tool is None:
                raise ToolArgumentError(f"unknown tool {name!r}; available: {', '.join(self.names)}")
            answer = tool(_parse_arguments(function.get("arguments")))
            if isinstance(answer, str):
                content = answer
            else:
                # asyncio.timeout, not wait_for: no extra task per call.
                async with asyncio.timeout(self.timeout):
                    content = await answer
            ok = True
        except ToolArgumentError as exc:
            content = f"Error: {exc}"
        except TimeoutError:
            content = f"Error: tool {name!r} did not finish within {self.timeout:g} s"
        except ZeroDivisionError:
            content = "Error: division by zero"
        except OverflowError:
            content = "Error: result out of range"
        except Exception as exc:
            # A tool's own bug is still the tool's message, never a failed rollout.
            logger.exception("tool %r failed", name)
            content = f"Error: tool {name!r} failed ({type(exc).__name__})"
        message = {"role": "tool", "content": content, "tool_call_id": call_id}
        return ToolOutcome(message, ok, (time.perf_counter() - started) * 1000)

    async def run_calls(self, calls: Sequence[Mapping[str, Any]]) -> list[ToolOutcome]:
        """Every call's outcome, in order; parallel calls run concurrently."""
        if len(calls) == 1:
            return [await self._run_one(calls[0])]
        return list(await asyncio.gather(*(self._run_one(call) for call in calls)))


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
