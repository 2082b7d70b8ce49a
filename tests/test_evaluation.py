"""Evaluation during training (eval_loop.py, trainer.evaluate, eval_strategy): TRL's metric names and what they
average, reasonrl's accuracy and pass@k, the schedule, the eval split from config, and that evaluating never changes
training (weights, logs, resume)."""

import json
import math
import os
import shutil

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.checkpoint import list_checkpoints
from reasonrl.config import ConfigError
from reasonrl.errors import DataError, ReasonRLError
from reasonrl.eval_loop import is_verifier, pass_at_k_sizes
from reasonrl.evaluate import pass_at_k
from reasonrl.tiny import build_tiny_model

TIMING_KEYS = {"step_time", "rollout_time", "tokens_per_second", "eval_runtime", "eval_samples_per_second",
               "eval_steps_per_second", "cpu_threads"}


def distinct_chars(completions, **kwargs):
    return [float(len(set(c))) for c in completions]


def _config(out, **overrides):
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=2, max_completion_length=5,
                    max_steps=4, learning_rate=1e-2, gradient_checkpointing=False, logging_steps=1000, save_steps=1000,
                    optim="adamw_torch", seed=5, adapt_cpu_threads=False, report_to="none")
    settings.update(overrides)
    return GRPOConfig(**settings)


def _trainer(out, tok, reward_funcs=(distinct_chars,), eval_rows=None, lora=False, train_rows=None, **overrides):
    train_rows = train_rows or [{"prompt": f"p{i}"} for i in range(6)]
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                      task_type="CAUSAL_LM") if lora else None
    return GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0), list(reward_funcs),
                       args=_config(out, **overrides), train_dataset=Dataset.from_list(train_rows),
                       eval_dataset=None if eval_rows is None else Dataset.from_list(eval_rows),
                       processing_class=tok, peft_config=peft)


def _rows(path):
    with open(path) as handle:
        rows = [json.loads(line) for line in handle]
    return [json.dumps({k: v for k, v in row.items() if k not in TIMING_KEYS}, sort_keys=True) for row in rows]


# ------------------------------------------------------------------------------------------ what is computed


def test_eval_metrics_are_means_over_eval_batches_of_num_generations_eval_samples(tmp_path, char_tokenizer):
    calls = []

    def prompt_value(completions, value, completion_ids, **kwargs):  # a reward of the prompt alone
        calls.append((len(completions), list(value), [len(ids) for ids in completion_ids]))
        return [float(v) for v in value]

    eval_rows = [{"prompt": "a", "value": 1}, {"prompt": "b", "value": 3}, {"prompt": "c", "value": 8}]
    trainer = _trainer(tmp_path / "run", char_tokenizer, [prompt_value],
                       train_rows=[{"prompt": f"p{i}", "value": 0} for i in range(6)], eval_rows=eval_rows,
                       num_generations_eval=3, per_device_eval_batch_size=6)
    metrics = trainer.evaluate()
    # per_device_eval_batch_size=6 completions = 2 prompts x num_generations_eval=3: batches [a, b] and [c]
    assert [call[:2] for call in calls] == [(6, [1, 1, 1, 3, 3, 3]), (3, [8, 8, 8])]
    # as TRL: each metric per batch, then the mean over batches (the mean over all 9 completions would be 4)
    assert metrics["eval_reward"] == metrics["eval_rewards/prompt_value/mean"] == (2 + 8) / 2
    assert metrics["eval_rewards/prompt_value/std"] == pytest.approx((math.sqrt(1.2) + 0.0) / 2)  # 1,1,1,3,3,3
    lengths = [sum(call[2]) / call[0] for call in calls]  # the completion tokens the rewards were given
    assert metrics["eval_completions/mean_length"] == pytest.approx(sum(lengths) / 2)
    assert metrics["eval_frac_reward_zero_std"] == pytest.approx((1.0 + 1.0) / 2)  # every group's rewards agree
    assert metrics["eval_loss"] == 0.0 and math.isfinite(metrics["eval_entropy"])  # ratio 1, advantages 0
    assert metrics["eval_rewards/prompt_value/errors"] == 0 and metrics["epoch"] == 0.0
    assert metrics["eval_steps_per_second"] > 0 and metrics["eval_runtime"] > 0
    assert "eval_accuracy" not in metrics  # no verifier and no answer column
    assert trainer.log_history == [{"step": 0, "epoch": 0.0, **metrics}]
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")  # outside train() nothing is written


