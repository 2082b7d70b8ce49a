"""Tasks: seeded generators, held-out sets, exact traces, and verifiers on hand-made right and wrong answers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonrl.rewards import format_reward, reward_name
from reasonrl.tasks import arithmetic, available_tasks, countdown, get_task, gsm8k
from reasonrl.tasks.expression import MAX_EXPRESSION_LENGTH, ExpressionError, evaluate
from reasonrl.tasks.task import TRACE_OVERHEAD

GSM8K_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def answered(text: str) -> str:
    return f"<think>...</think><answer>{text}</answer>"


def check_steps(trace: str) -> list[str]:
    """The trace's steps, after asserting each `expression=value` step is true arithmetic."""
    thinking = re.fullmatch(r"<think>(.*)</think><answer>.*</answer>", trace).group(1)
    steps = thinking.split(",")
    for step in steps:
        if step.startswith("-("):  # arithmetic's negative-result announcement
            continue
        expression, value = step.split("=")
        assert evaluate(expression).value == int(value), step
    return steps


# ---------------------------------------------------------------- registry


def test_registry_names_and_lookup():
    assert available_tasks() == ["arithmetic", "calculator", "countdown", "gsm8k", "humaneval"]
    assert get_task("Arithmetic") is arithmetic.TASK
    assert get_task("countdown").name == "countdown"
    assert [reward_name(get_task(name).reward) for name in available_tasks()] == [
        "arithmetic_accuracy",
        "calculator_accuracy",
        "countdown_accuracy",
        "gsm8k_accuracy",
        "humaneval_accuracy",
    ]


def test_unknown_task_names_the_nearest_and_the_list():
    with pytest.raises(ValueError) as error:
        get_task("countdwn")
    message = str(error.value)
    assert "\n" not in message
    assert "did you mean 'countdown'?" in message
    assert "arithmetic, calculator, countdown, gsm8k" in message


# ---------------------------------------------------------------- generators (arithmetic and countdown)

GENERATED = [
    (arithmetic, {"digits": 3, "ops": "+-*"}),
    (countdown, {"count": 4, "max_number": 25, "max_target": 100}),
]


@pytest.mark.parametrize(("module", "difficulty"), GENERATED)
def test_same_seed_same_rows_other_seed_other_rows(module, difficulty):
    first = module.generate(200, seed=7, **difficulty)
    assert first == module.generate(200, seed=7, **difficulty)
    other = module.generate(200, seed=8, **difficulty)
    shared = {row["prompt"] for row in first} & {row["prompt"] for row in other}
    assert len(shared) <= 10
    assert len({row["prompt"] for row in first}) == 200  # no repeats within a set


@pytest.mark.parametrize(("module", "difficulty"), GENERATED)
def test_held_out_rows_are_disjoint_from_training_rows(module, difficulty):
    train = module.generate(500, seed=0, **difficulty)
    held_out = module.generate(500, seed=1, exclude=train, **difficulty)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}
    prompts_only = module.generate(500, seed=1, exclude={row["prompt"] for row in train}, **difficulty)
    assert prompts_only == held_out


def test_exclusion_can_use_up_a_small_problem_space():
    # 1-digit addition has exactly 10 * 10 problems.
    train = arithmetic.generate(60, seed=0, digits=1, ops="+")
    held_out = arithmetic.generate(40, seed=1, exclude=train, digits=1, ops="+")
    every_sum = {f"{a}+{b}=" for a in range(10) for b in range(10)}
    assert {row["prompt"] for row in train + held_out} == every_sum
    with pytest.raises(ValueError, match=r"found only 40 of 41 distinct problems.*fewer rows"):
        arithmetic.generate(41, seed=1, exclude=train, digits=1, ops="+")
    with pytest.raises(TypeError, match="not one string"):
        arithmetic.generate(1, seed=1, exclude="1+1=")


