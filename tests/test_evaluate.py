"""Evaluation maths (pass@k), SFT, plots and the demo's plumbing."""

import json
import math
import os

import pytest
import torch

from reasonrl.evaluate import evaluate, pass_at_k
from reasonrl.sft import sft, tokenize_pairs
from reasonrl.tiny import build_tiny_model


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),            # c / n
    (5, 2, 2, 1 - 3 / 10),     # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),     # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),            # fewer than k wrong samples: some draw of 4 must contain a right one
    (10, 1, 5, 0.5),           # 1 - C(9,5)/C(10,5) = 1 - 126/252
    (8, 0, 8, 0.0),
    (8, 8, 1, 1.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_and_validates():
    for n in (1, 7, 20):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_sft_masks_the_prompt_and_learns(char_tokenizer):
    rows = [{"prompt": f"{i}+0=", "completion": f"<answer>{i}</answer>"} for i in range(10)]
    ids, prompt_length = tokenize_pairs(char_tokenizer, rows[:1])[0]
    assert char_tokenizer.decode(ids[:prompt_length]) == "0+0="
    assert ids[-1] == char_tokenizer.eos_token_id  # completions end with EOS so the model learns to stop
    model = build_tiny_model(char_tokenizer, seed=0)
    losses = sft(model, char_tokenizer, rows, steps=60, batch_size=10, learning_rate=3e-3, progress=False)
    assert losses[-1] < 0.3 * losses[0]


def test_evaluate_counts_accuracy_format_length_and_truncation(char_tokenizer):
    # a model that always answers "<think></think><answer>7</answer>" then EOS, built by SFT
    rows = [{"prompt": f"q{i}:", "completion": "<think></think><answer>7</answer>"} for i in range(8)]
    model = build_tiny_model(char_tokenizer, seed=0)
    sft(model, char_tokenizer, rows, steps=150, batch_size=8, learning_rate=3e-3, progress=False)
    problems = [{"prompt": f"q{i}:", "answer": "7" if i < 6 else "8"} for i in range(8)]

    def exact(completions, answer, **kwargs):
        return [1.0 if "<answer>" + a + "</answer>" in c else 0.0 for c, a in zip(completions, answer)]

    report = evaluate(model, char_tokenizer, problems, exact, k=2, max_new_tokens=40, temperature=0.5)
    assert report["n"] == 8 and report["accuracy"] == 0.75
    assert report["format_rate"] == 1.0 and report["truncation_rate"] == 0.0
    assert report["mean_length"] == len("<think></think><answer>7</answer>") + 1  # + EOS
    assert set(report["pass_at_k"]) == {"1", "2"} and report["pass_at_k"]["2"] >= report["pass_at_k"]["1"]
    short = evaluate(model, char_tokenizer, problems, exact, max_new_tokens=5)
    assert short["truncation_rate"] == 1.0 and short["accuracy"] == 0.0


def test_demo_plumbing_writes_models_reports_and_plots(tmp_path):
    from reasonrl.demo import DemoSettings, run_demo
    from reasonrl.plot import PANELS

    settings = DemoSettings(out=str(tmp_path / "demo"), hidden_size=32, num_hidden_layers=1, sft_max_steps=4,
                            grpo_steps=2, prompts_per_step=2, num_generations=4, held_out=10, validation=10, k=2,
                            eval_every=1)
    torch.set_num_threads(1)
    report = run_demo(settings)
    out = tmp_path / "demo"
    for name in ("base/model.safetensors", "model/model.safetensors", "report.md", "report.json",
                 *(f"{panel}.png" for panel in PANELS)):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["held_out"]["n"] == 10 and saved["gain_points"] == report["gain_points"]
    assert {"accuracy", "pass_at_k", "format_rate", "mean_length", "truncation_rate", "n"} <= set(saved["after"])
    rows = [json.loads(line) for line in open(out / "grpo" / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1, 2] and all("eval/accuracy" in row for row in rows)
    assert os.path.getsize(out / "accuracy.png") > 5000


def test_demo_lr0_control_is_the_same_run_on_a_frozen_copy(tmp_path):
    from reasonrl.demo import DemoSettings, run_demo

    def demo(name, control_steps):
        settings = DemoSettings(out=str(tmp_path / name), hidden_size=32, num_hidden_layers=1, sft_max_steps=4,
                                grpo_steps=3, prompts_per_step=2, num_generations=4, held_out=10, validation=10, k=2,
                                eval_every=5, control_steps=control_steps, threads=1)
        report = run_demo(settings)
        grpo = [json.loads(line) for line in open(tmp_path / name / "grpo" / "metrics.jsonl")]
        return report, grpo

    threads = torch.get_num_threads()
    report, grpo = demo("with", control_steps=2)
    control = [json.loads(line) for line in open(tmp_path / "with" / "control" / "metrics.jsonl")]
    assert report["control"]["steps"] == 2 and report["control"]["completions"] == 2 * 2 * 4
    assert report["control"]["reward"] == pytest.approx((control[0]["reward"] + control[1]["reward"]) / 2)
    # step 1 samples from the same weights with the same seed in both runs: the same rollouts, the same reward
    assert control[0]["reward"] == grpo[0]["reward"]
    assert report["reward_last_steps"] == pytest.approx(sum(row["reward"] for row in grpo[-2:]) / 2)
    assert "lr-0 control" in (tmp_path / "with" / "report.md").read_text()
    # the control leaves the GRPO run as it would be without it
    plain, plain_grpo = demo("without", control_steps=0)
    assert plain["control"] is None and not (tmp_path / "without" / "control").exists()
    assert [(r["reward"], r["loss"]) for r in plain_grpo] == [(r["reward"], r["loss"]) for r in grpo]
    assert plain["after"]["accuracy"] == report["after"]["accuracy"]
    assert torch.get_num_threads() == threads  # run_demo's own thread count (1) was undone
