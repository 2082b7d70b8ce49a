"""Exact resume: a run killed (SIGKILL) at random moments, also while writing a checkpoint and in the middle of a
round, then resumed until the end, finishes bitwise equal to an uninterrupted run."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from reasonrl.config import ConfigError
from reasonrl.tiny import build_tiny_model

TIMING_KEYS = {"step_time", "rollout_time", "tokens_per_second"}

# The run the tests kill: the tiny model, LoRA with dropout (so the global RNG matters too), beta > 0.
# RESUME_TEST_PAUSE_AT=N makes the write of checkpoint-N stop just before its rename (all files written into the
# hidden .checkpoint-N.tmp folder) after touching RESUME_TEST_MARKER, so that the test can kill it there.
SCRIPT = '''
import json, os, sys, time

import reasonrl.checkpoint as ckpt

pause_at, marker = os.environ.get("RESUME_TEST_PAUSE_AT"), os.environ.get("RESUME_TEST_MARKER")
if pause_at:
    fsync_tree = ckpt._fsync_tree

    def paused(path):
        if os.path.basename(path) == f".checkpoint-{pause_at}.tmp":
            open(marker, "w").close()
            time.sleep(600)
        fsync_tree(path)

    ckpt._fsync_tree = paused

from datasets import Dataset
from peft import LoraConfig

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.tiny import build_char_tokenizer, build_tiny_model


def distinct_chars(completions, **kwargs):
    return [float(len(set(c))) for c in completions]


settings = json.loads(sys.argv[1])
tokenizer = build_char_tokenizer()
model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64, seed=0)
lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
dataset = Dataset.from_list([{"prompt": f"Say {i}:"} for i in range(10)])
trainer = GRPOTrainer(model, [distinct_chars], args=GRPOConfig(**settings), train_dataset=dataset,
                      processing_class=tokenizer, peft_config=lora)
trainer.train(resume_from_checkpoint=ckpt.latest_checkpoint(settings["output_dir"]) is not None)
'''

# adapt_cpu_threads=False: bitwise equality holds at a fixed thread count, and a loaded CI machine would change it
BASE = dict(num_generations=2, max_completion_length=6, learning_rate=1e-2, beta=0.04, gradient_checkpointing=False,
            logging_steps=1000, save_steps=1, save_total_limit=2, optim="adamw_torch", seed=3, adapt_cpu_threads=False)
# rounds of 4 optimizer steps: 2 passes (num_iterations) x 2 windows (steps_per_generation = 2 x accumulation)
MULTI_STEP_ROUNDS = dict(BASE, per_device_train_batch_size=2, gradient_accumulation_steps=2, steps_per_generation=4,
                         num_iterations=2, max_steps=19)
ONE_STEP_ROUNDS = dict(BASE, per_device_train_batch_size=4, max_steps=24)


def _start(script, settings, out, log, **env):
    with open(log, "w") as stderr:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen([sys.executable, str(script), json.dumps({**settings, "output_dir": str(out)})],
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def _tail(log):
    with open(log) as handle:
        return handle.read()[-3000:]


def _rows(path):
    """A log file's rows without the timing keys, as canonical JSON (NaN compares equal to NaN this way)."""
    with open(path) as handle:
        rows = [json.loads(line) for line in handle]
    return [json.dumps({k: v for k, v in row.items() if k not in TIMING_KEYS}, sort_keys=True) for row in rows]


def _step(path):
    return None if path is None else int(os.path.basename(path).split("-")[1])


