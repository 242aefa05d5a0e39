"""The server's own tools, loaded from the ``TOOLS`` entries of the settings.

An entry is one of:

    calculator              the built-in add, subtract, multiply, divide (the default)
    package.module:name     a function (its schema from its signature and docstring), a
                            ``ToolRegistry``, a ``Tool``, or a list of functions
    package.module          the module's ``registry``, a ``ToolRegistry``

Everything is imported and described at start-up; a problem raises ``ToolConfigError`` (a
``SettingsError``) naming the entry and the tool, so the server exits with one clear line.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Any

from rollout_server.settings import SettingsError
from rollout_server.tool_schema import ToolDefinitionError
from rollout_server.tools import Tool, ToolRegistry, calculator_registry

__all__ = ["ToolConfigError", "load_tools"]


class ToolConfigError(SettingsError):
    """A ``TOOLS`` entry cannot be loaded or one of its tools cannot be offered to a model."""


def _import(entry: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # the module's own import error, whatever it is
        raise ToolConfigError(
            f"TOOLS entry {entry!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        ) from None


def _tools_of(entry: str, value: Any) -> Iterator[Tool]:
    if isinstance(value, ToolRegistry):
        yield from value.tools.values()
    elif isinstance(value, Tool):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tools_of(entry, item)
    elif callable(value):
        registry = ToolRegistry()
        registry.tool(value)
        yield from registry.tools.values()
    else:
        raise ToolDefinitionError(
            f"{type(value).__name__} is not a function, a ToolRegistry, a Tool or a list of them"
        )


def _entry_tools(entry: str) -> list[Tool]:
    if entry == "calculator":
        return list(calculator_registry().tools.values())
    module_name, _, attribute = entry.partition(":")
    module = _import(entry, module_name)
    attribute = attribute or "registry"
    if not hasattr(module, attribute):
        hint = "" if ":" in entry else f"; name a function with '{module_name}:function'"
        raise ToolConfigError(f"TOOLS entry {entry!r}: module {module_name!r} has no {attribute!r}{hint}")
    try:
        return list(_tools_of(entry, getattr(module, attribute)))
    except ToolDefinitionError as exc:
        raise ToolConfigError(f"TOOLS entry {entry!r}: {exc}") from None


def load_tools(entries: Sequence[str], *, timeout: float) -> ToolRegistry:
    """One registry of every entry's tools; a name defined twice is an error."""
    registry = ToolRegistry(timeout=timeout)
    owners: dict[str, str] = {}
    for entry in entries:
        for tool in _entry_tools(entry):
            if tool.name in owners:
                raise ToolConfigError(
                    f"TOOLS entry {entry!r}: tool {tool.name!r} is already defined by {owners[tool.name]!r}"
                )
            owners[tool.name] = entry
            registry.add(tool)
    return registry