def test_bad_difficulty_and_counts_are_one_line_errors():
    for call, expected in (
        (lambda: arithmetic.generate(1, digits=0), "digits=0 is out of range; pass an int from 1 to 9"),
        (lambda: arithmetic.generate(1, ops="+/"), "ops='+/' is not a string of operations"),
        (lambda: arithmetic.generate(-1), "n=-1 is not a number of rows"),
        (lambda: countdown.generate(1, count=1), "count=1 is out of range; pass an int from 2 to 6"),
        (lambda: countdown.max_trace_length(max_target=5000), "max_target=5000 is out of range"),
    ):
        with pytest.raises(ValueError) as error:
            call()
        assert expected in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("243+104=", "<think>3+4+0=7,4+0+0=4,2+1+0=3</think><answer>347</answer>"),
        ("999+999=", "<think>9+9+0=18,9+9+1=19,9+9+1=19</think><answer>1998</answer>"),
        ("243-104=", "<think>13-4-0=9,4-0-1=3,2-1-0=1</think><answer>139</answer>"),
        ("500-499=", "<think>10-9-0=1,10-9-1=0,5-4-1=0</think><answer>1</answer>"),
        ("12-47=", "<think>-(47-12),7-2-0=5,4-1-0=3</think><answer>-35</answer>"),
        ("23*54=", "<think>23*4=92,23*50=1150,92+1150=1242</think><answer>1242</answer>"),
        ("305*207=", "<think>305*7=2135,305*200=61000,2135+61000=63135</think><answer>63135</answer>"),
        ("7*0=", "<think>7*0=0</think><answer>0</answer>"),
    ],
)
def test_arithmetic_traces_are_exactly_as_documented(prompt, expected):
    assert arithmetic.trace({"prompt": prompt}) == expected


def test_arithmetic_rows():
    assert arithmetic.make_row(12, "-", 47) == {"prompt": "12-47=", "answer": "-35"}
    rows = arithmetic.generate(300, seed=0, digits=2, ops="+-*")
    for row in rows:
        a, op, b = re.fullmatch(r"(\d\d)([-+*])(\d\d)=", row["prompt"]).groups()
        assert int(row["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert set(Counter(row["prompt"][2] for row in rows)) == {"+", "-", "*"}
    assert arithmetic.generate(5, seed=0) == arithmetic.generate(5, seed=0, digits=3, ops="+")  # the default


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (answered("-35"), 1.0),
        (answered(" -35 "), 1.0),
        ("<think>x</think>\n<answer>-35</answer>", 1.0),
        (answered("35"), 0.0),  # the sign matters
        (answered("+35"), 0.0),
        (answered("-036"), 0.0),
        (answered("-035"), 1.0),  # read as an integer: leading zeros are harmless
        (answered("- 35"), 0.0),  # no inner spaces
        (answered("-35.0"), 0.0),
        (answered("-3,5"), 0.0),
        (answered("minus 35"), 0.0),
        ("-35", 0.0),  # no answer stated
        (answered(""), 0.0),
        (answered("-" + "9" * 5000), 0.0),  # runaway output: no int() on it, no exception
    ],
)
def test_arithmetic_verifier_on_a_negative_result(completion, expected):
    assert arithmetic.verify(completion, {"prompt": "12-47=", "answer": "-35"}) == expected


def test_arithmetic_verifier_accepts_a_plus_sign_and_numeric_references():
    assert arithmetic.verify(answered("+347"), {"answer": "347"}) == 1.0
    assert arithmetic.verify(answered("347"), {"answer": 347}) == 1.0
    assert arithmetic.verify(answered("-0"), {"answer": "0"}) == 1.0


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_every_arithmetic_trace_verifies_and_reads_off(digits, op):
    rows = arithmetic.generate(500 if digits > 1 else 100, seed=digits, digits=digits, ops=op)
    bound = arithmetic.max_trace_length(digits=digits, ops=op)
    for row in rows:
        trace = arithmetic.trace(row)
        assert arithmetic.verify(trace, row) == 1.0, trace
        assert format_reward([trace]) == [1.0]
        assert len(trace) <= bound
        steps = check_steps(trace)
        results = [step.split("=")[1] for step in steps if not step.startswith("-(")]
        if op == "*":  # the last running sum (or the only partial product) is the product
            assert results[-1] == row["answer"]
        else:  # the answer is the last digit result, then the units of the others, most significant first
            magnitude = results[-1] + "".join(result[-1] for result in reversed(results[:-1]))
            sign = "-" if steps[0].startswith("-(") else ""
            assert sign + (magnitude.lstrip("0") or "0") == row["answer"]


