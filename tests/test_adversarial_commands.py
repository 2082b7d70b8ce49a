"""Adversarial use, part 3: every other subcommand's arguments, model folders that must not be overwritten, and the
Python API given what TRL users give it. One `error:` line (exit 2) or correct behaviour; nothing lost.
"""

import json
import os
import shutil

import pytest
from cli_helpers import assert_one_line_error, run_main, snapshot

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.errors import ConfigError, DataError, ModelLoadError, ReasonRLError, RewardSpecError


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adversarial-commands")
    (root / "data.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                                             for i in range(4)))
    (root / "no_answer.jsonl").write_text(json.dumps({"prompt": "1+1="}) + "\n")
    (root / "pairs.jsonl").write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    (root / "prompt_only.jsonl").write_text(json.dumps({"prompt": "1+1="}) + "\n")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    (root / "a_file").write_text("mine")
    (root / "occupied").mkdir()
    (root / "occupied" / "keep.txt").write_text("mine")
    run = root / "run"
    code = _train(run, tiny_model_dir, "max_steps=1")
    assert code == 0
    (root / "garbage_metrics").mkdir()
    (root / "garbage_metrics" / "metrics.jsonl").write_text('not json\n{"step": 1, "reward": 0.5}\n{"step": 2, "rew')
    (root / "no_rows").mkdir()
    (root / "no_rows" / "metrics.jsonl").write_text("garbage\n")
    return root


def _train(out, model, *extra):
    from reasonrl.cli import main

    (out.parent / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}:"}) + "\n" for i in range(4)))
    return main(["train", f"model_name_or_path={model}", f"dataset_name={out.parent / 'train.jsonl'}",
                 "reward_funcs=[length]", "max_completion_length=4", "gradient_checkpointing=false",
                 "num_generations=2", "per_device_train_batch_size=2", "optim=adamw_torch", "use_peft=true",
                 "lora_r=4", "max_prompt_length=32", f"output_dir={out}", *extra])


def _fill(argv, ws, model):
    return [str(a).replace("{ws}", str(ws)).replace("{model}", str(model)) for a in argv]


# (id, argv, phrases of the one error line)
COMMAND_CASES = [
    ("eval-n-zero", ["eval", "{model}", "--task", "arithmetic", "--n", "0"], ["--n must be >= 1 (got 0)"]),
    ("eval-n-negative", ["eval", "{model}", "--task", "arithmetic", "--n", "-3"], ["--n must be >= 1 (got -3)"]),
    ("eval-batch-zero", ["eval", "{model}", "--task", "arithmetic", "--batch-size", "0"],
     ["--batch-size must be >= 1"]),
    ("eval-k-zero", ["eval", "{model}", "--task", "arithmetic", "--k", "0"], ["--k must be >= 1"]),
    ("eval-samples-zero", ["eval", "{model}", "--task", "arithmetic", "--samples", "0"], ["--samples must be >= 1"]),
    ("eval-samples-below-k", ["eval", "{model}", "--task", "arithmetic", "--k", "4", "--samples", "2"],
     ["--samples must be >= --k to estimate pass@4"]),
    ("eval-max-new-tokens-zero", ["eval", "{model}", "--task", "arithmetic", "--max-new-tokens", "0"],
     ["--max-new-tokens must be >= 1"]),
    ("eval-temperature-zero", ["eval", "{model}", "--task", "arithmetic", "--temperature", "0"],
     ["--temperature must be > 0"]),
    ("eval-task-typo", ["eval", "{model}", "--task", "countdwn"],
     ["unknown task 'countdwn'", "did you mean 'countdown'"]),
    ("eval-task-empty", ["eval", "{model}", "--task", ""], ["unknown task ''"]),
    ("eval-json-is-a-folder", ["eval", "{model}", "--task", "arithmetic", "--json", "{ws}"], ["is a folder"]),
    ("eval-data-without-answers", ["eval", "{model}", "--data", "{ws}/no_answer.jsonl"],
     ["'answer' or 'solution'"]),
    ("eval-prompt-column-missing", ["eval", "{model}", "--data", "{ws}/data.jsonl", "--prompt-column", "question"],
     ["no 'question' column"]),
    ("eval-model-missing", ["eval", "{ws}/nope", "--task", "arithmetic"], ["does not exist"]),
    ("eval-run-folder", ["eval", "{ws}/run", "--task", "arithmetic"], ["is a training run's folder, not a model"]),
    ("generate-empty-prompt", ["generate", "{model}", "--prompt", ""], ["the prompt is empty"]),
    ("generate-blank-prompt", ["generate", "{model}", "--prompt", "   "], ["the prompt is empty"]),
    ("generate-empty-file", ["generate", "{model}", "--file", "{ws}/empty.txt"], ["the prompt is empty"]),
    ("generate-blank-file", ["generate", "{model}", "--file", "{ws}/blank.txt"], ["the prompt is empty"]),
    ("generate-binary-file", ["generate", "{model}", "--file", "{ws}/binary.txt"], ["cannot read --file"]),
    ("generate-file-is-folder", ["generate", "{model}", "--file", "{ws}"], ["cannot read --file"]),
    ("generate-past-positions", ["generate", "{model}", "--prompt", "hi", "--max-new-tokens", "100000"],
     ["--max-new-tokens 100000 is past the model's 2048 positions"]),
    ("generate-top-p-zero", ["generate", "{model}", "--prompt", "hi", "--top-p", "0"], ["--top-p must be in (0, 1]"]),
    ("generate-temperature-negative", ["generate", "{model}", "--prompt", "hi", "--temperature", "-1"],
     ["--temperature must be >= 0"]),
    ("sft-task-typo", ["sft", "--task", "countdwn", "--out", "{ws}/sft1"], ["unknown task 'countdwn'"]),
    ("sft-out-is-a-file", ["sft", "--task", "arithmetic", "--out", "{ws}/a_file"], ["--out", "is a file"]),
    ("sft-out-occupied", ["sft", "--task", "arithmetic", "--out", "{ws}/occupied"],
     ["--out", "is not empty (keep.txt)", "--overwrite"]),
    ("sft-steps-negative", ["sft", "--task", "arithmetic", "--out", "{ws}/sft2", "--steps", "-1"],
     ["--steps must be >= 1 (got -1)"]),
    ("sft-batch-zero", ["sft", "--task", "arithmetic", "--out", "{ws}/sft3", "--batch-size", "0"],
     ["--batch-size must be >= 1"]),
    ("sft-lr-negative", ["sft", "--task", "arithmetic", "--out", "{ws}/sft4", "--lr", "-1"], ["--lr must be > 0"]),
    ("sft-lr-inf", ["sft", "--task", "arithmetic", "--out", "{ws}/sft5", "--lr", "inf"], ["--lr must be > 0"]),
    ("sft-epochs-zero", ["sft", "--task", "arithmetic", "--out", "{ws}/sft6", "--epochs", "0"],
     ["--epochs must be > 0"]),
    ("sft-lora-negative", ["sft", "--task", "arithmetic", "--out", "{ws}/sft7", "--lora", "-2"],
     ["--lora must be >= 0"]),
    ("sft-n-zero", ["sft", "--task", "arithmetic", "--out", "{ws}/sft8", "--n", "0"], ["--n must be >= 1"]),
    ("sft-data-without-completion", ["sft", "--data", "{ws}/prompt_only.jsonl", "--out", "{ws}/sft9"],
     ["lacks column(s) completion"]),
    ("export-out-occupied", ["export", "{ws}/run/checkpoint-1", "--out", "{ws}/occupied"],
     ["--out", "is not empty (keep.txt)", "pass --overwrite to replace"]),
    ("export-out-is-a-file", ["export", "{ws}/run/checkpoint-1", "--out", "{ws}/a_file"], ["is a file"]),
    ("export-out-is-the-checkpoint", ["export", "{ws}/run/checkpoint-1", "--out", "{ws}/run/checkpoint-1",
                                      "--overwrite"], ["is the checkpoint itself"]),
    ("export-missing", ["export", "{ws}/run/checkpoint-9", "--out", "{ws}/exp1"], ["does not exist"]),
    ("plot-no-metrics", ["plot", "{ws}/occupied"], ["has no metrics.jsonl"]),
    ("plot-no-rows", ["plot", "{ws}/no_rows"], ["holds no metrics rows"]),
    ("plot-out-is-a-file", ["plot", "{ws}/run", "--out", "{ws}/a_file"], ["--out", "is a file"]),
    ("explain-not-numbers", ["explain", "--rewards", "a,b"], []),
    ("explain-groups", ["explain", "--rewards", "1,0,1", "--num-generations", "2"], ["do not split into groups"]),
    ("explain-log-ratios-count", ["explain", "--rewards", "1,0", "--num-generations", "2", "--log-ratios", "0.1"],
     ["--log-ratios needs 2 values"]),
    ("demo-steps-zero", ["demo", "--grpo-steps", "0", "--out", "{ws}/demo1"], ["--grpo-steps must be >= 1"]),
    ("demo-seed-negative", ["demo", "--seed", "-1", "--out", "{ws}/demo1"], ["--seed must be >= 0"]),
    ("demo-seed-too-large", ["demo", "--seed", str(2**32), "--out", "{ws}/demo1"], ["--seed must be below 2**32"]),
]


@pytest.mark.parametrize("case_id, argv, phrases", COMMAND_CASES, ids=[case[0] for case in COMMAND_CASES])
def test_command_mistakes(ws, capsys, tiny_model_dir, case_id, argv, phrases):
    before = snapshot(ws)
    argv = _fill(argv, ws, tiny_model_dir)
    if case_id == "explain-not-numbers":  # argparse's own type error: its usage line, exit 2
        with pytest.raises(SystemExit) as exit_info:
            run_main(capsys, argv)
        assert exit_info.value.code == 2 and "expected comma-separated numbers" in capsys.readouterr().err
        return
    code, err = run_main(capsys, argv)
    assert_one_line_error(code, err, argv[0], phrases)
    assert snapshot(ws) == before  # nothing written, nothing changed


def test_plot_skips_torn_and_garbage_lines(ws, capsys, tmp_path):
    code, err = run_main(capsys, ["plot", ws / "garbage_metrics", "--out", tmp_path / "plots"])
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["accuracy.png", "completion_length.png",
                                                                      "kl.png", "no_signal.png", "reward.png"]


def test_export_overwrite_replaces_a_model_only_once_the_new_one_is_whole(ws, capsys, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    assert run_main(capsys, ["export", ws / "run" / "checkpoint-1", "--merge", "--out", out])[0] == 0
    before = snapshot(out)
    import transformers

    def killed(self, *args, **kwargs):  # the process dies while the new weights are written
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", killed)
    code, _ = run_main(capsys, ["export", ws / "run" / "checkpoint-1", "--merge", "--out", out, "--overwrite"])
    assert code == 130
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no staging folder left behind
    monkeypatch.undo()
    (out / "stale.txt").write_text("from before")
    assert run_main(capsys, ["export", ws / "run" / "checkpoint-1", "--merge", "--out", out, "--overwrite"])[0] == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()


def test_sft_refuses_an_occupied_out_before_training(ws, capsys, monkeypatch):
    import reasonrl.sft

    monkeypatch.setattr(reasonrl.sft, "sft", lambda *a, **k: pytest.fail("no training before the check"))
    code, err = run_main(capsys, ["sft", "--task", "arithmetic", "--out", ws / "occupied", "--steps", "1"])
    assert_one_line_error(code, err, "sft", ["is not empty"])


# ---------------------------------------------------------------- the Python API


def _config(tmp_path, **extra):
    return GRPOConfig(**{"output_dir": str(tmp_path / "out"), "max_steps": 1, "num_generations": 2,
                         "per_device_train_batch_size": 2, "max_completion_length": 4, "max_prompt_length": 32,
                         "gradient_checkpointing": False, "optim": "adamw_torch", **extra})


def _reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("data", [
    [{"prompt": "Say 1:"}, {"prompt": "Say 2:"}],
    {"prompt": ["Say 1:", "Say 2:"]},
    "dataframe",
    "iterable",
], ids=["list-of-dicts", "dict-of-columns", "pandas", "iterable"])
def test_the_api_takes_the_datasets_trl_users_pass(tmp_path, tiny_model_dir, data):
    if data == "dataframe":
        pandas = pytest.importorskip("pandas")
        data = pandas.DataFrame({"prompt": ["Say 1:", "Say 2:"]})
    elif data == "iterable":  # a stream, with max_steps (tests/test_trainer_api.py has the rest)
        data = __import__("datasets").Dataset.from_list([{"prompt": "Say 1:"}]).to_iterable_dataset()
    trainer = GRPOTrainer(tiny_model_dir, _reward, args=_config(tmp_path), train_dataset=data)
    assert [row["step"] for row in trainer.train()] == [1]


def test_the_api_takes_a_dict_of_options_as_args(tmp_path, tiny_model_dir):
    args = {"output_dir": str(tmp_path / "out"), "max_steps": 1, "num_generations": 2,
            "per_device_train_batch_size": 2, "max_completion_length": 4, "gradient_checkpointing": False}
    trainer = GRPOTrainer(tiny_model_dir, _reward, args=args, train_dataset=[{"prompt": "Say 1:"}])
    assert trainer.args.max_completion_length == 4 and len(trainer.train()) == 1


@pytest.mark.parametrize("make, error, phrase", [
    (lambda: __import__("datasets").DatasetDict({"train": __import__("datasets").Dataset.from_list(
        [{"prompt": "a"}])}), DataError, "is a DatasetDict (splits: train); pass one split"),
    (lambda: "Say something", DataError, "must be a datasets.Dataset, a list of row dicts"),
    (list, DataError, "is an empty list"),
    (lambda: ["Say 1", "Say 2"], DataError, "not of row dicts (found a str)"),
    (lambda: {"prompt": ["a", "b"], "answer": ["1"]}, DataError, "the dict of columns cannot be a table"),
    (lambda: [{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": "x"}], DataError, "a column mixes value types"),
], ids=["dataset-dict", "a-string", "empty-list", "list-of-strings", "ragged-dict", "mixed-types"])
def test_the_api_refuses_data_it_cannot_train_on(tmp_path, tiny_model_dir, make, error, phrase):
    with pytest.raises(error, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        GRPOTrainer(tiny_model_dir, _reward, args=_config(tmp_path), train_dataset=make())


@pytest.mark.parametrize("kwargs, error, phrase", [
    ({"args": "config.yaml"}, ConfigError, "args must be a reasonrl GRPOConfig or a dict"),
    ({"args": {"lerning_rate": 1}}, ConfigError, "unknown config key 'lerning_rate'"),
    ({"reward_funcs": 42}, RewardSpecError, "is not callable"),
    ({"reward_funcs": []}, ConfigError, "no reward functions"),
    ({"model": 42}, ModelLoadError, "model must be a hub id, a local folder or a transformers model object"),
], ids=["args-a-string", "args-dict-typo", "reward-a-number", "no-rewards", "model-a-number"])
def test_the_api_refuses_wrong_arguments_in_one_line(tmp_path, tiny_model_dir, kwargs, error, phrase):
    arguments = {"model": tiny_model_dir, "reward_funcs": _reward, "args": _config(tmp_path),
                 "train_dataset": [{"prompt": "Say 1:"}], **kwargs}
    with pytest.raises(error, match=phrase) as raised:
        GRPOTrainer(**arguments)
    assert isinstance(raised.value, ReasonRLError) and "\n" not in str(raised.value)


def test_a_trl_config_object_is_named_as_the_mistake(tmp_path, tiny_model_dir):
    trl = pytest.importorskip("trl")
    with pytest.raises(ConfigError, match="got trl.trainer.grpo_config.GRPOConfig.*from reasonrl import GRPOConfig"):
        GRPOTrainer(tiny_model_dir, _reward, args=trl.GRPOConfig(output_dir=str(tmp_path / "trl"), bf16=False),
                    train_dataset=[{"prompt": "a"}])


def test_the_api_never_trains_over_an_earlier_run_unasked(tmp_path, tiny_model_dir):
    GRPOTrainer(tiny_model_dir, _reward, args=_config(tmp_path), train_dataset=[{"prompt": "Say 1:"}]).train()
    before = snapshot(tmp_path / "out")
    trainer = GRPOTrainer(tiny_model_dir, _reward, args=_config(tmp_path), train_dataset=[{"prompt": "Say 1:"}])
    with pytest.raises(ConfigError, match="already holds a run"):
        trainer.train()
    assert snapshot(tmp_path / "out") == before
    again = GRPOTrainer(tiny_model_dir, _reward, args=_config(tmp_path, overwrite_output_dir=True),
                        train_dataset=[{"prompt": "Say 1:"}])
    assert len(again.train()) == 1


def test_save_model_never_replaces_a_model_it_did_not_save(tmp_path, tiny_model_dir):
    trainer = GRPOTrainer(tiny_model_dir, _reward, args=_config(tmp_path, use_peft=True, lora_r=4),
                          train_dataset=[{"prompt": "Say 1:"}])
    trainer.train()
    trainer.save_model()  # into output_dir: its own files, saved twice
    trainer.save_model()
    other = tmp_path / "someone_elses_model"
    shutil.copytree(tiny_model_dir, other)
    before = snapshot(other)
    with pytest.raises(ConfigError, match="already holds a model .* that this run did not save"):
        trainer.save_model(str(other))
    assert snapshot(other) == before
    assert os.path.isfile(tmp_path / "out" / "adapter_model.safetensors")
