"""What reaches the trackers (report_to: trackio, wandb, tensorboard; tested with stand-in modules, as none is
installed here) and the console: logging_steps throttling with interval means, completion tables,
num_completions_to_print; and optim=paged_adamw_8bit built as transformers builds it (a stand-in bitsandbytes)."""

from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import types

import pytest
import torch

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.errors import ConfigError
from reasonrl.tiny import build_tiny_model
from reasonrl.tracking import completion_table, interval_means, markdown_table


def fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec finds it
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


class Table:
    def __init__(self, dataframe=None, columns=None, data=None):
        self.dataframe = dataframe


def fake_trackio(calls: list) -> types.ModuleType:
    return fake_module("trackio", Table=Table,
                       init=lambda **kwargs: calls.append(("init", kwargs)),
                       log=lambda metrics, step=None: calls.append(("log", step, metrics)),
                       finish=lambda: calls.append(("finish",)))


def fake_wandb(calls: list) -> types.ModuleType:
    run = types.SimpleNamespace(log=lambda metrics, step=None: calls.append(("log", step, metrics)),
                                finish=lambda: calls.append(("finish",)))
    return fake_module("wandb", Table=Table, init=lambda **kwargs: calls.append(("init", kwargs)) or run)


def reward_len(completions, **kwargs):
    return [float(len(c)) for c in completions]


def _train(tmp_path, tokenizer, steps=4, prompts=4, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=4, max_steps=steps, learning_rate=1e-3, gradient_checkpointing=False,
                    logging_steps=2, save_steps=100, optim="adamw_torch", seed=1)
    settings.update(overrides)
    trainer = GRPOTrainer(build_tiny_model(tokenizer, seed=0), [reward_len], args=GRPOConfig(**settings),
                          train_dataset=[{"prompt": f"p{i}"} for i in range(prompts)], processing_class=tokenizer)
    trainer.train()
    return [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]


def test_interval_means_skip_nan_and_keep_the_last_state():
    rows = [{"step": 1, "loss": 1.0, "kl": math.nan, "learning_rate": 0.1, "skipped_steps": 0, "flag": True},
            {"step": 2, "loss": 3.0, "kl": 2.0, "learning_rate": 0.05, "skipped_steps": 1, "name": "x"}]
    assert interval_means(rows) == {"loss": 2.0, "kl": 2.0, "learning_rate": 0.05, "skipped_steps": 1.0}
    assert interval_means([{"step": 1, "kl": math.nan}]) == {}


def test_trackio_gets_interval_means_every_logging_steps_and_the_completion_tables(tmp_path, char_tokenizer,
                                                                                  monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "trackio", fake_trackio(calls))
    rows = _train(tmp_path, char_tokenizer, steps=5, report_to="trackio", log_completions=True)
    assert calls[0][0] == "init" and calls[0][1]["project"] == "reasonrl" and calls[0][1]["name"] == "run"
    assert calls[0][1]["config"]["report_to"] == "trackio"
    scalar_logs = [c for c in calls if c[0] == "log" and "completions" not in c[2]]
    tables = [c for c in calls if c[0] == "log" and "completions" in c[2]]
    # steps 2 and 4 (logging_steps=2), and step 5 when training ends: the means of the steps in between
    assert [c[1] for c in scalar_logs] == [2, 4, 5]
    for (_, _, logged), steps in zip(scalar_logs, ([1, 2], [3, 4], [5])):
        for key in ("loss", "reward", "grad_norm", "completions/mean_length"):
            assert logged[f"train/{key}"] == pytest.approx(sum(rows[s - 1][key] for s in steps) / len(steps))
        assert logged["train/learning_rate"] == rows[steps[-1] - 1]["learning_rate"]
    # the table at each logging step: every completion of the last round (4 = 2 prompts x G 2), TRL's columns
    assert [c[1] for c in tables] == [2, 4]
    frame = tables[0][2]["completions"].dataframe
    assert list(frame.columns) == ["step", "prompt", "completion", "reward_len", "advantage"]
    assert len(frame) == 4 and list(frame["step"]) == [2] * 4
    assert list(frame["reward_len"]) == [float(len(c)) for c in frame["completion"]]
    assert calls[-1] == ("finish",)