def _logged_steps(out):
    try:
        with open(out / "metrics.jsonl") as handle:
            return sum(1 for line in handle if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def _wait_for(condition, process, log, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            return False  # ended before the moment came
        if time.time() > deadline:
            process.kill()
            pytest.fail(f"timed out; stderr: {_tail(log)}")
        time.sleep(0.002)
    return True


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _check_latest_is_whole(out):
    """What --resume would pick is a complete checkpoint of the step in its name; half-written ones are hidden."""
    latest = latest_checkpoint(str(out))
    if latest is not None:
        state = json.load(open(os.path.join(latest, "trainer_state.json")))
        assert state["global_step"] == _step(latest)
        assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pt"} <= set(os.listdir(latest))
    assert all(not os.path.basename(p).startswith(".") for p in list_checkpoints(str(out)))
    return latest


def _kill_and_resume(tmp_path, settings, num_random_kills, seed):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    total, steps_per_round = settings["max_steps"], _steps_per_round(settings)

    reference = _start(script, settings, tmp_path / "reference", tmp_path / "reference.log")
    assert reference.wait(timeout=300) == 0, _tail(tmp_path / "reference.log")

    out, log, rng, kills, resumed_from = tmp_path / "killed", tmp_path / "killed.log", random.Random(seed), [], []
    for attempt in range(num_random_kills):
        start = _step(_check_latest_is_whole(out)) or 0
        if start:
            resumed_from.append((start, os.path.isfile(out / f"checkpoint-{start}" / "round.json")))
        process = _start(script, settings, out, log)
        # a random moment after this process saved 1 or 2 checkpoints (so after the first), then 0-0.15 s on
        target, delay = start + rng.randint(1, 2), rng.uniform(0.0, 0.15)
        if not _wait_for(lambda target=target: (_step(latest_checkpoint(str(out))) or 0) >= target, process, log):
            pytest.fail(f"the run ended before kill {attempt}: {_tail(log)}")
        time.sleep(delay)
        _kill(process)
        kills.append({"after_checkpoint": target, "delay": round(delay, 3), "rows": _logged_steps(out),
                      "latest": _step(latest_checkpoint(str(out))),
                      "writing": [name for name in os.listdir(out) if name.endswith(".tmp")]})

    # a kill while a checkpoint is being written, so that the one before it is in the middle of a round
    start = _step(_check_latest_is_whole(out))
    pause_at = next((step for step in range(start + 2, total) if steps_per_round == 1 or (step - 1) % steps_per_round),
                    None)
    assert pause_at is not None, f"the random kills went too far ({kills}); raise max_steps"
    marker = tmp_path / "paused"
    process = _start(script, settings, out, log, RESUME_TEST_PAUSE_AT=str(pause_at), RESUME_TEST_MARKER=str(marker))
    resumed_from.append((start, os.path.isfile(out / f"checkpoint-{start}" / "round.json")))
    assert _wait_for(marker.exists, process, log), _tail(log)
    _kill(process)
    kills.append({"during_write_of": pause_at})
    staging = out / f".checkpoint-{pause_at}.tmp"
    assert staging.is_dir() and "adapter_model.safetensors" in os.listdir(staging)  # written, never renamed
    assert not (out / f"checkpoint-{pause_at}").exists()
    assert _check_latest_is_whole(out) == str(out / f"checkpoint-{pause_at - 1}")  # the half-written one is skipped
    # ... for one in the middle of a round (rounds of one step end at every checkpoint and hold no round)
    assert os.path.isfile(out / f"checkpoint-{pause_at - 1}" / "round.json") == (steps_per_round > 1)

    resumed_from.append((pause_at - 1, steps_per_round > 1))
    process = _start(script, settings, out, log)
    assert process.wait(timeout=300) == 0, _tail(log)
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]  # the stale staging folder was replaced

    # bitwise: the final adapter, and every logged number (timings aside)
    expected = load_file(str(tmp_path / "reference" / f"checkpoint-{total}" / "adapter_model.safetensors"))
    got = load_file(str(out / f"checkpoint-{total}" / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert all(expected[name].abs().sum() > 0 for name in expected if "lora_B" in name)  # it did train
    reference_rows = _rows(tmp_path / "reference" / "metrics.jsonl")
    assert len(reference_rows) == total
    assert _rows(out / "metrics.jsonl") == reference_rows
    assert _rows(out / "completions.jsonl") == _rows(tmp_path / "reference" / "completions.jsonl")
    print(f"\nkills: {kills}\nresumed from (step, mid-round): {resumed_from}")
    return kills, resumed_from


def _steps_per_round(settings):
    spg = settings.get("steps_per_generation") or settings.get("gradient_accumulation_steps", 1)
    return settings.get("num_iterations", 1) * spg // settings.get("gradient_accumulation_steps", 1)


def test_killed_at_random_moments_and_while_saving_resumes_bitwise_equal_rounds_of_4_steps(tmp_path):
    kills, resumed_from = _kill_and_resume(tmp_path, MULTI_STEP_ROUNDS, num_random_kills=3, seed=0)
    assert len(kills) == 4
    assert any(mid_round for _, mid_round in resumed_from)


@pytest.mark.slow
@pytest.mark.parametrize("settings, seed", [(dict(MULTI_STEP_ROUNDS, max_steps=30), 1), (ONE_STEP_ROUNDS, 2)],
                         ids=["rounds-of-4-steps", "one-step-rounds"])
def test_more_kills(tmp_path, settings, seed):
    kills, _ = _kill_and_resume(tmp_path, settings, num_random_kills=6, seed=seed)
    assert len(kills) == 7


# ---------------------------------------------------------------- in one process


def _trainer(out, char_tokenizer, **overrides):
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=2, max_completion_length=5,
                    max_steps=6, learning_rate=1e-2, beta=0.04, gradient_checkpointing=False, logging_steps=1000,
                    save_steps=1, optim="adamw_torch", num_iterations=2, seed=5)
    settings.update(overrides)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    return GRPOTrainer(build_tiny_model(char_tokenizer, hidden_size=32, intermediate_size=64, seed=0),
                       [lambda completions, **kw: [float(len(set(c))) for c in completions]],
                       args=GRPOConfig(**settings), train_dataset=Dataset.from_list([{"prompt": f"p{i}"}
                                                                                     for i in range(6)]),
                       processing_class=char_tokenizer, peft_config=lora)


def _resume_copy(source, target, step, char_tokenizer, drop=(), **overrides):
    """A copy of the run folder as it was when checkpoint-`step` was the latest, resumed to the end."""
    shutil.copytree(source, target)
    for path in list_checkpoints(str(target)):
        if _step(path) > step:
            shutil.rmtree(path)
    for name in drop:
        os.remove(target / f"checkpoint-{step}" / name)
    trainer = _trainer(target, char_tokenizer, **overrides)
    trainer.train(resume_from_checkpoint=True)
    return trainer


def test_a_mid_round_checkpoint_holds_the_round_and_resumes_it_exactly(tmp_path, char_tokenizer):
    reference = _trainer(tmp_path / "a", char_tokenizer)  # rounds of 2 steps (num_iterations=2): 3 rounds
    reference.train()
    run = tmp_path / "a"
    assert [os.path.isfile(run / f"checkpoint-{s}" / "round.json") for s in range(1, 7)] == [True, False] * 3
    values = json.load(open(run / "checkpoint-3" / "round.json"))
    assert (values["next_window"], values["num_windows"]) == (1, 2)
    tensors = load_file(str(run / "checkpoint-3" / "round.safetensors"))
    assert tensors["orders"].shape == (2, 4) and sorted(tensors["orders"][1].tolist()) == [0, 1, 2, 3]
    assert tensors["rollout.completion_ids"].shape[0] == 4 and tensors["batch.old_logps"].dtype == torch.float32
    assert "batch.ref_logps" in tensors and "batch.advantages" in tensors and "rollout.is_truncated" in tensors
    assert len(values["rollout.texts"]) == 4 and values["metrics"]["rollout_tokens"] == 0

    final = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    rows = _rows(run / "metrics.jsonl")
    resumed = _resume_copy(run, tmp_path / "b", 3, char_tokenizer)
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())
    assert _rows(tmp_path / "b" / "metrics.jsonl") == rows
    assert [row["step"] for row in resumed.log_history] == [4, 5, 6, 6]  # the steps, then train()'s summary row
    assert resumed.log_history[-1]["train_loss"] == sum(row["loss"] for row in resumed.log_history[:3]) / 3

    # the same checkpoint without its round starts a new round at step 4: a different run (what resume did before)
    restarted = _resume_copy(run, tmp_path / "c", 3, char_tokenizer, drop=("round.json", "round.safetensors"))
    assert not all(torch.equal(final[k], v) for k, v in restarted.model.state_dict().items())
    assert _rows(tmp_path / "c" / "metrics.jsonl")[3:] != rows[3:]


def test_resuming_a_round_with_other_round_settings_is_refused(tmp_path, char_tokenizer):
    _trainer(tmp_path / "a", char_tokenizer, max_steps=3).train()
    with pytest.raises(ConfigError, match="middle of a round of num_iterations=2; resume it with the same"):
        _resume_copy(tmp_path / "a", tmp_path / "b", 3, char_tokenizer, num_iterations=1)
    with pytest.raises(ConfigError, match="round of 2 optimizer steps but these settings make rounds of 4"):
        _resume_copy(tmp_path / "a", tmp_path / "c", 3, char_tokenizer, per_device_train_batch_size=2,
                     gradient_accumulation_steps=1, steps_per_generation=2)


def test_a_half_written_log_line_from_a_killed_run_is_dropped(tmp_path, char_tokenizer):
    _trainer(tmp_path / "a", char_tokenizer, max_steps=4).train()
    rows = _rows(tmp_path / "a" / "metrics.jsonl")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    with open(tmp_path / "b" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": 0.1')  # killed in the middle of a write
    trainer = _trainer(tmp_path / "b", char_tokenizer, max_steps=4)
    trainer.train(resume_from_checkpoint=True)
    assert _rows(tmp_path / "b" / "metrics.jsonl") == rows


class _Saves:
    """Stand-ins for what save_checkpoint writes."""

    def save_pretrained(self, folder, **kwargs):
        with open(os.path.join(folder, "adapter_model.safetensors"), "w") as handle:
            handle.write("weights")

    def state_dict(self):
        return {"x": torch.zeros(1)}


def test_half_written_or_half_deleted_checkpoints_are_never_the_latest(tmp_path):
    def save(step, **kwargs):
        return save_checkpoint(str(tmp_path), step, model=_Saves(), tokenizer=None, optimizer=_Saves(),
                               scheduler=_Saves(), trainer_state={"global_step": step}, config_yaml="", **kwargs)

    save(1)
    save(2)
    os.makedirs(tmp_path / ".checkpoint-3.tmp")  # killed while writing
    (tmp_path / ".checkpoint-3.tmp" / "trainer_state.json").write_text("{}")
    os.makedirs(tmp_path / "checkpoint-4")  # a folder with the name but no trainer_state.json
    os.makedirs(tmp_path / ".checkpoint-9.tmp")  # a kill while writing a step never reached again
    os.makedirs(tmp_path / ".checkpoint-0.old")  # ... or while deleting
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    # save_total_limit sets the old ones aside under a hidden name before deleting them; re-saving a step too; the
    # leftovers of killed runs go at the next save
    save(3, save_total_limit=1)
    save(3, save_total_limit=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-4"]
    assert list_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-3")]