def test_eval_accuracy_and_pass_at_k_from_a_verifier_equal_the_hand_computed_estimates(tmp_path, char_tokenizer):
    g = 4

    def toy_accuracy(completions, correct, **kwargs):  # the first `correct` samples of each prompt are right
        return [1.0 if i % g < c else 0.0 for i, c in enumerate(correct)]

    eval_rows = [{"prompt": "a", "correct": 0}, {"prompt": "b", "correct": 1}, {"prompt": "c", "correct": 4}]
    trainer = _trainer(tmp_path / "run", char_tokenizer, [distinct_chars, toy_accuracy], eval_rows=eval_rows,
                       train_rows=[{"prompt": f"p{i}", "correct": 0} for i in range(6)], num_generations_eval=g)
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] == pytest.approx((0 + 1 + 4) / 12)
    # pass@2 of 1 right in 4 = 1 - C(3,2)/C(4,2) = 1/2; of 4 right = 1
    assert metrics["eval_pass_at_2"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert metrics["eval_pass_at_4"] == pytest.approx((0 + 1 + 1) / 3)
    assert [key for key in metrics if "pass_at" in key] == ["eval_pass_at_2", "eval_pass_at_4"]
    assert metrics["eval_pass_at_2"] == pytest.approx(sum(pass_at_k(4, c, 2) for c in (0, 1, 4)) / 3)


def test_which_rewards_judge_correctness():
    assert pass_at_k_sizes(8) == [2, 4, 8] and pass_at_k_sizes(6) == [2, 4, 6] and pass_at_k_sizes(1) == []
    assert [is_verifier(name) for name in ("accuracy_reward", "countdown_accuracy", "reasoning_gym",
                                           "format_reward", "length", "distinct_chars")] == [True] * 3 + [False] * 3


def test_an_answer_column_gets_reasonrls_accuracy_reward_and_named_sets_their_prefix(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path / "run", char_tokenizer, num_generations_eval=2)
    right = Dataset.from_list([{"prompt": "a", "answer": "7"}])
    none = Dataset.from_list([{"prompt": "b"}])
    metrics = trainer.evaluate({"right": right, "plain": none})
    # a random tiny model states no answer: accuracy_reward scores 0.0; a set without answers has no accuracy
    assert metrics["eval_right_accuracy"] == 0.0 and metrics["eval_right_pass_at_2"] == 0.0
    assert "eval_plain_accuracy" not in metrics and "eval_plain_reward" in metrics
    assert trainer.evaluate(right, metric_key_prefix="test")["test_accuracy"] == 0.0


def test_the_same_weights_evaluate_the_same_and_evaluation_leaves_every_random_state(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path / "run", char_tokenizer, eval_rows=[{"prompt": f"q{i}"} for i in range(3)],
                       num_generations_eval=4, temperature=1.5)
    states = (torch.get_rng_state(), trainer.generator.get_state())
    first, second = trainer.evaluate(), trainer.evaluate()
    assert torch.equal(states[0], torch.get_rng_state()) and torch.equal(states[1], trainer.generator.get_state())
    drop = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in second.items() if k not in drop}
    assert first["eval_rewards/distinct_chars/std"] > 0  # the samples do differ (so equality is not vacuous)


# ------------------------------------------------------------------------------------------ during training


@pytest.mark.parametrize("overrides, eval_steps_seen", [
    ({"eval_steps": 3, "eval_on_start": True}, [0, 3, 6, 7]),  # and the last step, as transformers
    ({"logging_steps": 2}, [2, 4, 6, 7]),  # eval_steps None: logging_steps
    ({"eval_steps": 0.25}, [2, 4, 6, 7]),  # ceil(0.25 * 7) = 2
    ({"eval_strategy": "epoch"}, [3, 6]),  # 6 prompts, 2 per one-step round: a pass every 3 steps
])
def test_the_eval_schedule(tmp_path, char_tokenizer, overrides, eval_steps_seen):
    settings = {"eval_strategy": "steps", "max_steps": 7, "num_generations_eval": 2, **overrides}
    trainer = _trainer(tmp_path / "run", char_tokenizer, eval_rows=[{"prompt": "q"}], **settings)
    trainer.train()
    assert [row["step"] for row in trainer.log_history if "eval_reward" in row] == eval_steps_seen
    with open(tmp_path / "run" / "metrics.jsonl") as handle:
        logged = [json.loads(line) for line in handle]
    assert [row["step"] for row in logged if "eval_reward" in row] == eval_steps_seen
    assert [row["step"] for row in logged if "loss" in row] == list(range(1, 8))