def test_arithmetic_max_trace_length_is_attained():
    assert TRACE_OVERHEAD == 32
    assert [arithmetic.max_trace_length(digits=d) for d in range(1, 6)] == [32 + 10 * d for d in range(1, 6)]
    assert arithmetic.max_trace_length() == 62 == len(arithmetic.trace({"prompt": "999+999="}))
    assert (
        arithmetic.max_trace_length(digits=2, ops="-")
        == len("<think>-(90-19),10-9-0=1,9-1-1=7</think><answer>-71</answer>")
        == 60
    )
    assert (
        arithmetic.max_trace_length(digits=3, ops="+-*")
        == 113
        == len(arithmetic.trace({"prompt": "999*999="}))
    )


def test_arithmetic_reward_has_trls_signature():
    reward = arithmetic.arithmetic_accuracy
    scores = reward(
        prompts=["12-47=", "243+104="],
        completions=[answered("-35"), [{"role": "assistant", "content": answered("348")}]],
        completion_ids=[[1], [2]],
        answer=["-35", "347"],
        trainer_state=object(),
    )
    assert scores == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"needs the dataset column\(s\) answer \(got columns: target\)"):
        reward(completions=["x"], target=[1])
    with pytest.raises(ValueError, match="got 1 completions but 2 'answer' values"):
        reward(completions=["x"], answer=["1", "2"])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/() =,.<>answerthink\n", max_size=80) | st.text(max_size=40))
def test_verifiers_never_raise_on_model_text(text):
    assert arithmetic.verify(text, {"answer": "-35"}) in (0.0, 1.0)
    assert countdown.verify(text, {"numbers": [3, 4, 5], "target": 17}) in (0.0, 1.0)
    assert countdown.verify(answered(text), {"numbers": [3, 4, 5], "target": 17}) in (0.0, 1.0)


# ---------------------------------------------------------------- countdown


def test_countdown_row_and_trace_are_exactly_as_documented():
    row = countdown.make_row([5, 3, 4], 17, "3*4+5")
    assert row == {"prompt": "Make 17 with 3,4,5:", "answer": "3*4+5", "numbers": [3, 4, 5], "target": 17}
    assert countdown.trace(row) == "<think>3*4=12,12+5=17</think><answer>3*4+5</answer>"
    nested = countdown.make_row([3, 4, 5, 6], 14, "(3+4)*(6-5)*2")
    assert countdown.trace(nested) == (
        "<think>3+4=7,6-5=1,7*1=7,7*2=14</think><answer>(3+4)*(6-5)*2</answer>"
    )
    with pytest.raises(ValueError, match="is not a valid expression"):
        countdown.trace({"answer": "3**4"})


def _cd(completion: str, numbers: list[int], target: int) -> float:
    return countdown.verify(answered(completion), {"numbers": numbers, "target": target})


