"""reasoning-gym generators as tasks (reasonrl.tasks.reasoning_gym), and the guard on scorers that run code.

Generators used: basic_arithmetic, chain_sum and gsm_symbolic (arithmetic), countdown (a scorer that parses
the answer with sympy), knights_knaves (logic, partial credit) and propositional_logic (no reference answers).
Expected scores are worked out by hand from reasoning-gym's scorers, quoted next to each case.
"""

import inspect
import json
import re
from decimal import Decimal

import pytest

from reasonrl.cli import main
from reasonrl.tasks import arithmetic, get_task
from reasonrl.tasks import reasoning_gym as rg
from reasonrl.tasks.rg_guard import (
    ALGEBRA,
    ARITHMETIC,
    EVALUATED_REFERENCES,
    EVALUATING_SCORERS,
    PYTHON_LITERAL,
    admits,
)
from reasonrl.tasks.task import TRACE_OVERHEAD, TaskError, format_trace

WITH_REFERENCES = ["basic_arithmetic", "chain_sum", "gsm_symbolic", "countdown", "knights_knaves"]


def tagged(answer):
    return f"<think>working</think><answer>{answer}</answer>"


@pytest.fixture(scope="module")
def tasks():
    return {name: get_task(f"rg:{name}") for name in [*WITH_REFERENCES, "propositional_logic"]}


# ---------------------------------------------------------------- rows and seeds


@pytest.mark.parametrize("name", [*WITH_REFERENCES, "propositional_logic"])
def test_same_seed_same_rows_and_a_longer_draw_extends_a_shorter_one(tasks, name):
    rows = tasks[name].generate(6, seed=3)
    assert rows == tasks[name].generate(6, seed=3)
    assert tasks[name].generate(3, seed=3) == rows[:3]
    assert len({row["prompt"] for row in rows}) == 6
    for row in rows:
        assert set(row) == {"prompt", "answer", "rg_entry"}
        assert row["prompt"].endswith("\n" + rg.INSTRUCTION)
        assert (row["answer"] is None) == (name == "propositional_logic")


@pytest.mark.parametrize("name", WITH_REFERENCES)
def test_held_out_split_by_seed_and_exclude_is_disjoint(tasks, name):
    train = tasks[name].generate(30, seed=0)
    held_out = tasks[name].generate(30, seed=1, exclude=train)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}
    assert tasks[name].generate(30, seed=1, exclude=[row["prompt"] for row in train]) == held_out


def test_neighbouring_seeds_do_not_share_items():
    # reasoning-gym seeds item i with seed + i, so its seeds 1 and 2 share 29 of 30 items; reasonrl's do not
    import reasoning_gym

    raw_1 = [reasoning_gym.create_dataset("chain_sum", seed=1, size=31)[i]["question"] for i in range(1, 31)]
    raw_2 = [reasoning_gym.create_dataset("chain_sum", seed=2, size=30)[i]["question"] for i in range(30)]
    assert raw_1 == raw_2
    task = get_task("rg:chain_sum")
    one, two = task.generate(30, seed=1), task.generate(30, seed=2)
    assert not {row["prompt"] for row in one} & {row["prompt"] for row in two}


def test_rows_are_reasoning_gym_items_from_rg_seed():
    import reasoning_gym

    rows = get_task("rg:chain_sum", max_terms=3).generate(4, seed=5)
    dataset = reasoning_gym.create_dataset("chain_sum", seed=rg.rg_seed(5), size=rg.CHUNK, max_terms=3)
    questions = [dataset[i]["question"] for i in range(4)]
    assert [row["prompt"] for row in rows] == [f"{question}\n{rg.INSTRUCTION}" for question in questions]
    assert [row["answer"] for row in rows] == [dataset[i]["answer"] for i in range(4)]
    assert rg.rg_seed(5) != rg.rg_seed(6) and 0 <= rg.rg_seed(5) < 2**31


def test_generation_prints_nothing(capfd):
    assert len(get_task("rg:bf").generate(2, seed=0)) == 2  # reasoning-gym's bf compiler prints progress dots
    assert capfd.readouterr().out == ""


