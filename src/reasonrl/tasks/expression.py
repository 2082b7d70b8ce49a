"""Read an arithmetic expression from model text safely: a small recursive-descent parser, never `eval`.

The language is non-negative integer literals, binary `+ - * /`, parentheses and spaces; `*` and `/`
bind tighter than `+` and `-`, and operators of one precedence apply left to right. Anything else is a
syntax error: letters, `_`, quotes, `.`, `**`, `//`, unary minus (`-3`), a number with a leading zero
(`03`, so each number is read as written), non-ASCII digits. Values are exact Python ints, and every
intermediate result must be a whole number: a division that leaves a remainder (`7/2`) is an error, as
is a division by zero. Both are reported as ExpressionError, so callers catch one exception type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_EXPRESSION_LENGTH = 200
"""Longer text is rejected unread: it bounds the parser's recursion depth and the work done on model text."""

_TOKEN = re.compile(r"\s*(?:(0|[1-9][0-9]*)|([-+*/()]))")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class ExpressionError(ValueError):
    """The text is not an expression of the language above, or a step divides by zero or unevenly."""


@dataclass(frozen=True)
class Evaluation:
    """An expression's value, the numbers it is written with (in order) and its steps in evaluation order."""

    value: int
    numbers: tuple[int, ...]
    steps: tuple[str, ...]
    """`left<op>right=result` for each operation, e.g. ("3*4=12", "12+5=17") for `3*4+5`."""


def evaluate(expression: str) -> Evaluation:
    """The value of `expression`, computed exactly; raises ExpressionError for anything not allowed."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    parser = _Parser(_tokenize(expression))
    value = parser.sum()
    if parser.position != len(parser.tokens):
        raise ExpressionError(f"unexpected {parser.tokens[parser.position]!r} in {expression!r}")
    return Evaluation(value, tuple(parser.numbers), tuple(parser.steps))


def apply(operator: str, left: int, right: int) -> int:
    """`left <operator> right`, raising ExpressionError for a division by zero or with a remainder."""
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    if right == 0:
        raise ExpressionError(f"{left}/0 divides by zero")
    if left % right:
        raise ExpressionError(f"{left}/{right} is not a whole number")
    return left // right


def precedence(operator: str) -> int:
    """1 for + and -, 2 for * and /."""
    return _PRECEDENCE[operator]


def _tokenize(expression: str) -> list[str | int]:
    tokens: list[str | int] = []
    position, end = 0, len(expression.rstrip())
    while position < end:
        match = _TOKEN.match(expression, position)
        if not match:
            raise ExpressionError(f"unexpected character {expression[position:].lstrip()[:1]!r}")
        number, symbol = match.groups()
        tokens.append(int(number) if number is not None else symbol)
        position = match.end()
    if not tokens:
        raise ExpressionError("empty expression")
    return tokens


class _Parser:
    """sum := product (('+'|'-') product)*; product := atom (('*'|'/') atom)*; atom := NUMBER | '(' sum ')'."""

    def __init__(self, tokens: list[str | int]) -> None:
        self.tokens = tokens
        self.position = 0
        self.numbers: list[int] = []
        self.steps: list[str] = []

    def sum(self) -> int:
        value = self.product()
        while self._peek() in ("+", "-"):
            value = self._step(value, self._next(), self.product())
        return value

    def product(self) -> int:
        value = self.atom()
        while self._peek() in ("*", "/"):
            value = self._step(value, self._next(), self.atom())
        return value

    def atom(self) -> int:
        token = self._next()
        if isinstance(token, int):
            self.numbers.append(token)
            return token
        if token == "(":
            value = self.sum()
            if self._next() != ")":
                raise ExpressionError("unbalanced parenthesis: missing ')'")
            return value
        raise ExpressionError(f"expected a number or '(' but found {token!r}")

    def _step(self, left: int, operator: str | int, right: int) -> int:
        assert isinstance(operator, str)  # _peek matched an operator symbol
        result = apply(operator, left, right)
        self.steps.append(f"{left}{operator}{right}={result}")
        return result

    def _peek(self) -> str | int | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _next(self) -> str | int:
        token = self._peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        self.position += 1
        return token
