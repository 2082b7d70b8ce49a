"""Small pieces of the trainer: step schedules, the resumable prompt order, logs on restart, optimizers."""

import json

import pytest
import torch
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.core import StepNormaliser
from reasonrl.errors import ConfigError
from reasonrl.rounds import PromptSampler
from reasonrl.tiny import build_tiny_model


@pytest.mark.parametrize("every, total, expected", [(3, 10, 3), (0.25, 10, 3), (0.5, 7, 4), (0.01, 10, 1),
                                                    (12, 10, 12)])
def test_step_intervals_resolve_as_transformers(every, total, expected):
    from transformers import TrainerState

    from reasonrl.callbacks import set_intervals

    args = GRPOConfig(logging_steps=every, save_steps=every, eval_steps=every, eval_strategy="steps",
                      per_device_eval_batch_size=8, max_steps=total)
    assert args.step_interval("logging_steps", total) == expected  # ceil(0.25 * 10) = 3, as transformers
    theirs = TrainerState()
    theirs.compute_steps(args, total)  # transformers' own resolution of the same options
    ours = TrainerState()
    set_intervals(ours, args, total)
    assert (ours.logging_steps, ours.eval_steps, ours.save_steps) == (theirs.logging_steps, theirs.eval_steps,
                                                                      theirs.save_steps) == (expected,) * 3
    # eval_steps None falls back to logging_steps, as TrainingArguments does
    assert GRPOConfig(logging_steps=every, eval_steps=None).step_interval("eval_steps", total) == expected


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


def _scored_round(trainer):
    """Steps 1-3 of a round as train() takes them: rollout, score, advantages; and the round's metrics."""
    rows, rollout = trainer._rollout()
    scores, rewards = trainer._score(rows, rollout)
    batch = trainer._advantages(rollout, rewards, scores.rewards_per_func)
    return batch, trainer._round_metrics(rows, rollout, scores, rewards, batch)


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
        # at a fixed thread count (adapt_cpu_threads would follow the machine's load, and the rounding with it)
        trainer = _trainer(tmp_path / run, char_tokenizer, max_steps=3, seed=11, adapt_cpu_threads=False)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(trainer.model, trainer.reward_funcs, args=trainer.args,
                              train_dataset=trainer.train_dataset, processing_class=char_tokenizer, peft_config=lora)
        trainer.train()
        weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    trained_b = [v for k, v in weights[0].items() if "lora_B" in k]
    assert trained_b and all(v.abs().sum() > 0 for v in trained_b)  # the runs did train (B starts at zero)


# each loss type with the options that exercise it: cispo's cap low enough to bite, GSPO/LUSPO at sequence level
CHUNKED_LOSS_CASES = {
    "dapo": {}, "grpo": {}, "bnpo": {}, "dr_grpo": {}, "cispo": {"epsilon_high": 1.05}, "sapo": {},
    "luspo": {"importance_sampling_level": "sequence"}, "vespo": {},
    "grpo-sequence": {"loss_type": "grpo", "importance_sampling_level": "sequence"},
}


@pytest.mark.parametrize("case", list(CHUNKED_LOSS_CASES))
def test_backward_in_row_chunks_gives_the_same_steps(tmp_path, char_tokenizer, case):
    # the prompts run once per micro-batch, the completions 1, 3 or all (0) rows at a time: same weights and metrics
    # (SGD, whose step is proportional to the gradient, unlike Adam's, which would hide a mis-scaled chunk).
    # num_iterations=2: the second pass is off-policy, so the ratios (cispo's cap, vespo's weight) are not all 1.
    from peft import LoraConfig

    options = {"loss_type": case, **CHUNKED_LOSS_CASES[case]}
    results = {}
    for chunk_rows in (0, 1, 3):
        base = _trainer(tmp_path / str(chunk_rows), char_tokenizer, max_steps=4, seed=5, beta=0.04,
                        gradient_accumulation_steps=2, max_completion_length=6, num_iterations=2,
                        backward_chunk_rows=chunk_rows, optim="sgd", learning_rate=0.5, **options)
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
        assert len(history) == len(whole_history) == 4
        for row, whole_row in zip(history, whole_history):
            keys = [key for key in whole_row if key in METRICS_FROM_THE_LOSS or key.startswith("clip_ratio/")]
            assert len(keys) >= 4 and set(keys) <= set(row)  # loss, kl, entropy, grad_norm (+ the type's own)
            for key in keys:
                # luspo's losses are per-sequence token sums (up to 6x grpo's means): its float32 rounding is too;
                # vespo's sequence weights exponentiate summed log-ratios (1.4e-6 apart on an AVX-512 machine)
                absolute = {"luspo": 1e-6, "vespo": 3e-6}.get(options["loss_type"], 1e-7) if key == "loss" else 1e-7
                assert row[key] == pytest.approx(whole_row[key], rel=1e-5, abs=absolute), (chunk_rows, key)
    if options["loss_type"] == "vespo":  # the off-policy pass really weighs sequences
        assert any(abs(row["vespo/phi_seq_mean"] - 1) > 1e-4 for row in whole_history)
    if options["loss_type"] == "cispo":
        assert any(row["cispo_clip_ratio"] > 0 for row in whole_history)


