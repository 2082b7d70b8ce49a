"""A tool task: multiply two numbers too long to multiply in one's head, with a `calculator` tool at hand.

Prompts are chat conversations ("What is 4821*377? Use the calculator."), so that the chat template renders the
tool's schema into them; the answer is the product. The intended solution is one tool call and the result:

    assistant: <tool_call>{"name": "calculator", "arguments": {"expression": "4821*377"}}</tool_call>
    tool:      1817517
    assistant: 1817517

`reward` (TRL's signature) scores 1.0 when the last assistant message's text is the product. `calculator`
evaluates with tasks.expression's parser (+ - * / and parentheses on whole numbers, never `eval`).
Train with `GRPOTrainer(..., tools=[calculator])`, or the option `tools=[reasonrl.tasks.calculator:calculator]`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from reasonrl.tasks.expression import ExpressionError, evaluate
from reasonrl.tasks.task import Row, check_count, draw_unique

NAME = "calculator"


def calculator(expression: str) -> str:
    """Compute an arithmetic expression (whole numbers, + - * /, parentheses).

    Args:
        expression: the expression, e.g. 4821*377
    """
    try:
        return str(evaluate(expression).value)
    except ExpressionError as error:
        return f"error: {error}"


def generate(n: int, seed: int = 0, *, exclude: Iterable[Any] = (), digits: int = 3) -> list[Row]:
    """n distinct problems a*b with `digits`-digit factors; rows {prompt (chat), answer, expression}. Rows of
    `exclude` (or their question texts) are never produced: a held-out split is `generate(n, 1, exclude=train)`."""
    check_count(n, "calculator problems")
    rng = random.Random(f"calculator-{seed}-{digits}")

    def draw() -> Row:
        a, b = (rng.randint(10 ** (digits - 1), 10**digits - 1) for _ in range(2))
        return {"prompt": f"What is {a}*{b}? Use the calculator.", "answer": str(a * b), "expression": f"{a}*{b}"}

    questions = [_question(item) for item in exclude]
    rows = draw_unique(n, draw, questions, f"calculator problems of {digits} digits")
    return [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]


def _question(item) -> str:
    prompt = item["prompt"] if isinstance(item, Mapping) else item
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def trace(row: Row) -> list[dict]:
    """The intended multi-turn completion of a row, as TRL's completion messages."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": row["expression"]}}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "calculator", "content": calculator(row["expression"])},
            {"role": "assistant", "content": row["answer"]}]


def final_answer(completion) -> str:
    """The text of a completion's last assistant message (a plain string completion as is)."""
    if isinstance(completion, str):
        return completion.strip()
    messages = [m for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
    return str(messages[-1].get("content") or "").strip() if messages else ""


def reward(prompts=None, completions=None, completion_ids=None, answer=None, **kwargs) -> list[float]:
    """1.0 per completion whose final assistant text is the row's answer, else 0.0."""
    return [float(final_answer(c) == str(a)) for c, a in zip(completions, answer)]


reward.__name__ = "calculator_accuracy"
reward.required_columns = ("answer",)


def used_calculator(prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float]:
    """1.0 per completion with at least one calculator result in it (a shaping reward for learning to call)."""
    return [float(any(isinstance(m, dict) and m.get("role") == "tool" and not m.get("content", "").startswith(
        ("error", "{'error'")) for m in (c if isinstance(c, list) else []))) for c in completions]
