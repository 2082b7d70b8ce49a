"""The code-execution reward: code extraction, the test programs it builds, its scores in the sandbox, and
HumanEval (all 164 canonical solutions score 1.0, a corrupted version of each scores below 1.0)."""

from __future__ import annotations

import time

import pytest

from reasonrl.rewards import RewardSpecError, build_program, extract_code, get_reward, reward_name
from reasonrl.rewards import code as code_module
from reasonrl.sandbox import Outcome, SandboxResult
from reasonrl.tasks import get_task, humaneval


def fenced(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code}```"


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
        ("Here it is:\n```py\nx = 1\n```\nDone.", "x = 1\n"),
        ("```Python3\nx = 2\n```", "x = 2\n"),
        ("```\nuntagged = True\n```", "untagged = True\n"),
        # A python-tagged block wins over other tags; of several python blocks, the last one.
        ("```text\nnot code\n```\n```python\nx = 3\n```", "x = 3\n"),
        ("```python\ndraft = 1\n```\nbetter:\n```python\nfinal = 2\n```", "final = 2\n"),
        ("```bash\nls\n```\n```\nplain = 1\n```", "plain = 1\n"),
        # The answer block is where the code is looked for; a draft in the thinking is ignored.
        ("<think>```python\ndraft = 1\n```</think><answer>```python\nanswer = 2\n```</answer>", "answer = 2\n"),
        ("<think>hmm</think><answer>\ndef g():\n    return 2\n</answer>", "def g():\n    return 2\n"),
        # No fence: the whole text; an unclosed fence (cut off by the length limit) runs to the end.
        ("  def h(): return 3  ", "def h(): return 3\n"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1\n"),
        ("<answer>```python\nx = 4", "x = 4\n"),
        ("```python\nx = 5```", "x = 5\n"),
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


# ---------------------------------------------------------------- the test program

HUMANEVAL_LIKE_TEST = """
METADATA = {}

def check(candidate):
    import math
    assert candidate(1) == 2
    values = [candidate(i) for i in range(3)]
    for i in range(3):
        assert values[i] == i + 1
    assert math.isclose(candidate(0.5), 1.5)
"""


def test_build_program_counts_each_assert_holding_statement_of_check_once():
    program, count = build_program("def inc(x):\n    return x + 1\n", test=HUMANEVAL_LIKE_TEST, entry_point="inc")
    assert count == 3  # `assert`, the for loop holding asserts, `assert`; `import` and `values = ...` are set-up
    assert program.count("__reasonrl_report(") == 1 + 2 * 3  # the prelude's definition, pass and fail per test
    assert program.rstrip().endswith("check(inc)")
    assert build_program("x = 1", tests=["assert x == 1", "assert x > 0\nassert x < 2"])[1] == 2
    assert build_program("x = 1", tests="assert x == 1")[1] == 1


def test_build_program_rejects_unusable_tests_with_one_line_errors():
    with pytest.raises(ValueError, match=r"the 'test' code is not valid Python \(.*line 1\)"):
        build_program("x = 1", test="def check(candidate:\n", entry_point="f")
    with pytest.raises(ValueError, match=r"defines no check\(candidate\) function"):
        build_program("x = 1", test="assert True", entry_point="f")
    with pytest.raises(ValueError, match=r"entry_point 'not a name' is not a function name"):
        build_program("x = 1", test=HUMANEVAL_LIKE_TEST, entry_point="not a name")
    with pytest.raises(ValueError, match=r"test 1 is not valid Python"):
        build_program("x = 1", tests=["assert True", "assert ("])
    with pytest.raises(TypeError, match=r"test 0 is a int, not a string of Python"):
        build_program("x = 1", tests=[3])
    with pytest.raises(ValueError, match=r"needs test= and entry_point= \(HumanEval\) or tests="):
        build_program("x = 1")


# ---------------------------------------------------------------- scores in the sandbox

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def score(completions, mode="all", **columns):
    reward = get_reward("code_tests", timeout=3, mode=mode, max_workers=2)
    return reward(prompts=["p"] * len(completions), completions=completions, completion_ids=None, **columns)


def test_all_and_fraction_modes():
    right = fenced("def add(a, b):\n    return a + b\n")
    off_for_negatives = fenced("def add(a, b):\n    return abs(a) + b\n")  # fails add(-1, 1) only
    wrong = fenced("def add(a, b):\n    return a - b\n")  # passes none
    columns = {"tests": [ADD_TESTS] * 3}
    assert score([right, off_for_negatives, wrong], **columns) == [1.0, 0.0, 0.0]
    assert score([right, off_for_negatives, wrong], mode="fraction", **columns) == [1.0, 2 / 3, 0.0]


def test_exiting_early_never_counts_as_passing():
    body = "def add(a, b):\n    return a - b\n"
    completions = [
        fenced(body + "import sys\nsys.exit(0)\n"),
        fenced(body + "import os\nos._exit(0)\n"),
        fenced(body + "print('0 0 pass')\nprint('x 1 pass')\n"),  # lines that look like reports
        # A main block does not run (the code is the module `solution`), so it cannot exit before the tests.
        fenced("def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    raise SystemExit(1)\n"),
    ]
    assert score(completions, mode="fraction", tests=[ADD_TESTS] * 4) == [0.0, 0.0, 0.0, 1.0]


