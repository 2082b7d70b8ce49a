"""A tool task: multiply two numbers too long to multiply in one's head, with a `calculator` tool at hand.

Prompts are chat conversations ("What is 4821*377? Use the calculator."), so that the chat template renders the
tool's schema into them; the answer is the product. The intended solution is one tool call and the result:

    assistant: <tool_call>{"name": "calculator", "arguments": {"expression": "4821*377"}}</tool_call>
    tool:      1817517
    assistant: 1817517

`reward` (TRL's signature) scores 1.0 when the last assistant message's text is the product. `calculator`
evaluates with tasks.expression's parser (+ - * / and parentheses on whole numbers, never `eval`).
Train with `GRPOTrainer(..., tools=[calculator])`, or the option `tools=[reasonrl.tasks.calculator:calculator]`.
As a registered task (`get_task("calculator")`, `reasonrl sft --task calculator`) its `trace` is the exchange
above and its `tools` the calculator.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from reasonrl.tasks.expression import ExpressionError, evaluate
from reasonrl.tasks.task import Row, Task, TaskError, check_count, draw_unique

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


def generate(n: int, seed: int = 0, *, exclude: Iterable[Any] = (), digits: int = 3,
             tool_share: float = 1.0) -> list[Row]:
    """n distinct problems a*b with `digits`-digit factors; rows {prompt (chat), answer, expression}. Rows of
    `exclude` (or their question texts) are never produced: a held-out split is `generate(n, 1, exclude=train)`.

    tool_share < 1 (a warm start's data): each row also gets `use_tool`, True for that share of the rows (drawn
    with the seed; the problems are the same whatever the share), and `trace` gives the rows without it a direct
    answer with no call: `reasonrl sft --task calculator --task-config '{tool_share: 0.3}'`."""
    check_count(n, "calculator problems")
    if not 0.0 <= tool_share <= 1.0:
        raise TaskError(f"calculator's tool_share is the share of traces that call the tool, from 0 to 1 (got "
                        f"{tool_share!r})")
    rng = random.Random(f"calculator-{seed}-{digits}")

    def draw() -> Row:
        a, b = (rng.randint(10 ** (digits - 1), 10**digits - 1) for _ in range(2))
        return {"prompt": f"What is {a}*{b}? Use the calculator.", "answer": str(a * b), "expression": f"{a}*{b}"}

    questions = [_question(item) for item in exclude]
    rows = draw_unique(n, draw, questions, f"calculator problems of {digits} digits")
    rows = [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]
    if tool_share < 1.0:
        chooser = random.Random(f"calculator-tool-share-{seed}")
        rows = [{**row, "use_tool": chooser.random() < tool_share} for row in rows]
    return rows


def _question(item) -> str:
    prompt = item["prompt"] if isinstance(item, Mapping) else item
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def trace(row: Row) -> list[dict]:
    """The intended multi-turn completion of a row, as TRL's completion messages (a row with use_tool False: the
    answer alone, with no call)."""
    if not row.get("use_tool", True):
        return [{"role": "assistant", "content": row["answer"]}]
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


def verify(text: str, row: Mapping[str, Any]) -> float:
    """1.0 if the final answer text is the row's product."""
    return float(str(text).strip() == str(row["answer"]))


def max_trace_length(digits: int = 3) -> int:
    """Characters of the longest trace: the call, the tool turn around the result (the template's role markers
    allowed for generously: 64 characters) and the answer."""
    largest = 10**digits - 1
    call = ('<tool_call>{"name": "calculator", "arguments": {"expression": "' + f"{largest}*{largest}"
            + '"}}</tool_call>')
    return len(call) + 2 * len(str(largest * largest)) + 64


TASK = Task(
    name=NAME,
    description="multiply two 3-digit numbers with a calculator tool (multi-turn: call, result, answer)",
    generate=generate,
    trace=trace,
    verify=verify,
    reward=reward,
    max_trace_length=max_trace_length,
    columns=("answer",),
    tools=(calculator,),
)