def test_training_with_evaluation_trains_the_same_weights_and_resumes_bitwise(tmp_path, char_tokenizer):
    """LoRA with dropout and beta > 0 (the reference is the adapter disabled) in both; eval after every step."""
    common = dict(lora=True, beta=0.04, num_iterations=2, max_steps=6, save_steps=1)
    plain = _trainer(tmp_path / "plain", char_tokenizer, **common)
    plain.train()
    evaluated = _trainer(tmp_path / "eval", char_tokenizer, eval_rows=[{"prompt": f"q{i}"} for i in range(3)],
                         eval_strategy="steps", eval_steps=1, num_generations_eval=3, per_device_eval_batch_size=3,
                         **common)
    evaluated.train()
    final = {k: v.detach().clone() for k, v in evaluated.model.state_dict().items()}
    assert all(torch.equal(final[k], v) for k, v in plain.model.state_dict().items())
    eval_rows = [row for row in _rows(tmp_path / "eval" / "metrics.jsonl") if "eval_reward" in row]
    assert len(eval_rows) == 6 and _rows(tmp_path / "plain" / "metrics.jsonl") == [
        row for row in _rows(tmp_path / "eval" / "metrics.jsonl") if "eval_reward" not in row]
    assert all(json.loads(row)["eval_kl"] >= 0 for row in eval_rows)

    # resumed from checkpoint-3 (the middle of a 2-step round): the same adapter and the same log, eval rows too
    shutil.copytree(tmp_path / "eval", tmp_path / "resumed")
    for path in list_checkpoints(str(tmp_path / "resumed")):
        if int(path.rsplit("-", 1)[1]) > 3:
            shutil.rmtree(path)
    resumed = _trainer(tmp_path / "resumed", char_tokenizer, eval_rows=[{"prompt": f"q{i}"} for i in range(3)],
                       eval_strategy="steps", eval_steps=1, num_generations_eval=3, per_device_eval_batch_size=3,
                       **common)
    resumed.train(resume_from_checkpoint=True)
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())
    assert _rows(tmp_path / "resumed" / "metrics.jsonl") == _rows(tmp_path / "eval" / "metrics.jsonl")


def test_evaluation_with_tools_counts_calls_and_judges_the_final_answer(tmp_path, monkeypatch):
    from test_tools import Script, add, add_or_guess

    import reasonrl.tools as tools_module
    from reasonrl.tiny import build_char_tokenizer

    tok = build_char_tokenizer(tools=True)
    monkeypatch.setattr(tools_module, "generate", Script(tok, add_or_guess))

    def tool_accuracy(completions, answer, **kwargs):  # the last message's content against the answer
        return [float(c[-1]["content"] == a) for c, a in zip(completions, answer)]

    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}"}], "answer": str(a + b)} for a, b in ((2, 3), (1, 1))]
    trainer = GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0), [tool_accuracy],
                          args=_config(tmp_path / "run", num_generations=4, max_completion_length=120),
                          train_dataset=Dataset.from_list(rows), processing_class=tok, tools=[add])
    metrics = trainer.evaluate(rows)
    # the script: samples 0 and 2 of each prompt call add and answer its result, 1 and 3 guess 0
    assert metrics["eval_tools/call_frequency"] == 0.5 and metrics["eval_tools/mean_turns"] == 1.5
    assert metrics["eval_accuracy"] == 0.5 and metrics["eval_reward"] == 0.5
    assert metrics["eval_pass_at_2"] == pytest.approx(1 - 1 / 6) and metrics["eval_pass_at_4"] == 1.0


