"""The training forward's plan (decided once), gradient checkpointing inside the shared-prompt path, and frozen
weights in bf16 for a model object: same gradients as the plain computation."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.policy import ForwardPlan, PromptPrefix, ReadOnlyPrefixCache, plan_forward, sequence_logprobs
from reasonrl.tiny import build_tiny_model


@pytest.mark.parametrize("settings, expected", [
    # CPU defaults: ~128 fp32 / 256 bf16 completion tokens a chunk; gradient checkpointing then needs no recompute
    (dict(gradient_checkpointing=True, backward_chunk_rows=None, device_type="cpu", bf16=False, distributed=False),
     ForwardPlan(chunked=True, chunk_rows=None, chunk_tokens=128, checkpoint_layers=False)),
    (dict(gradient_checkpointing=False, backward_chunk_rows=None, device_type="cpu", bf16=True, distributed=False),
     ForwardPlan(chunked=True, chunk_rows=None, chunk_tokens=256, checkpoint_layers=False)),
    (dict(gradient_checkpointing=True, backward_chunk_rows=2, device_type="cpu", bf16=False, distributed=False),
     ForwardPlan(chunked=True, chunk_rows=2, chunk_tokens=None, checkpoint_layers=False)),
    # a chunk that is the whole micro-batch: the layers are recomputed
    (dict(gradient_checkpointing=True, backward_chunk_rows=0, device_type="cpu", bf16=False, distributed=False),
     ForwardPlan(chunked=True, chunk_rows=None, chunk_tokens=None, checkpoint_layers=True)),
    (dict(gradient_checkpointing=True, backward_chunk_rows=None, device_type="cuda", bf16=True, distributed=False),
     ForwardPlan(chunked=True, chunk_rows=None, chunk_tokens=None, checkpoint_layers=True)),
    (dict(gradient_checkpointing=True, backward_chunk_rows=None, device_type="cpu", bf16=False, distributed=True),
     ForwardPlan(chunked=False, chunk_rows=None, chunk_tokens=128, checkpoint_layers=True)),
    (dict(gradient_checkpointing=False, backward_chunk_rows=None, device_type="cpu", bf16=False, distributed=False,
          whole_micro_batch=True),
     ForwardPlan(chunked=False, chunk_rows=None, chunk_tokens=128, checkpoint_layers=False)),
], ids=["cpu-gc", "cpu-bf16", "fixed-rows", "whole-micro-batch-gc", "cuda-gc", "ddp-gc", "entropy-masking"])
def test_the_plan_for_each_setting(settings, expected):
    assert plan_forward(**settings) == expected


def test_rows_per_chunk():
    assert ForwardPlan(True, None, 128, False).rows_per_chunk(8, 96) == 1  # 128 // 96
    assert ForwardPlan(True, None, 256, False).rows_per_chunk(8, 96) == 2
    assert ForwardPlan(True, None, 256, False).rows_per_chunk(8, 600) == 1  # never below one row
    assert ForwardPlan(True, 3, None, False).rows_per_chunk(8, 96) == 3
    assert ForwardPlan(True, None, None, True).rows_per_chunk(8, 96) == 8
    assert ForwardPlan(False, None, 128, False).rows_per_chunk(8, 96) == 8


def test_a_read_only_prefix_cache_is_never_extended(char_tokenizer):
    model = build_tiny_model(char_tokenizer, seed=0).eval()
    keys = torch.randn(2, 2, 5, 16)
    cache = ReadOnlyPrefixCache(ddp_cache_data=[(keys, keys + 1)] * model.config.num_hidden_layers,
                                config=model.config)
    new = torch.randn(2, 2, 3, 16)
    for _ in range(2):  # a recomputed layer calls update again: the same answer
        k, v = cache.update(new, new, 0)
        assert k.shape == (2, 2, 8, 16) and torch.equal(k[:, :, :5], keys) and torch.equal(v[:, :, 5:], new)
    assert cache.get_seq_length() == 5


def _micro_batch(char_tokenizer, rows=4):
    prompt = char_tokenizer(["Add 12 and 30:"], return_tensors="pt")
    prompt_ids = prompt.input_ids.repeat(rows, 1)
    prompt_mask = prompt.attention_mask.repeat(rows, 1)
    completion_ids = torch.randint(4, 200, (rows, 7), generator=torch.Generator().manual_seed(0))
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 5:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _lora_grads(model, char_tokenizer, checkpoint: bool, chunk_rows: int):
    """Gradients of a sum of completion log-probs through PromptPrefix, with or without recomputed layers; and how
    many times the first decoder layer ran."""
    from reasonrl.policy import disable_layer_checkpointing, enable_layer_checkpointing

    (enable_layer_checkpointing if checkpoint else disable_layer_checkpointing)(model)
    model.zero_grad(set_to_none=True)
    calls = []
    # the attention inside the first decoder layer (a layer's own hooks stay outside its checkpoint)
    attention = model.get_base_model().model.layers[0].self_attn
    handle = attention.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    prompt_ids, prompt_mask, completion_ids, completion_mask = _micro_batch(char_tokenizer)
    torch.manual_seed(7)  # the LoRA dropout masks: a recompute must draw the same ones
    prefix = PromptPrefix(model, prompt_ids, prompt_mask)
    for start in range(0, 4, chunk_rows):
        rows = slice(start, start + chunk_rows)
        logps = prefix.completion_logprobs(rows, completion_ids[rows], completion_mask[rows])
        (logps * completion_mask[rows]).sum().backward()
    prefix.backward()
    handle.remove()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("chunk_rows", [1, 4])
def test_layers_recomputed_in_the_backward_give_the_same_gradients(char_tokenizer, chunk_rows):
    model = get_peft_model(build_tiny_model(char_tokenizer, seed=0),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    model.train()
    plain, plain_calls = _lora_grads(model, char_tokenizer, checkpoint=False, chunk_rows=chunk_rows)
    recomputed, recomputed_calls = _lora_grads(model, char_tokenizer, checkpoint=True, chunk_rows=chunk_rows)
    chunks = 4 // chunk_rows
    assert plain_calls == 1 + chunks  # the prompt once, each chunk once
    assert recomputed_calls == 1 + 2 * chunks  # ... each chunk again in its backward; the prompt never
    assert plain.keys() == recomputed.keys() and any(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], rtol=1e-5, atol=1e-7), name


def test_sequence_logprobs_with_recomputed_layers_equal_the_unshared_forward(char_tokenizer):
    """The DDP path (one forward, the prompts' cache in the graph) under gradient checkpointing."""
    from reasonrl.policy import enable_layer_checkpointing

    model = build_tiny_model(char_tokenizer, seed=0).train()
    inputs = _micro_batch(char_tokenizer)
    reference = sequence_logprobs(model, *inputs, share_prompts=False)
    reference.sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    enable_layer_checkpointing(model)
    shared = sequence_logprobs(model, *inputs, share_prompts=True)
    shared.sum().backward()
    assert torch.allclose(shared, reference, atol=1e-5)
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], rtol=1e-4, atol=1e-6), name


