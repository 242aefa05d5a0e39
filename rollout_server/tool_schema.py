"""A Python function as a tool: its OpenAI function schema and the checking of its arguments.

The schema comes from the signature, the type hints and the docstring (its first paragraph is
the description; a Google-style ``Args:`` section or ``:param name:`` lines describe the
parameters), or is given explicitly. Arguments are validated against the same pydantic model
that produced the schema, so what the model is told and what is accepted cannot disagree.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

__all__ = [
    "FunctionSpec",
    "ToolArgumentError",
    "ToolDefinitionError",
    "check_schema",
    "function_spec",
    "result_text",
]

# OpenAI's rule for function names; chat templates and trainers rely on it too.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PARAM_LINE = re.compile(r"^\s*(?::param\s+)?(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class ToolArgumentError(ValueError):
    """The arguments do not fit the tool."""


class ToolDefinitionError(ValueError):
    """A tool that cannot be offered to a model: bad name, unsupported parameter, bad schema."""


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function ready to be a tool: ``call(arguments)`` validates, then calls it."""

    name: str
    schema: dict[str, Any]
    call: Callable[[dict[str, Any]], Any]
    is_async: bool


def check_schema(name: str, schema: Any) -> dict[str, Any]:
    """``schema`` if it is an OpenAI function schema for a tool called ``name``; else the reason."""
    if not _NAME.match(name):
        raise ToolDefinitionError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    if not isinstance(schema, dict) or schema.get("type") != "function":
        raise ToolDefinitionError(
            f'tool {name!r}: schema must be {{"type": "function", "function": {{...}}}}'
        )
    function = schema.get("function")
    if not isinstance(function, dict) or function.get("name") != name:
        raise ToolDefinitionError(f"tool {name!r}: schema's function.name must be {name!r}")
    parameters = function.get("parameters", {"type": "object"})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ToolDefinitionError(f"tool {name!r}: function.parameters must be a JSON schema of an object")
    if not isinstance(function.get("description", ""), str):
        raise ToolDefinitionError(f"tool {name!r}: function.description must be a string")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"tool {name!r}: schema is not JSON ({exc})") from None
    return schema


def _docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and each parameter's description."""
    if not doc:
        return "", {}
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    description = " ".join(paragraphs[0].split())
    params: dict[str, str] = {}
    in_args = False
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if stripped.rstrip(":").lower() in ("args", "arguments", "parameters", "params"):
            in_args = True
            continue
        if in_args and stripped.endswith(":") and not line.startswith((" ", "\t")):
            in_args = False  # the next section (Returns:, Raises:)
        if in_args or stripped.startswith(":param "):
            match = _PARAM_LINE.match(line)
            if match and not match.group(1).startswith("*"):
                params[match.group(1)] = match.group(2).strip()
    return description, params


def _strip_titles(node: Any) -> Any:
    """Pydantic's ``title`` keys carry nothing a model needs; ``properties`` names are kept."""
    if isinstance(node, dict):
        return {
            key: (
                {k: _strip_titles(v) for k, v in value.items()}
                if key in ("properties", "$defs")
                else _strip_titles(value)
            )
            for key, value in node.items()
            if key != "title"
        }
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    return node


def _arguments_model(fn: Callable[..., Any], name: str, docs: Mapping[str, str]) -> type[BaseModel]:
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an unresolvable annotation: NameError, TypeError
        raise ToolDefinitionError(f"tool {name!r}: cannot resolve its type hints ({exc})") from None
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise ToolDefinitionError(
                f"tool {name!r}: parameter {param.name!r} must be a plain or keyword-only parameter"
            )
        if param.name not in hints:
            raise ToolDefinitionError(f"tool {name!r}: parameter {param.name!r} has no type hint")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=docs.get(param.name)))
    try:
        model: type[BaseModel] = create_model(
            f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        model.model_json_schema()
    except Exception as exc:  # pydantic's schema errors for types it cannot describe
        raise ToolDefinitionError(f"tool {name!r}: {exc}") from None
    return model


def _argument_problem(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "missing":
            problems.append(f"missing argument {where!r}")
        elif error["type"] == "extra_forbidden":
            problems.append(f"unexpected argument {where!r}")
        else:
            problems.append(f"argument {where!r}: {error['msg']}")
    return "; ".join(problems)


def _validating_call(fn: Callable[..., Any], model: type[BaseModel]) -> Callable[[dict[str, Any]], Any]:
    def call(arguments: dict[str, Any]) -> Any:
        try:
            parsed = model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolArgumentError(_argument_problem(exc)) from None
        return fn(**{key: getattr(parsed, key) for key in type(parsed).model_fields})

    return call


def _binding_call(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    """With an explicit schema the function checks its own values; the names are checked here."""
    signature = inspect.signature(fn)

    def call(arguments: dict[str, Any]) -> Any:
        try:
            bound = signature.bind(**arguments)
        except TypeError as exc:
            raise ToolArgumentError(str(exc)) from None
        return fn(*bound.args, **bound.kwargs)

    return call


def function_spec(
    fn: Callable[..., Any], *, name: str | None = None, schema: dict[str, Any] | None = None
) -> FunctionSpec:
    """Describe ``fn`` as a tool; raises ``ToolDefinitionError`` naming the tool and the problem."""
    if not callable(fn):
        raise ToolDefinitionError(f"{fn!r} is not callable")
    tool_name = str(name or getattr(fn, "__name__", ""))
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    if schema is not None:
        return FunctionSpec(tool_name, check_schema(tool_name, schema), _binding_call(fn), is_async)
    check_schema(tool_name, {"type": "function", "function": {"name": tool_name}})
    description, docs = _docstring(inspect.getdoc(fn))
    model = _arguments_model(fn, tool_name, docs)
    generated = _strip_titles(model.model_json_schema())
    generated.pop("additionalProperties", None)
    # "type" first, as hand-written schemas have it: templates render the schema's keys in order.
    parameters = {"type": "object", "properties": {}, **generated}
    function: dict[str, Any] = {"name": tool_name, "description": description, "parameters": parameters}
    return FunctionSpec(
        tool_name, {"type": "function", "function": function}, _validating_call(fn, model), is_async
    )


def result_text(value: Any) -> str:
    """A tool's return value as the tool message's text: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
