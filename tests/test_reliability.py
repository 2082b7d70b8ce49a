"""Reliability: failing or hanging rewards, non-finite steps, and Ctrl-C / SIGTERM, on a tiny model."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset

import reasonrl.micro_step as micro_step_module
import reasonrl.models as models_module
from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.callbacks import TrainerCallback
from reasonrl.guards import MAX_CONSECUTIVE_SKIPS, TrainingDiverged
from reasonrl.scoring import RewardError
from reasonrl.tiny import build_tiny_model


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def _trainer(tmp_path, char_tokenizer, reward_funcs, **overrides):
    # 2 prompts x G=2 per round, one optimizer step per round
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=4, max_steps=3, learning_rate=1e-2, gradient_checkpointing=False,
                    logging_steps=100, save_steps=100, optim="adamw_torch")
    settings.update(overrides)
    dataset = Dataset.from_list([{"prompt": f"p{i}"} for i in range(6)])
    return GRPOTrainer(build_tiny_model(char_tokenizer, hidden_size=32, intermediate_size=64, seed=0),
                       reward_funcs, args=GRPOConfig(**settings), train_dataset=dataset,
                       processing_class=char_tokenizer)


class _AfterEachStep(TrainerCallback):
    """Calls `fn()` at every on_step_end (after the optimizer step, before the step's row is logged)."""

    def __init__(self, fn):
        self.fn = fn

    def on_step_end(self, args, state, control, **kwargs):
        self.fn()


def _checkpoint_files(run_dir):
    """{checkpoint folder: {file: (size, mtime_ns)}}, to show that folders were left untouched."""
    found = {}
    for name in sorted(os.listdir(run_dir)):
        if name.startswith("checkpoint-"):
            folder = os.path.join(run_dir, name)
            found[name] = {f: (os.stat(os.path.join(folder, f)).st_size, os.stat(os.path.join(folder, f)).st_mtime_ns)
                           for f in sorted(os.listdir(folder))}
    return found


# ---------------------------------------------------------------- rewards that fail


def test_a_reward_that_raises_on_some_calls_is_counted_and_logged_once(tmp_path, char_tokenizer, caplog):
    calls = []

    def flaky(completions, **kwargs):
        calls.append(len(completions))
        if len(calls) in (1, 3):  # rounds 1 and 3
            raise KeyError("answer")
        return [1.0] * len(completions)

    seen_rewards = []
    trainer = _trainer(tmp_path, char_tokenizer, [flaky, length_reward], reward_weights=[1.0, 0.0])
    trainer.add_callback(_AfterEachStep(lambda: seen_rewards.append(trainer._last_completions[0]["rewards"]["flaky"])))
    with caplog.at_level(logging.WARNING, logger="reasonrl"):
        history = trainer.train()
    assert [row["step"] for row in history] == [1, 2, 3]  # training went on
    assert [row["rewards/flaky/errors"] for row in history] == [4, 0, 4]  # all 4 values of rounds 1 and 3
    assert [row["rewards/length_reward/errors"] for row in history] == [0, 0, 0]
    assert math.isnan(history[0]["rewards/flaky/mean"]) and history[1]["rewards/flaky/mean"] == 1.0
    assert seen_rewards == [None, 1.0, None]  # logged as None in completions.jsonl
    warnings = [r for r in caplog.records if "'flaky' raised KeyError" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is not None  # the traceback, once for two failures
    assert "KeyError: 'answer'" in caplog.text and "in flaky" in caplog.text


def test_rows_every_function_failed_on_get_advantage_zero(tmp_path, char_tokenizer):
    def always_fails(completions, **kwargs):
        raise RuntimeError("service down")

    advantages = []
    trainer = _trainer(tmp_path, char_tokenizer, [always_fails, length_reward], max_steps=1,
                       max_reward_error_fraction=0.5)
    original = trainer._advantages

    def spy(rollout, rewards, rewards_per_func):
        batch = original(rollout, rewards, rewards_per_func)
        advantages.append(batch.advantages.clone())
        return batch

    trainer._advantages = spy
    history = trainer.train()  # half the values failed: 0.5 is not more than 0.5
    assert history[0]["rewards/always_fails/errors"] == 4

    # only the failing function: every row unscorable -> every advantage 0; 100% > 1.0 is impossible, so it trains
    trainer = _trainer(tmp_path / "b", char_tokenizer, [always_fails], max_steps=1, max_reward_error_fraction=1.0)
    original = trainer._advantages
    trainer._advantages = spy
    history = trainer.train()
    assert torch.equal(advantages[-1], torch.zeros(4))
    assert math.isnan(history[0]["reward"]) and history[0]["rewards/always_fails/errors"] == 4


def test_a_reward_that_always_raises_stops_the_run_and_keeps_the_checkpoints(tmp_path, char_tokenizer):
    state, before, run_dir = {"broken": False}, {}, tmp_path / "run"

    def breaks_later(completions, **kwargs):
        if state["broken"]:
            before.update(_checkpoint_files(run_dir))  # as they were when the failing round began
            raise ConnectionError("judge unreachable")
        return [float(len(c)) for c in completions]

    trainer = _trainer(tmp_path, char_tokenizer, [breaks_later], save_steps=1, max_steps=4)
    trainer.add_callback(_AfterEachStep(lambda: state.update(broken=True)))  # fails from round 2 on
    with pytest.raises(RewardError) as failure:
        trainer.train()
    message = str(failure.value)
    assert "\n" not in message
    assert "'breaks_later' raised ConnectionError: judge unreachable" in message
    assert "4 of 4 reward values" in message and "max_reward_error_fraction=0.5" in message
    assert list(_checkpoint_files(run_dir)) == ["checkpoint-1"]  # no checkpoint of the failing state
    time.sleep(0.01)
    assert _checkpoint_files(run_dir) == {"checkpoint-1": before["checkpoint-1"]}  # untouched (sizes, mtimes)
    assert [json.loads(line)["step"] for line in open(run_dir / "metrics.jsonl")] == [1]


def test_a_hanging_reward_times_out_and_counts_as_errors(tmp_path, char_tokenizer):
    def hangs(completions, **kwargs):
        time.sleep(120)
        return [0.0] * len(completions)

    trainer = _trainer(tmp_path, char_tokenizer, [hangs, length_reward], max_steps=2, reward_timeout=0.5)
    start = time.perf_counter()
    history = trainer.train()
    elapsed = time.perf_counter() - start
    assert elapsed < 60  # two rounds: each waited 0.5 s, not 120 s (a wide margin for a busy machine)
    assert [row["rewards/hangs/errors"] for row in history] == [4, 4]
    assert [row["rewards/length_reward/errors"] for row in history] == [0, 0]
    assert all(math.isnan(row["rewards/hangs/mean"]) for row in history)


def test_a_fast_reward_under_a_timeout_is_scored_normally(tmp_path, char_tokenizer):
    def ranks(completions, **kwargs):
        return [float(i) for i in range(len(completions))]

    trainer = _trainer(tmp_path, char_tokenizer, [ranks], max_steps=1, reward_timeout=30)
    history = trainer.train()
    assert history[0]["rewards/ranks/errors"] == 0
    assert history[0]["rewards/ranks/mean"] == 1.5  # (0 + 1 + 2 + 3) / 4


def test_a_reward_returning_nan_is_a_bug_named_at_once(tmp_path, char_tokenizer):
    def gives_nan(completions, **kwargs):
        return [float("nan")] * len(completions)

    with pytest.raises(RewardError, match="reward function 'gives_nan' returned NaN; return None"):
        _trainer(tmp_path, char_tokenizer, [gives_nan, length_reward], max_reward_error_fraction=1.0).train()


def test_a_reward_returning_the_wrong_count_is_still_a_hard_error(tmp_path, char_tokenizer):
    def too_few(completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardError, match="'too_few' returned 1 values for 4 completions"):
        _trainer(tmp_path, char_tokenizer, [too_few], max_reward_error_fraction=1.0).train()


# ---------------------------------------------------------------- non-finite steps


def _nan_loss_on(monkeypatch, calls_to_poison):
    original, calls = micro_step_module.grpo_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss, metrics = original(*args, **kwargs)
        return (loss * float("nan") if len(calls) in calls_to_poison else loss), metrics

    monkeypatch.setattr(micro_step_module, "grpo_loss", poisoned)


def _weights_after_each_step(trainer):
    snapshots = []
    trainer.add_callback(_AfterEachStep(lambda: snapshots.append([p.detach().clone()
                                                                  for p in trainer.model.parameters()])))
    return snapshots


def test_a_nan_loss_skips_that_step_only(tmp_path, char_tokenizer, monkeypatch, caplog):
    _nan_loss_on(monkeypatch, {2})  # one micro-batch in one chunk per step: the 2nd call is step 2
    # (the pre-flight memory check's micro-step would be call 1)
    trainer = _trainer(tmp_path, char_tokenizer, [length_reward], max_steps=3, backward_chunk_rows=0,
                       skip_memory_check=True)
    snapshots = _weights_after_each_step(trainer)
    with caplog.at_level(logging.WARNING, logger="reasonrl"):
        history = trainer.train()
    assert [row["skipped_steps"] for row in history] == [0, 1, 1]
    assert math.isnan(history[1]["loss"])
    assert all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))  # step 2 changed nothing
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # step 3 trained again
    # the schedule did not move on the skipped step either (linear decay over 3 steps from 1e-2)
    assert [row["learning_rate"] for row in history] == pytest.approx([1e-2 * 2 / 3, 1e-2 * 2 / 3, 1e-2 / 3])
    assert "step 2: non-finite loss" in caplog.text
    state = json.load(open(tmp_path / "run" / "checkpoint-3" / "trainer_state.json"))
    assert state["skipped_steps"] == 1


