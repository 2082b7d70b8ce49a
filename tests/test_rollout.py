"""The decode loop: same tokens as HF generate, log-probs that training reproduces, masks and positions."""

import pytest
import torch

from reasonrl.rollout import generate, position_ids_from_mask, sequence_logprobs
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
    completion_ids, completion_mask, _, _ = generate(
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