@pytest.mark.parametrize(
    ("expression", "numbers", "target", "expected"),
    [
        ("3*4+5", [3, 4, 5], 17, 1.0),
        (" ( 3 * 4 ) + 5 ", [3, 4, 5], 17, 1.0),  # spaces and redundant parentheses
        ("3*4+5=17", [3, 4, 5], 17, 1.0),  # stating the target is allowed
        ("3*4+5", [3, 4, 5, 9], 17, 1.0),  # not every number has to be used
        ("3-5+19", [3, 5, 19], 17, 1.0),  # a negative intermediate result is allowed
        ("3+4+5", [3, 4, 5], 17, 0.0),  # wrong target
        ("3*4+5=18", [3, 4, 5], 17, 0.0),  # a false claim
        ("3*4+5=17=17", [3, 4, 5], 17, 0.0),
        ("4*4", [3, 4, 5], 16, 0.0),  # a number used twice
        ("4*4", [4, 4, 5], 16, 1.0),  # ... unless it is given twice
        ("4*4+4-4", [4, 4, 5], 16, 0.0),
        ("12+5", [3, 4, 5], 17, 0.0),  # a number not in the list
        ("3*4+5+0", [3, 4, 5], 17, 0.0),
        ("5/(3-3)+12", [3, 3, 5, 12], 17, 0.0),  # division by zero
        ("1/3*6", [1, 3, 6], 2, 0.0),  # 1/3 is not a whole number (it would be exact as a fraction)
        ("(6+1)/3*3", [1, 3, 3, 6], 7, 0.0),
        ("6/3*1", [1, 3, 6], 2, 1.0),  # the same numbers, every division exact
        ("6*1/3", [1, 3, 6], 2, 1.0),
        ("2**10", [2, 10], 1024, 0.0),  # not arithmetic of this language
        ("2^10", [2, 10], 1024, 0.0),
        ("10//2", [2, 10], 5, 0.0),
        ("__import__('os')", [3, 4, 5], 17, 0.0),
        ("x+17", [3, 4, 5], 17, 0.0),
        ("3*4+5 apples", [3, 4, 5], 17, 0.0),
        ("-3+20", [3, 20], 17, 0.0),  # no unary minus
        ("03*4+5", [3, 4, 5], 17, 0.0),  # numbers as written
        ("3.0*4+5", [3, 4, 5], 17, 0.0),
        ("\u0663*4+5", [3, 4, 5], 17, 0.0),  # an Arabic-Indic 3
        ("(3*4+5", [3, 4, 5], 17, 0.0),
        ("3*4+5)", [3, 4, 5], 17, 0.0),
        ("", [3, 4, 5], 17, 0.0),
    ],
)
def test_countdown_verifier(expression, numbers, target, expected):
    assert _cd(expression, numbers, target) == expected


def test_countdown_verifier_needs_a_stated_answer_and_never_evaluates_model_text(tmp_path):
    row = {"numbers": [3, 4, 5], "target": 17}
    assert countdown.verify("3*4+5", row) == 0.0  # no <answer>: nothing is stated
    marker = tmp_path / "pwned"
    assert countdown.verify(answered(f"__import__('os').system('touch {marker}')"), row) == 0.0
    assert not marker.exists()


def test_expression_parser_bounds_its_input():
    deep = "(" * 99 + "3" + ")" * 99
    assert len(deep) < MAX_EXPRESSION_LENGTH and evaluate(deep).value == 3
    assert _cd("(" * 5000 + "3" + ")" * 5000, [3], 3) == 0.0  # no RecursionError
    with pytest.raises(ExpressionError, match="longer than 200"):
        evaluate("1+" * 100 + "1")
    assert evaluate("8/2/2").steps == ("8/2=4", "4/2=2")  # left to right
    assert evaluate("8-(2-1)").value == 7


