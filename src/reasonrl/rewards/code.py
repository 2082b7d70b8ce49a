"""Code-execution reward: run the completion's code against the row's tests in `reasonrl.sandbox`.

The code is taken from the completion by `extract_code` (the `<answer>` block if there is one, the last
```python fenced block in it, or the whole text). The tests come from the dataset row, in either form:

- HumanEval's: a `test` column defining `check(candidate)` and an `entry_point` column naming the function;
  each top-level statement of `check` that holds an assert counts as one test;
- a `tests` column holding a list of assert statements (MBPP-style), each one test.

Each completion becomes one program: a short prelude, the completion's code executed as a module named
`solution` (so an `if __name__ == "__main__":` block in it does not run, and cannot exit before the tests),
then the tests, each wrapped so that a failure is recorded and the next one still runs. A test reports its
result as a line carrying a random marker that the prelude reads from stdin, which the code under test never
sees; exiting early therefore never looks like passing. Whatever the completion prints goes to stderr.

Scores: mode "all" gives 1.0 when every test passed and the program finished with exit code 0, else 0.0;
mode "fraction" gives the fraction of tests that reported a pass (a crash or hang keeps those reported
before it). A program that crashes, hangs, runs out of memory or is refused scores as failing; None is kept
for what is not the completion's fault: a row without tests, or a sandbox that failed to run.
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from reasonrl.rewards.text import completion_text
from reasonrl.sandbox import Outcome, SandboxResult, run_many

MODES = ("all", "fraction")

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
# An opening fence with an optional language tag, then everything up to the closing fence or the end of the text
# (a completion cut off by max_completion_length has no closing fence).
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:\n?```|$)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3"}

_PRELUDE = '''\
def __reasonrl_report(index, passed, _marker=__import__("sys").stdin.readline().strip(),
                      _stdout=__import__("sys").stdout):
    _stdout.write(f"{_marker} {index} {'pass' if passed else 'fail'}\\n")
    _stdout.flush()


__import__("sys").stdout = __import__("sys").stderr
__reasonrl_solution = {"__name__": "solution", "__builtins__": __builtins__}
exec(compile(__reasonrl_code, "solution.py", "exec"), __reasonrl_solution)
globals().update({k: v for k, v in __reasonrl_solution.items() if not k.startswith("__")})
'''


def extract_code(text: str) -> str:
    """The program in a completion text.

    Looks inside the `<answer>` block if there is one (else the whole text), and there takes the last
    fenced block tagged python (```python, ```py, ```python3), else the last untagged fenced block, else all
    of it. An unclosed fence runs to the end of the text.
    """
    answer = _ANSWER.search(text)
    scope = answer.group(1) if answer else text
    blocks = _FENCE.findall(scope)
    for wanted in (lambda tag: tag.lower() in _PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen:
            return chosen[-1].strip("\n") + "\n"
    return scope.strip() + "\n"


def build_program(
    code: str, *, test: str | None = None, entry_point: str | None = None, tests: Sequence[str] | None = None
) -> tuple[str, int]:
    """The program that runs `code` against the tests, and how many tests it reports.

    Give `test` and `entry_point` (HumanEval), or `tests` (a list of statements, or one string of them).
    Tests that are not valid Python raise ValueError: that is the dataset's mistake, not the completion's.
    """
    if test is not None and entry_point:
        body, count = _humaneval_tests(test, entry_point)
    elif tests is not None:
        body, count = _statement_tests([tests] if isinstance(tests, str) else list(tests))
    else:
        raise ValueError("build_program needs test= and entry_point= (HumanEval) or tests= (asserts)")
    return f"__reasonrl_code = {code!r}\n{_PRELUDE}\n{body}", count


def _report_wrapped(statement: ast.stmt, index: int) -> ast.Try:
    """`try: <statement> except BaseException: report(index, False) else: report(index, True)`."""

    def report(passed: bool) -> ast.Expr:
        call = ast.Call(ast.Name("__reasonrl_report", ast.Load()), [ast.Constant(index), ast.Constant(passed)], [])
        return ast.Expr(call)

    handler = ast.ExceptHandler(ast.Name("BaseException", ast.Load()), None, [report(False)])
    return ast.Try(body=[statement], handlers=[handler], orelse=[report(True)], finalbody=[])


def _holds_assert(statement: ast.stmt) -> bool:
    return any(isinstance(node, ast.Assert) for node in ast.walk(statement))


def _humaneval_tests(test: str, entry_point: str) -> tuple[str, int]:
    """HumanEval's test code with each assert-holding statement of `check` wrapped, then `check(entry_point)`."""
    try:
        module = ast.parse(test)
    except SyntaxError as error:
        raise ValueError(f"the 'test' code is not valid Python ({error.msg}, line {error.lineno})") from None
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point {entry_point!r} is not a function name")
    checks = [node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if not checks:
        raise ValueError("the 'test' code defines no check(candidate) function (HumanEval's format)")
    count = 0
    body: list[ast.stmt] = []
    for statement in checks[-1].body:
        if _holds_assert(statement):
            body.append(_report_wrapped(statement, count))
            count += 1
        else:
            body.append(statement)
    call = ast.Expr(ast.Call(ast.Name("check", ast.Load()), [ast.Name(entry_point, ast.Load())], []))
    if count == 0:  # no asserts to count: the whole check is the one test
        checks[-1].body = body
        module.body.append(_report_wrapped(call, 0))
        return ast.unparse(ast.fix_missing_locations(module)), 1
    checks[-1].body = body
    module.body.append(call)
    return ast.unparse(ast.fix_missing_locations(module)), count


def _statement_tests(tests: list[Any]) -> tuple[str, int]:
    statements: list[ast.stmt] = []
    for index, source in enumerate(tests):
        if not isinstance(source, str):
            raise TypeError(f"test {index} is a {type(source).__name__}, not a string of Python")
        try:
            parsed = ast.parse(source).body
        except SyntaxError as error:
            raise ValueError(f"test {index} is not valid Python ({error.msg}): {source[:80]!r}") from None
        block = ast.If(ast.Constant(True), parsed or [ast.Pass()], [])  # several statements, one test
        statements.append(_report_wrapped(block, index))
    return ast.unparse(ast.fix_missing_locations(ast.Module(statements, []))), len(tests)


def score_run(result: SandboxResult, marker: str, count: int, mode: str) -> float | None:
    """The score of one sandboxed run whose tests reported with `marker`; None if the sandbox failed."""
    if result.outcome is Outcome.ERROR:
        return None
    passed = set()
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == marker and parts[2] == "pass" and parts[1].isdigit():
            passed.add(int(parts[1]))
    passed &= set(range(count))
    if mode == "fraction":
        return len(passed) / count if count else 0.0
    return 1.0 if result.passed and len(passed) == count else 0.0


def make_code_tests_reward(
    timeout: float = 10.0, memory_mb: int = 512, mode: str = "all", max_workers: int | None = None
) -> Callable[..., list[float | None]]:
    """The code-execution reward with these sandbox limits per completion. Its `__name__` is `code_tests_reward`.

    `mode`: "all" (1.0 only if every test passes) or "fraction" (the share of tests passed); `max_workers`:
    sandboxes run at once (default: `reasonrl.sandbox.run_many`'s, half the CPUs up to 4).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a mode; choose one of: {', '.join(MODES)}")
    if not timeout > 0 or memory_mb < 16:
        raise ValueError(f"timeout must be > 0 and memory_mb >= 16 (got timeout={timeout}, memory_mb={memory_mb})")

    def code_tests_reward(
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[Any] | None = None,
        test: Sequence[str | None] | None = None,
        entry_point: Sequence[str | None] | None = None,
        tests: Sequence[Sequence[str] | str | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Run each completion's code against its row's tests in the sandbox (see reasonrl.rewards.code)."""
        if completions is None:
            raise ValueError("code_tests_reward needs completions=[...]; call it as TRL does, by keyword")
        if tests is None and (test is None or entry_point is None):
            found = ", ".join(sorted(kwargs)) or "none"
            raise ValueError(
                "code_tests_reward needs the tests in a 'tests' column (a list of asserts) or HumanEval's "
                f"'test' and 'entry_point' columns (got columns: {found})"
            )
        for name, column in (("test", test), ("entry_point", entry_point), ("tests", tests)):
            if column is not None and len(column) != len(completions):
                raise ValueError(
                    f"code_tests_reward got {len(completions)} completions but {len(column)} '{name}' values; "
                    "pass one per completion"
                )
        marker = secrets.token_hex(16)
        programs: list[str] = []
        counts: list[int] = []
        slots: list[int] = []
        for index, completion in enumerate(completions):
            row_test = test[index] if test is not None else None
            row_entry = entry_point[index] if entry_point is not None else None
            row_tests = tests[index] if tests is not None else None
            if not (row_test and row_entry) and not row_tests:
                continue  # a row without tests cannot be scored: None
            program, count = build_program(
                extract_code(completion_text(completion)), test=row_test or None, entry_point=row_entry,
                tests=row_tests if not (row_test and row_entry) else None,
            )
            programs.append(program)
            counts.append(count)
            slots.append(index)
        results = run_many(programs, max_workers=max_workers, stdin=marker + "\n", timeout=timeout,
                           memory_mb=memory_mb)
        scores: list[float | None] = [None] * len(completions)
        for slot, result, count in zip(slots, results, counts):
            scores[slot] = score_run(result, marker, count, mode)
        return scores

    return code_tests_reward
