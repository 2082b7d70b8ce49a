"""The shipped configs/ and examples/: every config loads, the seed and GSM8K configs say what they claim, the tiny
offline config trains through the CLI, and the seed notebook port runs offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reasonrl.config import GRPOConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs").glob("*.yml"))
EXAMPLES = ROOT / "examples"
# OMP_WAIT_POLICY=PASSIVE: when other processes share the CPU cores, PyTorch's OpenMP threads otherwise spin-wait
# for a descheduled peer at every operator, and the seed notebook's rollout (tens of thousands of small matmuls)
# ran 15x slower here (140 s instead of 9 s with one core busy); passive waiting costs ~30% on an idle machine.
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}


def test_the_shipped_configs_are_there():
    assert {"seed_smoltldr.yaml", "gsm8k.yaml", "tiny_offline.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_every_config_loads(path):
    cfg = GRPOConfig.from_yaml(path)
    assert cfg.reward_funcs, "a shipped config names its reward functions"
    assert cfg.model_name_or_path and cfg.dataset_name, "a shipped config names its model and dataset"
    assert GRPOConfig.from_dict(cfg.to_dict()) == cfg


def test_seed_config_is_the_seed_notebooks_setup():
    from reasonrl.rewards import get_reward

    cfg = GRPOConfig.from_yaml(ROOT / "configs" / "seed_smoltldr.yaml")
    assert cfg.model_name_or_path == "HuggingFaceTB/SmolLM-135M-Instruct"
    assert (cfg.dataset_name, cfg.prompt_column) == ("mlabonne/smoltldr", "prompt")
    assert (cfg.use_peft, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules) == (True, 8, 32, "all-linear")
    assert cfg.lora_dropout == 0.0  # peft's LoraConfig default, which the seed leaves alone
    assert cfg.learning_rate == 2e-5
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.num_generations) == (4, 2, 4)
    assert (cfg.max_prompt_length, cfg.max_completion_length) == (512, 96)
    assert (cfg.num_train_epochs, cfg.max_steps, cfg.logging_steps) == (1, -1, 1)
    assert cfg.remove_unused_columns is False
    assert cfg.bf16 is None  # bf16 where supported
    assert cfg.output_dir == "runs/seed_smoltldr"
    assert cfg.reward_funcs == ["length"] and cfg.reward_kwargs == {"length": {"ideal_length": 50}}
    # the configured reward is the seed's reward_len = -abs(50 - len(completion))
    reward = get_reward("length", **cfg.reward_kwargs["length"])
    assert reward(completions=["x" * 50, "x" * 47, "x" * 60]) == [0.0, -3.0, -10.0]


def test_gsm8k_config():
    from reasonrl.rewards import accuracy_reward

    cfg = GRPOConfig.from_yaml(ROOT / "configs" / "gsm8k.yaml")
    assert cfg.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (cfg.dataset_name, cfg.dataset_config, cfg.prompt_column) == ("openai/gsm8k", "main", "question")
    assert cfg.reward_funcs == ["accuracy", "format"]
    assert cfg.remove_unused_columns is False  # accuracy reads the `answer` column
    assert cfg.generation_batch_size_resolved % cfg.num_generations == 0
    # GSM8K's answer column as it is: the reward reduces the worked solution to the number after ####
    gsm8k_answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    completions = ["<think>16 - 3 - 4 = 9 eggs, 9 * 2 = 18</think><answer>18</answer>", "<answer>16</answer>"]
    assert accuracy_reward(completions, answer=[gsm8k_answer] * 2) == [1.0, 0.0]
    # the prompts ask for the format the format reward scores: each question under the system prompt
    from reasonrl.data import format_prompt, render_prompt
    from reasonrl.tiny import build_char_tokenizer

    prompt = format_prompt("Janet's ducks lay 16 eggs per day. ...", cfg.prompt_template, cfg.system_prompt)
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert prompt[1]["content"] == "Janet's ducks lay 16 eggs per day. ..."
    text = render_prompt(prompt, build_char_tokenizer(), chat_template_kwargs=cfg.chat_template_kwargs)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") and text.count("<|im_start|>") == 3
    assert all(tag in cfg.system_prompt for tag in ("<think>", "</think>", "<answer>", "</answer>"))


def test_gsm8k_configs_commented_offline_file_loads_with_its_columns():
    text = (ROOT / "configs" / "gsm8k.yaml").read_text()
    match = re.search(r"^#\s*dataset_name:\s*(\S+)", text, re.MULTILINE)
    assert match, "gsm8k.yaml shows the offline alternative as a commented dataset_name line"
    path = ROOT / match.group(1)
    if not path.is_file():
        pytest.skip(f"{path} is not present on this machine")
    from reasonrl.data import ensure_prompt_column, load_dataset_any

    cfg = GRPOConfig.from_yaml(ROOT / "configs" / "gsm8k.yaml", overrides=[f"dataset_name={path}"])
    dataset = ensure_prompt_column(load_dataset_any(cfg.dataset_name), cfg.prompt_column)
    assert {"prompt", "answer"} <= set(dataset.column_names) and len(dataset) > 0


def test_tiny_offline_config_trains_two_steps_through_the_cli(tmp_path):
    assets = tmp_path / "assets"
    made = subprocess.run([sys.executable, str(EXAMPLES / "make_tiny_assets.py"), str(assets)], check=False,
                          capture_output=True, text=True, env=OFFLINE_ENV, cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    rows = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]
    assert rows and all(set(row) == {"prompt", "completion"} for row in rows)  # smoltldr's schema
    assert (assets / "model" / "model.safetensors").is_file() and (assets / "model" / "tokenizer.json").is_file()

    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "reasonrl", "train", "--config", str(ROOT / "configs" / "tiny_offline.yaml"),
         f"model_name_or_path={assets / 'model'}", f"dataset_name={assets / 'train.jsonl'}", f"output_dir={out}"],
        check=False, capture_output=True, text=True, env=OFFLINE_ENV, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics] == [1, 2]
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_seed_notebook_runs_offline(tmp_path):
    # 45 s on this 2-core machine with other jobs running (83 s with one core fully taken by another process):
    # mostly the 135M model's 8 x 96-token rollout, its backward pass, and saving/reloading the merged model
    out = tmp_path / "GRPO"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "seed_notebook.py"), "--steps", "1", "--output-dir", str(out),
         "--max-new-tokens", "8"],
        check=False, capture_output=True, text=True, env=OFFLINE_ENV, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable params: 2,442,240 || all params: 136,957,248" in result.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    merged = out / "SmolGRPO-135M"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert "'role': 'assistant'" in result.stdout  # the pipeline's reply was printed
