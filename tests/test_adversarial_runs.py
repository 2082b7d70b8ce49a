"""Adversarial runs, part 2: rewards that misbehave, output folders and checkpoints in the way, numbers that poison
training. Each case ends in one `error:` line (exit 2) or trains correctly, and nothing the user owns is lost.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main, snapshot

REWARDS = '''
import os
import sys
import time

import numpy as np
import torch


def length(completions, **kwargs):
    return [float(len(c)) for c in completions]


def calls_sys_exit(completions, **kwargs):
    sys.exit(0)


def calls_os_exit(completions, **kwargs):
    os._exit(3)


def empties_then_scores(completions, **kwargs):
    n = len(completions)
    completions.clear()
    return [0.0] * n


def counts(completions, **kwargs):
    return [float(len(completions))] * len(completions)


def rewrites_prompts(prompts, completions, **kwargs):
    prompts[:] = ["rewritten"] * len(prompts)
    return [0.0] * len(completions)


def sees_prompts(prompts, completions, **kwargs):
    return [float(p.startswith("Say")) for p in prompts]


def moves_the_step(completions, trainer_state, **kwargs):
    trainer_state.global_step = 999
    return [0.0] * len(completions)


def plus_inf(completions, **kwargs):
    return [float("inf")] * len(completions)


def minus_inf(completions, **kwargs):
    return [float("-inf")] * len(completions)


def too_big(completions, **kwargs):
    return [1e39] * len(completions)


def almost_max(completions, **kwargs):
    return [3e38] * len(completions)


def numpy_1d(completions, **kwargs):
    return np.arange(len(completions), dtype=np.float64)


def numpy_2d(completions, **kwargs):
    return np.ones((len(completions), 2))


def torch_1d(completions, **kwargs):
    return torch.arange(len(completions), dtype=torch.float32)


def torch_2d(completions, **kwargs):
    return torch.ones(len(completions), 3)


def generator(completions, **kwargs):
    return (1.0 for _ in completions)


def a_dict(completions, **kwargs):
    return {"reward": 1.0}


def booleans(completions, **kwargs):
    return [i % 2 == 0 for i in range(len(completions))]


def number_strings(completions, **kwargs):
    return ["1.0"] * len(completions)


def always_none(completions, **kwargs):
    return [None] * len(completions)


def constant(completions, **kwargs):
    return [1.0] * len(completions)


def positional_only(completions):
    return [0.0] * len(completions)


def hangs_after_step_1(completions, trainer_state, **kwargs):
    if trainer_state.global_step >= 1:
        time.sleep(3600)
    return [float(len(c)) for c in completions]


class NotCallable:
    pass
'''


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adversarial-runs")
    (root / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}:"}) + "\n" for i in range(8)))
    (root / "rewards.py").write_text(REWARDS)
    (root / "syntax_error.py").write_text("def f(:\n")
    (root / "raises_on_import.py").write_text("raise RuntimeError('no config')\n")
    (root / "exits_on_import.py").write_text("import sys\nsys.exit(1)\n")
    return root


def _args(ws, out, *extra, rewards=("length",)):
    specs = ",".join(f"{ws / 'rewards.py'}:{name}" for name in rewards)
    return [f"model_name_or_path={os.environ.get('RR_TINY_MODEL')}", f"dataset_name={ws / 'train.jsonl'}",
            f"reward_funcs=[{specs}]", "max_steps=2", "max_completion_length=4", "gradient_checkpointing=false",
            "num_generations=2", "per_device_train_batch_size=4", "optim=adamw_torch", "logging_steps=1",
            "max_prompt_length=32", "learning_rate=1e-3", "use_peft=true", "lora_r=4", f"output_dir={out}", *extra]


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("RR_TINY_MODEL", tiny_model_dir)


def _metrics(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


# ---------------------------------------------------------------- rewards


@pytest.mark.parametrize("name", ["calls_sys_exit", "calls_os_exit"])
def test_a_reward_that_exits_fails_its_call_and_the_run_goes_on(ws, capsys, caplog, tmp_path, name):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, rewards=(name, "length"))])
    assert code == 0, err[-2000:]
    assert [row[f"rewards/{name}/errors"] for row in _metrics(out)] == [4, 4]  # every value of both rounds
    assert f"reward function '{name}' raised SystemExit" in caplog.text


def test_a_reward_that_always_exits_stops_the_run_with_a_message(ws, capsys, tmp_path):
    code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "run", rewards=("calls_sys_exit",))])
    assert_one_line_error(code, err, "train", ["reward function 'calls_sys_exit' raised SystemExit",
                                               "max_reward_error_fraction=0.5"])


def test_a_reward_emptying_the_completions_does_not_change_what_the_next_one_sees(ws, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, rewards=("empties_then_scores", "counts"))])
    assert code == 0, err[-2000:]
    assert [row["rewards/counts/mean"] for row in _metrics(out)] == [4.0, 4.0]


def test_a_reward_rewriting_the_prompts_does_not_change_what_the_next_one_sees(ws, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, rewards=("rewrites_prompts", "sees_prompts"))])
    assert code == 0, err[-2000:]
    assert [row["rewards/sees_prompts/mean"] for row in _metrics(out)] == [1.0, 1.0]


def test_a_reward_moving_the_trainer_state_does_not_move_the_run(ws, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, rewards=("moves_the_step", "length"))])
    assert code == 0, err[-2000:]
    assert [row["step"] for row in _metrics(out)] == [1, 2]


@pytest.mark.parametrize("name, phrases", [
    ("plus_inf", ["reward function 'plus_inf' returned inf, which is not a finite float32", "-100, not -inf"]),
    ("minus_inf", ["reward function 'minus_inf' returned -inf"]),
    ("too_big", ["reward function 'too_big' returned 1e+39, which is not a finite float32"]),
    ("numpy_2d", ["reward function 'numpy_2d' returned a ndarray of shape (2,) per completion"]),
    ("torch_2d", ["reward function 'torch_2d' returned a Tensor of shape (3,) per completion"]),
    ("a_dict", ["reward function 'a_dict' returned a dict", "one float (or None) per completion"]),
    ("number_strings", ["reward function 'number_strings' returned a str ('1.0')"]),
    ("positional_only", ["reward 'positional_only' takes (completions)", "add **kwargs to its parameters"]),
], ids=lambda value: value if isinstance(value, str) else None)
def test_rewards_breaking_the_contract(ws, capsys, tmp_path, name, phrases):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, rewards=(name,))])
    assert_one_line_error(code, err, "train", phrases)
    assert not list(out.glob("checkpoint-*")) if out.exists() else True


def test_rewards_whose_weighted_sum_overflows_float32(ws, capsys, tmp_path):
    code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "run", rewards=("almost_max", "almost_max"))])
    assert_one_line_error(code, err, "train", ["the weighted sum of the rewards", "overflows float32"])


@pytest.mark.parametrize("name, mean", [("numpy_1d", 1.5), ("torch_1d", 1.5), ("generator", 1.0),
                                        ("booleans", 0.5)])
def test_rewards_in_other_containers_count_as_numbers(ws, capsys, tmp_path, name, mean):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, rewards=(name,))])
    assert code == 0, err[-2000:]
    assert [row[f"rewards/{name}/mean"] for row in _metrics(out)] == [mean, mean]


@pytest.mark.parametrize("name, phrase", [
    ("always_none", "no completion could be scored: every reward function returned None"),
    ("constant", "every completion of the round got the reward 1, so the 2 completions of each of the"),
])
def test_a_round_without_learning_signal_is_said_once(ws, capsys, caplog, tmp_path, name, phrase):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, "max_steps=3", rewards=(name,))])
    assert code == 0, err[-2000:]
    assert caplog.text.count(phrase) == 1  # at the 1st round in a row, not the 2nd or 3rd


@pytest.mark.parametrize("spec, phrases", [
    ("{ws}/syntax_error.py:f", ["could not import", "SyntaxError"]),
    ("{ws}/raises_on_import.py:f", ["could not be imported", "RuntimeError: no config"]),
    ("{ws}/exits_on_import.py:f", ["could not be imported", "SystemExit"]),
    ("{ws}/rewards.py:NotCallable", ["could not be constructed", "not callable"]),
    ("{ws}/rewards.py:", ["reward_funcs must be list[str]"]),  # YAML reads `[path:]` as a mapping
], ids=["syntax-error", "raises-on-import", "exits-on-import", "class-without-call", "no-function"])
def test_reward_files_that_do_not_give_a_function(ws, capsys, tmp_path, spec, phrases):
    argv = _args(ws, tmp_path / "run", f"reward_funcs=[{spec.replace('{ws}', str(ws))}]")
    code, err = run_main(capsys, ["train", *argv])
    message = assert_one_line_error(code, err, "train", [])
    assert any(phrase in message for phrase in phrases), message


def _run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "reasonrl", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT], [signal.SIGTERM, signal.SIGINT]],
                         ids=["sigterm", "ctrl-c", "sigterm-then-ctrl-c"])
def test_a_hanging_reward_without_timeout_does_not_hang_a_stop(ws, tmp_path, signals):
    """The reward never returns from step 2's round; a signal must still end the run at once, with step 1 saved."""
    out = tmp_path / "run"
    process = _run_cli("train", *_args(ws, out, "max_steps=5", rewards=("hangs_after_step_1",)))
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)  # into the hanging reward
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.2)
    _, stderr = process.communicate(timeout=60)  # not an hour
    assert "Traceback" not in stderr
    if len(signals) == 1:
        assert process.returncode == 128 + signals[0], stderr[-2000:]
        assert os.path.isfile(out / "checkpoint-1" / "trainer_state.json")
        assert "interrupted after step 1" in stderr.strip().splitlines()[-1]
    else:  # the second signal stops at once, maybe in the middle of saving: then no checkpoint, but no torn one
        assert process.returncode in (130, 143), stderr[-2000:]
        from reasonrl.checkpoint import list_checkpoints, validate_checkpoint

        for checkpoint in list_checkpoints(str(out)):
            validate_checkpoint(checkpoint)


