"""Small pieces of the trainer: step schedules, the resumable prompt order, logs on restart, optimizers."""

import json

import pytest
import torch
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.rounds import PromptSampler
from reasonrl.rounds import is_every as _is_every
from reasonrl.tiny import build_tiny_model


def test_is_every_steps_and_fractions():
    assert [s for s in range(1, 11) if _is_every(s, 3, 10)] == [3, 6, 9]
    assert [s for s in range(1, 11) if _is_every(s, 0.25, 10)] == [2, 4, 6, 8, 10]  # round(2.5) = 2
    assert not any(_is_every(s, 0, 10) for s in range(1, 11))


def test_prompt_sampler_is_a_seeded_resumable_permutation():
    sampler = PromptSampler(5, seed=3)
    first_epoch = sampler.take(5)
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    state_after = {"epoch": sampler.epoch, "position": sampler.position}
    rest = sampler.take(7)  # crosses into the next epoch
    assert sorted(rest[:5]) == [0, 1, 2, 3, 4] and rest[:5] != first_epoch
    again = PromptSampler(5, seed=3)
    again.load_state_dict(state_after)
    assert again.take(7) == rest
    assert PromptSampler(5, seed=3, shuffle=False).take(6) == [0, 1, 2, 3, 4, 0]


def _trainer(tmp_path, char_tokenizer, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=4, max_steps=2, learning_rate=1e-3, gradient_checkpointing=False,
                    logging_steps=100, save_steps=100)
    settings.update(overrides)
    dataset = Dataset.from_list([{"prompt": f"p{i}"} for i in range(6)])
    return GRPOTrainer(build_tiny_model(char_tokenizer, seed=0), [lambda completions, **kw: [len(c) for c in
                       completions]], args=GRPOConfig(**settings), train_dataset=dataset,
                       processing_class=char_tokenizer)


@pytest.mark.parametrize("optim", ["adamw_torch", "adafactor", "sgd"])
def test_optimizers_take_steps(tmp_path, char_tokenizer, optim):
    trainer = _trainer(tmp_path, char_tokenizer, optim=optim)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not (a == b).all() for a, b in zip(before, trainer.model.parameters()))


def test_a_new_run_in_the_same_folder_starts_fresh_logs_only_when_told(tmp_path, char_tokenizer):
    from reasonrl.errors import ConfigError

    _trainer(tmp_path, char_tokenizer).train()
    with pytest.raises(ConfigError, match="already holds a run"):
        _trainer(tmp_path, char_tokenizer, max_steps=1).train()
    _trainer(tmp_path, char_tokenizer, max_steps=1, overwrite_output_dir=True).train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1]


def test_two_runs_with_the_same_seed_end_bitwise_equal(tmp_path, char_tokenizer):
    # determinism on CPU: sampling, shuffling, dropout (LoRA's) and the optimizer all follow the seed
    from peft import LoraConfig

    weights = []
    for run in ("a", "b"):
        trainer = _trainer(tmp_path / run, char_tokenizer, max_steps=3, seed=11)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(trainer.model, trainer.reward_funcs, args=trainer.args,
                              train_dataset=trainer.train_dataset, processing_class=char_tokenizer, peft_config=lora)
        trainer.train()
        weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    trained_b = [v for k, v in weights[0].items() if "lora_B" in k]
    assert trained_b and all(v.abs().sum() > 0 for v in trained_b)  # the runs did train (B starts at zero)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_backward_in_row_chunks_gives_the_same_steps(tmp_path, char_tokenizer, loss_type):
    # the prompts run once per micro-batch, the completions 1, 3 or all (0) rows at a time: same weights and metrics
    # (SGD, whose step is proportional to the gradient, unlike Adam's, which would hide a mis-scaled chunk)
    from peft import LoraConfig

    results = {}
    for chunk_rows in (0, 1, 3):
        base = _trainer(tmp_path / str(chunk_rows), char_tokenizer, max_steps=2, seed=5, loss_type=loss_type,
                        beta=0.04, gradient_accumulation_steps=2, max_completion_length=6,
                        backward_chunk_rows=chunk_rows, optim="sgd", learning_rate=0.5)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(base.model, base.reward_funcs, args=base.args, train_dataset=base.train_dataset,
                              processing_class=char_tokenizer, peft_config=lora)
        history = trainer.train()
        lora_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
        results[chunk_rows] = lora_weights, history
    whole_weights, whole_history = results[0]
    assert any(v.abs().sum() > 0 for k, v in whole_weights.items() if "lora_B" in k)  # it trained
    for chunk_rows in (1, 3):
        weights, history = results[chunk_rows]
        assert max((weights[k] - whole_weights[k]).abs().max().item() for k in weights) < 1e-6
        for row, whole_row in zip(history, whole_history):
            for key in ("loss", "kl", "entropy", "grad_norm", "clip_ratio/region_mean"):
                assert row[key] == pytest.approx(whole_row[key], rel=1e-5, abs=1e-7), (chunk_rows, key)


@pytest.mark.parametrize("disable_dropout", [False, True])
def test_lora_dropout_is_the_lean_one_and_disable_dropout_still_zeroes_it(tmp_path, char_tokenizer, disable_dropout):
    from peft import LoraConfig, get_peft_model

    from reasonrl.models import LoraDropout

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    base = _trainer(tmp_path, char_tokenizer, disable_dropout=disable_dropout)
    for given in ("config", "peft model"):  # the trainer adds the adapter, or the user passes a peft model
        model = build_tiny_model(char_tokenizer, seed=0)
        trainer = GRPOTrainer(model if given == "config" else get_peft_model(model, lora), base.reward_funcs,
                              args=base.args, train_dataset=base.train_dataset, processing_class=char_tokenizer,
                              peft_config=lora if given == "config" else None)
        dropouts = [d for m in trainer.model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
        assert dropouts and all(type(d) is LoraDropout for d in dropouts), given
        assert {d.p for d in dropouts} == ({0.0} if disable_dropout else {0.1})


def test_bf16_steps_keep_lora_inputs_in_bf16_only_inside_the_trainers_autocast(tmp_path, char_tokenizer):
    from peft import LoraConfig

    base = _trainer(tmp_path, char_tokenizer, bf16=True, max_steps=1)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(base.model, base.reward_funcs, args=base.args, train_dataset=base.train_dataset,
                          processing_class=char_tokenizer, peft_config=lora)
    layers = [m for m in trainer.model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    with trainer._autocast():
        assert layers and not any(m.cast_input_dtype_enabled for m in layers)
    assert all(m.cast_input_dtype_enabled for m in layers)  # restored: evaluation without autocast still casts
    history = trainer.train()
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
