"""Which model answers may reach a reasoning-gym scorer that evaluates its answer as code.

Most reasoning-gym scorers compare text. Nine evaluate the answer (reasoning-gym 0.1.25): four call Python's
`eval()` on it, for partial credit when a Python list is given instead of the asked format, and five parse it
with sympy's `parse_expr`, which builds Python code from the text and runs it with `eval()`. reasonrl runs
model-written code only in its sandbox, so before one of these scorers sees an answer, `admits(generator,
answer)` checks it against a grammar in which evaluation can only build a value:

- PYTHON_LITERAL (binary_matrix, n_queens, spiral_matrix, string_insertion): text that is not a Python
  expression at all (eval stops at the syntax error before running anything), or literals, containers and bare
  names only: no call, attribute, subscript, operator, comprehension or lambda;
- ARITHMETIC (countdown, puzzle24): numbers, `+ - * /`, signs and parentheses, at most MAX_EXPRESSION_LENGTH
  characters; no `**`, so the value stays as small as the text, and no number with a decimal exponent of more
  than three digits (sympy did not finish reading `1e999999999` in 20 s);
- ALGEBRA (intermediate_integration, polynomial_multiplication, simple_integration): the same plus names
  without underscores, calls of the functions in FUNCTIONS, and `**` whose exponent holds no `**` and, when it
  is a number, is at most MAX_EXPONENT in size.

One more scorer, number_sorting's, evals the stored reference when it is not JSON: `admits_reference` holds a
row's reference to the PYTHON_LITERAL grammar, so that a crafted dataset file cannot run code either.

Every closed-form reference answer of these generators is admitted (tests/test_reasoning_gym.py checks a
sample); intermediate_integration's unevaluated `Integral(f, x)` references are not, because the scorer would
accept that answer to any problem (the derivative of the integral is the integrand). An answer
refused scores 0.0 without reaching the scorer, so it also misses the small credit some scorers give to any
unparseable answer (0.01 in countdown). Not bounded: sympy's own work on an admitted expression (the
integration scorers simplify the derivative, which can take seconds on a long product); in training,
`reward_timeout` bounds a reward call.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

PYTHON_LITERAL = frozenset({"binary_matrix", "n_queens", "spiral_matrix", "string_insertion"})
ARITHMETIC = frozenset({"countdown", "puzzle24"})
ALGEBRA = frozenset({"intermediate_integration", "polynomial_multiplication", "simple_integration"})
EVALUATING_SCORERS = PYTHON_LITERAL | ARITHMETIC | ALGEBRA
"""The generators whose scorers evaluate the answer as code."""
EVALUATED_REFERENCES = frozenset({"number_sorting"})
"""The generators whose scorers evaluate the row's reference answer as code."""

MAX_EXPRESSION_LENGTH = 1000
"""Longest ARITHMETIC or ALGEBRA answer admitted, in characters (references are under 200)."""
MAX_EXPONENT = 32
FUNCTIONS = frozenset(
    {"sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh",
     "acosh", "atanh", "exp", "log", "ln", "sqrt", "Abs"}
)
"""The functions an ALGEBRA answer may call (sympy's elementary functions)."""

_LITERAL_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Name, ast.Load, ast.UnaryOp,
    ast.UAdd, ast.USub,
)
_ARITHMETIC_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_PARSE_FAILURES = (SyntaxError, ValueError)  # what compile() raises too, before running anything
_LONG_EXPONENT = re.compile(r"\d[eE][+-]?\d{4,}")


def admits(generator: str, answer: str) -> bool:
    """Whether `answer` may be handed to the scorer of reasoning-gym's `generator` (see the module doc)."""
    if generator in PYTHON_LITERAL:
        return _python_literal(answer)
    if generator in ARITHMETIC:
        return _expression(answer, algebra=False)
    if generator in ALGEBRA:
        return _expression(answer, algebra=True)
    return True


def admits_reference(generator: str, reference: object) -> bool:
    """Whether a row's reference answer may be handed to the scorer of `generator`."""
    return generator not in EVALUATED_REFERENCES or _python_literal(str(reference))


def _python_literal(answer: str) -> bool:
    # The scorers eval the answer as given or stripped; eval() itself drops leading spaces and tabs first.
    for text in {answer, answer.strip()}:
        try:
            tree = ast.parse(text.lstrip(" \t"), mode="eval")
        except _PARSE_FAILURES:
            continue
        except (RecursionError, MemoryError):  # the parser gave up: do not bet on compile() doing the same
            return False
        if not all(isinstance(node, _LITERAL_NODES) for node in ast.walk(tree)):
            return False
    return True


def _expression(answer: str, *, algebra: bool) -> bool:
    text = answer.strip()
    if len(text) > MAX_EXPRESSION_LENGTH or _LONG_EXPONENT.search(text):
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (*_PARSE_FAILURES, RecursionError, MemoryError):
        return False  # sympy's parser accepts more than Python's (`3!`): refuse what Python cannot check
    return _allowed(tree.body, algebra)


def _allowed(node: ast.AST, algebra: bool) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.UAdd, ast.USub)) and _allowed(node.operand, algebra)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            return algebra and _allowed(node.left, algebra) and _small_exponent(node.right)
        return (isinstance(node.op, _ARITHMETIC_OPERATORS) and _allowed(node.left, algebra)
                and _allowed(node.right, algebra))
    if not algebra:
        return False
    if isinstance(node, ast.Name):
        return "_" not in node.id  # no dunders, and no private helpers of sympy's namespace
    if isinstance(node, ast.Call):
        return (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords
                and all(_allowed(argument, algebra) for argument in node.args))  # a *starred one is refused
    return False


def _small_exponent(node: ast.AST) -> bool:
    """An exponent without `**` whose value, if it is a number, is at most MAX_EXPONENT in size."""
    if any(isinstance(part, ast.BinOp) and isinstance(part.op, ast.Pow) for part in ast.walk(node)):
        return False  # towers such as 9**9**9 are the expensive case
    if not _allowed(node, algebra=True):
        return False
    if any(isinstance(part, (ast.Name, ast.Call)) for part in ast.walk(node)):
        return True  # symbolic: sympy keeps x**y as it is
    value = _number(node)
    return value is not None and abs(value) <= MAX_EXPONENT


def _number(node: ast.AST) -> Fraction | None:
    """The exact value of numbers joined by + - * / and signs; None on division by zero or an infinity."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value) if math.isfinite(node.value) else None
    if isinstance(node, ast.UnaryOp):
        value = _number(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    left, right = _number(node.left), _number(node.right)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    return None if right == 0 else left / right