def test_config_from_get_task_and_from_generate():
    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    bound = get_task("rg:chain_sum", **one_digit).generate(20, seed=0)
    passed = get_task("rg:chain_sum").generate(20, seed=0, **one_digit)
    assert bound == passed
    for row in bound:  # `a + b =` or `a - b =` with one-digit a and b
        assert re.search(r": \d [+-] \d =\n", row["prompt"]), row["prompt"]
        assert json.loads(row["rg_entry"])["config"] == one_digit
    # a keyword of generate overrides get_task's
    three = get_task("rg:chain_sum", **one_digit).generate(5, seed=0, min_terms=3, max_terms=3)
    assert all(re.search(r": \d [+-] \d [+-] \d =\n", row["prompt"]) for row in three)


def test_a_problem_space_too_small_is_a_clear_error():
    # one-digit a + b or a - b: 10 * 10 * 2 = 200 distinct problems
    task = get_task("rg:chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert len(task.generate(200, seed=0)) == 200
    with pytest.raises(TaskError, match=r"found only 200 of 201 distinct problems.*fewer rows"):
        task.generate(201, seed=0)


# ---------------------------------------------------------------- verifier and reward


@pytest.mark.parametrize("name", WITH_REFERENCES)
def test_reward_scores_the_reference_1_and_a_wrong_answer_below_1(tasks, name):
    task = tasks[name]
    rows = task.generate(8, seed=4)
    right = [tagged(row["answer"]) for row in rows]
    other = {"countdown": "1 + 1", "knights_knaves": "nobody"}.get(name)
    wrong = [tagged(other or Decimal(row["answer"]) + 1) for row in rows]
    columns = {"rg_entry": [row["rg_entry"] for row in rows]}
    assert task.reward(completions=right, **columns) == [1.0] * 8
    assert all(score < 1.0 for score in task.reward(completions=wrong, **columns))
    assert task.reward.__name__ == f"rg_{name}_accuracy"


def _row(name, answer, metadata, config=None):
    return rg.make_row(name, config or {}, {"question": "Q?", "answer": answer, "metadata": metadata})


def test_partial_credit_of_reasoning_gym_scorers_is_kept():
    row = _row("basic_arithmetic", "-4", {})
    assert rg.verify(tagged("-4"), row) == 1.0
    assert rg.verify(tagged("x = -4"), row) == pytest.approx(2 / 6)  # reference inside: 2 of 6 characters
    assert rg.verify(tagged("4"), row) == 0.0
    assert rg.verify("no answer given", row) == 0.0
    # knights and knaves: one of two roles right -> 0.3 + 0.7 * 1/2
    row = _row("knights_knaves", "Zoey is a knight, and Oliver is a knave.", {})
    assert rg.verify(tagged("Oliver is a knave, and Zoey is a knight"), row) == 1.0
    assert rg.verify(tagged("Zoey is a knight, and Oliver is a knight."), row) == pytest.approx(0.65)
    # gsm_symbolic: a wrong number still gets 0.01
    row = _row("gsm_symbolic", "288", {})
    assert [rg.verify(tagged(text), row) for text in ("288", "288.0", "287", "none")] == [1.0, 1.0, 0.01, 0.0]


def test_countdown_accepts_any_solution_through_the_guard():
    row = _row("countdown", "1 + 2 + 3", {"numbers": [1, 2, 3], "target": 6})
    assert rg.verify(tagged("3*2*1"), row) == 1.0  # another solution
    assert rg.verify(tagged("(3 - 1) * 2 + 2"), row) == 0.05  # numbers not as given: 0.05
    assert rg.verify(tagged("1 + 2 * 3"), row) == 0.05  # 7, not 6
    assert rg.verify(tagged("3!"), row) == 0.0  # sympy would read a factorial; the guard refuses it


JUNK = [
    "",
    "no tags at all, just words",
    "<answer></answer>",
    "<answer>",
    "</answer><answer>",
    "<think>" * 10_000,
    "9" * 200_000,
    "<answer>" + "9" * 100_000 + "</answer>",
    "<answer>" + "(" * 5_000 + "</answer>",
    "<answer>" + "[" * 5_000 + "]" * 5_000 + "</answer>",
    "<answer>ünïcödé 答案 \u202e \x00 \ud800</answer>",
    "<answer>\\boxed{</answer>",
    "<answer>1e999999999</answer>",
    "<answer>NaN</answer>",
    "<answer>-inf</answer>",
]


@pytest.mark.parametrize(
    "name", [*WITH_REFERENCES, "propositional_logic", "string_insertion", "simple_integration"]
)
def test_reward_survives_junk_text(name):
    task = get_task(f"rg:{name}")
    row = task.generate(1, seed=0)[0]
    scores = task.reward(completions=JUNK, rg_entry=[row["rg_entry"]] * len(JUNK))
    assert all(isinstance(score, float) and 0.0 <= score <= 1.0 for score in scores)
    conversation = [{"role": "assistant", "content": tagged(row["answer"] or "x")}]
    assert 0.0 <= task.reward(completions=[conversation], rg_entry=[row["rg_entry"]])[0] <= 1.0


def test_rows_round_trip_through_datasets_and_jsonl(tmp_path, tasks):
    from datasets import Dataset

    from reasonrl.data import load_dataset_any

    for name in WITH_REFERENCES:
        rows = tasks[name].generate(6, seed=8)
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        for loaded in (Dataset.from_list(rows), load_dataset_any(str(path))):
            assert loaded.to_list() == rows
            completions = [tagged(answer) for answer in loaded["answer"]]
            assert tasks[name].reward(completions=completions, rg_entry=loaded["rg_entry"]) == [1.0] * 6


def test_refused_scorers_are_beaten_by_a_constant():
    """What REFUSED says of coin_flip and game_of_life_halting: their scorers give a constant answer 1.0."""
    import reasoning_gym

    coin_flip = reasoning_gym.create_dataset("coin_flip", seed=3, size=8)
    below_1 = [coin_flip[i] for i in range(8) if float(coin_flip[i]["answer"]) < 1]  # 0.234375, 0.0031...
    assert len(below_1) == 7 and [coin_flip.score_answer("0", entry) for entry in below_1] == [1.0] * 7
    halting = reasoning_gym.create_dataset("game_of_life_halting", seed=3, size=8)
    entries = [halting[i] for i in range(8)]
    assert {entry["answer"] for entry in entries} == {"False", "True"}
    scores = [halting.score_answer(answer, entry) for entry in entries for answer in ("True", "no")]
    assert scores == [1.0] * 16
    assert "coin_flip" not in rg.available_generators()


def test_generators_whose_entries_break_in_json_are_refused():
    with pytest.raises(TaskError, match=r"rg:arc_agi is not supported: its entries do not survive JSON"):
        get_task("rg:arc_agi").generate(2, seed=0)


# ---------------------------------------------------------------- traces and lengths


def test_traces_are_answer_only_except_gsm_symbolic_worked_solutions(tasks):
    row = tasks["chain_sum"].generate(1, seed=0)[0]
    assert tasks["chain_sum"].trace(row) == f"<think></think><answer>{row['answer']}</answer>"
    row = tasks["gsm_symbolic"].generate(1, seed=0)[0]
    worked = json.loads(row["rg_entry"])["entry"]["metadata"]["answer_cot"]
    assert tasks["gsm_symbolic"].trace(row) == format_trace(worked.strip(), row["answer"])
    assert tasks["gsm_symbolic"].verify(tasks["gsm_symbolic"].trace(row), row) == 1.0
    row = tasks["propositional_logic"].generate(1, seed=0)[0]
    with pytest.raises(TaskError, match="no reference answers, so no traces to train on"):
        tasks["propositional_logic"].trace(row)


def test_max_trace_length():
    # one-digit a +- b: answers from -9 to 18, so the longest answer-only trace has 2 answer characters
    task = get_task("rg:chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert task.max_trace_length() == TRACE_OVERHEAD + 2
    assert task.max_trace_length(min_digits=3, max_digits=3) == TRACE_OVERHEAD + 4  # 100..999 +- 100..999
    assert get_task("rg:propositional_logic").max_trace_length() == rg.NO_REFERENCE_TRACE_LENGTH


def test_built_in_tasks_take_options_through_get_task():
    task = get_task("arithmetic", digits=2)
    assert task.generate(5, seed=0) == arithmetic.generate(5, seed=0, digits=2)
    assert task.max_trace_length() == TRACE_OVERHEAD + 10 * 2
    assert get_task("arithmetic") is arithmetic.TASK
    message = r"task arithmetic has no option 'digit' \(did you mean 'digits'\?\); its options: digits, ops"
    with pytest.raises(TaskError, match=message):
        get_task("arithmetic", digit=2)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("call, message", [
    (lambda: get_task("rg:chain_sun"),
     "unknown reasoning-gym generator 'rg:chain_sun'; did you mean chain_sum"),
    (lambda: get_task("rg:no_such_thing_at_all"), "the generators: ab, acre,"),
    (lambda: get_task("rg:chain_sum", min_term=2),
     ("rg:chain_sum has no config field 'min_term' (did you mean 'min_terms'?); its fields: min_terms, "
      "max_terms, min_digits, max_digits, allow_negation")),
    (lambda: get_task("rg:chain_sum", min_terms=5, max_terms=2),
     ("rg:chain_sum rejects the config {max_terms=2, min_terms=5}: max_terms must be >= min_terms; see "
     "ChainSumConfig in reasoning-gym")),
    (lambda: get_task("rg:gsm_symbolic", difficulty=2.0),  # its validate() asserts with no message
     "rg:gsm_symbolic rejects the config {difficulty=2.0}: GSMSymbolicDatasetConfig.validate() failed"),
    (lambda: get_task("rg:chain_sum", seed=1), "'seed' is set by reasonrl (generate's seed); drop it"),
    (lambda: get_task("rg:chain_sum", size=10), "'size' is set by reasonrl (generate's n); drop it"),
    (lambda: get_task("rg:composite"), "rg:composite is not supported: it mixes generators"),
    (lambda: get_task("rg:coin_flip"), "rg:coin_flip is not supported: its scorer gives 1.0 to the answer 0"),
    (lambda: get_task("rg:game_of_life_halting"), "its scorer gives 1.0 to any non-empty answer"),
    (lambda: get_task("rg:chain_sum").generate(-1), "n=-1 is not a number of rows"),
    (lambda: get_task("rg:chain_sum").verify("x", {"prompt": "p"}), "row has no valid 'rg_entry' column"),
    (lambda: rg.verify("x", {"rg_entry": json.dumps({"dataset": "composite", "config": {}, "entry": {}})}),
     "row's rg_entry names the generator 'composite', which reasonrl does not score"),
])
def test_user_mistakes_are_one_line_task_errors(call, message):
    with pytest.raises(TaskError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--task", "rg:basic_arithmetc"], ("unknown reasoning-gym generator 'rg:basic_arithmetc'; did you mean "
                                       "basic_arithmetic")),
    (["--task", "rg:chain_sum", "--task-config", "{max_term: 3}"],
     "rg:chain_sum has no config field 'max_term' (did you mean 'max_terms'?)"),
    (["--task", "rg:chain_sum", "--task-config", "[1, 2]"], "--task-config must be a mapping"),
    (["--task", "rg:chain_sum", "--task-config", "{a: [1"], "--task-config is not valid YAML"),
    (["--task", "arithmetic", "--task-config", "{digits: 99}"], "arithmetic digits=99 is out of range"),
])
def test_cli_task_errors_are_one_line(capsys, tiny_model_dir, argv, message):
    for command in (["eval", tiny_model_dir], ["sft", "--out", "unused"]):
        code = main([*command, *argv, "--n", "4"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"reasonrl {command[0]}: error: ") and message in err


def test_cli_eval_on_a_reasoning_gym_task(capsys, tmp_path, tiny_model_dir):
    report_path = tmp_path / "report.json"
    argv = ["eval", tiny_model_dir, "--task", "rg:basic_arithmetic", "--n", "8", "--json", str(report_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"n=8  accuracy=\d\.\d{3}  format_rate=\d\.\d{3}", out), out
    report = json.loads(report_path.read_text())
    task = get_task("rg:basic_arithmetic")
    rows = task.generate(8, seed=2)  # eval's default seed
    assert report["n"] == 8
    assert [example["prompt"] for example in report["examples"]] == [row["prompt"] for row in rows[:5]]
    for example, row in zip(report["examples"], rows[:5], strict=True):
        assert example["correct"] == (task.verify(example["completion"], row) > 0.5)


# ---------------------------------------------------------------- the guard on scorers that evaluate code


def test_the_guard_lists_every_scorer_that_evaluates_its_answer():
    """Scans score_answer of every generator for eval, exec, sympify and parse_expr (a helper it calls is not
    scanned), so that a reasoning-gym upgrade adding such a scorer fails here."""
    from reasoning_gym.factory import DATASETS

    runs_code = re.compile(r"\beval\(|\bexec\(|sympify|parse_expr")
    evaluating = {name for name, (dataset_class, _) in DATASETS.items()
                  if runs_code.search(inspect.getsource(dataset_class.score_answer))}
    assert evaluating == EVALUATING_SCORERS | EVALUATED_REFERENCES


def test_rows_whose_reference_fails_the_verifier_are_skipped():
    import reasoning_gym

    # the first items of seed 1 include an integral sympy could not do, returned as its own reference answer
    dataset = reasoning_gym.create_dataset("intermediate_integration", seed=rg.rg_seed(1), size=rg.CHUNK)
    references = [dataset[i]["answer"] for i in range(6)]
    unsolved = [reference for reference in references if reference.startswith("-3*Integral(")]
    assert unsolved == ["-3*Integral(x**2*sin(x), x) + C"]
    row = rg.make_row("intermediate_integration", {}, dataset[references.index(unsolved[0])])
    assert rg.verify(tagged("Integral(1, x)"), row) == 0.0  # would pass any problem: refused
    rows = get_task("rg:intermediate_integration").generate(6, seed=1)
    assert [row["answer"] for row in rows[:5]] == [ref for ref in references if ref not in unsolved]


def test_a_reference_that_a_scorer_evaluates_must_be_plain_data(tmp_path):
    row = get_task("rg:number_sorting").generate(1, seed=0)[0]
    assert rg.verify(tagged(row["answer"]), row) == 1.0
    record = json.loads(row["rg_entry"])
    marker = tmp_path / "ran"
    record["entry"]["answer"] = f"[__import__('pathlib').Path('{marker}').touch()]"  # not JSON: eval'd
    crafted = {**row, "rg_entry": json.dumps(record)}
    with pytest.raises(TaskError, match="reference answer .* is not a plain list"):
        rg.verify(tagged("[1]"), crafted)
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(EVALUATING_SCORERS))
def test_the_guard_admits_every_reference_and_the_scorer_gives_it_1(name):
    task = get_task(f"rg:{name}")
    for row in task.generate(6, seed=1):
        assert admits(name, row["answer"]), row["answer"]
        assert task.verify(tagged(row["answer"]), row) == 1.0


HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w').write('x')",
    "[__import__('pathlib').Path('{marker}').touch()]",
    "[x for x in __import__('pathlib').Path('{marker}').touch() or 'a']",
    "(lambda: __import__('pathlib').Path('{marker}').touch())()",
    "exit()",
    "input()",
    "breakpoint()",
    "globals()",
    "x.__class__",
    "{{1: __import__('pathlib').Path('{marker}').touch()}}",
]


