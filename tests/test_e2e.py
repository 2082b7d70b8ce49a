"""End to end on a tiny random model: the CLI (train -> export -> generate) and the Python API the seed uses."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from reasonrl.tiny import build_char_tokenizer, build_tiny_model

METRIC_NAMES = [
    "loss", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
    "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "grad_norm",
    "learning_rate", "step_time", "tokens_per_second",
]

REWARD_FILE = '''
def distinct_chars(completions, **kwargs):
    """Reward diversity: the number of distinct characters (varies from sample to sample)."""
    return [float(len(set(c))) for c in completions]
'''


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "reasonrl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cli-run")
    (root / "rewards.py").write_text(REWARD_FILE)
    with open(root / "train.jsonl", "w") as handle:
        handle.writelines(json.dumps({"prompt": f"Write something about {i}:", "topic": str(i)}) + "\n"
                          for i in range(12))
    config = {
        "model_name_or_path": tiny_model_dir, "dataset_name": str(root / "train.jsonl"),
        "reward_funcs": [f"{root / 'rewards.py'}:distinct_chars", "length"],
        "reward_kwargs": {"length": {"ideal_length": 8}}, "reward_weights": [1.0, 0.1],
        "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": "all-linear",
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_generations": 4,
        "max_completion_length": 12, "learning_rate": 1e-2, "beta": 0.04, "max_steps": 3, "save_steps": 2,
        "logging_steps": 1, "gradient_checkpointing": False, "output_dir": str(root / "out"),
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("train", "--config", str(root / "cfg.yaml"), "seed=7")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, config


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "adapter_model.safetensors"))


def test_cli_train_changes_every_lora_parameter_and_no_base_parameter(trained_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, _ = trained_run
    out = root / "out"
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-3", "completions.jsonl", "metrics.jsonl",
                                       "reasonrl-run.json"]
    trained = _adapter(out / "checkpoint-3")
    # the untrained adapter: the same LoRA config applied with the same seed (peft initialises A randomly, B = 0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fresh = PeftModel.from_pretrained(base, out / "checkpoint-3")
    assert len(trained) == 2 * 2 * 7  # 2 layers x 7 linear modules x (A, B)
    changed_b = [k for k, v in trained.items() if "lora_B" in k and v.abs().sum() > 0]
    assert len(changed_b) == len(trained) // 2  # every B left its zero initialisation
    # every base weight is untouched: the merged-off base equals the saved base model
    saved_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, value in fresh.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace("base_layer.", "")
        assert torch.equal(value, saved_base[clean]), name


def test_lora_a_matrices_moved_from_their_initialisation(trained_run):
    # A is random at init; compare checkpoint-2 and checkpoint-3: a trained A must differ between steps
    root, _ = trained_run
    step2, step3 = _adapter(root / "out" / "checkpoint-2"), _adapter(root / "out" / "checkpoint-3")
    for name in step3:
        assert not torch.equal(step2[name], step3[name]), f"{name} did not change in step 3"


def test_metrics_rows_and_checkpoint_contents(trained_run):
    root, _ = trained_run
    rows = [json.loads(line) for line in open(root / "out" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        missing = [name for name in METRIC_NAMES if name not in row]
        assert not missing, missing
        assert "rewards/distinct_chars/mean" in row and "rewards/length_reward/std" in row
        assert row["kl"] >= 0 and row["grad_norm"] > 0
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples from the reference itself
    assert rows[2]["kl"] > 0
    checkpoint = set(os.listdir(root / "out" / "checkpoint-3"))
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json",
            "config.yaml", "tokenizer.json"} <= checkpoint
    state = json.load(open(root / "out" / "checkpoint-3" / "trainer_state.json"))
    assert state["global_step"] == 3
    completions = [json.loads(line) for line in open(root / "out" / "completions.jsonl")]
    assert len(completions) == 3 * 2  # 2 prompts per round, first completion each
    assert set(completions[0]["rewards"]) == {"distinct_chars", "length_reward"}


def test_export_merge_logits_equal_peft_and_generate_prints(trained_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, _ = trained_run
    checkpoint = root / "out" / "checkpoint-3"
    result = run_cli("export", str(checkpoint), "--merge", "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), checkpoint).eval()
    ids = build_char_tokenizer()(["Write something about 3:"], return_tensors="pt").input_ids
    with torch.no_grad():
        difference = (merged(ids).logits - peft_model(ids).logits).abs().max().item()
    assert difference < 1e-4
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "reward" in card and "learning_rate" in card
    assert not list((tmp_path / "merged").glob("*.bin"))  # safetensors only

    (tmp_path / "doc.txt").write_text("# A long document about the Cat\n\nThe cat is a small carnivorous mammal.")
    for source in (["--prompt", "Write something about 3:"], ["--chat", "--file", str(tmp_path / "doc.txt")]):
        result = run_cli("generate", str(tmp_path / "merged"), *source, "--max-new-tokens", "12")
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(result.stdout) > 1  # the completion (a random model may well print only newlines)
    result = run_cli("generate", str(checkpoint), "--prompt", "hi", "--max-new-tokens", "5")  # a LoRA checkpoint
    assert result.returncode == 0 and len(result.stdout) > 1, result.stderr[-2000:]


def test_python_api_as_the_seed_notebook_writes_it(tmp_path):
    # The seed's cells with `from trl import GRPOConfig, GRPOTrainer` changed to reasonrl; model and data local.
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model

    from reasonrl import GRPOConfig, GRPOTrainer

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=3)
    dataset = Dataset.from_list([{"prompt": f"Summarise: the cat sat on mat number {i}.", "completion": "cat sat"}
                                 for i in range(8)])
    lora_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, target_modules="all-linear")
    model = get_peft_model(model, lora_config)
    ideal_length = 50

    def reward_len(completions, **kwargs):
        return [-abs(ideal_length - len(completion)) for completion in completions]

    training_args = GRPOConfig(
        output_dir=str(tmp_path / "GRPO"), learning_rate=2e-5, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, max_prompt_length=512, max_completion_length=16, num_generations=4,
        optim="adamw_torch", num_train_epochs=1, bf16=False, report_to=["none"], remove_unused_columns=False,
        logging_steps=1, max_steps=2,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_len], args=training_args, train_dataset=dataset,
                          processing_class=tokenizer)
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(before[k], after[k]) for k in before)
    merged_model = trainer.model.merge_and_unload()
    merged_model.save_pretrained(tmp_path / "SmolGRPO-135M")
    rows = [json.loads(line) for line in open(tmp_path / "GRPO" / "metrics.jsonl")]
    assert len(rows) == 2 and "rewards/reward_len/mean" in rows[0]
    assert (tmp_path / "SmolGRPO-135M" / "model.safetensors").exists()


def test_seed_lora_on_smollm_135m_architecture_counts_the_seeds_parameters():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reasonrl.models import count_parameters
    from reasonrl.tiny import smollm_135m_config

    with torch.device("meta"):  # shapes only: the count needs no real weights
        model = AutoModelForCausalLM.from_config(smollm_135m_config())
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, target_modules="all-linear"))
    assert count_parameters(model) == (2_442_240, 136_957_248)