def test_eval_prompts_are_formatted_as_training_prompts_and_log_metric_is_an_eval_metric(tmp_path, char_tokenizer):
    seen = []

    def watcher(prompts, completions, log_metric, **kwargs):
        seen.append(prompts[0])
        log_metric("messages_in_prompt", float(len(prompts[0])))
        return [0.0] * len(completions)

    trainer = _trainer(tmp_path / "run", char_tokenizer, [watcher], eval_rows=[{"prompt": "q"}],
                       system_prompt="Think first.", num_generations_eval=2)
    metrics = trainer.evaluate()
    assert seen == [[{"role": "system", "content": "Think first."}, {"role": "user", "content": "q"}]]
    assert metrics["eval_messages_in_prompt"] == 2.0


# ------------------------------------------------------------------------------------------ the eval split, errors


def test_dataset_test_split_slices_a_local_file_for_evaluation(tmp_path, char_tokenizer):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(8)))
    config = _config(tmp_path / "run", model_name_or_path=None, dataset_name=str(data), eval_strategy="steps",
                     dataset_train_split="train[:6]", dataset_test_split="train[6:]", num_generations_eval=2,
                     max_steps=2, eval_steps=1)
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer, hidden_size=32, intermediate_size=64, seed=0),
                          [distinct_chars], args=config, processing_class=char_tokenizer)
    assert trainer.train_dataset["prompt"] == [f"p{i}" for i in range(6)]
    assert trainer.eval_dataset["prompt"] == ["p6", "p7"]
    rows = trainer.train()  # the step and evaluation rows (log_history also ends with train()'s summary row)
    assert [row["step"] for row in rows if "eval_reward" in row] == [1, 2]
    # the last checkpoint keeps the last step's row and the last evaluation's; a model card shows both
    from reasonrl.export import checkpoint_model_card

    with open(tmp_path / "run" / "checkpoint-2" / "trainer_state.json") as handle:
        kept = json.load(handle)["log_history"]
    assert kept == [row for row in rows if row["step"] == 2]
    assert [("loss" in row, "eval_reward" in row) for row in kept] == [(True, False), (False, True)]
    card = checkpoint_model_card(str(tmp_path / "run" / "checkpoint-2"), merged=False)
    assert "| loss |" in card and "| eval_reward |" in card
    # a split the file does not have
    with pytest.raises(DataError, match=r"dataset_test_split='test': .* has one split, 'train' \(a file or a task; "
                                        r"asked for 'test'\); .*dataset_test_split='train\[90%:\]'"):
        GRPOTrainer(build_tiny_model(char_tokenizer, seed=0), [distinct_chars], processing_class=char_tokenizer,
                    args=_config(tmp_path / "run2", dataset_name=str(data), eval_strategy="steps"))


@pytest.mark.parametrize("overrides, phrase", [
    ({"eval_strategy": "sometimes"}, "eval_strategy='sometimes' is not supported; choose one of: no, steps, epoch"),
    ({"save_strategy": "best"}, "save_strategy='best' is not supported; choose one of: no, steps, epoch"),
    ({"eval_steps": 2.5}, ("eval_steps must be a whole number of steps when above 1, or a fraction of all steps in "
                           "(0, 1) (got 2.5); try eval_steps=3")),
    ({"eval_steps": 0}, "eval_steps must be > 0, or None to use logging_steps (got 0)"),
    ({"eval_strategy": "steps", "num_generations_eval": 4, "per_device_eval_batch_size": 6},
     ("per_device_eval_batch_size=6 is not a multiple of num_generations_eval=4 (the completions of an evaluation "
      "prompt are generated together); set per_device_eval_batch_size=8")),
    ({"eval_strategy": "steps", "num_generations": 3, "per_device_train_batch_size": 3},
     "per_device_eval_batch_size=8 is not a multiple of num_generations_eval=3"),
    ({"per_device_eval_batch_size": 0}, "per_device_eval_batch_size must be >= 1"),
])
def test_wrong_evaluation_options_are_one_line_errors(overrides, phrase):
    with pytest.raises(ConfigError) as error:
        GRPOConfig(**overrides)
    assert phrase in str(error.value) and "\n" not in str(error.value)