@pytest.mark.parametrize("name", sorted(EVALUATING_SCORERS))
def test_hostile_answers_never_run(tmp_path, name):
    task = get_task(f"rg:{name}")
    row = task.generate(1, seed=0)[0]
    marker = tmp_path / "ran"
    for template in HOSTILE:
        answer = template.format(marker=marker)
        assert not admits(name, answer), answer
        assert task.verify(tagged(answer), row) == 0.0
    assert not marker.exists()


@pytest.mark.parametrize("group, admitted, refused", [
    (PYTHON_LITERAL,
     ["1 2 3", "_ Q _\nQ _ _", "ABCDA", "['A', 'B']", "[[1, 0], [0, 1]]", "(-1, 2.5)", " [1]"],
     ["[1] * 10**9", "[1, 2][0]", "print(1)", "a.b", "1 + 1", "[~1]", "not x"]),
    (ARITHMETIC, ["94*4 - 61 - 6", "(3 - 1) * 2 + 2", "-100 + (92*(24 + 15) - 83)/5", "1.5 * 4"],
     ["9**9**9", "2**10", "x + 1", "3!", "1 if 1 else 2", "'7'", "1 < 2", "(1).real", "9" * 1001, "1e9999",
      "2 * 1.5E+0999"]),
    (ALGEBRA, ["-9*x**8/10 + 3*x**4/2 + C", "2*(-10*x - 10)**(3/2)/3 + C", "sqrt(x) + exp(2*x) + log(x, 2)",
               "x**-2", "2**x", "x**(32)", "Abs(x)"],
     ["9**9**9", "x**33", "x**(10*10)", "x**(1/0)", "__import__('os')", "x.func", "Symbol('x')", "f(x)",
      "exp(x, evaluate=False)", "sin(*x)", "x_1 + 1"]),
])
def test_guard_grammar(group, admitted, refused):
    for name in group:
        assert [text for text in admitted if not admits(name, text)] == []
        assert [text for text in refused if admits(name, text)] == []
    assert admits("chain_sum", "__import__('os')")  # text-comparing scorers need no guard