@pytest.mark.parametrize(
    ("n", "difficulty"),
    [
        (100, {"count": 2, "max_number": 10, "max_target": 20}),  # 124 such problems exist
        (500, {"count": 3}),
        (500, {}),
        (500, {"count": 5, "max_number": 100}),
    ],
)
def test_every_countdown_trace_verifies(n, difficulty):
    rows = countdown.generate(n, seed=3, **difficulty)
    count = difficulty.get("count", 4)
    max_number = difficulty.get("max_number", 25)
    max_target = difficulty.get("max_target", 100)
    bound = countdown.max_trace_length(**difficulty)
    for row in rows:
        trace = countdown.trace(row)
        assert countdown.verify(trace, row) == 1.0, trace
        assert format_reward([trace]) == [1.0]
        assert len(trace) <= bound
        assert len(row["numbers"]) == count and all(1 <= n <= max_number for n in row["numbers"])
        assert 1 <= row["target"] <= max_target and row["target"] not in row["numbers"]
        assert Counter(evaluate(row["answer"]).numbers) == Counter(row["numbers"])  # each number once
        steps = check_steps(trace)
        assert len(steps) == count - 1
        assert all(1 <= int(step.split("=")[1]) <= countdown.MAX_INTERMEDIATE for step in steps)
        assert row["prompt"] == f"Make {row['target']} with {','.join(map(str, row['numbers']))}:"


def test_countdown_max_trace_length():
    # 3 steps of at most 3+1+3+1+3 characters, 2 commas; 4 two-digit numbers, 3 operators, 2 pairs of ().
    assert countdown.max_trace_length() == 32 + 3 * 11 + 2 + 8 + 3 + 4 == 82


def test_countdown_reward_has_trls_signature():
    scores = countdown.countdown_accuracy(
        prompts=["Make 17 with 3,4,5:"] * 3,
        completions=[
            answered("3*4+5"),
            answered("3+4+5"),
            [{"role": "assistant", "content": answered("5+3*4")}],
        ],
        completion_ids=None,
        numbers=[[3, 4, 5]] * 3,
        target=[17] * 3,
        answer=["3*4+5"] * 3,
    )
    assert scores == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------- gsm8k


@pytest.fixture(scope="module")
def gsm8k_rows():
    if not GSM8K_TEST.is_file():
        pytest.skip(f"no GSM8K test set at {GSM8K_TEST}")
    return gsm8k.generate(path=GSM8K_TEST)


def test_gsm8k_rows_and_trace(gsm8k_rows):
    assert len(gsm8k_rows) == 1319
    first = gsm8k_rows[0]
    assert first["answer"] == "18"
    assert first["prompt"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first["prompt"].endswith("?\n" + gsm8k.INSTRUCTION)
    assert gsm8k.trace(first) == (
        "<think>Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.</think><answer>18</answer>"
    )
    assert all(re.fullmatch(r"-?\d+", row["answer"]) for row in gsm8k_rows)  # `2,125` became `2125`


def test_every_gsm8k_trace_verifies_and_a_wrong_number_does_not(gsm8k_rows):
    for row in gsm8k_rows:
        trace = gsm8k.trace(row)
        assert gsm8k.verify(trace, row) == 1.0, trace
        assert "<<" not in trace and "####" not in trace
        assert gsm8k.verify(answered(str(int(row["answer"]) + 1)), row) == 0.0
    assert max(len(gsm8k.trace(row)) for row in gsm8k_rows) == gsm8k.max_trace_length(path=GSM8K_TEST)
    with_commas = next(row for row in gsm8k_rows if "#### 2,125" in row["solution"])
    assert with_commas["answer"] == "2125"
    assert gsm8k.verify(answered("2,125"), with_commas) == gsm8k.verify(answered("$2125"), with_commas) == 1.0
    scores = gsm8k.gsm8k_accuracy(
        completions=[answered("18"), answered("17")], answer=["18", "18"], trainer_state=None
    )
    assert scores == [1.0, 0.0]


def test_gsm8k_samples_are_seeded_and_held_out_is_disjoint(gsm8k_rows):
    train = gsm8k.generate(1000, seed=0, path=GSM8K_TEST)
    assert train == gsm8k.generate(1000, seed=0, path=GSM8K_TEST)
    assert train != gsm8k.generate(1000, seed=1, path=GSM8K_TEST)
    held_out = gsm8k.generate(None, path=GSM8K_TEST, exclude=train)
    assert len(held_out) == 319
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}
    with pytest.raises(ValueError, match="asked for 320 rows but .* has 319 .*ask for at most 319"):
        gsm8k.generate(320, seed=1, path=GSM8K_TEST, exclude=train)