METRICS_FROM_THE_LOSS = ("loss", "kl", "entropy", "grad_norm", "cispo_clip_ratio", "vespo/phi_seq_mean")


def test_entropy_masking_takes_its_threshold_over_the_whole_micro_batch(tmp_path, char_tokenizer):
    # backward_chunk_rows=1 is overridden: the gradient is that of the whole micro-batch's loss with one quantile
    # over all its loss tokens, not one per chunk (which keeps other tokens, checked below)
    from reasonrl.core import grpo_loss, high_entropy_mask
    from reasonrl.policy import sequence_logprobs

    quantile = 0.3
    trainer = _trainer(tmp_path, char_tokenizer, top_entropy_quantile=quantile, backward_chunk_rows=1,
                       loss_type="grpo", max_completion_length=6, seed=5)
    (tmp_path / "run").mkdir()  # train() makes it; a round's samples go to completions.jsonl there
    batch, _ = _scored_round(trainer)
    rows = torch.arange(batch.advantages.size(0))
    trainer.model.train()
    trainer.micro_step(batch, rows, StepNormaliser("grpo", batch.loss_mask.sum().float(), [1.0]), 0)
    trainer_grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)

    rollout, mask = batch.rollout, batch.loss_mask
    logps, entropy = sequence_logprobs(trainer.model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                       rollout.completion_mask, with_entropy=True)
    keep = high_entropy_mask(entropy, mask, quantile)
    per_row = torch.cat([high_entropy_mask(entropy[i:i + 1], mask[i:i + 1], quantile) for i in range(len(rows))])
    assert 0 < keep.sum() < mask.sum() and not torch.equal(keep, per_row)
    loss, _ = grpo_loss(logps, None, None, batch.advantages, mask, loss_type="grpo", entropy_mask=keep)
    loss.backward()
    assert trainer_grads and any(g.abs().sum() > 0 for g in trainer_grads.values())
    for name, param in trainer.model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(trainer_grads[name], param.grad, atol=1e-6, rtol=1e-5)


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


def test_soft_overlong_punishment_by_name_scores_completion_tokens(tmp_path, char_tokenizer):
    # the built-in named in the config, its options in reward_kwargs (as from YAML or the CLI): scored on the
    # completion token counts the trainer generated (EOS included)
    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, max_steps=1, gradient_checkpointing=False, seed=1,
                      reward_funcs=["soft_overlong_punishment"],
                      reward_kwargs={"soft_overlong_punishment": {"max_completion_len": 8, "soft_punish_cache": 6}})
    dataset = Dataset.from_list([{"prompt": f"p{i}"} for i in range(4)])
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer, seed=0), args.reward_funcs, args=args,
                          train_dataset=dataset, processing_class=char_tokenizer)
    (tmp_path / "run").mkdir()
    batch, metrics = _scored_round(trainer)
    lengths = batch.rollout.completion_mask.sum(-1).float()  # [8]
    expected = torch.where(lengths <= 2, 0.0, (2 - lengths) / 6)  # L - C = 2; none is longer than L = 8
    assert metrics["rewards/soft_overlong_punishment_reward/mean"] == pytest.approx(expected.mean().item())
    assert expected.min() < 0  # some completions are punished


# ---------------------------------------------------------------- TRL options the TRL test suite exercises


def test_entropy_bonus_lowers_the_logged_loss_by_coef_times_entropy(tmp_path, char_tokenizer):
    """L = L_policy - entropy_coef * H: with one micro-batch per step and every completion token in the loss, the
    logged policy_loss - loss is entropy_coef times the logged entropy, whatever the loss type."""
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        trainer = _trainer(tmp_path / loss_type, char_tokenizer, entropy_coef=0.5, loss_type=loss_type,
                           per_device_train_batch_size=4, gradient_accumulation_steps=1)
        trainer.train()
        rows = [row for row in trainer.log_history if "train_runtime" not in row]
        assert len(rows) == 2
        for row in rows:
            assert row["policy_loss"] - row["loss"] == pytest.approx(0.5 * row["entropy"], rel=1e-4)
            assert row["entropy_coef"] == 0.5