def test_wandb_gets_the_same_as_trackio(tmp_path, char_tokenizer, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    rows = _train(tmp_path, char_tokenizer, steps=2, report_to=["wandb"], log_completions=True, logging_steps=1)
    logs = [c for c in calls if c[0] == "log"]
    assert [(c[1], "completions" in c[2]) for c in logs] == [(1, False), (1, True), (2, False), (2, True)]
    assert logs[0][2]["train/loss"] == rows[0]["loss"]


def test_tensorboard_gets_scalars_and_a_markdown_table(tmp_path, char_tokenizer, monkeypatch):
    calls: list = []

    class SummaryWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, key, value, step):
            calls.append(("scalar", key, step))

        def add_text(self, key, text, step):
            calls.append(("text", key, step, text))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "tensorboard", fake_module("tensorboard"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        fake_module("torch.utils.tensorboard", SummaryWriter=SummaryWriter))
    _train(tmp_path, char_tokenizer, steps=3, report_to="tensorboard", log_completions=True)
    assert calls[0] == ("init", str(tmp_path / "run" / "runs"))
    assert sorted({c[2] for c in calls if c[0] == "scalar"}) == [2, 3]
    texts = [c for c in calls if c[0] == "text"]
    assert [(c[1], c[2]) for c in texts] == [("completions", 2)]
    assert texts[0][3].splitlines()[0] == "| step | prompt | completion | reward_len | advantage |"
    assert len(texts[0][3].splitlines()) == 2 + 4 and calls[-1] == ("close",)


def test_completion_table_flattens_rewards_and_logged_columns():
    samples = [{"step": 3, "prompt": [{"role": "user", "content": "a|b"}], "completion": "x\ny",
                "rewards": {"r": 1.0, "s": None}, "advantage": 0.5, "extra": {"judge": "ok"}},
               {"step": 3, "prompt": "p", "completion": "z", "rewards": {"r": 0.25, "s": 2.0}, "advantage": -0.5}]
    columns, rows = completion_table(samples)
    assert columns == ["step", "prompt", "completion", "r", "s", "judge", "advantage"]
    assert rows == [[3, "user: a|b", "x\ny", 1.0, None, "ok", 0.5], [3, "p", "z", 0.25, 2.0, None, -0.5]]
    assert markdown_table(columns, rows).splitlines()[2] == "| 3 | user: a\\|b | x<br>y | 1 | None | ok | 0.5 |"


def test_trackio_not_installed_is_one_line():
    if "trackio" in sys.modules or importlib.util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    with pytest.raises(ConfigError, match=r"report_to='trackio' needs trackio \(pip install trackio\), which is not "
                                          r"installed; use report_to=none"):
        GRPOConfig(report_to="trackio")


@pytest.mark.parametrize("to_print, expected", [(None, 3), (1, 1), (5, 3)])
def test_num_completions_to_print_none_prints_all(tmp_path, char_tokenizer, capsys, to_print, expected):
    # 3 prompts per round (G 2, 6 completions per round): None prints all 3 logged samples, as TRL prints all
    _train(tmp_path, char_tokenizer, steps=1, per_device_train_batch_size=6, logging_steps=1, log_completions=True,
           num_completions_to_print=to_print, prompts=3)
    assert capsys.readouterr().out.count("  completion: ") == expected


@pytest.mark.parametrize("optim, paged", [("paged_adamw_8bit", True), ("adamw_8bit", False)])
def test_bitsandbytes_optimizers_are_built_as_transformers_builds_them(monkeypatch, optim, paged):
    from reasonrl.optim import make_optimizer

    built = {}

    class AdamW(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            built.update(kwargs)
            super().__init__(params, lr=kwargs["lr"])

    bitsandbytes = fake_module("bitsandbytes", optim=types.SimpleNamespace(AdamW=AdamW))
    monkeypatch.setitem(sys.modules, "bitsandbytes", bitsandbytes)
    args = GRPOConfig(optim=optim, learning_rate=2e-5, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-7,
                      weight_decay=0.01)
    optimizer = make_optimizer(torch.nn.Linear(2, 2), args)
    assert isinstance(optimizer, AdamW)
    assert built == {"lr": 2e-5, "betas": (0.8, 0.95), "eps": 1e-7, "weight_decay": 0.01, "optim_bits": 8,
                     "is_paged": paged}


def test_paged_adamw_8bit_without_bitsandbytes_is_one_line():
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ConfigError, match=r"optim='paged_adamw_8bit' needs bitsandbytes \(pip install "
                                          r"bitsandbytes\), which is not installed; use optim=adamw_torch"):
        GRPOConfig(optim="paged_adamw_8bit")
