"""The decode loop: same tokens as HF generate, log-probs that training reproduces, masks and positions."""

import pytest
import torch

from reasonrl import lean_decode
from reasonrl.policy import PromptPrefix, position_ids_from_mask, sequence_logprobs
from reasonrl.rollout import generate
from reasonrl.tiny import build_tiny_model

PROMPTS = ["What is 12+30? Think first.", "Hi", "A longer prompt, so that the others are left-padded."]


@pytest.fixture(scope="module")
def model(char_tokenizer):
    return build_tiny_model(char_tokenizer, seed=1).eval()


def _encode(tokenizer, prompts=PROMPTS):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc.input_ids, enc.attention_mask


def test_position_ids_under_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_greedy_tokens_equal_hf_generate(model, char_tokenizer):
    ids, mask = _encode(char_tokenizer)
    completion_ids, _, _, _ = generate(
        model, ids, mask, num_generations=1, max_new_tokens=24, eos_token_id=char_tokenizer.eos_token_id,
        pad_token_id=char_tokenizer.pad_token_id, greedy=True)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                               pad_token_id=char_tokenizer.pad_token_id)[:, ids.size(1):]
    assert torch.equal(completion_ids[:, : reference.size(1)], reference)


def test_left_padding_does_not_change_a_prompts_completion(model, char_tokenizer):
    # the same prompt alone and left-padded in a batch must decode to the same greedy tokens and log-probs
    kwargs = dict(num_generations=1, max_new_tokens=16, eos_token_id=char_tokenizer.eos_token_id,
                  pad_token_id=char_tokenizer.pad_token_id, greedy=True)
    alone = generate(model, *_encode(char_tokenizer, [PROMPTS[1]]), **kwargs)
    batched = generate(model, *_encode(char_tokenizer), **kwargs)
    assert torch.equal(alone[0][0], batched[0][1])
    assert torch.allclose(alone[2][0], batched[2][1], atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_logprobs_equal_sampling_logprobs(model, char_tokenizer, temperature):
    ids, mask = _encode(char_tokenizer)
    generator = torch.Generator().manual_seed(0)
    completion_ids, completion_mask, sampling_logps, _ = generate(
        model, ids, mask, num_generations=4, max_new_tokens=20, eos_token_id=char_tokenizer.eos_token_id,
        pad_token_id=char_tokenizer.pad_token_id, temperature=temperature, generator=generator)
    assert completion_ids.shape[0] == 12
    recomputed = sequence_logprobs(model, ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0),
                                   completion_ids, completion_mask, temperature)
    assert (recomputed * completion_mask - sampling_logps).abs().max().item() < 1e-4


def test_completion_mask_stops_after_first_eos(char_tokenizer):
    # a model whose every next token is EOS after the first step: check the mask and padding by hand
    eos, pad = char_tokenizer.eos_token_id, char_tokenizer.pad_token_id

    class Scripted(torch.nn.Module):
        """Emits token 40 for rows 0, EOS for the others; then EOS for everyone."""

        def __init__(self, model):
            super().__init__()
            self.inner = model
            self.calls = 0

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            logits = torch.full_like(out.logits, -1e4)
            batch = logits.size(0)
            if self.calls == 1:  # second decode step: row 0 emits 40 again, others EOS
                logits[0, -1, 40] = 0
                logits[1:, -1, eos] = 0
            elif self.calls == 0:
                logits[:, -1, 40] = 0
            else:
                logits[:, -1, eos] = 0
            self.calls += 1
            out.logits = logits
            assert batch == 2
            return out

    model = build_tiny_model(char_tokenizer, seed=2).eval()
    ids, mask = _encode(char_tokenizer, ["ab", "c"])
    completion_ids, completion_mask, _, truncated = generate(
        Scripted(model), ids, mask, num_generations=1, max_new_tokens=6, eos_token_id=eos, pad_token_id=pad,
        greedy=True)
    assert completion_ids.tolist() == [[40, 40, eos], [40, eos, pad]]
    assert completion_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert truncated.tolist() == [False, False]


def _sample(model, tokenizer, prompts, seeds, g=3, n=12):
    ids, mask = _encode(tokenizer, prompts)
    return generate(model, ids, mask, num_generations=g, max_new_tokens=n, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, temperature=1.0, seeds=seeds)


def test_seeded_samples_do_not_depend_on_the_rest_of_the_batch(model, char_tokenizer):
    alone = _sample(model, char_tokenizer, [PROMPTS[1]], [7])
    batched = _sample(model, char_tokenizer, PROMPTS, [3, 7, 11])
    assert torch.equal(alone[0], batched[0][3:6])  # prompt 1's three samples, alone or in the middle of a batch
    assert torch.allclose(alone[2], batched[2][3:6], atol=1e-5)
    other_seed = _sample(model, char_tokenizer, [PROMPTS[1]], [8])
    assert not torch.equal(alone[0], other_seed[0])