def test_entropy_bonus_gradient_is_the_gradient_of_minus_coef_times_mean_entropy(tmp_path, char_tokenizer):
    """With advantages 0 (equal rewards) the policy term has no gradient: the step's gradient is then exactly
    -entropy_coef * d(mean entropy)/d(weights), computed here with plain autograd on the same completions."""
    trainer = _trainer(tmp_path, char_tokenizer, entropy_coef=0.3, backward_chunk_rows=1)
    trainer.reward_funcs = [lambda completions, **kw: [1.0] * len(completions)]
    (tmp_path / "run").mkdir()  # what train() does before a round
    batch, _ = _scored_round(trainer)
    rows = torch.arange(4)
    rollout = batch.rollout
    window = type("W", (), {"micro_batches": [rows]})()
    trainer._accumulate_gradients(batch, window)
    ours = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = trainer.model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, rollout.prompt_ids.size(1) - 1:-1].float() / trainer.args.temperature
    log_p = torch.log_softmax(logits, -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    mask = batch.loss_mask.float()
    (-0.3 * (entropy * mask).sum() / mask.sum()).backward()
    for name, grad in ours.items():
        assert torch.allclose(grad, trainer.model.get_parameter(name).grad, atol=1e-6), name


def test_adaptive_entropy_moves_the_coefficient_once_per_optimizer_step(tmp_path, char_tokenizer):
    """entropy_target above the entropy: the coefficient grows by entropy_coef_delta after every optimizer step
    (not every micro-batch), and the first step applies none (no step measured yet)."""
    trainer = _trainer(tmp_path, char_tokenizer, entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=50.0,
                       entropy_coef_delta=0.005, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                       max_steps=3)
    trainer.train()
    assert trainer.entropy_coef == pytest.approx(0.01 + 3 * 0.005)
    rows = [row for row in trainer.log_history if "train_runtime" not in row]
    assert [row["entropy_coef"] for row in rows] == pytest.approx([0.015, 0.02, 0.025])
    assert rows[0]["policy_loss"] == pytest.approx(rows[0]["loss"], abs=1e-7)  # step 1: no bonus applied yet
    low = _trainer(tmp_path / "low", char_tokenizer, entropy_coef=0.01, use_adaptive_entropy=True,
                   entropy_target=0.0, entropy_coef_delta=0.004, max_steps=2)
    low.train()
    assert low.entropy_coef == pytest.approx(0.002)  # above the target: down, never below entropy_coef_min


def test_train_ends_with_transformers_summary_row(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, max_steps=3, logging_steps=2)
    trainer.train()
    assert trainer.state.log_history is trainer.log_history
    *steps, summary = trainer.state.log_history
    assert [row["step"] for row in steps] == [1, 2, 3] and summary["step"] == 3
    assert summary["train_loss"] == pytest.approx(sum(row["loss"] for row in steps) / 3)
    assert summary["reward"] == pytest.approx((steps[1]["reward"] + steps[2]["reward"]) / 2)  # last 2 steps' mean
    assert "loss" not in summary and summary["train_runtime"] > 0


def test_sync_ref_model_moves_the_reference_towards_the_policy(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, beta=0.1, sync_ref_model=True, ref_model_sync_steps=2,
                       ref_model_mixup_alpha=0.25, max_steps=2)
    from reasonrl import trainer as trainer_module

    seen = []
    real = trainer_module.mix_into_reference

    def spy(reference, model, alpha):
        before = [p.detach().clone() for p in reference.parameters()]
        real(reference, model, alpha)
        for old, new, current in zip(before, reference.parameters(), model.parameters()):
            assert torch.allclose(new, 0.25 * current + 0.75 * old, atol=1e-6)
        seen.append(trainer.state.global_step)

    trainer_module.mix_into_reference = spy
    try:
        trainer.train()
    finally:
        trainer_module.mix_into_reference = real
    assert seen == [2]  # every ref_model_sync_steps optimizer steps
    assert trainer.ref_model is trainer.reference_model is not None


def test_sync_ref_model_needs_a_reference():
    with pytest.raises(ConfigError, match="sync_ref_model=true with beta=0"):
        GRPOConfig(sync_ref_model=True)


def test_trl_compatibility_options(tmp_path):
    with pytest.raises(ConfigError, match="use_liger_kernel=true"):
        GRPOConfig(use_liger_kernel=True)
    assert GRPOConfig(use_liger_kernel=False, pad_to_multiple_of="auto", dataloader_num_workers=2).pad_to_multiple_of \
        == "auto"
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        GRPOConfig(pad_to_multiple_of=0)
    with pytest.raises(ConfigError, match="multi_objective_aggregation='mean' is not supported"):
        GRPOConfig(multi_objective_aggregation="mean")


def test_no_reward_source_and_no_dataset_are_one_line_errors(tmp_path, char_tokenizer):
    args = GRPOConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="No reward source provided"):
        GRPOTrainer(build_tiny_model(char_tokenizer), args=args, train_dataset=[{"prompt": "a"}])
    with pytest.raises(ValueError, match="`train_dataset` is required"):
        GRPOTrainer(build_tiny_model(char_tokenizer), reward_funcs=lambda completions, **kw: [0.0], args=args)


def test_lora_on_q_and_v_only_trains_in_row_chunks(tmp_path, char_tokenizer):
    """peft's default LoRA for Qwen2 adapts q_proj and v_proj only, so layer 0's cached prompt keys come from frozen
    weights and carry no gradient: the chunked backward must send the prompt gradients through the others only
    (TRL's test_train_peft_config failed here with "element 0 of tensors does not require grad")."""
    from peft import LoraConfig

    base = _trainer(tmp_path / "base", char_tokenizer, max_steps=1, backward_chunk_rows=1)
    trainer = GRPOTrainer(base.model, base.reward_funcs, args=base.args, train_dataset=base.train_dataset,
                          processing_class=char_tokenizer, peft_config=LoraConfig(target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