# ---------------------------------------------------------------- GRPO on reasoning-gym tasks: Python, YAML, CLI

TRAIN_GENERATORS = {"chain_sum": {"min_terms": 2, "max_terms": 2, "max_digits": 1},
                    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "max_digits": 1},
                    "leg_counting": {"min_animals": 1, "max_animals": 2}}


def _check_logged_scores(out, rows_by_prompt, reward_name, verify):
    """Each sampled completion's logged reward is the generator's score of it (recomputed here), and the step's
    mean reward is a number in [0, 1]."""
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert metrics and samples
    assert all(0.0 <= row[f"rewards/{reward_name}/mean"] <= 1.0 for row in metrics)
    for sample in samples:
        row = rows_by_prompt[sample["prompt"]]
        assert sample["rewards"][reward_name] == verify(sample["completion"], row)
    return metrics, samples


@pytest.mark.parametrize("name", list(TRAIN_GENERATORS))
def test_grpo_trains_on_a_reasoning_gym_task_from_python(tmp_path, char_tokenizer, name):
    from reasonrl import GRPOConfig, GRPOTrainer
    from reasonrl.tiny import build_tiny_model

    task = get_task(f"rg:{name}", **TRAIN_GENERATORS[name])
    rows = task.generate(8, seed=1)
    reward = task.reward
    args = GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=2, per_device_train_batch_size=4,
                      max_completion_length=8, max_prompt_length=48, max_steps=2, learning_rate=1e-3,
                      gradient_checkpointing=False, bf16=False, logging_steps=1000, report_to="none")
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer, seed=0), [reward], args=args, train_dataset=rows,
                          processing_class=char_tokenizer)
    trainer.train()
    metrics, samples = _check_logged_scores(tmp_path / "run", {row["prompt"]: row for row in rows}, reward.__name__,
                                            task.verify)
    assert [row["step"] for row in metrics] == [1, 2] and len(samples) == 4  # 2 steps x 2 prompts
    # the reward the trainer calls scores the reference answer 1 and a wrong one below 1 on these rows
    assert reward(completions=[tagged(rows[0]["answer"]), tagged("nonsense")], rg_entry=[rows[0]["rg_entry"]] * 2) \
        [0] == 1.0