def test_a_second_signal_stops_at_once_whatever_its_kind():
    from reasonrl.guards import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # the first only raises the flag
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_a_signal_outside_training_ends_the_command_with_the_shells_code(signum, code):
    """Outside train()'s own handling (loading a model, evaluating) a signal ends the process entry with 128 + signal
    and no traceback, not a silent kill (SIGTERM's default) or a KeyboardInterrupt traceback."""
    # Ctrl-C as in a terminal: a background job (make test started with &) inherits SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored
    script = ("import signal, time, reasonrl.cli as cli\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "def slow(argv=None):\n    print('ready', flush=True)\n    time.sleep(60)\n    return 0\n"
              "cli.main = slow\ncli.run()\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code and "Traceback" not in stderr, (process.returncode, stderr)


def test_the_console_script_is_the_signal_aware_entry():
    import importlib.metadata

    [script] = [entry for entry in importlib.metadata.entry_points(group="console_scripts") if entry.name == "reasonrl"]
    assert script.value == "reasonrl.cli:run"


# ---------------------------------------------------------------- the output folder


@pytest.mark.parametrize("name, content", [("completions.jsonl", '{"my": "data"}\n'),
                                           ("metrics.jsonl", '{"accuracy": 0.9}\n'),
                                           ("reasonrl-run.json", "{}")],
                         ids=["completions", "metrics-of-another-tool", "mark-file"])
def test_a_users_file_in_the_way_is_never_replaced(ws, capsys, tmp_path, name, content):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text(content)
    before = snapshot(out)
    if name == "reasonrl-run.json":  # a mark alone is a run folder (of a run that never logged): needs overwrite
        code, err = run_main(capsys, ["train", *_args(ws, out)])
        assert_one_line_error(code, err, "train", ["already holds a run"])
        return
    for extra in ([], ["--overwrite"]):
        code, err = run_main(capsys, ["train", *_args(ws, out), *extra])
        assert_one_line_error(code, err, "train", [f"holds {name}, which no reasonrl run wrote",
                                                   "move it away or choose another output_dir"])
        assert snapshot(out) == before


def test_a_folder_named_like_a_checkpoint_that_is_not_one_is_left_alone(ws, capsys, tmp_path):
    out = tmp_path / "mine"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "notes.txt").write_text("mine")
    code, err = run_main(capsys, ["train", *_args(ws, out), "--overwrite"])
    assert_one_line_error(code, err, "train", ["holds checkpoint-3, which no reasonrl run wrote"])
    assert (out / "checkpoint-3" / "notes.txt").read_text() == "mine"