def test_gsm8k_bad_files_are_one_line_errors(tmp_path):
    no_final = tmp_path / "no_final.jsonl"
    no_final.write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(
        ValueError, match=r"no_final.jsonl row 1: the answer has no final '#### <number>' line"
    ):
        gsm8k.generate(path=no_final)
    wrong_columns = tmp_path / "wrong.jsonl"
    wrong_columns.write_text('{"problem": "1+1?", "solution": "#### 2"}\n')
    with pytest.raises(
        ValueError, match=r"needs text columns 'question' and 'answer' \(found: problem, solution\)"
    ):
        gsm8k.generate(path=wrong_columns)
    with pytest.raises(ValueError, match="does not exist; check the path"):
        gsm8k.generate(path=tmp_path / "missing.jsonl")


def test_gsm8k_from_the_hub_offline_says_to_pass_a_path(monkeypatch):
    datasets = pytest.importorskip("datasets")
    seen = {}

    def offline(name, config, split):
        seen.update(name=name, config=config, split=split)
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as error:
        gsm8k.generate(10, seed=0)
    assert seen == {"name": "openai/gsm8k", "config": "main", "split": "test"}
    message = str(error.value)
    assert (
        "\n" not in message and "openai/gsm8k" in message and "pass path= to a local GSM8K JSONL" in message
    )


def test_dataset_name_task_prefix_gives_a_built_in_tasks_rows():
    """dataset_name: task:NAME (and dataset_config's options, n and seed) is the task's own generate()."""
    from reasonrl.data import load_dataset_any
    from reasonrl.errors import ReasonRLError

    loaded = load_dataset_any("task:arithmetic", config="{digits: 2, n: 5, seed: 3}")
    assert [dict(row) for row in loaded] == get_task("arithmetic", digits=2).generate(5, seed=3)
    assert len(load_dataset_any("task:Countdown")) == 1000  # defaults: n 1000, seed 1; names as get_task reads them
    with pytest.raises(ReasonRLError, match="unknown task 'nosuch'") as error:
        load_dataset_any("task:nosuch")
    assert "\n" not in str(error.value)
    with pytest.raises(ReasonRLError, match="has no option 'digit'"):
        load_dataset_any("task:arithmetic", config="{digit: 2}")


def test_calculator_tool_share_mixes_exchanges_and_direct_answers():
    """tool_share: the same problems, a drawn share of them traced as calculator exchanges, the rest as direct
    answers; 1.0 (the default) adds no column; outside [0, 1] a one-line error."""
    calculator = get_task("calculator")
    full = calculator.generate(400, seed=1)
    mixed = calculator.generate(400, seed=1, tool_share=0.3)
    assert [r["prompt"] for r in mixed] == [r["prompt"] for r in full] and "use_tool" not in full[0]
    share = sum(r["use_tool"] for r in mixed) / 400
    assert abs(share - 0.3) < 0.06  # binomial(400, 0.3): sd 0.023
    for row in mixed[:20]:
        trace = calculator.trace(row)
        if row["use_tool"]:
            assert trace[0]["tool_calls"][0]["function"]["arguments"] == {"expression": row["expression"]}
            assert trace[1]["content"] == row["answer"] and trace[2]["content"] == row["answer"]
        else:
            assert trace == [{"role": "assistant", "content": row["answer"]}]
    assert [r["use_tool"] for r in calculator.generate(50, seed=1, tool_share=0.3)] == \
        [r["use_tool"] for r in mixed[:50]]  # drawn with the seed
    assert not any(r["use_tool"] for r in calculator.generate(20, seed=1, tool_share=0.0))
    with pytest.raises(Exception, match="tool_share is the share of traces") as error:
        calculator.generate(5, seed=1, tool_share=1.5)
    assert "\n" not in str(error.value)
