"""Adversarial inputs, part 1: configs, datasets and models a user can get wrong (docs/RELIABILITY.md lists them).

Each case runs `reasonrl train` in-process on a tiny local model and must end in exactly one line
`reasonrl train: error: ...` (exit 2, no traceback) holding the phrases given, or, where the input is odd but fine,
train. Most are found before the model loads. Cases beyond those of test_cli_errors.py.
"""

import json
import os
import shutil

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main, snapshot


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adversarial-inputs")
    rows = [{"prompt": f"Say {i}:", "answer": str(i)} for i in range(4)]
    _jsonl(root / "train.jsonl", rows)
    # configs
    (root / "dup.yaml").write_text("learning_rate: 1.0e-5\nlearning_rate: 2.0e-5\n")
    (root / "tabs.yaml").write_text("model_name_or_path: m\n\tlearning_rate: 1\n")
    (root / "utf16.yaml").write_bytes("max_steps: 1\n".encode("utf-16"))
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "empty.yaml").write_text("")
    (root / "scalar.yaml").write_text("just a string\n")
    (root / "bom.yaml").write_bytes(b"\xef\xbb\xbfmax_steps: 1\n")
    (root / "config_dir.yaml").mkdir()
    (root / "inf.yaml").write_text("beta: 1.0e400\n")
    # datasets
    _jsonl(root / "mixed_types.jsonl", [{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": "two"}])
    (root / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (root / "train.jsonl").read_bytes())
    (root / "utf16.jsonl").write_bytes((root / "train.jsonl").read_text().encode("utf-16"))
    (root / "crlf.jsonl").write_bytes((root / "train.jsonl").read_bytes().replace(b"\n", b"\r\n"))
    _jsonl(root / "empty_prompt.jsonl", [{"prompt": "a"}, {"prompt": ""}])
    _jsonl(root / "blank_prompt.jsonl", [{"prompt": "   \n"}])
    _jsonl(root / "null_prompt.jsonl", [{"prompt": "a"}, {"prompt": None}])
    _jsonl(root / "no_content.jsonl", [{"prompt": [{"role": "user"}]}])
    _jsonl(root / "int_content.jsonl", [{"prompt": [{"role": "user", "content": 5}]}])
    _jsonl(root / "int_role.jsonl", [{"prompt": [{"role": 1, "content": "hi"}]}])
    _jsonl(root / "list_of_strings.jsonl", [{"prompt": ["hello", "there"]}])
    _jsonl(root / "empty_list.jsonl", [{"prompt": []}])
    _jsonl(root / "mixed_kinds.jsonl", [{"prompt": "plain"}, {"prompt": [{"role": "user", "content": "chat"}]}])
    _jsonl(root / "dict_prompt.jsonl", [{"prompt": {"text": "hi"}}])
    _jsonl(root / "text_col.jsonl", [{"text": "hi"}])
    _jsonl(root / "one_row.jsonl", [{"prompt": "Say 1:"}])
    _jsonl(root / "long_prompt.jsonl", [{"prompt": "x" * 400}, {"prompt": "short"}])
    _jsonl(root / "no_answer.jsonl", [{"prompt": "a", "question": "q"}])
    (root / "TRAIN.JSONL").write_bytes((root / "train.jsonl").read_bytes())
    (root / "data.xlsx").write_bytes(b"PK\x03\x04 not really")
    (root / "garbage.parquet").write_bytes(os.urandom(300))
    (root / "object.json").write_text('{"prompt": "a", "answer": "1"}')
    (root / "empty_dir").mkdir()
    os.symlink(root / "train.jsonl", root / "link.jsonl")
    os.symlink(root / "nowhere.jsonl", root / "dangling.jsonl")
    (root / "unicode prompts.jsonl").write_text(json.dumps({"prompt": "Σ 🙂 日本 \u202e rtl"}) + "\n")
    # models
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    truncated = root / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    garbage_config = root / "garbage_config"
    shutil.copytree(tiny_model_dir, garbage_config)
    (garbage_config / "config.json").write_text("{not json")
    no_weights = root / "no_weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    bin_only = root / "bin_only"
    shutil.copytree(tiny_model_dir, bin_only)
    (bin_only / "model.safetensors").unlink()
    (bin_only / "pytorch_model.bin").write_bytes(b"a pickle that must never be loaded")
    unknown_arch = root / "unknown_arch"
    shutil.copytree(tiny_model_dir, unknown_arch)
    config = json.loads((unknown_arch / "config.json").read_text())
    config["model_type"], config["architectures"] = "nosuchmodel", ["NoSuchModelForCausalLM"]
    (unknown_arch / "config.json").write_text(json.dumps(config))
    remote_code = root / "remote_code"
    shutil.copytree(tiny_model_dir, remote_code)
    config = json.loads((remote_code / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    config["model_type"] = "evil"
    (remote_code / "config.json").write_text(json.dumps(config))
    (remote_code / "modeling_evil.py").write_text(f"open({str(root / 'pwned')!r}, 'w').write('ran')\n")
    short_positions = root / "short_positions"
    shutil.copytree(tiny_model_dir, short_positions)
    config = json.loads((short_positions / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (short_positions / "config.json").write_text(json.dumps(config))
    (root / "a_file").write_text("not a model")
    _bert(root / "bert")
    _tokenizer_variants(root, tiny_model_dir)
    return root


def _bert(path):
    from transformers import BertConfig, BertLMHeadModel

    from reasonrl.tiny import build_char_tokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=260, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertLMHeadModel(config).save_pretrained(path)  # bidirectional: not a causal LM, whatever its head
    build_char_tokenizer().save_pretrained(path)


def _tokenizer_variants(root, tiny_model_dir):
    """A model whose EOS token id lies outside its vocabulary (a tokenizer with extra tokens)."""
    from transformers import AutoTokenizer

    outside = root / "eos_outside"
    shutil.copytree(tiny_model_dir, outside)
    tokenizer = AutoTokenizer.from_pretrained(outside)
    tokenizer.add_special_tokens({"eos_token": "<|new_end|>"})  # id 260 of a 260-row embedding
    tokenizer.save_pretrained(outside)


def _args(ws, *extra, model=None, out=None):
    """A valid one-step run into `out` (default ws/out, which no case may create); `extra` options win."""
    return [f"model_name_or_path={model or ws / 'model'}", f"dataset_name={ws / 'train.jsonl'}",
            "reward_funcs=[length]", "max_steps=1", "max_completion_length=4", "gradient_checkpointing=false",
            "num_generations=2", "per_device_train_batch_size=2", "optim=adamw_torch", "max_prompt_length=64",
            f"output_dir={out or ws / 'out'}", *extra]


def _fill(items, ws):
    return [str(item).replace("{ws}", str(ws)) for item in items]


# (id, arguments after the valid ones, phrases of the one error line); {ws} is the workspace
CONFIG_CASES = [
    ("lr-inf", ["learning_rate=inf"], ["learning_rate must hold finite numbers (got inf)"]),
    ("lr-minus-inf", ["learning_rate=-inf"], ["learning_rate must hold finite numbers"]),
    ("lr-nan", ["learning_rate=nan"], ["learning_rate must be float", "(got 'nan')"]),
    ("temperature-inf", ["temperature=inf"], ["temperature must hold finite numbers"]),
    ("max-grad-norm-inf", ["max_grad_norm=inf"], ["max_grad_norm must hold finite numbers"]),
    ("reward-weight-inf", ["reward_weights=[inf]"], ["reward_weights must hold finite numbers"]),
    ("reward-weight-text", ["reward_weights=[1,abc]"], ["reward_weights must be list[float] | None"]),
    ("seed-negative", ["seed=-1"], ["seed must be in [0, 2**32 - 1]", "(got -1)"]),
    ("seed-too-large", ["seed=8589934592"], ["seed must be in [0, 2**32 - 1]"]),
    ("seed-text", ["seed=abc"], ["seed must be int", "(got 'abc')"]),
    ("seed-fraction", ["seed=1.5"], ["seed must be int"]),
    ("output-dir-empty", ["output_dir="], ["output_dir is empty", "output_dir=runs/my_run"]),
    ("output-dir-blank", ["output_dir=   "], ["output_dir is empty"]),
    ("scheduler-kwarg-unknown", ["lr_scheduler_kwargs={foo: 1}"],
     ["lr_scheduler_kwargs has 'foo'", "lr_scheduler_type=linear does not take", "it takes none"]),
    ("scheduler-kwarg-typo", ["lr_scheduler_type=cosine_with_restarts", "lr_scheduler_kwargs={num_cyles: 2}"],
     ["'num_cyles'", "it takes: num_cycles"]),
    ("scheduler-kwargs-not-mapping", ["lr_scheduler_kwargs=5"], ["lr_scheduler_kwargs must be dict"]),
    ("max-steps-fraction", ["max_steps=1.5"], ["max_steps must be int", "(got '1.5')"]),
    ("bf16-maybe", ["bf16=maybe"], ["bf16 must be bool | None", "(got 'maybe')"]),
    ("dtype-int8", ["dtype=int8"], ["dtype='int8' is not supported", "choose one of: auto"]),
    ("optim-typo", ["optim=adamw_troch"], ["optim='adamw_troch' is not supported", "did you mean 'adamw_torch'?"]),
    ("loss-type-uppercase", ["loss_type=DAPO"], ["loss_type='DAPO' is not supported", "did you mean 'dapo'?"]),
    ("report-to-unknown", ["report_to=mlflowx"], ["report_to='mlflowx' is not supported"]),
    ("reward-kwargs-not-mapping", ["reward_kwargs={length: 5}"], ["reward_kwargs['length'] must be a mapping"]),
    ("reward-kwargs-unlisted", ["reward_kwargs={format: {x: 1}}"], ["reward_kwargs has an entry for 'format'"]),
    ("generation-batch-not-divisible", ["generation_batch_size=3"],
     ["generation_batch_size=3 must be a multiple of per_device_train_batch_size=2"]),
    ("delta-too-small", ["delta=1.0"], ["delta must be > 1 + epsilon_high", "try delta=4"]),
    ("warmup-ratio-large", ["warmup_ratio=1.5"], ["warmup_ratio must be in [0, 1]"]),
    ("epsilon-negative", ["epsilon=-0.1"], ["epsilon must be >= 0"]),
    ("max-completion-negative", ["max_completion_length=-5"], ["max_completion_length must be >= 1"]),
    ("batch-zero", ["per_device_train_batch_size=0"], ["per_device_train_batch_size must be >= 1"]),
    ("top-p-zero", ["top_p=0"], ["top_p must be in (0, 1]"]),
    ("lora-rank-zero", ["use_peft=true", "lora_r=0"], ["lora_r must be >= 1"]),
    ("unicode-key", ["lärning_rate=1"], ["unknown config key 'lärning_rate'"]),
    ("only-equals", ["="], ["override '=' is not key=value"]),
    ("nested-key-on-scalar", ["learning_rate.x=1"], ["learning_rate must be float (got {'x': 1})"]),
    ("yaml-duplicate-key", ["--config", "{ws}/dup.yaml"], ["the key 'learning_rate' is given twice"]),
    ("yaml-tabs", ["--config", "{ws}/tabs.yaml"], ["tabs.yaml:2:1: invalid YAML"]),
    ("yaml-utf16", ["--config", "{ws}/utf16.yaml"], ["cannot read config file", "utf16.yaml"]),
    ("yaml-binary", ["--config", "{ws}/binary.yaml"], ["binary.yaml"]),
    ("yaml-scalar", ["--config", "{ws}/scalar.yaml"], ["the top level must be a mapping of option: value"]),
    ("yaml-directory", ["--config", "{ws}/config_dir.yaml"], ["cannot read config file", "config_dir.yaml"]),
    ("yaml-inf", ["--config", "{ws}/inf.yaml"], ["beta must hold finite numbers (got inf)"]),
]


@pytest.mark.parametrize("case_id, extra, phrases", CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_config_mistakes(ws, capsys, case_id, extra, phrases):
    extra = _fill(extra, ws)
    if extra[:1] == ["--config"]:  # the config file alone, then the valid options that it lacks
        argv = ["train", *extra, *[a for a in _args(ws) if not a.startswith(("learning_rate", "beta"))]]
    else:
        argv = ["train", *_args(ws), *extra]
    code, err = run_main(capsys, argv)
    assert_one_line_error(code, err, "train", phrases)
    assert not (ws / "out").exists()  # refused before anything was written


DATA_CASES = [
    ("mixed-types-in-a-column", "mixed_types.jsonl", ["a column mixes value types", "same type in each column"]),
    ("utf16-jsonl", "utf16.jsonl", ["is not UTF-8", "re-encode it as UTF-8"]),
    ("empty-prompt", "empty_prompt.jsonl", ["row 1 of the training data: the prompt is empty"]),
    ("blank-prompt", "blank_prompt.jsonl", ["row 0 of the training data: the prompt is empty"]),
    ("null-prompt", "null_prompt.jsonl", ["row 1", "the prompt must be a string or a list of chat messages"]),
    ("message-without-content", "no_content.jsonl", ["has a message without text content"]),
    ("message-int-content", "int_content.jsonl", ["has a message without text content"]),
    ("message-int-role", "int_role.jsonl", ["has a message whose role is not a string"]),
    ("list-of-strings", "list_of_strings.jsonl", ["is a list, but not of chat messages"]),
    ("empty-message-list", "empty_list.jsonl", ["must be a string or a list of chat messages, got list"]),
    ("plain-and-chat-mixed", "mixed_kinds.jsonl", ["a column mixes value types"]),
    ("dict-prompt", "dict_prompt.jsonl", ["must be a string or a list of chat messages, got dict"]),
    ("text-column", "text_col.jsonl", ["no 'prompt' column (found: text)", "set prompt_column=text"]),
    ("unsupported-extension", "data.xlsx", ["unsupported dataset file type '.xlsx'"]),
    ("garbage-parquet", "garbage.parquet", ["could not read dataset", "check that it is valid Parquet"]),
    ("folder-without-data", "empty_dir", ["could not read dataset"]),
    ("dangling-symlink", "dangling.jsonl", ["dangling.jsonl does not exist"]),
]


@pytest.mark.parametrize("case_id, name, phrases", DATA_CASES, ids=[case[0] for case in DATA_CASES])
def test_dataset_mistakes(ws, capsys, case_id, name, phrases):
    code, err = run_main(capsys, ["train", *_args(ws, f"dataset_name={ws / name}")])
    assert_one_line_error(code, err, "train", phrases)
    assert not (ws / "out").exists()


def test_prompt_column_naming_a_missing_column(ws, capsys):
    code, err = run_main(capsys, ["train", *_args(ws, "prompt_column=question")])
    assert_one_line_error(code, err, "train", ["no 'question' column (found: prompt, answer)", "prompt_column=prompt"])


@pytest.mark.parametrize("extra, phrases", [
    (["reward_funcs=[accuracy]", "dataset_name={ws}/no_answer.jsonl"],
     ["reward 'accuracy_reward' reads the dataset column 'answer' or 'solution'", "columns: prompt, question"]),
    (["reward_funcs=[accuracy]", "remove_unused_columns=true"],
     ["reads the dataset column 'answer' or 'solution'", "keep remove_unused_columns=false"]),
], ids=["no-answer-column", "answer-removed"])
def test_a_reward_needing_a_missing_column_is_refused_before_the_model_loads(ws, capsys, monkeypatch, extra, phrases):
    import reasonrl.models as models_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(models_module, "load_model", no_model)
    code, err = run_main(capsys, ["train", *_args(ws, *_fill(extra, ws))])
    assert_one_line_error(code, err, "train", phrases)


@pytest.mark.parametrize("name", ["bom.jsonl", "crlf.jsonl", "TRAIN.JSONL", "link.jsonl", "one_row.jsonl",
                                  "long_prompt.jsonl", "unicode prompts.jsonl"],
                         ids=["utf8-bom", "crlf", "uppercase-extension", "symlink", "one-row", "prompt-cut",
                              "unicode"])
def test_odd_but_valid_datasets_train(ws, capsys, tmp_path, name):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", *_args(ws, f"dataset_name={ws / name}", out=out)])
    assert code == 0, err[-2000:]
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1]


def test_a_config_file_with_a_byte_order_mark_is_read(ws, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run_main(capsys, ["train", "--config", ws / "bom.yaml", *_args(ws, out=out)])
    assert code == 0, err[-2000:]


MODEL_CASES = [
    ("truncated-weights", "truncated", ["could not load the model", "truncated"]),
    ("garbage-config", "garbage_config", ["could not load the model", "garbage_config"]),
    ("no-weights", "no_weights", ["could not load the model", "no_weights"]),
    ("pickle-weights-only", "bin_only", ["could not load the model", "bin_only"]),
    ("unknown-architecture", "unknown_arch", ["could not load the model", "nosuchmodel"]),
    ("remote-code-not-trusted", "remote_code", ["ships its own model code (auto_map in config.json)",
                                                "pass --trust-remote-code"]),
    ("not-causal", "bert", ["is not a causal language model", "decoder-only"]),
    ("eos-outside-vocabulary", "eos_outside",
     ["the tokenizer's eos token id (260) is not in the model's vocabulary of 260"]),
    ("a-file", "a_file", ["could not load the model", "a_file"]),
]


@pytest.mark.parametrize("case_id, name, phrases", MODEL_CASES, ids=[case[0] for case in MODEL_CASES])
def test_model_mistakes(ws, capsys, case_id, name, phrases):
    code, err = run_main(capsys, ["train", *_args(ws, model=ws / name)])
    assert_one_line_error(code, err, "train", phrases)
    assert not (ws / "pwned").exists()  # the model folder's own code never ran
    assert not (ws / "out").exists()


def test_lengths_past_the_models_positions_are_refused_before_it_loads(ws, capsys, monkeypatch):
    import reasonrl.models as models_module

    monkeypatch.setattr(models_module, "load_model", lambda *a, **k: pytest.fail("the weights must not load"))
    code, err = run_main(capsys, ["train", *_args(ws, "max_completion_length=100", model=ws / "short_positions")])
    assert_one_line_error(code, err, "train", ["max_completion_length=100 exceeds the model's 64 positions",
                                               "lower max_completion_length to at most 63"])


def test_the_longest_prompt_plus_a_completion_must_fit_the_positions(ws, capsys):
    # the prompts of long_prompt.jsonl are 400 and 5 characters (tokens, for this tokenizer)
    code, err = run_main(capsys, ["train", *_args(ws, f"dataset_name={ws / 'long_prompt.jsonl'}",
                                                  "max_prompt_length=512", "max_completion_length=40",
                                                  model=ws / "short_positions")])
    assert_one_line_error(code, err, "train", [("the longest prompt (400 tokens) + max_completion_length=40 exceeds "
                                                "the model's 64 positions"), "(or max_prompt_length)"])


@pytest.mark.parametrize("extra, phrases", [
    (["use_peft=true", "lora_target_modules=[nonexistent_proj]"],
     ["LoRA cannot be added with lora_target_modules=", "the model's linear layers are:", "q_proj"]),
    (["model_init_kwargs={no_such_argument: 1}"], ["could not load the model", "check model_init_kwargs"]),
], ids=["lora-target-missing", "model-init-kwarg-unknown"])
def test_model_option_mistakes(ws, capsys, extra, phrases):
    code, err = run_main(capsys, ["train", *_args(ws, *extra)])
    assert_one_line_error(code, err, "train", phrases)


def test_a_mistake_found_while_loading_leaves_an_earlier_run_untouched(ws, capsys, tmp_path):
    out = tmp_path / "run"
    assert run_main(capsys, ["train", *_args(ws, out=out)])[0] == 0
    before = snapshot(out)
    code, err = run_main(capsys, ["train", *_args(ws, "--overwrite", model=ws / "bert", out=out)])
    assert_one_line_error(code, err, "train", ["is not a causal language model"])
    assert snapshot(out) == before