def test_evaluation_without_eval_data_is_a_one_line_error(tmp_path, char_tokenizer):
    with pytest.raises(ConfigError, match=r"^eval_strategy='steps' needs an eval dataset: pass eval_dataset= to "
                                          r"GRPOTrainer .*or set eval_strategy=no$"):
        _trainer(tmp_path / "run", char_tokenizer, eval_strategy="steps")
    trainer = _trainer(tmp_path / "run", char_tokenizer)
    with pytest.raises(DataError, match="evaluation needs an eval dataset: pass eval_dataset= to GRPOTrainer or to "
                                        "evaluate()"):
        trainer.evaluate()
    with pytest.raises(ReasonRLError, match="reward 'needs_answer' reads the dataset column 'answer', which eval set "
                                            "'eval' lacks"):
        def needs_answer(completions, answer, **kwargs):
            return [0.0] * len(completions)

        needs_answer.required_columns = ("answer",)
        _trainer(tmp_path / "run", char_tokenizer, [needs_answer], train_rows=[{"prompt": "p", "answer": "1"}] * 6,
                 eval_rows=[{"prompt": "q"}])


def test_eval_options_from_yaml_and_the_cli(tmp_path, tiny_model_dir):
    from cli_helpers import run_cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": str(i)}) + "\n" for i in range(6)))
    config = tmp_path / "cfg.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndataset_name: {data}\nreward_funcs: [length]\n"
                      f"dataset_train_split: 'train[:4]'\ndataset_test_split: 'train[4:]'\neval_strategy: steps\n"
                      f"eval_steps: 2\nnum_generations_eval: 2\nper_device_train_batch_size: 4\nnum_generations: 2\n"
                      f"max_completion_length: 4\nmax_steps: 3\ngradient_checkpointing: false\nsave_strategy: no\n")
    done = run_cli("train", "--config", config, f"output_dir={tmp_path / 'run'}", "eval_on_start=true")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    evals = [row for row in rows if "eval_reward" in row]
    assert [row["step"] for row in evals] == [0, 2, 3]
    assert all(row["eval_accuracy"] == 0.0 and "eval_pass_at_2" in row for row in evals)  # the answer column
    assert not list_checkpoints(str(tmp_path / "run"))  # save_strategy: no (which YAML reads as false)
    assert "eval at step 2: eval_reward=" in done.stderr + done.stdout

    failed = run_cli("train", "--config", config, f"output_dir={tmp_path / 'run2'}", "eval_steps=1.5")
    assert failed.returncode == 2 and failed.stderr.strip().splitlines()[-1] == (
        "reasonrl train: error: override 'eval_steps=1.5': eval_steps must be a whole number of steps when above 1, "
        "or a fraction of all steps in (0, 1) (got 1.5); try eval_steps=2")


def test_cli_eval_strategy_without_an_eval_split_is_one_error_line(tmp_path, capsys, tiny_model_dir):
    from cli_helpers import assert_one_line_error, run_main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    code, err = run_main(capsys, ["train", f"model_name_or_path={tiny_model_dir}", f"dataset_name={data}",
                                  "reward_funcs=[length]", "eval_strategy=steps", f"output_dir={tmp_path / 'run'}",
                                  "per_device_train_batch_size=4", "num_generations=2"])
    assert_one_line_error(code, err, "train", ["eval_strategy='steps' evaluates on dataset_test_split='test'",
                                               "has one split, 'train'", "dataset_test_split='train[90%:]'"])
    assert not (tmp_path / "run").exists()


def test_a_streamed_eval_set_stays_the_trainers_eval_dataset_and_evaluates_as_the_same_rows(tmp_path,
                                                                                           char_tokenizer):
    rows = [{"prompt": "p6"}, {"prompt": "p7"}]
    stream = Dataset.from_list(rows).to_iterable_dataset()
    streamed = GRPOTrainer(build_tiny_model(char_tokenizer, hidden_size=32, intermediate_size=64, seed=0),
                           [distinct_chars], args=_config(tmp_path / "a", num_generations_eval=2),
                           train_dataset=Dataset.from_list([{"prompt": f"p{i}"} for i in range(6)]),
                           eval_dataset=stream, processing_class=char_tokenizer)
    assert streamed.eval_dataset is stream  # TRL's attribute: the object given (the trainer reads it once)
    listed = _trainer(tmp_path / "b", char_tokenizer, eval_rows=rows, num_generations_eval=2)
    a, b = streamed.evaluate(), listed.evaluate()
    assert a["eval_reward"] == b["eval_reward"]
    assert a["eval_completions/mean_length"] == b["eval_completions/mean_length"]
