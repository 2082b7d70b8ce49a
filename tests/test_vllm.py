"""vLLM as the rollout engine (vllm_engine.py, use_vllm=True, vllm_mode="colocate"); skipped where vllm is not
importable (reasonrl's main environment: vLLM pins transformers<5.20, so it lives in a virtualenv of its own,
docs/SCALING.md "vLLM rollouts").

Models: random Llamas over the character tokenizer whose head size vLLM's CPU attention supports (32 or 64; it has
no 16). fp32 throughout, where vLLM's tokens and log-probs follow transformers' to float rounding.
"""

import gc
import json
import os
import statistics

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm")

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.policy import sequence_logprobs
from reasonrl.rollout import generate
from reasonrl.tiny import build_char_tokenizer, build_tiny_model
from reasonrl.vllm_engine import VLLMEngine

pytestmark = pytest.mark.slow

LOGP_TOLERANCE = 1e-4  # fp32: vLLM's sampled-token log-probs against the training forward's (measured: < 4e-6)


def engine_options(**overrides):
    return GRPOConfig(seed=0, bf16=False, **overrides)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    batch = tokenizer(["1+2=", "hello there", "abc"], padding=True, padding_side="left", return_tensors="pt")
    return batch.input_ids, batch.attention_mask  # [3, P]


@pytest.fixture(scope="module")
def policy_and_engine(tokenizer):
    """A tied-embedding Llama (head size 64) and an engine built from it, shared by the tests of this module."""
    model = build_tiny_model(tokenizer, arch="llama", hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=256, seed=0).eval()
    engine = VLLMEngine.build(model, engine_options(), bf16=False, max_model_len=256)
    yield model, engine
    del engine
    gc.collect()


def sampling(tokenizer, **overrides):
    return {"num_generations": 2, "max_new_tokens": 24, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, **overrides}


