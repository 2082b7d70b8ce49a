"""`reasonrl demo --task calculator` (tool_demo.py): its warm-start mix, and a --quick run's report, whose numbers
must agree with each other (counts, gains, the lr-0 control). Not timed, and the gain itself is not asserted: the
quick run is too short to learn anything."""

import json

import pytest
from cli_helpers import assert_one_line_error, run_main

from reasonrl.tasks import calculator
from reasonrl.tool_demo import warm_start_rows


def test_warm_start_mixes_calculator_exchanges_and_direct_answers():
    train = calculator.generate(1000, seed=1)
    rows = warm_start_rows(train, 0.3, seed=0)
    exchanges = [row for row in rows if len(row["completion"]) == 3]
    assert 250 <= len(exchanges) <= 350  # a 0.3 share: 300 +- 3.2 standard deviations
    for row, problem in zip(rows, train):
        assert row["prompt"] == problem["prompt"]
        expected = calculator.trace(problem) if len(row["completion"]) == 3 else [
            {"role": "assistant", "content": problem["answer"]}]
        assert row["completion"] == expected
    assert rows == warm_start_rows(train, 0.3, seed=0) and rows != warm_start_rows(train, 0.3, seed=1)


def test_quick_calculator_demo_reports_consistent_numbers(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _ = run_main(capsys, ["demo", "--task", "calculator", "--quick", "--out", out])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    n, samples = settings["held_out"], settings["samples"]
    for name in ("before", "after", "control"):
        numbers = report[name]
        assert numbers["n"] == n == report["held_out"]["n"] and numbers["samples"] == n * samples
        for key in ("accuracy", "sampled_accuracy"):  # whole numbers of right completions
            count = numbers[key] * (n if key == "accuracy" else n * samples)
            assert count == pytest.approx(round(count), abs=1e-9) and 0 <= count <= numbers["samples"]
    for key, gain in report["gain_points"].items():
        assert gain == round(100 * (report["after"][key] - report["control"][key]), 1)
    assert report["gain_against"] == "control"
    # learning rate 0 leaves the warm start as it was: the control's evaluation is the warm start's, exactly
    assert report["control"] == report["before"]
    steps, per_step = settings["grpo_steps"], settings["prompts_per_step"] * settings["num_generations"]
    assert [row["step"] for row in report["grpo_log"]] == list(range(1, steps + 1))
    assert [row["step"] for row in report["control_log"]] == list(range(1, settings["control_steps"] + 1))
    assert settings["control_steps"] < steps  # the control is GRPO's first steps only
    assert report["completions_generated"] == steps * per_step
    # the control samples its first step from the same weights with the same seeds as GRPO's first step
    assert report["control_log"][0] == report["grpo_log"][0]
    assert report["sft"]["steps"] == settings["sft_steps"] and report["sft"]["rows"] == settings["train_rows"]
    # the warm start's validation every sft_eval_every steps; a 20-step model never reaches the target, so no stop
    curve = report["sft"]["validation_curve"]
    assert [point["step"] for point in curve] == [10, 20]
    assert all(point["validation_accuracy"] < settings["sft_target_accuracy"] for point in curve)
    assert report["sft"]["reached_target"] is False  # and the report says so first
    assert report["sft"]["warning"].startswith("the warm start reached")
    for name in ("base/model.safetensors", "model/model.safetensors", "report.md", "reward.png",
                 "grpo/metrics.jsonl", "control/metrics.jsonl"):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    warning = (f"**Warning:** the warm start reached {curve[-1]['validation_accuracy']:.0%} greedy validation "
               f"accuracy in 20 steps, below its target 30%")
    assert markdown.split("\n\n")[1].startswith(warning)
    sampled_row = f"| sampled accuracy (T={settings['temperature']}) | {report['before']['sampled_accuracy']:.3f} |"
    assert sampled_row in markdown
    assert f"{report['gain_points']['sampled_accuracy']:+.1f} points" in markdown


def test_calculator_demo_refuses_the_arithmetic_demos_dynamic_sampling(tmp_path, capsys):
    code, err = run_main(capsys, ["demo", "--task", "calculator", "--dynamic-sampling", "--out", tmp_path / "d"])
    assert_one_line_error(code, err, "demo", ["--dynamic-sampling is an option of the arithmetic demo"])
    assert not (tmp_path / "d").exists()


def test_seed_seeds_grpo_from_one_warm_start_and_warm_start_seed_seeds_the_warm_start(tmp_path, capsys):
    def quick(name, *options):
        out = tmp_path / name
        code, _ = run_main(capsys, ["demo", "--task", "calculator", "--quick", "--out", out, *options])
        assert code == 0
        return (out / "base" / "model.safetensors").read_bytes(), json.loads((out / "report.json").read_text())

    base_5, report_5 = quick("s5", "--seed", "5")
    base_6, report_6 = quick("s6", "--seed", "6")
    base_6w1, report_6w1 = quick("s6w1", "--seed", "6", "--warm-start-seed", "1")
    # --seed leaves the warm start as it was: the same weights, the same validation curve
    assert base_5 == base_6 and report_5["sft"] == report_6["sft"]
    assert (report_5["settings"]["seed"], report_6["settings"]["seed"]) == (5, 6)
    assert report_5["grpo_config"]["seed"] == 5 and report_6["grpo_config"]["seed"] == 6
    assert report_5["settings"]["warm_start_seed"] == report_6["settings"]["warm_start_seed"] == 0
    # --warm-start-seed trains another warm start (initialisation, mix and order)
    assert base_6w1 != base_6 and report_6w1["settings"]["warm_start_seed"] == 1
    assert report_6w1["grpo_config"]["seed"] == 6


@pytest.mark.parametrize("argv, words", [
    (["--warm-start-seed", "1"], ["--warm-start-seed is an option of the calculator demo"]),
    (["--task", "calculator", "--warm-start-seed", "-1"], ["--warm-start-seed"]),
    (["--task", "calculator", "--warm-start-seed", str(2**32)], ["--warm-start-seed must be below 2**32"]),
])
def test_demo_warm_start_seed_mistakes_are_one_line_errors(tmp_path, capsys, argv, words):
    code, err = run_main(capsys, ["demo", *argv, "--out", tmp_path / "d"])
    assert_one_line_error(code, err, "demo", words)
    assert not (tmp_path / "d").exists()
