"""User mistakes on the command line: each one exits with code 2 and prints ONE line
`reasonrl <command>: error: <what is wrong>; <how to fix it>`, with no traceback, and leaves files already written
untouched.

Most cases call `reasonrl.cli.main` in-process (main() returns the exit code; an unexpected exception would fail the
test with its traceback); a few run `python -m reasonrl` in a subprocess to prove the exit code and a clean stderr
end to end, progress bars included.
"""

import json
import os
import shutil

import pytest
import yaml
from cli_helpers import assert_one_line_error, run_cli, run_main
from cli_helpers import snapshot as _snapshot

REWARDS = '''
import math


def good(completions, **kwargs):
    return [float(len(c)) for c in completions]


def empty(completions, **kwargs):
    return []


def one_too_many(completions, **kwargs):
    return [0.0] * (len(completions) + 1)


def boom(completions, **kwargs):
    raise KeyError("answer")


def text(completions, **kwargs):
    return "1.0"


def words(completions, **kwargs):
    return ["good"] * len(completions)


def nan(completions, **kwargs):
    return [math.nan] * len(completions)


def nothing(completions, **kwargs):
    pass
'''


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    """A folder of broken inputs next to good ones: datasets, configs, reward files, models and a finished run."""
    root = tmp_path_factory.mktemp("cli-errors")
    _write_jsonl(root / "train.jsonl", [{"prompt": f"Say something about {i}:", "answer": str(i)} for i in range(4)])
    _write_jsonl(root / "question.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(4)])
    (root / "bad_line.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n')
    (root / "empty.jsonl").write_text("")
    (root / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    (root / "latin1.csv").write_bytes(b"prompt,answer\ncaf\xe9,1\n")
    (root / "bad.json").write_text('[{"prompt": "a"},\n')
    (root / "header_only.csv").write_text("prompt,answer\n")
    (root / "list_line.jsonl").write_text('{"prompt": "a"}\n["b"]\n')
    _write_jsonl(root / "int_prompt.jsonl", [{"prompt": 7}, {"prompt": 8}])
    _write_jsonl(root / "chat.jsonl", [{"prompt": [{"role": "user", "content": f"hi {i}"}]} for i in range(2)])
    (root / "rewards.py").write_text(REWARDS)
    (root / "unknown_key.yaml").write_text("model_name_or_path: m\nlearning_rat: 1.0e-5\n")
    (root / "malformed.yaml").write_text("model_name_or_path: m\nlearning_rate: 1e-5: 2\n")
    (root / "list.yaml").write_text("- model_name_or_path: m\n")
    # a model whose tokenizer has no chat template, and a model folder without tokenizer files
    shutil.copytree(tiny_model_dir, root / "nochat")
    (root / "nochat" / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((root / "nochat" / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (root / "nochat" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (root / "notok").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model_dir, name), root / "notok" / name)
    # a LoRA checkpoint whose base model is gone
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(root / "gone")}))
    # a finished run: logs and a checkpoint
    (root / "run" / "checkpoint-1").mkdir(parents=True)
    (root / "run" / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    (root / "run" / "completions.jsonl").write_text('{"step": 1, "completion": "x"}\n')
    (root / "run" / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    (root / "run" / "checkpoint-1" / "config.yaml").write_text("max_steps: 1\n")
    return root


def _train_args(ws, model, out):
    """A valid, fast run; a case appends its mistake (a later key=value wins)."""
    return [f"model_name_or_path={model}", f"dataset_name={ws / 'train.jsonl'}", "reward_funcs=[length]",
            "max_steps=1", "max_completion_length=4", "gradient_checkpointing=false", "num_generations=2",
            "per_device_train_batch_size=2", "optim=adamw_torch", "logging_steps=1", f"output_dir={out}"]


# ---- train: (id, extra arguments, phrases of the message); {ws}, {model}, {nochat} and {notok} are filled in

TRAIN_CASES = [
    # the config
    ("unknown-key-override", ["lerning_rate=1e-5"],
     ["override 'lerning_rate=1e-5'", "unknown config key 'lerning_rate'", "did you mean 'learning_rate'?"]),
    ("not-key-value", ["learningrate"], ["override 'learningrate' is not key=value", "learning_rate=1e-5"]),
    ("wrong-type", ["learning_rate=fast"], ["learning_rate must be float", "(got 'fast')"]),
    ("temperature-zero", ["temperature=0"], ["temperature must be > 0", "(got 0.0)"]),
    ("temperature-negative", ["temperature=-1"], ["temperature must be > 0", "(got -1.0)"]),
    ("top-p-out-of-range", ["top_p=1.5"], ["top_p must be in (0, 1]", "(got 1.5)"]),
    ("num-generations-1", ["num_generations=1"], ["num_generations must be >= 2", "(got 1)"]),
    ("batch-not-divisible", ["per_device_train_batch_size=3", "num_generations=2"],
     ["generation batch of 3 completions", "not divisible by num_generations=2", "set per_device_train_batch_size=4"]),
    ("no-reward-funcs", ["reward_funcs=[]"], ["no reward functions", "set reward_funcs, e.g. reward_funcs=["]),
    ("reward-weights-count", ["reward_weights=[1,2]"],
     ["reward_weights has 2 values but there are 1 reward functions", "one weight per reward function"]),
    ("unknown-loss-type", ["loss_type=ppo"], ["loss_type='ppo' is not supported", "choose one of: grpo"]),
    ("generation-kwargs-unsupported", ["generation_kwargs.num_beams=4"],
     ["generation_kwargs has 'num_beams', which reasonrl's sampler does not support", "remove it"]),
    ("min-p-out-of-range", ["min_p=2"], ["min_p must be in [0, 1] or None", "(got 2.0)"]),
    ("prompt-template-without-prompt", ["prompt_template=Solve this."],
     ["prompt_template must contain {{prompt}}", "'Solve this.'"]),
    ("system-prompt-without-chat-template", ["model_name_or_path={nochat}", "system_prompt=Think first."],
     ["system_prompt needs a chat template", "put the instruction in prompt_template instead"]),
    ("report-to-trackio-not-installed", ["report_to=trackio"],
     ["report_to='trackio' needs trackio (pip install trackio), which is not installed"]),
    ("paged-optimizer-without-bitsandbytes", ["optim=paged_adamw_8bit"],
     ["optim='paged_adamw_8bit' needs bitsandbytes (pip install bitsandbytes)"]),
    ("reward-model-not-found", ["reward_funcs=[someone/no-reward-model]"],
     ["reward model 'someone/no-reward-model' could not be loaded", "sequence-classification model"]),
    # the dataset
    ("no-prompt-column", ["dataset_name={ws}/question.jsonl"],
     ["no 'prompt' column", "(found: question, answer)", "set prompt_column=question"]),
    ("missing-dataset", ["dataset_name={ws}/nope.jsonl"], ["nope.jsonl does not exist", "check the path"]),
    ("missing-dataset-hub-id", ["dataset_name=someone/nope"],
     ["'someone/nope'", "not a local file or folder", "offline mode is on"]),
    ("malformed-jsonl-line", ["dataset_name={ws}/bad_line.jsonl"],
     ["bad_line.jsonl:3: not valid JSON", "fix or remove that line"]),
    ("jsonl-line-not-object", ["dataset_name={ws}/list_line.jsonl"],
     ["list_line.jsonl:2: each JSONL line must be an object", "got a list"]),
    ("empty-dataset", ["dataset_name={ws}/empty.jsonl"], ["empty.jsonl is empty", "at least one row"]),
    ("header-only-csv", ["dataset_name={ws}/header_only.csv"], ["header_only.csv' is empty", "at least one row"]),
    ("non-utf8-jsonl", ["dataset_name={ws}/latin1.jsonl"], ["latin1.jsonl is not UTF-8", "re-encode it as UTF-8"]),
    ("non-utf8-csv", ["dataset_name={ws}/latin1.csv"], ["latin1.csv is not UTF-8", "re-encode it as UTF-8"]),
    ("malformed-json", ["dataset_name={ws}/bad.json"], ["could not read dataset", "check that it is valid JSON"]),
    ("prompt-not-text", ["dataset_name={ws}/int_prompt.jsonl"],
     ["the prompt must be a string or a list of chat messages, got int", "fix that row"]),
    ("chat-prompts-without-chat-template", ["model_name_or_path={nochat}", "dataset_name={ws}/chat.jsonl"],
     ["prompts are conversational but the tokenizer has no chat template", "use a chat model or plain-text"]),
    # the model
    ("missing-model-path", ["model_name_or_path={ws}/no-model"], ["no-model' does not exist", "check the path"]),
    ("missing-model-hub-id", ["model_name_or_path=someone/no-model"],
     ["could not load the model 'someone/no-model'", "offline mode is on", "download the model while online"]),
    ("model-without-tokenizer", ["model_name_or_path={notok}"], ["has no tokenizer files", "save_pretrained"]),
    # the rewards
    ("reward-module-missing", ["reward_funcs=[no_such_module_xyz:score]"],
     ["reward 'no_such_module_xyz:score' could not be imported", "No module named 'no_such_module_xyz'"]),
    ("reward-file-missing", ["reward_funcs=[{ws}/nowhere/rewards.py:score]"],
     ["could not be imported: no file", "nowhere/rewards.py", "fix the path"]),
    ("reward-name-typo", ["reward_funcs=[lenght]"],
     ["reward 'lenght' is not a registered name", "did you mean 'length'?"]),
    ("reward-function-missing", ["reward_funcs=[{ws}/rewards.py:score]"], ["not found", "has no 'score'", "good"]),
    ("reward-unknown-option", ["reward_kwargs.length.ideal=5"],
     ["reward 'length' has no option ideal", "its options: ideal_length"]),
    ("reward-kwargs-for-unused-reward", ["reward_kwargs.lenght.ideal_length=5"],
     ["reward_kwargs has an entry for 'lenght', which is not in reward_funcs", "add it there or fix the name"]),
    ("reward-returns-empty", ["reward_funcs=[{ws}/rewards.py:empty]"],
     ["'empty' returned 0 values for 2 completions", "exactly one per completion"]),
    ("reward-returns-one-too-many", ["reward_funcs=[{ws}/rewards.py:one_too_many]"],
     ["'one_too_many' returned 3 values for 2 completions", "exactly one per completion"]),
    ("reward-raises", ["reward_funcs=[{ws}/rewards.py:boom]"], ["reward function 'boom' raised KeyError: 'answer'"]),
    ("reward-returns-string", ["reward_funcs=[{ws}/rewards.py:text]"],
     ["'text' returned a str ('1.0')", "must return a list with one float (or None) per completion"]),
    ("reward-returns-strings", ["reward_funcs=[{ws}/rewards.py:words]"],
     ["'words' returned a str ('good')", "rewards must be one float (or None) per completion"]),
    ("reward-returns-nan", ["reward_funcs=[{ws}/rewards.py:nan]"],
     ["'nan' returned NaN", "return None for a completion it cannot score"]),
    ("reward-returns-none", ["reward_funcs=[{ws}/rewards.py:nothing]"],
     ["'nothing' returned None", "must return a list"]),
    # the output folder
    ("output-dir-is-a-file", ["output_dir={ws}/train.jsonl"],
     ["output_dir", "train.jsonl is a file", "choose a folder"]),
    ("resume-nothing", ["--resume"], ["nothing to resume", "holds no checkpoint", "drop --resume"]),
    ("resume-not-a-checkpoint", ["--resume", "{ws}/nowhere"],
     ["cannot resume from", "no such folder", "--resume alone for the latest"]),
]


@pytest.mark.parametrize("extra, phrases", [case[1:] for case in TRAIN_CASES], ids=[case[0] for case in TRAIN_CASES])
def test_train_mistake_is_one_line(extra, phrases, ws, tiny_model_dir, tmp_path, capsys):
    names = {"ws": ws, "model": tiny_model_dir, "nochat": ws / "nochat", "notok": ws / "notok"}
    argv = ["train", *_train_args(ws, tiny_model_dir, tmp_path / "out"), *(arg.format(**names) for arg in extra)]
    code, err = run_main(capsys, argv)
    assert_one_line_error(code, err, "train", [phrase.format(**names) for phrase in phrases])


def test_unknown_key_in_yaml_names_the_file_and_the_nearest_key(ws, capsys):
    code, err = run_main(capsys, ["train", "--config", ws / "unknown_key.yaml"])
    assert_one_line_error(code, err, "train", [f"{ws / 'unknown_key.yaml'}: unknown config key 'learning_rat'",
                                               "did you mean 'learning_rate'?"])


def test_malformed_yaml_reports_file_and_line(ws, capsys):
    code, err = run_main(capsys, ["train", "--config", ws / "malformed.yaml"])
    assert_one_line_error(code, err, "train", [f"{ws / 'malformed.yaml'}:2:", "invalid YAML",
                                               "mapping values are not allowed here"])


@pytest.mark.parametrize("config, phrases", [
    ("missing.yaml", ["config file", "missing.yaml' not found", "check the path"]),
    ("list.yaml", ["list.yaml: the top level must be a mapping of option: value (got a list)"]),
    (".", ["cannot read config file", "Is a directory"]),
], ids=["missing", "not-a-mapping", "a-folder"])
def test_unusable_config_file(config, phrases, ws, capsys):
    code, err = run_main(capsys, ["train", "--config", ws / config])
    assert_one_line_error(code, err, "train", phrases)


def test_train_with_nothing_to_train(capsys):
    code, err = run_main(capsys, ["train"])
    assert_one_line_error(code, err, "train", ["nothing to train", "give --config cfg.yaml and/or key=value"])


def test_output_dir_holding_a_run_is_refused_and_left_unchanged(ws, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    before = _snapshot(run)
    code, err = run_main(capsys, ["train", *_train_args(ws, tiny_model_dir, run)])
    assert_one_line_error(code, err, "train", [f"output_dir {run} already holds a run", "pass --resume to continue",
                                               "--overwrite (overwrite_output_dir=true) to start over",
                                               "choose another output_dir"])
    assert _snapshot(run) == before


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(ws, tiny_model_dir, tmp_path, capsys):
    # --overwrite clears the old logs only once the model, rewards and data have loaded
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    before = _snapshot(run)
    code, err = run_main(capsys, ["train", *_train_args(ws, tiny_model_dir, run), "reward_funcs=[lenght]",
                                  "--overwrite"])
    assert_one_line_error(code, err, "train", ["reward 'lenght' is not a registered name"])
    assert _snapshot(run) == before


# ---- export and generate

@pytest.mark.parametrize("args, phrases", [
    (["{ws}/no-checkpoint", "--out", "{tmp}/exported"],
     ["checkpoint {ws}/no-checkpoint does not exist", "give a folder like runs/grpo/checkpoint-100"]),
    (["{ws}/run", "--out", "{tmp}/exported"],
     ["{ws}/run is a training run's folder, not a model", "give one of its checkpoints, e.g. {ws}/run/checkpoint-1"]),
    (["{model}", "--out", "{ws}/train.jsonl"], ["--out {ws}/train.jsonl is a file", "give a folder"]),
    (["{ws}/adapter", "--out", "{tmp}/exported", "--merge"],
     ["the base model of the LoRA adapter in {ws}/adapter", "'{ws}/gone' does not exist", "pass --base PATH_OR_ID"]),
], ids=["missing-checkpoint", "run-folder", "out-is-a-file", "adapter-base-missing"])
def test_export_mistake_is_one_line(args, phrases, ws, tiny_model_dir, tmp_path, capsys):
    names = {"ws": ws, "model": tiny_model_dir, "tmp": tmp_path}
    code, err = run_main(capsys, ["export", *(arg.format(**names) for arg in args)])
    assert_one_line_error(code, err, "export", [phrase.format(**names) for phrase in phrases])
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("args, phrases", [
    (["{model}", "--file", "{ws}/missing.txt"], ["cannot read --file {ws}/missing.txt", "No such file or directory"]),
    (["{ws}/no-model", "--prompt", "hi"], ["model path '{ws}/no-model' does not exist", "check the path"]),
    (["{model}", "--prompt", "hi", "--max-new-tokens", "0"], ["--max-new-tokens must be >= 1 (got 0)"]),
    (["{model}", "--prompt", "hi", "--top-p", "0"], ["--top-p must be in (0, 1]", "(got 0.0)"]),
    (["{ws}/nochat", "--prompt", "hi", "--chat"], ["has no chat template; drop --chat"]),
], ids=["missing-file", "missing-model", "zero-new-tokens", "top-p-zero", "chat-without-template"])
def test_generate_mistake_is_one_line(args, phrases, ws, tiny_model_dir, capsys):
    names = {"ws": ws, "model": tiny_model_dir}
    code, err = run_main(capsys, ["generate", *(arg.format(**names) for arg in args)])
    assert_one_line_error(code, err, "generate", [phrase.format(**names) for phrase in phrases])


@pytest.mark.parametrize("command, args, phrases", [
    ("eval", ["{model}", "--task", "countdwn"], ["unknown task 'countdwn'", "did you mean 'countdown'?"]),
    ("eval", ["{model}", "--task", "arithmetic", "--n", "2", "--json", "{tmp}/missing/report.json"],
     ["--json {tmp}/missing/report.json: the folder {tmp}/missing does not exist", "create it"]),
    ("eval", ["{model}", "--task", "arithmetic", "--prompt-template", "Solve it:"],
     ["--prompt-template must contain {{prompt}} where the prompt goes (got 'Solve it:')"]),
    ("sft", ["--task", "countdwn", "--out", "{tmp}/sft"], ["unknown task 'countdwn'", "did you mean 'countdown'?"]),
    ("sft", ["--task", "arithmetic", "--n", "4", "--steps", "0", "--out", "{tmp}/sft"],
     ["--steps must be >= 1 (got 0)"]),
    ("explain", ["--epsilon", "-0.2"], ["--epsilon must be >= 0 (got -0.2)"]),
    ("explain", ["--beta", "nan"], ["--beta must be >= 0 (got nan)"]),
], ids=["eval-task-typo", "eval-json-folder-missing", "eval-template-without-prompt", "sft-task-typo", "sft-zero-steps",
        "explain-negative-epsilon", "explain-nan-beta"])
def test_eval_sft_explain_mistake_is_one_line(command, args, phrases, tiny_model_dir, tmp_path, capsys):
    # each stops before any work (evaluation, training) whose result the mistake would throw away
    names = {"model": tiny_model_dir, "tmp": tmp_path}
    code, err = run_main(capsys, [command, *(arg.format(**names) for arg in args)])
    assert_one_line_error(code, err, command, [phrase.format(**names) for phrase in phrases])
    assert not (tmp_path / "sft").exists() and not (tmp_path / "missing").exists()


def test_eval_formats_prompts_as_training_does(tiny_model_dir, capsys, monkeypatch):
    import reasonrl.evaluate
    import reasonrl.export

    seen = {}

    def recording(model, tokenizer, rows, reward, **options):
        seen["rows"] = rows
        return {"n": len(rows), "accuracy": 0.0, "format_rate": 0.0, "mean_length": 0.0, "truncation_rate": 0.0,
                "pass_at_k": {}, "examples": []}

    monkeypatch.setattr(reasonrl.evaluate, "evaluate", recording)
    code, _ = run_main(capsys, ["eval", str(tiny_model_dir), "--task", "arithmetic", "--n", "2", "--system-prompt",
                                "Think first.", "--prompt-template", "Q: {prompt} A?"])
    assert code == 0 and len(seen["rows"]) == 2
    for row in seen["rows"]:
        system, user = row["prompt"]
        assert system == {"role": "system", "content": "Think first."}
        assert user["role"] == "user" and user["content"].startswith("Q: ") and user["content"].endswith(" A?")
    # a tokenizer without a chat template cannot render a system message: one line, before any evaluation
    loaded = reasonrl.export.load_for_inference

    def without_template(*args, **kwargs):
        model, tokenizer = loaded(*args, **kwargs)
        tokenizer.chat_template = None
        return model, tokenizer

    monkeypatch.setattr(reasonrl.export, "load_for_inference", without_template)
    seen.clear()
    code, err = run_main(capsys, ["eval", str(tiny_model_dir), "--task", "arithmetic", "--n", "2",
                                  "--system-prompt", "Think first."])
    expected = f"--system-prompt needs a chat template, and the tokenizer of {tiny_model_dir} has none"
    assert_one_line_error(code, err, "eval", [expected, "--prompt-template instead"])
    assert not seen


def test_sft_trains_on_prompts_formatted_as_training_formats_them(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import reasonrl.sft

    seen = {}

    def recording(model, tokenizer, rows, **options):
        seen["rows"] = rows
        return [0.5]

    monkeypatch.setattr(reasonrl.sft, "sft", recording)
    code, _ = run_main(capsys, ["sft", "--task", "arithmetic", "--n", "3", "--model", str(tiny_model_dir),
                                  "--out", str(tmp_path / "warm"), "--system-prompt", "Think first.",
                                  "--prompt-template", "Q: {prompt} A?"])
    assert code == 0 and len(seen["rows"]) == 3
    for row in seen["rows"]:
        system, user = row["prompt"]
        assert system == {"role": "system", "content": "Think first."}
        assert user["content"].startswith("Q: ") and user["content"].endswith(" A?")
        assert row["completion"].endswith("</answer>")  # the trace itself is untouched
    # a tokenizer without a chat template cannot render a system message: one line, nothing trained, no --out
    import reasonrl.models

    loaded = reasonrl.models.load_tokenizer

    def without_template(*args, **kwargs):
        tokenizer = loaded(*args, **kwargs)
        tokenizer.chat_template = None
        return tokenizer

    monkeypatch.setattr(reasonrl.models, "load_tokenizer", without_template)
    seen.clear()
    code, err = run_main(capsys, ["sft", "--task", "arithmetic", "--n", "3", "--model", str(tiny_model_dir),
                                  "--out", str(tmp_path / "tiny"), "--system-prompt", "Think first."])
    assert_one_line_error(code, err, "sft", ["--system-prompt needs a chat template",
                                             "--prompt-template instead"])
    code, err = run_main(capsys, ["sft", "--task", "arithmetic", "--n", "3", "--out", str(tmp_path / "tiny"),
                                  "--prompt-template", "Q: A?"])
    assert_one_line_error(code, err, "sft", ["--prompt-template must contain {prompt}"])
    assert not seen and not (tmp_path / "tiny").exists()


def test_eval_report_that_cannot_be_written_is_one_line_after_the_report(tiny_model_dir, tmp_path, capsys,
                                                                         monkeypatch):
    reports = []

    def refused(report, path):  # e.g. the disk filled up or the folder was made read-only during the evaluation
        reports.append(report)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("reasonrl.evaluate.write_json", refused)
    report = tmp_path / "report.json"
    code, err = run_main(capsys, ["eval", str(tiny_model_dir), "--task", "arithmetic", "--n", "2", "--json",
                                  str(report)])
    assert_one_line_error(code, err, "eval", [f"cannot write --json {report}: Permission denied"])
    assert len(reports) == 1 and reports[0]["n"] == 2  # the evaluation ran (and was printed) before the write


# ---- end to end: the real command, its exit code and all of its stderr

def test_subprocess_unknown_key_in_yaml(ws, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset_name": "d.jsonl", "num_generation": 4}))
    result = run_cli("train", "--config", config)
    assert_one_line_error(result.returncode, result.stderr, "train",
                          ["unknown config key 'num_generation'", "did you mean 'num_generations'?"])


def test_subprocess_reward_with_wrong_count_ends_with_the_error_line(ws, tiny_model_dir, tmp_path):
    # fails inside the training loop: the GRPO progress bar is open and must not end up after the error
    result = run_cli("train", *_train_args(ws, tiny_model_dir, tmp_path / "out"),
                     f"reward_funcs=[{ws / 'rewards.py'}:one_too_many]")
    assert_one_line_error(result.returncode, result.stderr, "train",
                          ["'one_too_many' returned 3 values for 2 completions", "exactly one per completion"])


def test_subprocess_output_dir_holding_a_run_is_left_unchanged(ws, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    before = _snapshot(run)
    result = run_cli("train", *_train_args(ws, tiny_model_dir, run))
    assert_one_line_error(result.returncode, result.stderr, "train", ["already holds a run", "--resume", "--overwrite"])
    assert _snapshot(run) == before


def test_subprocess_export_of_a_missing_checkpoint(tmp_path):
    result = run_cli("export", tmp_path / "checkpoint-9", "--out", tmp_path / "exported")
    assert_one_line_error(result.returncode, result.stderr, "export", ["checkpoint-9 does not exist"])
    assert not (tmp_path / "exported").exists()