def test_seeded_sampling_follows_the_softmax(model, char_tokenizer):
    # 4000 first tokens sampled by inverse CDF from one prompt at T=0.2: the frequency of each of the 8 likeliest
    # tokens is within 4 binomial standard errors of softmax(logits / T)
    ids, mask = _encode(char_tokenizer, [PROMPTS[0]])
    draws, temperature = 4000, 0.2
    completion_ids, *_ = generate(model, ids, mask, num_generations=draws, max_new_tokens=1, temperature=temperature,
                                  eos_token_id=char_tokenizer.eos_token_id, pad_token_id=char_tokenizer.pad_token_id,
                                  seeds=[0])
    with torch.no_grad():
        probs = (model(input_ids=ids, attention_mask=mask).logits[0, -1] / temperature).softmax(-1)
    frequencies = torch.bincount(completion_ids[:, 0], minlength=probs.numel()).float() / draws
    top = probs.topk(8).indices
    assert probs[top].min() > 0.01 and probs.max() < 0.5  # several likely tokens, so a wrong sampler shows
    standard_error = (probs[top] * (1 - probs[top]) / draws).sqrt()
    assert ((frequencies[top] - probs[top]).abs() < 4 * standard_error).all(), (frequencies[top], probs[top])


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_lean_decoder_equals_the_model_forward_with_a_trained_lora(char_tokenizer, arch, monkeypatch):
    # LoRA B starts at zero; give it values so that the merged weights really differ from the base ones
    from peft import LoraConfig, get_peft_model

    from reasonrl.lean_decode import LeanDecoder

    monkeypatch.setattr(lean_decode, "PREPACK_MIN_FP32_ELEMENTS", 0)  # prepack the tiny model's weights too
    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model(char_tokenizer, arch=arch, seed=2),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    decoder = LeanDecoder.build(model)
    assert decoder is not None and decoder.layers[0]["qkv"].prepacked == lean_decode._can_prepack(
        torch.device("cpu"), torch.float32)
    ids, mask = _encode(char_tokenizer)
    kwargs = dict(num_generations=2, max_new_tokens=24, eos_token_id=char_tokenizer.eos_token_id,
                  pad_token_id=char_tokenizer.pad_token_id, seeds=[1, 2, 3])
    lean = generate(model, ids, mask, lean=True, **kwargs)
    generic = generate(model, ids, mask, lean=False, **kwargs)
    assert torch.equal(lean[0], generic[0]) and torch.equal(lean[1], generic[1])
    assert (lean[2] - generic[2]).abs().max().item() < 1e-4
    recomputed = sequence_logprobs(model, ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), lean[0], lean[1])
    assert (recomputed * lean[1] - lean[2]).abs().max().item() < 1e-4
    # greedy: the same tokens as transformers' generate on the peft model
    greedy = generate(model, ids, mask, num_generations=1, max_new_tokens=24, greedy=True,
                      eos_token_id=char_tokenizer.eos_token_id, pad_token_id=char_tokenizer.pad_token_id)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                               pad_token_id=char_tokenizer.pad_token_id)[:, ids.size(1):]
    assert torch.equal(greedy[0][:, : reference.size(1)], reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_weights_give_the_plain_matmuls_logits(char_tokenizer, dtype, monkeypatch):
    from reasonrl.lean_decode import LeanDecoder

    monkeypatch.setattr(lean_decode, "PREPACK_MIN_FP32_ELEMENTS", 0)
    if not lean_decode._can_prepack(torch.device("cpu"), dtype):
        pytest.skip(f"this oneDNN build cannot prepack {dtype}")
    model = build_tiny_model(char_tokenizer, arch="llama", seed=3, dtype=dtype).eval()
    ids, mask = _encode(char_tokenizer)
    positions = position_ids_from_mask(mask)
    logits = []
    for prepack in (True, False):
        decoder = LeanDecoder.build(model, dtype, prepack=prepack)
        assert decoder.layers[0]["down"].prepacked == prepack and decoder.lm_head.prepacked == prepack
        first = decoder.prefill(ids, mask, positions, 2, 8)
        logits.append(torch.stack([first, decoder.step(first.argmax(-1)), decoder.step(first.argmin(-1))]))
    if dtype == torch.bfloat16:  # oneDNN computes the same bf16 dot products either way
        assert torch.equal(logits[0], logits[1])
    else:  # fp32: another summation order
        assert (logits[0] - logits[1]).abs().max().item() < 1e-4 * logits[1].abs().max().item()


def test_small_fp32_weights_stay_plain_and_bf16_ones_are_prepacked(char_tokenizer):
    from reasonrl.lean_decode import LeanDecoder

    if not lean_decode._can_prepack(torch.device("cpu"), torch.bfloat16):
        pytest.skip("this oneDNN build cannot prepack bf16")
    model = build_tiny_model(char_tokenizer, arch="llama", seed=3)  # weights far below 1 MiB
    assert not LeanDecoder.build(model, torch.float32).layers[0]["qkv"].prepacked
    assert LeanDecoder.build(model.to(torch.bfloat16), torch.bfloat16).layers[0]["qkv"].prepacked


def test_lean_decoder_declines_what_it_does_not_cover(char_tokenizer):
    from peft import LoraConfig, get_peft_model

    from reasonrl.lean_decode import LeanDecoder

    dora = get_peft_model(build_tiny_model(char_tokenizer, seed=2),
                          LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    assert LeanDecoder.build(dora) is None
    sliding = build_tiny_model(char_tokenizer, seed=2)
    sliding.config.use_sliding_window = True
    assert LeanDecoder.build(sliding) is None


def test_shared_and_chunked_prompt_forwards_give_the_unshared_logits_and_gradients(char_tokenizer):
    # two groups of 3 rows (prompts of different lengths, so one is left-padded), LoRA with non-zero B
    from peft import LoraConfig, get_peft_model

    from reasonrl.policy import completion_logits

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model(char_tokenizer, arch="llama", seed=3),
                           LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    ids, mask = _encode(char_tokenizer, PROMPTS[:2])
    completion_ids, completion_mask, _, _ = generate(
        model.eval(), ids, mask, num_generations=3, max_new_tokens=12, eos_token_id=char_tokenizer.eos_token_id,
        pad_token_id=char_tokenizer.pad_token_id, seeds=[4, 5])
    prompt_ids, prompt_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    model.train()
    results = {}
    for share in (False, True):
        model.zero_grad()
        logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, share_prompts=share)
        logps = logits.log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)
        (logps * completion_mask).sum().backward()
        results[share] = logps.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    # PromptPrefix in row chunks (what the trainer runs): each chunk's backward leaves gradients on the cut cache,
    # prefix.backward() sends them through the prompts' forward
    for chunk_rows in (1, 2, 4):
        model.zero_grad()
        prefix = PromptPrefix(model, prompt_ids, prompt_mask)
        pieces = []
        for start in range(0, 6, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logps = prefix.completion_logprobs(rows, completion_ids[rows], completion_mask[rows])
            (logps * completion_mask[rows]).sum().backward()
            pieces.append(logps.detach())
        prefix.backward()
        results[chunk_rows] = torch.cat(pieces), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    (plain, plain_grads) = results[False]
    largest = max(g.abs().max().item() for g in plain_grads)
    assert largest > 0.1  # the gradients are not trivially zero
    for key in (True, 1, 2, 4):
        other, other_grads = results[key]
        assert ((plain - other) * completion_mask).abs().max().item() < 1e-5, key
        assert max((a - b).abs().max().item() for a, b in zip(plain_grads, other_grads)) < 1e-5 * max(1.0, largest)


def test_group_order_keeps_groups_together_and_covers_every_row():
    from reasonrl.rounds import group_order as _group_order

    order = _group_order(12, 4, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(12))
    groups = order.view(3, 4)
    assert all((row // 4 == row[0] // 4).all() and row.tolist() == sorted(row.tolist()) for row in groups)
    orders = {tuple(_group_order(12, 4, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(orders) == 6  # all 3! group orders occur


def test_a_hybrid_mamba_model_samples_and_trains_without_a_shared_prompt_cache(char_tokenizer):
    """NemotronH (Mamba + attention + MoE layers): its recurrent state cannot be repeated or handed over as a prompt
    prefix, so the sampler prefills each sample's prompt and the training forward runs rows whole; the sampling
    log-probs still equal a plain forward's."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    from reasonrl.policy import key_value_cache

    config = NemotronHConfig(
        vocab_size=len(char_tokenizer), hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, layers_block_type=["mamba", "attention", "moe"], mamba_num_heads=8, mamba_head_dim=4,
        mamba_n_groups=1, ssm_state_size=16, mamba_d_conv=4, mamba_expand=2, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, pad_token_id=char_tokenizer.pad_token_id,
        eos_token_id=char_tokenizer.eos_token_id)
    torch.manual_seed(0)
    hybrid = NemotronHForCausalLM(config).eval()
    assert not key_value_cache(config) and key_value_cache(build_tiny_model(char_tokenizer).config)
    ids, mask = _encode(char_tokenizer)
    completion_ids, completion_mask, sampling_logps, _ = generate(
        hybrid, ids, mask, num_generations=2, max_new_tokens=6, eos_token_id=char_tokenizer.eos_token_id,
        pad_token_id=char_tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    recomputed = sequence_logprobs(hybrid, ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0),
                                   completion_ids, completion_mask)
    assert completion_ids.shape[0] == 2 * ids.shape[0]
    assert (recomputed * completion_mask - sampling_logps).abs().max().item() < 1e-4
