"""Sampling and prompt options TRL users set: min_p, generation_kwargs, chat_template_kwargs, and reasonrl's
system_prompt / prompt_template for plain-text datasets."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.data import PromptTokenizer, format_prompt
from reasonrl.errors import ConfigError
from reasonrl.rollout import _filter_logits, generate, sampling_options
from reasonrl.tiny import CHAT_TEMPLATE, build_char_tokenizer, build_tiny_model


@pytest.mark.parametrize("top_k, top_p, min_p", [(0, 1.0, 0.05), (0, 1.0, 0.3), (50, 0.9, 0.1), (5, 1.0, 0.5),
                                                 (0, 0.5, 0.0)])
def test_filtering_equals_transformers_warpers(top_k, top_p, min_p):
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
    expected = logits.clone()
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    if min_p:
        expected = MinPLogitsWarper(min_p)(None, expected)
    ours = _filter_logits(logits, top_k, top_p, min_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    kept = torch.isfinite(ours).sum(-1)
    assert (kept >= 1).all() and (kept < 300).all()


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    model = build_tiny_model(char_tokenizer, arch="llama", seed=3).eval()
    ids = torch.tensor([char_tokenizer("12+3=")["input_ids"], char_tokenizer("7*8=5")["input_ids"]])
    return model, ids, torch.ones_like(ids)


def _generate(tiny, tokenizer, lean=True, **options):
    model, ids, mask = tiny
    return generate(model, ids, mask, num_generations=3, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, seeds=[5, 6], lean=lean, **options)


@pytest.mark.parametrize("lean", [True, False], ids=["lean-decoder", "model-forward"])
def test_min_p_one_samples_the_greedy_tokens_and_records_unfiltered_logps(tiny, char_tokenizer, lean):
    sampled, _, logps, _ = _generate(tiny, char_tokenizer, lean, min_p=1.0)
    greedy, _, greedy_logps, _ = _generate(tiny, char_tokenizer, lean, greedy=True)
    assert torch.equal(sampled, greedy)
    torch.testing.assert_close(logps, greedy_logps)  # the model's log-probs, not the filtered distribution's (0)
    assert (logps < 0).all()
    different, _, _, _ = _generate(tiny, char_tokenizer, lean)  # without min_p the samples differ
    assert not torch.equal(different, greedy)


@pytest.mark.parametrize("lean", [True, False], ids=["lean-decoder", "model-forward"])
def test_suppressed_tokens_are_never_sampled(tiny, char_tokenizer, lean):
    vocab = len(char_tokenizer)
    allowed = [char_tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    suppressed = [t for t in range(vocab) if t not in allowed]
    tokens, _, _logps, _ = _generate(tiny, char_tokenizer, lean, suppress_tokens=suppressed)
    assert set(tokens.flatten().tolist()) <= set(allowed)
    # greedy with every token suppressed but one gives that one
    tokens, _, _, _ = _generate(tiny, char_tokenizer, lean, greedy=True, suppress_tokens=suppressed + allowed[1:])
    assert set(tokens.flatten().tolist()) == {allowed[0]}


def test_generation_kwargs_override_the_options_and_do_sample_false_is_greedy():
    cfg = GRPOConfig(temperature=0.7, top_k=10, min_p=0.05,
                     generation_kwargs={"temperature": 0.9, "suppress_tokens": [3], "do_sample": False})
    assert sampling_options(cfg) == {"temperature": 0.9, "top_p": 1.0, "top_k": 10, "min_p": 0.05,
                                     "repetition_penalty": 1.0, "suppress_tokens": [3], "greedy": True}
    assert sampling_options(GRPOConfig()) == {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": None,
                                              "repetition_penalty": 1.0}
    # top_k=None as GenerationConfig allows: no top-k
    assert sampling_options(GRPOConfig(generation_kwargs={"top_k": None}))["top_k"] == 0


@pytest.mark.parametrize("options, message", [
    ({"generation_kwargs": {"num_beams": 4}},
     ("generation_kwargs has 'num_beams', which reasonrl's sampler does not support (it honours: temperature, top_p, "
     "top_k, min_p, repetition_penalty, suppress_tokens, do_sample); remove it")),
    ({"generation_kwargs": {"top_p": 0}}, "generation_kwargs['top_p'] must be a number in (0, 1] (got 0)"),
    ({"generation_kwargs": {"suppress_tokens": "x"}},
     "generation_kwargs['suppress_tokens'] must be a list of token ids (got 'x')"),
    ({"min_p": 1.5}, "min_p must be in [0, 1] or None (got 1.5)"),
    ({"prompt_template": "Solve: {question}"}, "prompt_template must contain {prompt} where the prompt goes"),
])
def test_bad_generation_and_prompt_options_are_one_line(options, message):
    with pytest.raises(ConfigError) as error:
        GRPOConfig(**options)
    assert message in str(error.value)


def test_options_arrive_from_key_value_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("min_p: 0.1\n")
    cfg = GRPOConfig.from_yaml(path, ["generation_kwargs={suppress_tokens: [1, 2], do_sample: true}",
                                      "chat_template_kwargs.enable_thinking=false",
                                      "prompt_template={prompt} Answer briefly.", "system_prompt=Be terse."])
    assert cfg.min_p == 0.1 and cfg.generation_kwargs == {"suppress_tokens": [1, 2], "do_sample": True}
    assert cfg.chat_template_kwargs == {"enable_thinking": False}
    assert (cfg.prompt_template, cfg.system_prompt) == ("{prompt} Answer briefly.", "Be terse.")


def test_chat_template_kwargs_reach_the_prompts_rendering():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE + "{% if enable_thinking is defined and not enable_thinking %}" \
                                              "<think></think>{% endif %}"
    prompt = [{"role": "user", "content": "hi"}]
    plain, _ = PromptTokenizer(tokenizer, 512)([prompt])
    off, _ = PromptTokenizer(tokenizer, 512, chat_template_kwargs={"enable_thinking": False})([prompt])
    assert tokenizer.decode(off[0]) == tokenizer.decode(plain[0]) + "<think></think>"


def test_prompt_template_and_system_prompt_shape_each_prompt():
    template = "{prompt}\nAnswer in <answer></answer>. Keep {braces}."
    assert format_prompt("2+2?", template) == "2+2?\nAnswer in <answer></answer>. Keep {braces}."
    assert format_prompt("2+2?", None, "Think first.") == [{"role": "system", "content": "Think first."},
                                                           {"role": "user", "content": "2+2?"}]
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]
    assert format_prompt(conversation, "Q: {prompt}", "S") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "Q: c"}]
    with_system = [{"role": "system", "content": "own"}, {"role": "user", "content": "x"}]
    assert format_prompt(with_system, None, "S") == with_system  # its own system message is kept


def test_the_trainer_renders_and_rewards_see_the_formatted_prompts(tmp_path, char_tokenizer):
    seen = []

    def records(prompts, completions, **kwargs):
        seen.extend(prompts)
        return [0.0] * len(completions)

    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=3, max_steps=1, optim="adamw_torch", logging_steps=1,
                      system_prompt="Think.", prompt_template="Q: {prompt}", prompt_column="question")
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer), [records], args=args,
                          train_dataset=Dataset.from_list([{"question": "1+1"}]), processing_class=char_tokenizer)
    expected = [{"role": "system", "content": "Think."}, {"role": "user", "content": "Q: 1+1"}]
    assert trainer.train_dataset[0]["prompt"] == expected
    rows, rollout = trainer._rollout()
    trainer._score(rows, rollout)
    assert seen == [expected, expected]
    text = char_tokenizer.decode(rollout.prompt_ids[0][rollout.prompt_mask[0].bool()])
    assert text == "<|im_start|>system\nThink.<|im_end|>\n<|im_start|>user\nQ: 1+1<|im_end|>\n<|im_start|>assistant\n"


def test_system_prompt_without_a_chat_template_is_one_line(tmp_path, char_tokenizer):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="system_prompt needs a chat template, and the tokenizer of .* has none; "
                                          "put the instruction in prompt_template instead"):
        GRPOTrainer(build_tiny_model(tokenizer), ["length"],
                    args=GRPOConfig(output_dir=str(tmp_path / "r"), system_prompt="S", per_device_train_batch_size=2,
                                    num_generations=2),
                    train_dataset=[{"prompt": "p"}], processing_class=tokenizer)


def test_trainer_samples_with_generation_kwargs(tmp_path, char_tokenizer):
    # every token but the digits suppressed: every completion of the run is digits (EOS suppressed too: full length)
    allowed = [char_tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    suppressed = [t for t in range(len(char_tokenizer)) if t not in allowed]
    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=5, max_steps=2, optim="adamw_torch", logging_steps=1,
                      generation_kwargs={"suppress_tokens": suppressed}, min_p=0.01)
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer), ["length"], args=args,
                          train_dataset=[{"prompt": f"p{i}"} for i in range(4)], processing_class=char_tokenizer)
    trainer.train()
    import json

    samples = [json.loads(line) for line in open(tmp_path / "run" / "completions.jsonl")]
    assert len(samples) == 4 and all(s["completion"].isdigit() and len(s["completion"]) == 5 for s in samples)