def _run(tmp_path, char_tokenizer, name, model=None, **options):
    settings = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=6, max_steps=3, learning_rate=0.5, optim="sgd", seed=5, beta=0.04,
                    gradient_accumulation_steps=2, logging_steps=100, save_steps=100)
    settings.update(options)
    model = model or get_peft_model(build_tiny_model(char_tokenizer, seed=0), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = GRPOTrainer(model, lambda completions, **kw: [float(len(set(c))) for c in completions],
                          args=GRPOConfig(**settings), processing_class=char_tokenizer,
                          train_dataset=Dataset.from_list([{"prompt": f"Say {i}:"} for i in range(6)]))
    trainer.train()
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}


def test_gradient_checkpointing_on_keeps_the_fast_path_and_its_steps(tmp_path, char_tokenizer):
    """TRL's default gradient_checkpointing=True: on a CPU the row chunks bound the memory, so the run is the same
    computation as with it off (bitwise); with whole micro-batches the layers are recomputed (same steps within
    float rounding)."""
    on, on_weights = _run(tmp_path, char_tokenizer, "on", gradient_checkpointing=True)
    _, off_weights = _run(tmp_path, char_tokenizer, "off", gradient_checkpointing=False)
    assert on.plan.chunked and not on.plan.checkpoint_layers
    assert all(torch.equal(on_weights[k], off_weights[k]) for k in on_weights)
    whole, whole_weights = _run(tmp_path, char_tokenizer, "whole", gradient_checkpointing=True,
                                backward_chunk_rows=0)
    assert whole.plan.checkpoint_layers
    assert max((whole_weights[k] - off_weights[k]).abs().max().item() for k in off_weights) < 1e-5


def test_a_float32_model_object_under_bf16_gets_bf16_frozen_weights(tmp_path, char_tokenizer):
    model = get_peft_model(build_tiny_model(char_tokenizer, seed=0),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer, _ = _run(tmp_path, char_tokenizer, "cast", model=model, bf16=True, max_steps=1)
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    kept = get_peft_model(build_tiny_model(char_tokenizer, seed=0),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer, _ = _run(tmp_path, char_tokenizer, "kept", model=kept, bf16=True, max_steps=1,
                      cast_frozen_weights_to_bf16=False)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