def test_crashes_hangs_and_memory_hogs_score_zero_and_keep_the_tests_before_them():
    hangs_on_negatives = fenced("def add(a, b):\n    while a < 0:\n        pass\n    return a + b\n")
    completions = [
        fenced("def add(a, b) return a + b\n"),  # syntax error
        fenced("raise RuntimeError('at import')\n"),
        hangs_on_negatives,
        fenced("def add(a, b):\n    return len(bytearray(10**10))\n"),
        fenced("def add(a, b):\n    open('/etc/passwd').read()\n    return a + b\n"),  # refused
    ]
    columns = {"tests": [ADD_TESTS] * 5}
    assert score(completions, **columns) == [0.0] * 5
    # The hang comes at the second test: the first had already reported its pass.
    assert score(completions, mode="fraction", **columns) == [0.0, 0.0, 1 / 3, 0.0, 0.0]


def test_printing_does_not_hide_the_reports():
    noisy = fenced("print('x' * 1_000_000)\ndef add(a, b):\n    print('adding' * 1000)\n    return a + b\n")
    assert score([noisy], tests=[ADD_TESTS]) == [1.0]


def test_conversational_completions_and_humaneval_columns():
    chat = [{"role": "assistant", "content": "Sure:\n" + fenced("def inc(x):\n    return x + 1\n")}]
    wrong = [{"role": "assistant", "content": fenced("def inc(x):\n    return x\n")}]
    columns = {"test": [HUMANEVAL_LIKE_TEST] * 2, "entry_point": ["inc"] * 2}
    assert score([chat, wrong], **columns) == [1.0, 0.0]
    assert score([chat, wrong], mode="fraction", **columns) == [1.0, 0.0]


def test_rows_without_tests_and_sandbox_failures_score_none(monkeypatch):
    assert score([fenced("x = 1\n"), fenced("x = 1\n")], tests=[None, ["assert x == 1"]]) == [None, 1.0]

    def broken_sandbox(programs, **options):
        return [SandboxResult(Outcome.ERROR, None, "", "", False, False, 0.0, detail="sandbox failed to start")
                for _ in programs]

    monkeypatch.setattr(code_module, "run_many", broken_sandbox)
    assert score([fenced("x = 1\n")], tests=[["assert x == 1"]]) == [None]


def test_registry_options_and_column_errors():
    reward = get_reward("code_tests")
    assert reward_name(reward) == "code_tests_reward"
    assert reward_name(get_reward("code-tests-reward", timeout=1)) == "code_tests_reward"
    with pytest.raises(RewardSpecError, match=r"reward 'code_tests' got a bad option: mode='most' is not a mode"):
        get_reward("code_tests", mode="most")
    with pytest.raises(RewardSpecError, match=r"has no option memory \(its options: timeout, memory_mb, mode"):
        get_reward("code_tests", memory=1)
    with pytest.raises(ValueError, match=r"needs the tests in a 'tests' column .* \(got columns: answer\)"):
        reward(completions=["x"], answer=["1"])
    with pytest.raises(ValueError, match=r"got 2 completions but 1 'tests' values; pass one per completion"):
        reward(completions=["x", "y"], tests=[["assert True"]])


# ---------------------------------------------------------------- HumanEval


def test_humaneval_rows_splits_and_traces():
    rows = humaneval.generate()
    assert len(rows) == 164 and [row["task_id"] for row in rows[:2]] == ["HumanEval/0", "HumanEval/1"]
    first = rows[0]
    assert first["entry_point"] == "has_close_elements"
    assert first["prompt"].startswith(humaneval.INSTRUCTION + "\n\n```python\nfrom typing import List\n")
    assert first["answer"] == first["prompt"].split("```python\n")[1][:-3] + first["canonical_solution"]
    train = humaneval.generate(132, seed=0)
    assert train == humaneval.generate(132, seed=0) and train != humaneval.generate(132, seed=1)
    held_out = humaneval.generate(None, exclude=train)
    assert len(held_out) == 32 and not {r["task_id"] for r in held_out} & {r["task_id"] for r in train}
    with pytest.raises(ValueError, match=r"asked for 40 rows but there are 32"):
        humaneval.generate(40, exclude=train)
    task = get_task("humaneval")
    assert reward_name(task.reward) == "humaneval_accuracy"
    assert task.max_trace_length() == max(len(task.trace(row)) for row in rows)
    assert [task.verify(task.trace(row), row) for row in rows[:3]] == [1.0, 1.0, 1.0]
    assert task.verify("<answer>```python\ndef has_close_elements(n, t):\n    return True\n```</answer>", first) == 0.0


def test_humaneval_canonical_solutions_pass_and_corrupted_ones_fail():
    """All 164 problems in the sandbox: the canonical solution scores 1.0; the same prompt with its body
    replaced by `return None` scores below 1.0 (0.0 in mode "all")."""
    rows = humaneval.generate()
    columns = {"test": [row["test"] for row in rows], "entry_point": [row["entry_point"] for row in rows]}
    reward = get_reward("code_tests", timeout=10, max_workers=2)
    prompts = [row["prompt"].split("```python\n")[1][:-3] for row in rows]
    canonical = [fenced(prompt + row["canonical_solution"]) for prompt, row in zip(prompts, rows)]
    corrupted = [fenced(prompt + "    return None\n") for prompt in prompts]
    start = time.perf_counter()
    good = reward(prompts=prompts, completions=canonical, completion_ids=None, **columns)
    bad = reward(prompts=prompts, completions=corrupted, completion_ids=None, **columns)
    seconds = time.perf_counter() - start
    assert [row["task_id"] for row, value in zip(rows, good) if value != 1.0] == []
    assert [row["task_id"] for row, value in zip(rows, bad) if not value < 1.0] == []
    print(f"\n328 HumanEval runs in the sandbox: {seconds:.1f} s")