def test_training_on_a_file_the_run_would_write_is_refused(ws, capsys, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    shutil.copy(ws / "train.jsonl", out / "completions.jsonl")
    before = snapshot(out)
    code, err = run_main(capsys, ["train", *_args(ws, out, f"dataset_name={out / 'completions.jsonl'}")])
    assert_one_line_error(code, err, "train", ["completions.jsonl"])
    assert snapshot(out) == before


@pytest.mark.parametrize("make, phrases", [
    (lambda tmp: (tmp / "f").write_text("x") and tmp / "f", ["output_dir", "is a file"]),
    (lambda tmp: (tmp / "f").write_text("x") and tmp / "f" / "sub" / "run", ["cannot be created", "is a file"]),
], ids=["is-a-file", "under-a-file"])
def test_output_dirs_that_cannot_be_folders(ws, capsys, tmp_path, make, phrases):
    out = make(tmp_path)
    code, err = run_main(capsys, ["train", *_args(ws, out)])
    assert_one_line_error(code, err, "train", phrases)
    assert (tmp_path / "f").read_text() == "x"


def test_overwrite_removes_the_earlier_run_and_nothing_else(ws, capsys, tmp_path):
    out = tmp_path / "run"
    assert run_main(capsys, ["train", *_args(ws, out, "max_steps=1")])[0] == 0
    (out / "notes.txt").write_text("my notes")
    code, err = run_main(capsys, ["train", *_args(ws, out, "max_steps=2", "save_steps=1"), "--overwrite"])
    assert code == 0, err[-2000:]
    assert (out / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert [row["step"] for row in _metrics(out)] == [1, 2]


def test_resume_and_overwrite_together_are_refused(ws, capsys, tmp_path):
    code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "run"), "--resume", "--overwrite"])
    assert_one_line_error(code, err, "train", ["--resume continues the run", "pass one of them"])


