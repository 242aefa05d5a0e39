"""Realistic, deterministic chat workloads: calculator tool conversations and long system prompts.

Everything comes from a seeded ``random.Random``, so a workload is the same conversation list on
every run and every machine. Conversations are OpenAI-style messages as the rollout server holds
them: assistant turns with ``tool_calls`` whose arguments are dicts (the spelling every template
renders faithfully), tool results as ``tool`` messages, and for templates that render a think
block (Qwen3) a ``reasoning_content`` that is empty or a short sentence.

Workloads (``workloads(tokenizer)``):

- ``5-turn``, ``20-turn``: a short system prompt, a question, then that many assistant turns
  (tool calls, answers, follow-up questions), ending on tool results: the prompt of the next turn.
- ``system-1k``, ``system-4k``, ``system-8k``: a long system prompt mixing English prose, code
  blocks, CJK text and emoji, then one question: the first prompt of a rollout.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from typing import Any

__all__ = [
    "QWEN25",
    "QWEN3",
    "SYSTEM_SIZES",
    "TURN_COUNTS",
    "Conversation",
    "Message",
    "calculator_conversation",
    "system_prompt",
    "workloads",
]

Message = dict[str, Any]
Conversation = list[Message]

QWEN3 = "Qwen/Qwen3-8B"
QWEN25 = "Qwen/Qwen2.5-7B-Instruct"
TURN_COUNTS = (5, 20)
SYSTEM_SIZES = (1000, 4000, 8000)
SHORT_SYSTEM_TOKENS = 200

# Templates that render ``reasoning_content`` as a think block; the others never see the field.
_REASONING_PREFIXES = ("Qwen/Qwen3",)

_SUBJECTS = (
    "the assistant",
    "every tool call",
    "the calculator",
    "a careful answer",
    "the final reply",
    "each intermediate result",
    "the user's question",
    "a numeric argument",
    "the reasoning step",
)
_VERBS = (
    "should check",
    "must never hide",
    "is expected to restate",
    "may round",
    "has to cite",
    "needs to validate",
    "will compare",
    "can summarise",
    "must keep",
)
_OBJECTS = (
    "the units of every quantity",
    "the order of operations",
    "intermediate values",
    "the precision the user asked for",
    "errors reported by a tool",
    "the arguments it sends",
    "the source of each number",
    "negative results",
    "division by zero",
)
_TAILS = (
    "before it answers",
    "when the numbers are large",
    "even if the user is in a hurry",
    "so that a reviewer can follow the steps",
    "unless the question says otherwise",
    "in the same language as the question",
    "and explain any rounding",
    "without inventing data",
)
_CJK = (
    "请先理解问题，再调用计算器。",
    "每一步的结果都要写清楚。",
    "如果参数不合法，请说明原因。",
    "最终答案需要保留两位小数。",
    "不要省略中间的计算过程。",
    "用户可能使用中文或英文提问。",
    "計算の前に単位を確認してください。",
    "結果は簡潔に説明すること。",
    "ツールのエラーはそのまま伝えます。",
    "숫자는 반드시 다시 확인하세요.",
    "答案要准确、简洁、可复现。",
)
_EMOJI = ("✅", "⚠️", "🧮", "🙂", "📌", "🚀", "🔢", "❌", "💡", "👉🏽", "🇯🇵", "👩‍💻")
_NAMES = ("total", "ratio", "scaled", "budget", "margin", "offset", "weight", "average", "delta")
_OPERATORS: dict[str, tuple[str, Callable[[float, float], float]]] = {
    "add": ("+", operator.add),
    "subtract": ("-", operator.sub),
    "multiply": ("×", operator.mul),
    "divide": ("÷", operator.truediv),
}


def _estimate_tokens(text: str) -> float:
    """A tokenizer-free estimate for Qwen-family vocabularies (within ~10 % on this text):
    about 4.6 ASCII characters a token (prose, code, JSON), 0.65 a token for other characters."""
    ascii_chars = sum(1 for ch in text if ch.isascii())
    return ascii_chars / 4.6 + (len(text) - ascii_chars) * 0.65


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
    return " ".join(words).capitalize() + "."


def _prose(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))


def _cjk(rng: random.Random) -> str:
    return "".join(rng.choice(_CJK) for _ in range(rng.randint(2, 5)))


def _bullets(rng: random.Random) -> str:
    return "\n".join(f"- {rng.choice(_EMOJI)} {_sentence(rng)}" for _ in range(rng.randint(2, 4)))


def _code(rng: random.Random) -> str:
    name, other = rng.sample(_NAMES, 2)
    op = rng.choice(("<", ">", "<=", ">="))
    return "\n".join(
        [
            "```python",
            f"def {name}_of(values: list[float], scale: float = {rng.uniform(0.5, 4):.2f}) -> float:",
            f'    """{_sentence(rng)}"""',
            f"    {other} = 0.0",
            "    for index, value in enumerate(values):",
            f"        if value {op} {rng.randint(-50, 50)}:",
            f"            {other} += value * scale - index",
            f"    return round({other}, {rng.randint(0, 4)})",
            "```",
        ]
    )


def _tool_example(rng: random.Random) -> str:
    op = rng.choice(list(_OPERATORS))
    a, b = rng.randint(1, 999), rng.randint(1, 99)
    return f'```json\n{{"name": "{op}", "arguments": {{"a": {a}, "b": {b}}}}}\n```'


_BLOCKS = ((_prose, 5), (_cjk, 2), (_bullets, 2), (_code, 2), (_tool_example, 1))


def system_prompt(approx_tokens: int, seed: int = 0) -> str:
    """A system prompt of about ``approx_tokens`` tokens (Qwen-family vocabularies): rules in
    English prose, code blocks, CJK text and emoji bullets, in a seeded order."""
    rng = random.Random(f"system:{approx_tokens}:{seed}")
    blocks = ["You are a meticulous assistant with a calculator. 你是一个有计算器的助手。🧮"]
    estimate = _estimate_tokens(blocks[0])
    makers = [maker for maker, weight in _BLOCKS for _ in range(weight)]
    while estimate < approx_tokens:
        block = rng.choice(makers)(rng)
        blocks.append(block)
        estimate += _estimate_tokens(block) + 1
    return "\n\n".join(blocks)


def _number(rng: random.Random) -> int | float:
    return rng.randint(2, 999) if rng.random() < 0.7 else round(rng.uniform(0.5, 500), 2)


def _question(rng: random.Random) -> str:
    a, b, c = _number(rng), _number(rng), _number(rng)
    if rng.random() < 0.3:
        return f"请计算 ({a} + {b}) × {c}，并解释步骤。{rng.choice(_EMOJI)}"
    return f"What is ({a} + {b}) × {c} − {rng.randint(1, 99)}? Show your work {rng.choice(_EMOJI)}"


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _tool_turn(rng: random.Random, turn: int, *, reasoning: bool) -> tuple[Message, list[Message]]:
    calls, results = [], []
    for index in range(1 if rng.random() < 0.7 else 2):
        name = rng.choice(list(_OPERATORS))
        a, b = _number(rng), _number(rng)
        call_id = f"call_{turn}_{index}_{rng.getrandbits(32):08x}"
        calls.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": {"a": a, "b": b}}}
        )
        symbol, fn = _OPERATORS[name]
        results.append({"role": "tool", "tool_call_id": call_id, "content": _format(fn(a, b))})
        last = f"{a} {symbol} {b}"
    message: Message = {"role": "assistant", "content": rng.choice(("", "", "Let me compute that."))}
    message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = rng.choice(("", f"I need {last} first, so I call the calculator."))
    return message, results


def _answer_turn(rng: random.Random, *, reasoning: bool) -> Message:
    message: Message = {
        "role": "assistant",
        "content": f"The result is {_format(_number(rng))}. {rng.choice(_EMOJI)} {_sentence(rng)}",
    }
    if reasoning:
        message["reasoning_content"] = rng.choice(("", "All tool results are in; I can answer now."))
    return message


def calculator_conversation(rng: random.Random, turns: int, *, reasoning: bool, system: str) -> Conversation:
    """``turns`` assistant turns of calculator work after ``system`` and a question, ending on the
    tool results of the last turn (what the next generation call is prompted with)."""
    messages: Conversation = [
        {"role": "system", "content": system},
        {"role": "user", "content": _question(rng)},
    ]
    tool_turns_left = rng.randint(1, 4)
    for turn in range(1, turns + 1):
        if tool_turns_left == 0 and turn < turns:
            messages.append(_answer_turn(rng, reasoning=reasoning))
            messages.append({"role": "user", "content": _question(rng)})
            tool_turns_left = rng.randint(1, 4)
            continue
        assistant, results = _tool_turn(rng, turn, reasoning=reasoning)
        messages.extend([assistant, *results])
        tool_turns_left = max(0, tool_turns_left - 1)
    return messages


def uses_reasoning(tokenizer: str) -> bool:
    return tokenizer.startswith(_REASONING_PREFIXES)


def workloads(tokenizer: str, *, count: int = 16, seed: int = 0) -> dict[str, list[Conversation]]:
    """Named workloads of ``count`` conversations each, shaped for ``tokenizer``'s template."""
    reasoning = uses_reasoning(tokenizer)
    out: dict[str, list[Conversation]] = {}
    for turns in TURN_COUNTS:
        rng = random.Random(f"turns:{turns}:{seed}")
        out[f"{turns}-turn"] = [
            calculator_conversation(
                rng, turns, reasoning=reasoning, system=system_prompt(SHORT_SYSTEM_TOKENS, seed * 1000 + i)
            )
            for i in range(count)
        ]
    for size in SYSTEM_SIZES:
        rng = random.Random(f"system-workload:{size}:{seed}")
        out[f"system-{size // 1000}k"] = [
            [
                {"role": "system", "content": system_prompt(size, seed * 1000 + i)},
                {"role": "user", "content": _question(rng)},
            ]
            for i in range(count)
        ]
    return out
