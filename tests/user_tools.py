"""Tools written as a user would, loaded by the tests through ``TOOLS`` (``tests.user_tools:…``)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Literal

from rollout_server.tools import ToolRegistry


def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: The text whose words are counted.
    """
    return len(text.split())


async def shout(text: str, times: int = 1, style: Literal["plain", "bold"] = "plain") -> str:
    """Say a text louder.

    :param text: what to say
    :param times: how many times
    """
    await asyncio.sleep(0)
    loud = text.upper() + "!"
    return " ".join([f"**{loud}**" if style == "bold" else loud] * times)


def snooze(seconds: float) -> str:
    """Block for some seconds (a slow synchronous tool)."""
    time.sleep(seconds)
    return "awake"


def explode() -> str:
    """Always raises."""
    raise RuntimeError("kaboom")


def untyped(x):  # type: ignore[no-untyped-def]
    """A parameter without a type hint cannot be described."""
    return x


def star_args(*values: int) -> int:
    """A variadic parameter cannot be described."""
    return sum(values)


not_a_tool = 42

registry = ToolRegistry()


@registry.tool(
    name="echo",
    schema={
        "type": "function",
        "function": {
            "name": "echo",
            "description": "Echo a message.",
            "parameters": {"type": "object", "properties": {"message": {"type": "string"}}},
        },
    },
)
def echo_tool(message: str) -> str:
    return message


registry.tool(word_count)


def thread_name() -> str:
    """The name of the thread this tool runs in."""
    return threading.current_thread().name


async def async_thread_name() -> str:
    """The name of the thread this async tool runs in."""
    return threading.current_thread().name


def reverse_local(text: str) -> str:
    """Reverse a text (a local namesake of the MCP server's ``reverse``)."""
    return text[::-1] + " (local)"


# A registry of its own, entry "tests.user_tools:namesakes".
namesakes = ToolRegistry()
namesakes.tool(name="reverse")(reverse_local)