def test_consecutive_nan_steps_stop_with_a_checkpoint_of_the_last_good_weights(tmp_path, char_tokenizer,
                                                                               monkeypatch):
    assert MAX_CONSECUTIVE_SKIPS == 3
    _nan_loss_on(monkeypatch, {2, 3, 4})
    trainer = _trainer(tmp_path, char_tokenizer, [length_reward], max_steps=10, backward_chunk_rows=0,
                       skip_memory_check=True)
    snapshots = _weights_after_each_step(trainer)
    with pytest.raises(TrainingDiverged) as failure:
        trainer.train()
    message = str(failure.value)
    assert "\n" not in message and "steps 2-4" in message and "checkpoint-4" in message and "--resume" in message
    assert trainer.state.global_step == 4
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))
    names = [name for name, _ in trainer.model.named_parameters()]
    step1 = dict(zip(names, snapshots[0]))
    assert all(torch.equal(saved[name], step1[name]) for name in saved if name in step1)  # step 1's weights
    assert json.load(open(tmp_path / "run" / "checkpoint-4" / "trainer_state.json"))["skipped_steps"] == 3


# ---------------------------------------------------------------- Ctrl-C and SIGTERM


REWARD_FILE = '''
def distinct_chars(completions, **kwargs):
    return [float(len(set(c))) for c in completions]
'''


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_a_signal_saves_the_last_completed_step_and_says_how_to_resume(tmp_path, tiny_model_dir, signum, exit_code):
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    with open(tmp_path / "train.jsonl", "w") as handle:
        handle.writelines(json.dumps({"prompt": f"Say {i}:"}) + "\n" for i in range(8))
    out = tmp_path / "out"
    args = [f"model_name_or_path={tiny_model_dir}", f"dataset_name={tmp_path / 'train.jsonl'}",
            f"reward_funcs=[{tmp_path / 'rewards.py'}:distinct_chars]", "per_device_train_batch_size=4",
            "num_generations=2", "max_completion_length=6", "max_steps=1000", "save_steps=1000", "logging_steps=1",
            "gradient_checkpointing=false", "optim=adamw_torch", f"output_dir={out}"]
    process = subprocess.Popen([sys.executable, "-m", "reasonrl", "train", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == exit_code, stderr[-2000:]
    steps = [json.loads(line)["step"] for line in open(metrics)]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 1000
    checkpoint = out / f"checkpoint-{last}"
    assert json.load(open(checkpoint / "trainer_state.json"))["global_step"] == last
    assert [name for name in os.listdir(out) if name.startswith("checkpoint-")] == [f"checkpoint-{last}"]
    final_line = stderr.strip().splitlines()[-1]
    assert final_line.startswith("reasonrl train: interrupted after step")
    assert str(checkpoint) in final_line and "reasonrl train ... --resume" in final_line
    if signum == signal.SIGTERM:  # and resuming as told continues from there
        resumed = subprocess.run([sys.executable, "-m", "reasonrl", "train", *args, f"max_steps={last + 1}",
                                  "--resume"], capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert [json.loads(line)["step"] for line in open(metrics)] == list(range(1, last + 2))


# ---------------------------------------------------------------- trust_remote_code


@pytest.mark.parametrize("options, expected", [([], False), (["trust_remote_code=true"], True),
                                               (["--trust-remote-code"], True), (["trust_remote_code=false"], False)],
                         ids=["default", "key=value", "flag", "false"])
def test_train_runs_model_code_from_the_hub_only_when_asked(tmp_path, monkeypatch, capsys, options, expected):
    from reasonrl.cli import main
    from reasonrl.models import ModelLoadError

    seen = {}

    def load_model(name, **kwargs):  # stands in for from_pretrained: records what it was asked, then stops the run
        seen["trust_remote_code"] = kwargs["trust_remote_code"]
        raise ModelLoadError("stopped before loading")

    # the config is read first (its positions are checked before the weights load): the same flag must reach it
    monkeypatch.setattr(models_module, "load_model_config", load_model)
    (tmp_path / "train.jsonl").write_text('{"prompt": "Say 1:"}\n')
    code = main(["train", "model_name_or_path=org/remote-code-model", f"dataset_name={tmp_path / 'train.jsonl'}",
                 "reward_funcs=[length]", f"output_dir={tmp_path / 'out'}", *options])
    assert code == 2 and "stopped before loading" in capsys.readouterr().err
    assert seen == {"trust_remote_code": expected}
    assert GRPOConfig().trust_remote_code is False