def perturb(model, seed: int, scale: float = 0.05) -> None:
    """Move every weight (embeddings, hence the tied lm_head, included) as an optimizer step would, a lot."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * scale)


def test_greedy_tokens_equal_the_lean_decoders_after_weight_updates(policy_and_engine, tokenizer, prompts):
    model, engine = policy_and_engine
    for update in range(4):
        if update:
            perturb(model, update)
            engine.policy_changed()
        lean_ids, lean_mask, lean_logps, lean_truncated = generate(model, *prompts, greedy=True,
                                                                   **sampling(tokenizer))
        ids, mask, logps, truncated = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
        assert not engine.stale
        assert torch.equal(ids * mask, lean_ids * lean_mask), f"after {update} weight updates"
        assert torch.equal(mask, lean_mask) and torch.equal(truncated, lean_truncated)
        # greedy log-probs (temperature 1, nothing filtered) are the model's
        assert (logps - lean_logps).abs().max().item() < LOGP_TOLERANCE
        # and the updates changed what the model says (each round compares new tokens)
        if update == 0:
            first = ids.clone()
    assert not torch.equal(first, ids)


def test_a_stale_engine_is_not_the_policy_until_pushed(policy_and_engine, tokenizer, prompts):
    # the push is what makes the engine follow: without policy_changed() it keeps sampling the old weights
    model, engine = policy_and_engine
    before, _, _, _ = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
    perturb(model, 99)
    unchanged, _, _, _ = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
    assert torch.equal(unchanged, before)
    engine.policy_changed()
    pushed, pushed_mask, _, _ = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
    lean, lean_mask, _, _ = generate(model, *prompts, greedy=True, **sampling(tokenizer))
    assert torch.equal(pushed * pushed_mask, lean * lean_mask) and not torch.equal(pushed, before)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_recomputation(policy_and_engine, tokenizer, prompts, temperature):
    model, engine = policy_and_engine
    ids, mask, logps, _ = engine.generate(model, *prompts, temperature=temperature, seeds=[1, 2, 3],
                                          **sampling(tokenizer))
    prompt_ids, prompt_mask = (t.repeat_interleave(2, 0) for t in prompts)
    recomputed = sequence_logprobs(model, prompt_ids, prompt_mask, ids, mask, temperature=temperature)
    assert mask.sum() > 12  # completions of several tokens were compared
    assert ((recomputed - logps).abs() * mask).max().item() < LOGP_TOLERANCE
    assert (logps * (1 - mask)).abs().sum() == 0  # nothing past each completion


def test_a_prompts_samples_depend_on_its_seed_only(policy_and_engine, tokenizer, prompts):
    # vLLM seeds each request: a prompt samples alike whatever else shares the batch (as reasonrl's seeds do)
    model, engine = policy_and_engine
    options = sampling(tokenizer, temperature=1.0)
    both, both_mask, _, _ = engine.generate(model, *prompts, seeds=[5, 6, 7], **options)
    again, _, _, _ = engine.generate(model, *prompts, seeds=[5, 6, 7], **options)
    alone, alone_mask, _, _ = engine.generate(model, prompts[0][1:2], prompts[1][1:2], seeds=[6], **options)
    assert torch.equal(both, again)
    width = alone.size(1)
    assert torch.equal(both[2:4, :width] * both_mask[2:4, :width], alone * alone_mask)
    assert not torch.equal(both[0], both[1])  # the G samples of a prompt differ


def test_sleep_mode_where_vllm_has_none_is_one_error_line(tokenizer):
    from reasonrl.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("vLLM has sleep mode on CUDA")
    model = build_tiny_model(tokenizer, arch="llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=128)
    with pytest.raises(ConfigError, match=r"^vllm_enable_sleep_mode=true: vLLM has no sleep mode on this platform "
                                          r"\(cpu\); set vllm_enable_sleep_mode=false$"):
        VLLMEngine.build(model, engine_options(vllm_enable_sleep_mode=True), bf16=False, max_model_len=64)


def test_lora_policy_is_pushed_merged(tokenizer, prompts):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(tokenizer, arch="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, intermediate_size=128, seed=1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)).eval()
    engine = VLLMEngine.build(model, engine_options(), bf16=False, max_model_len=256)
    try:
        for update in range(3):
            with torch.no_grad():  # B starts at 0: give the adapter something to say
                for name, parameter in model.named_parameters():
                    if "lora_" in name:
                        parameter.add_(torch.randn_like(parameter) * 0.3)
            engine.policy_changed()
            lean, lean_mask, _, _ = generate(model, *prompts, greedy=True, **sampling(tokenizer))
            ids, mask, _, _ = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
            assert torch.equal(ids * mask, lean * lean_mask), f"after {update + 1} adapter updates"
        with model.disable_adapter():  # the adapter is what the engine follows, not the base alone
            plain, plain_mask, _, _ = generate(model, *prompts, greedy=True, **sampling(tokenizer))
        assert not torch.equal(plain * plain_mask, ids * mask)
    finally:
        del engine
        gc.collect()


def test_grpo_with_vllm_rollouts_learns_the_length_task(tmp_path, tokenizer):
    """test_learning.py's task (the length reward, ideal 4 characters, from ~21 for a random model) with vLLM
    sampling every round: the reward rises by a wide margin, the sampler/trainer metrics are logged and tiny in
    fp32, and the importance weights are 1 where the two agree."""
    from datasets import Dataset

    torch.set_num_threads(1)
    model = build_tiny_model(tokenizer, arch="llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=128, seed=0)
    dataset = Dataset.from_list([{"prompt": f"Say something short about {i}:"} for i in range(16)])
    args = GRPOConfig(output_dir=str(tmp_path), learning_rate=1e-2, max_steps=30, seed=0,
                      per_device_train_batch_size=32, num_generations=8, max_completion_length=24, beta=0.0,
                      gradient_checkpointing=False, bf16=False, reward_kwargs={"length": {"ideal_length": 4}},
                      logging_steps=10**6, save_steps=10**6, use_vllm=True,
                      vllm_importance_sampling_mode="token_truncate")
    trainer = GRPOTrainer(model, "length", args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.rollouts.engine is trainer.vllm is not None
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rewards = [row["reward"] for row in rows]
    first, last = statistics.mean(rewards[:10]), statistics.mean(rewards[-10:])
    assert last - first > 8.0, (first, last)
    for row in rows:
        assert row["sampling/sampling_logp_difference/max"] < LOGP_TOLERANCE
        assert abs(row["sampling/importance_sampling_ratio/mean"] - 1.0) < 1e-3
    # the engine followed the policy to the end: its greedy tokens are the trained model's
    prompt = tokenizer(["Say something short about 3:"], return_tensors="pt")
    options = sampling(tokenizer, greedy=True, num_generations=1)
    lean, lean_mask, _, _ = generate(trainer.model, prompt.input_ids, prompt.attention_mask, **options)
    ids, mask, _, _ = trainer.vllm.generate(trainer.model, prompt.input_ids, prompt.attention_mask, **options)
    assert torch.equal(ids * mask, lean * lean_mask)


@pytest.mark.real_model
def test_real_model_greedy_tokens_equal_the_lean_decoders_after_a_push(smollm2_dir):
    """SmolLM2-135M-Instruct (tied embeddings, a real chat template and EOS): 32 greedy tokens of three chat prompts
    from vLLM equal the lean decoder's, at start and after a weight update pushed in place; fp32."""
    from reasonrl.data import PromptTokenizer
    from reasonrl.models import load_model, load_tokenizer

    model, tokenizer = load_model(smollm2_dir).eval(), load_tokenizer(smollm2_dir)
    questions = ["What is the capital of France?", "Write a haiku about the sea.", "Hi"]
    prompt_ids, prompt_mask = PromptTokenizer(tokenizer, max_prompt_length=None)(
        [[{"role": "user", "content": q}] for q in questions])
    options = sampling(tokenizer, greedy=True, num_generations=1, max_new_tokens=32)
    engine = VLLMEngine.build(model, engine_options(), bf16=False, max_model_len=512)
    try:
        for update in range(2):
            if update:
                perturb(model, 7, scale=0.002)
                engine.policy_changed()
            lean, lean_mask, lean_logps, _ = generate(model, prompt_ids, prompt_mask, **options)
            ids, mask, logps, _ = engine.generate(model, prompt_ids, prompt_mask, **options)
            assert torch.equal(ids * mask, lean * lean_mask), f"after {update} updates"
            assert ((logps - lean_logps).abs() * mask).max().item() < 1e-3
            if update == 0:
                assert mask[2].sum() < 32  # "Hi" is answered within 32 tokens: both stopped at the same EOS
                first = ids
        assert not torch.equal(first, ids)
    finally:
        del engine
        gc.collect()