def test_a_symlinked_output_dir_trains_and_resumes(ws, capsys, tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert run_main(capsys, ["train", *_args(ws, f"{tmp_path / 'link'}/", "max_steps=1")])[0] == 0
    code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "link", "max_steps=2"), "--resume"])
    assert code == 0, err[-2000:]
    assert [row["step"] for row in _metrics(tmp_path / "real")] == [1, 2]


def _small_mount(path, size: str, read_only: bool = False):
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode()[:100]}")
    return path


def test_a_read_only_output_dir_is_refused_before_the_model_loads(ws, capsys, tmp_path, monkeypatch):
    import reasonrl.models as models_module

    mount = _small_mount(tmp_path / "ro", "1m", read_only=True)
    monkeypatch.setattr(models_module, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    try:
        code, err = run_main(capsys, ["train", *_args(ws, mount / "run")])
        assert_one_line_error(code, err, "train", ["cannot be written", "Read-only file system"])
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_while_saving_keeps_the_earlier_checkpoints(ws, capsys, tmp_path):
    probe = tmp_path / "probe"
    assert run_main(capsys, ["train", *_args(ws, probe, "max_steps=1")])[0] == 0
    size = sum(f.stat().st_size for f in (probe / "checkpoint-1").rglob("*") if f.is_file())
    mount = _small_mount(tmp_path / "small", f"{int(2.5 * size) // 1024 + 8}k")
    out = mount / "run"
    try:  # room for two checkpoints and the logs: the third does not fit
        code, err = run_main(capsys, ["train", *_args(ws, out, "max_steps=6", "save_steps=1")])
        message = assert_one_line_error(code, err, "train", ["could not write checkpoint-", "No space left on device",
                                                             "with --resume"])
        saved = sorted(p.name for p in out.glob("checkpoint-*"))
        assert saved and f"resume from {out / saved[-1]}" in message
        assert not list(out.glob(".checkpoint-*"))  # no half-written folder left
        from reasonrl.checkpoint import validate_checkpoint

        for name in saved:
            validate_checkpoint(str(out / name))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ---------------------------------------------------------------- resuming


@pytest.fixture
def run4(ws, capsys, tmp_path):
    """A LoRA run of 4 steps with a checkpoint at every step."""
    out = tmp_path / "run4"
    code, err = run_main(capsys, ["train", *_args(ws, out, "max_steps=4", "save_steps=1")])
    assert code == 0, err[-2000:]
    return out


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(ws, capsys, caplog, run4):
    full_log = (run4 / "metrics.jsonl").read_text()
    code, err = run_main(capsys, ["train", *_args(ws, run4, "max_steps=3", "save_steps=1", "save_total_limit=1"),
                                  f"--resume={run4 / 'checkpoint-2'}"])
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in run4.glob("checkpoint-*")) == ["checkpoint-3"]  # the new one survives the limit
    aside = list(run4.glob("superseded-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == [
        "checkpoint-3", "checkpoint-4", "completions.jsonl", "metrics.jsonl"]
    assert (aside[0] / "metrics.jsonl").read_text() == full_log
    assert [row["step"] for row in _metrics(run4)] == [1, 2, 3]
    assert "are moved to" in caplog.text and "nothing deleted" in caplog.text


def _damage(run4, how):
    checkpoint = run4 / "checkpoint-2"
    if how == "truncated-adapter":
        data = (checkpoint / "adapter_model.safetensors").read_bytes()
        (checkpoint / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    elif how == "no-optimizer":
        (checkpoint / "optimizer.pt").unlink()
    elif how == "garbage-state":
        (checkpoint / "trainer_state.json").write_text("{{{")
    elif how == "state-without-position":
        (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    elif how == "no-weights":
        (checkpoint / "adapter_model.safetensors").unlink()
    elif how == "garbage-adapter-header":
        (checkpoint / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    return checkpoint


@pytest.mark.parametrize("how, phrases", [
    ("truncated-adapter", ["adapter_model.safetensors is damaged or truncated"]),
    ("no-optimizer", ["it is incomplete (missing optimizer.pt)"]),
    ("garbage-state", ["trainer_state.json is damaged"]),
    ("state-without-position", ["trainer_state.json lacks the run's position"]),
    ("no-weights", ["missing the weights"]),
    ("garbage-adapter-header", ["is damaged or truncated"]),
])
def test_a_damaged_checkpoint_is_refused_before_the_model_loads(ws, capsys, run4, how, phrases):
    checkpoint = _damage(run4, how)
    before = snapshot(run4)
    code, err = run_main(capsys, ["train", *_args(ws, run4, "max_steps=5"), f"--resume={checkpoint}"])
    assert_one_line_error(code, err, "train", ["resume from an earlier checkpoint", *phrases])
    assert snapshot(run4) == before


@pytest.mark.parametrize("extra, phrases", [
    (["lora_r=8"], ["lora_r=8 (saved: 4)"]),
    (["use_peft=false"], ["use_peft=False (saved: True)"]),
    (["optim=sgd"], ["optim='sgd' (saved: 'adamw_torch')"]),
    (["lr_scheduler_type=cosine"], ["lr_scheduler_type='cosine' (saved: 'linear')"]),
], ids=["lora-rank", "lora-off", "optimizer", "schedule"])
def test_resuming_with_settings_the_checkpoint_cannot_take_is_refused(ws, capsys, run4, extra, phrases):
    before = snapshot(run4)
    code, err = run_main(capsys, ["train", *_args(ws, run4, "max_steps=5", *extra), "--resume"])
    assert_one_line_error(code, err, "train", ["cannot resume from", "with other settings", *phrases])
    assert snapshot(run4) == before


def test_a_full_fine_tuning_checkpoint_without_its_weights_is_refused(ws, capsys, tmp_path):
    out = tmp_path / "full"
    assert run_main(capsys, ["train", *_args(ws, out, "use_peft=false", "max_steps=1")])[0] == 0
    (out / "checkpoint-1" / "model.safetensors").unlink()  # it used to resume silently from the base weights
    code, err = run_main(capsys, ["train", *_args(ws, out, "use_peft=false"), "--resume"])
    assert_one_line_error(code, err, "train", ["checkpoint-1", "missing the weights"])


def test_a_lora_checkpoint_into_a_model_with_another_rank_is_refused(ws, run4, tiny_model_dir, tmp_path):
    """The Python API with a peft model built by the caller: the shapes are compared, not loaded half-way."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonrl import GRPOConfig, GRPOTrainer
    from reasonrl.errors import CheckpointError

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    # the config says what the run said (use_peft, lora_r 4), but the model given has rank 2
    args = GRPOConfig(output_dir=str(run4), max_steps=5, num_generations=2, per_device_train_batch_size=4,
                      max_completion_length=4, max_prompt_length=32, gradient_checkpointing=False,
                      optim="adamw_torch", use_peft=True, lora_r=4)
    trainer = GRPOTrainer(model, lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=[{"prompt": "Say 1:"}], processing_class=AutoTokenizer.from_pretrained(
                              tiny_model_dir))
    with pytest.raises(CheckpointError,
                       match=r"was saved with other shapes .*lora_A.weight: \(4, 128\), this model: \(2, 128\)"):
        trainer.train(resume_from_checkpoint=True)


def test_resuming_a_checkpoint_of_another_folder_into_an_occupied_one_is_refused(ws, capsys, run4, tmp_path):
    other = tmp_path / "other"
    assert run_main(capsys, ["train", *_args(ws, other, "max_steps=1")])[0] == 0
    code, err = run_main(capsys, ["train", *_args(ws, other, "max_steps=5"), f"--resume={run4 / 'checkpoint-2'}"])
    assert_one_line_error(code, err, "train", ["holds another run than the checkpoint"])


@pytest.mark.parametrize("resume, phrases", [
    ("", ["nothing to resume", "holds no checkpoint"]),
    ("={tmp}/nowhere", ["cannot resume from", "no such folder"]),
    ("={tmp}", ["not a checkpoint folder (no trainer_state.json)"]),
], ids=["latest-of-nothing", "missing-path", "a-run-folder"])
def test_resume_paths_that_are_not_checkpoints(ws, capsys, tmp_path, resume, phrases):
    code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "run"), f"--resume{resume.format(tmp=tmp_path)}"])
    assert_one_line_error(code, err, "train", phrases)


# ---------------------------------------------------------------- numbers that poison training


def test_a_step_that_leaves_non_finite_weights_stops_before_any_save(ws, capsys, tmp_path, monkeypatch):
    """A finite loss and gradient norm can still give NaN weights (a huge learning rate, an optimizer bug): the
    step-2 weights are poisoned here by the optimizer itself; nothing may be saved from them."""
    original = torch.optim.AdamW.step

    def poisoned_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.state_dict()["state"] and next(iter(self.state.values()))["step"] >= 2:
            for group in self.param_groups:
                for parameter in group["params"]:
                    parameter.data.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, out, "max_steps=4", "save_steps=1")])
    assert_one_line_error(code, err, "train", ["the weights are not finite", "step 2 made them so",
                                               "nothing was saved from them (the last checkpoint is checkpoint-1)"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


def test_a_learning_rate_past_float32_is_refused(ws, capsys, tmp_path):
    code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "run", "learning_rate=1e39")])
    assert_one_line_error(code, err, "train", ["learning_rate must be below 3.4e38"])


def _adapter_after_one_step(ws, tmp_path, max_grad_norm, tiny_model_dir):
    from reasonrl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path / f"clip{max_grad_norm}"), max_steps=1, num_generations=2,
                      per_device_train_batch_size=4, max_completion_length=4, max_prompt_length=32,
                      gradient_checkpointing=False, optim="sgd", learning_rate=1.0, use_peft=True, lora_r=4,
                      max_grad_norm=max_grad_norm, seed=3)
    trainer = GRPOTrainer(tiny_model_dir, lambda completions, **kw: [float(i) for i in range(len(completions))],
                          args=args, train_dataset=[{"prompt": f"Say {i}:"} for i in range(4)])
    trainer.train()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}, trainer


def test_max_grad_norm_zero_leaves_gradients_unclipped(ws, tmp_path, tiny_model_dir):
    unclipped, trainer = _adapter_after_one_step(ws, tmp_path, 0.0, tiny_model_dir)
    huge, _ = _adapter_after_one_step(ws, tmp_path, 1e9, tiny_model_dir)
    tiny, _ = _adapter_after_one_step(ws, tmp_path, 1e-6, tiny_model_dir)
    assert trainer.log_history[0]["grad_norm"] > 1e-6  # so that clipping at 1e-6 would change the step
    assert all(torch.equal(unclipped[name], huge[name]) for name in unclipped)
    assert not all(torch.equal(unclipped[name], tiny[name]) for name in unclipped)


def test_a_read_only_home_and_cache_still_trains_on_local_data_or_says_why(ws, tmp_path, capsys, monkeypatch):
    """HF_HOME (datasets' and transformers' caches) on a read-only file system: JSONL needs no cache and trains; a
    CSV, which datasets converts through its cache, is a one-line error naming the cause."""
    mount = _small_mount(tmp_path / "home", "1m", read_only=True)
    try:
        for name in ("HOME", "HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
            monkeypatch.setenv(name, str(mount))
        out = tmp_path / "run"
        code, err = run_main(capsys, ["train", *_args(ws, out, "max_steps=1")])
        assert code == 0, err[-2000:]
        (tmp_path / "train.csv").write_text("prompt\nSay 1:\nSay 2:\n")
        code, err = run_main(capsys, ["train", *_args(ws, tmp_path / "run2", f"dataset_name={tmp_path / 'train.csv'}")])
        if code != 0:
            assert_one_line_error(code, err, "train", ["train.csv", "Read-only file system"])
    finally:
        subprocess.run(["umount", str(mount)], check=False)