def test_grpo_trains_on_reasoning_gym_tasks_from_yaml_and_the_command_line(tmp_path, capsys, tiny_model_dir):
    from reasonrl.rewards import get_reward

    config = tmp_path / "rg.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\n"
        "dataset_name: rg:chain_sum\n"
        "dataset_config: '{min_terms: 2, max_terms: 2, max_digits: 1, n: 12}'\n"
        "reward_funcs: [reasoning_gym, format]\n"
        "num_generations: 2\nper_device_train_batch_size: 4\nmax_completion_length: 8\nmax_prompt_length: 48\n"
        "max_steps: 1\nlearning_rate: 1.0e-3\ngradient_checkpointing: false\nbf16: false\nreport_to: none\n"
        f"output_dir: {tmp_path / 'chain_sum'}\n")
    verify = get_reward("reasoning_gym")
    for name, overrides in (("chain_sum", []),
                            ("basic_arithmetic", ["dataset_name=rg:basic_arithmetic",
                                                  "dataset_config={min_terms: 2, max_terms: 2, max_digits: 1, n: 12}",
                                                  f"output_dir={tmp_path / 'basic_arithmetic'}"])):
        assert main(["train", "--config", str(config), *overrides]) == 0, capsys.readouterr().err[-2000:]
        rows = get_task(f"rg:{name}", min_terms=2, max_terms=2, max_digits=1).generate(12, seed=1)  # the default seed

        def by_reward(text, row):
            return verify(completions=[text], rg_entry=[row["rg_entry"]])[0]

        metrics, _ = _check_logged_scores(tmp_path / name, {row["prompt"]: row for row in rows}, "reasoning_gym",
                                          by_reward)
        assert any(key.startswith("rewards/format") and key.endswith("/mean") for key in metrics[0])


@pytest.mark.parametrize("dataset_config, message", [
    ("'[1, 2]'", "dataset_config of rg:chain_sum must be a YAML mapping"),
    ("'{a: [1'", "dataset_config of rg:chain_sum is not valid YAML"),
    ("'{max_term: 3}'", "rg:chain_sum has no config field 'max_term'"),
])
def test_a_bad_task_dataset_config_is_one_line(tmp_path, capsys, tiny_model_dir, dataset_config, message):
    from cli_helpers import assert_one_line_error

    config = tmp_path / "rg.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset_name: rg:chain_sum\n"
                      f"dataset_config: {dataset_config}\nreward_funcs: [reasoning_gym]\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    code = main(["train", "--config", str(config)])
    assert_one_line_error(code, capsys.readouterr().err, "train", [message])
    assert not (tmp_path / "run").exists()
