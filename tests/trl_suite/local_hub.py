"""Stand-ins for the Hugging Face Hub repositories TRL's GRPO tests load, built locally (no network).

TRL's tests load tiny random models from `trl-internal-testing/...` and the `trl-internal-testing/zen` dataset. Here
each of those models is rebuilt with the same architecture class, the same config sizes (hidden 8 or 16, two layers,
the same expert counts) and random weights, with a tokenizer of the same vocabulary size whose special
tokens sit at the real tokenizer's ids (Qwen's `<|im_end|>` is 151645, Llama's `<|finetune_right_pad_id|>` is
128004, ...), because some tests put those ids in mocked generations. The tokenizer is a byte-level BPE without
merges: one token per byte, then filler words up to the vocabulary size, then the specials. So a random model
rarely samples EOS (1 in ~150k), as with the real vocabulary, which TRL's mask_truncated test relies on.

The models are written in the layout of the Hugging Face cache (`models--org--name/snapshots/<hash>/`), so that
`from_pretrained("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5")` finds them with HF_HUB_OFFLINE=1 and
HF_HUB_CACHE pointing here: TRL, reasonrl and the tests' own `AutoModel...from_pretrained` calls all load the same
files, unchanged. The zen dataset's `standard_prompt_only` and `conversational_prompt_only` configurations are built
in memory by `load_dataset` (19 lines of the Zen of Python, split 17 train / 2 test as on the Hub).

The weights are saved in float32 where the Hub's are bf16: TRL loads them as saved (dtype "auto") and reasonrl in
float32, so both then train in float32 on the CPU (conftest.py also turns TRL's bf16 default off there, as TRL's own
docs advise for CPUs), which is several times faster than bf16 emulated on a CPU without bf16 units. No test of the
file asserts a dtype except cast_lm_head_to_fp32's, which asserts float32.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

ORG = "trl-internal-testing"

# ------------------------------------------------------------------ tokenizers

CHATML = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}"
    "\n</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "<tool_call>\n{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "\n</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer family: its vocabulary size, its special tokens at their real ids, and its chat template."""

    vocab_size: int
    specials: dict  # id -> token
    eos: str
    pad: str | None = None
    bos: str | None = None
    add_bos: bool = False  # prepend the BOS token when encoding (Llama 3, Gemma, Cohere)
    chat_template: str = CHATML
    not_special: tuple = ()  # added tokens that are ordinary text (Qwen's <tool_call>, <think>)


def _qwen_specials(with_qwen3: bool) -> dict:
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
             "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
             "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
    if with_qwen3:
        names += ["<tool_response>", "</tool_response>", "<think>", "</think>"]
    return {151643 + i: name for i, name in enumerate(names)}


def _llama3_specials() -> dict:
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    specials = {128000 + i: name for i, name in enumerate(named)}
    specials.update({128000 + i: f"<|reserved_special_token_{i - 8}|>" for i in range(len(named), 256)})
    return specials


_QWEN_TEXT = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>")

TOKENIZERS = {
    "qwen2.5": TokenizerSpec(151665, _qwen_specials(False), eos="<|im_end|>", pad="<|endoftext|>",
                             not_special=_QWEN_TEXT),
    "qwen3": TokenizerSpec(151669, _qwen_specials(True), eos="<|im_end|>", pad="<|endoftext|>",
                           not_special=_QWEN_TEXT),
    "llama3.2": TokenizerSpec(128256, _llama3_specials(), eos="<|eot_id|>", bos="<|begin_of_text|>", add_bos=True,
                              chat_template=LLAMA3),
    "gemma2": TokenizerSpec(256000, {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 106: "<start_of_turn>",
                                     107: "<end_of_turn>"}, eos="<eos>", pad="<pad>", bos="<bos>", add_bos=True,
                            chat_template=GEMMA),
    "cohere2": TokenizerSpec(262144, {0: "<PAD>", 1: "<UNK>", 2: "<BOS_TOKEN>", 3: "<EOS_TOKEN>"},
                             eos="<EOS_TOKEN>", pad="<PAD>", bos="<BOS_TOKEN>", add_bos=True),
    "glm4.5": TokenizerSpec(151365, {151329 + i: name for i, name in enumerate(
        ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
         "<|observation|>"])}, eos="<|endoftext|>", pad="<|endoftext|>"),
    "gpt-oss": TokenizerSpec(201088, {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>",
                                      200003: "<|constrain|>", 200005: "<|channel|>", 200006: "<|start|>",
                                      200007: "<|end|>", 200008: "<|message|>", 200012: "<|call|>"},
                             eos="<|return|>", pad="<|endoftext|>"),
    "nemotron3": TokenizerSpec(131072, {0: "<unk>", 1: "<s>", 2: "</s>", 10: "<|im_start|>", 11: "<|im_end|>"},
                               eos="<|im_end|>", pad="<unk>"),
}


def _byte_alphabet() -> list[str]:
    """The 256 characters a byte-level BPE uses for the bytes 0..255, in GPT-2's order (Qwen's first 256 ids)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    return [chars[b] for b in order]


def _filler(n: int) -> str:
    """A distinct word for filler id n (' ab', ' ac', ...): decodes to readable text, never met when encoding."""
    letters = ""
    n += 26 * 27  # at least three letters, so no filler equals a byte token
    while n:
        n, r = divmod(n, 26)
        letters = chr(ord("a") + r) + letters
    return "Ġ" + letters


def write_tokenizer(spec: TokenizerSpec, folder: Path) -> None:
    """tokenizer.json and tokenizer_config.json for `spec`, written directly (the Python API takes a minute for a
    250k vocabulary)."""
    vocab = dict(spec.specials)
    free = (i for i in range(spec.vocab_size) if i not in spec.specials)
    for char, token_id in zip(_byte_alphabet(), free):
        vocab[token_id] = char
    for n, token_id in enumerate(free):
        vocab[token_id] = _filler(n)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": t not in spec.not_special} for i, t in sorted(spec.specials.items())]
    post_processor = None
    if spec.add_bos:
        bos_id = next(i for i, t in spec.specials.items() if t == spec.bos)
        post_processor = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": spec.bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": spec.bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": spec.bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {spec.bos: {"id": spec.bos, "ids": [bos_id], "tokens": [spec.bos]}},
        }
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {token: i for i, token in vocab.items()}, "merges": []},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": spec.eos, "pad_token": spec.pad,
              "bos_token": spec.bos, "add_bos_token": spec.add_bos, "model_max_length": 131072,
              "clean_up_tokenization_spaces": False, "chat_template": spec.chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


# ------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelSpec:
    """One `trl-internal-testing/...` repository: its architecture class, config and tokenizer family."""

    name: str
    config_class: str
    model_class: str
    tokenizer: str
    config: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    remote_code: bool = False


_SMALL = dict(hidden_size=8, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=32)
_REWARD = dict(_SMALL, hidden_size=16, num_labels=1)
_QWEN_GENERATION = dict(bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643], do_sample=True,
                        temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)

MODELS = [
    ModelSpec("tiny-Qwen2ForCausalLM-2.5", "Qwen2Config", "Qwen2ForCausalLM", "qwen2.5",
              dict(_SMALL, vocab_size=151665), _QWEN_GENERATION),
    ModelSpec("tiny-Qwen2ForSequenceClassification-2.5", "Qwen2Config", "Qwen2ForSequenceClassification", "qwen2.5",
              dict(_REWARD, vocab_size=151665, pad_token_id=151643), _QWEN_GENERATION),
    ModelSpec("tiny-Qwen3ForCausalLM", "Qwen3Config", "Qwen3ForCausalLM", "qwen3", dict(_SMALL, vocab_size=151669),
              dict(_QWEN_GENERATION, temperature=0.6, top_p=0.95)),
    ModelSpec("tiny-Qwen3ForSequenceClassification", "Qwen3Config", "Qwen3ForSequenceClassification", "qwen3",
              dict(_REWARD, vocab_size=151669, pad_token_id=151643)),
    ModelSpec("tiny-Qwen3MoeForCausalLM", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3",
              dict(_SMALL, vocab_size=151936, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                   bos_token_id=151643, eos_token_id=151645), dict(bos_token_id=151643, eos_token_id=[151645, 151643],
                                                                   pad_token_id=151643)),
    ModelSpec("tiny-Cohere2ForCausalLM", "Cohere2Config", "Cohere2ForCausalLM", "cohere2",
              dict(_SMALL, vocab_size=262144, logit_scale=1.0, bos_token_id=2, eos_token_id=3, pad_token_id=0),
              dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)),
    ModelSpec("tiny-Glm4MoeForCausalLM", "Glm4MoeConfig", "Glm4MoeForCausalLM", "glm4.5",
              dict(_SMALL, vocab_size=151365, moe_intermediate_size=32, head_dim=2, n_routed_experts=4,
                   num_experts_per_tok=2, attention_bias=True, eos_token_id=[151329, 151336, 151338],
                   pad_token_id=151329, use_qk_norm=True), dict(eos_token_id=[151329, 151336, 151338],
                                                                 pad_token_id=151329)),
    ModelSpec("tiny-GptOssForCausalLM", "GptOssConfig", "GptOssForCausalLM", "gpt-oss",
              dict(_SMALL, vocab_size=201088, num_local_experts=4, num_experts_per_tok=2, eos_token_id=200002,
                   pad_token_id=199999), dict(bos_token_id=199998, eos_token_id=[200002, 199999, 200012],
                                              pad_token_id=199999)),
    ModelSpec("tiny-NemotronHForCausalLM-nano", "NemotronHConfig", "NemotronHForCausalLM", "nemotron3",
              dict(vocab_size=131072, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=32, layers_block_type=["mamba", "attention", "moe"], mamba_num_heads=8,
                   mamba_head_dim=4, mamba_n_groups=1, ssm_state_size=16, mamba_d_conv=4, mamba_expand=2,
                   n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                   moe_shared_expert_intermediate_size=32, use_mamba_kernels=False, eos_token_id=11,
                   pad_token_id=0), dict(bos_token_id=1, eos_token_id=11, pad_token_id=0)),
    ModelSpec("tiny-Gemma2ForCausalLM", "Gemma2Config", "Gemma2ForCausalLM", "gemma2", dict(_SMALL, vocab_size=256000),
              dict(bos_token_id=2, eos_token_id=[1, 107], pad_token_id=0)),
    ModelSpec("tiny-LlamaForSequenceClassification-3.2", "LlamaConfig", "LlamaForSequenceClassification", "llama3.2",
              dict(_REWARD, vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
              dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009])),
    ModelSpec("tiny-RemoteForCausalLM", "LlamaConfig", "LlamaForCausalLM", "llama3.2",
              dict(_SMALL, vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
              dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009]), remote_code=True),
]

# the model code a `trust_remote_code` repository ships (a Llama under another name, as TRL's tiny-RemoteForCausalLM)
_REMOTE_CONFIG_PY = '''from transformers import LlamaConfig


class RemoteConfig(LlamaConfig):
    model_type = "remote"
'''
_REMOTE_MODELING_PY = '''from transformers import LlamaForCausalLM

from .configuration_remote import RemoteConfig


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
'''


def _build_model(spec: ModelSpec, folder: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(int(hashlib.sha256(spec.name.encode()).hexdigest()[:8], 16))
    config = getattr(transformers, spec.config_class)(**spec.config)
    model = getattr(transformers, spec.model_class)(config)  # float32: see the module docstring
    model.save_pretrained(folder)
    transformers.GenerationConfig(**spec.generation).save_pretrained(folder)
    write_tokenizer(TOKENIZERS[spec.tokenizer], folder)
    if spec.remote_code:
        config_file = folder / "config.json"
        values = json.loads(config_file.read_text())
        values.update(model_type="remote", architectures=["RemoteForCausalLM"],
                      auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                                "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"})
        config_file.write_text(json.dumps(values, indent=1))
        (folder / "configuration_remote.py").write_text(_REMOTE_CONFIG_PY)
        (folder / "modeling_remote.py").write_text(_REMOTE_MODELING_PY)


def build(hub_cache: str | os.PathLike) -> Path:
    """Every stand-in repository under `hub_cache` (a Hugging Face hub cache folder); skips those already built."""
    hub_cache = Path(hub_cache)
    for spec in MODELS:
        repo = hub_cache / f"models--{ORG}--{spec.name}"
        revision = hashlib.sha1(spec.name.encode()).hexdigest()
        snapshot = repo / "snapshots" / revision
        if (repo / "refs" / "main").is_file():
            continue
        snapshot.mkdir(parents=True, exist_ok=True)
        _build_model(spec, snapshot)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)  # written last: the repository is complete
    return hub_cache


# ------------------------------------------------------------------ the zen dataset

ZEN_PROMPTS = [
    "Beautiful is better than", "Explicit is", "Simple is better", "Complex", "Flat is better than",
    "Sparse is better", "Readability", "Special cases aren't special", "Although practicality beats",
    "Errors should never", "Unless explicitly", "In the face of ambiguity, refuse",
    "There should be one-- and preferably", "Although that way may not be obvious at first unless you're", "Now is",
    "Although never is often", "If the implementation is hard to explain,", "If the implementation is easy",
    "Namespaces are one honking great",
]
ZEN_QUESTIONS = [
    "What is better than ugly?", "What is better than implicit?", "What is better than complex?",
    "What is better than complicated?", "What is better than nested?", "What is better than dense?", "What counts?",
    "Are special cases enough to break the rules?", "What beats purity?", "What should never pass silently?",
    "When can errors pass silently?", "What should you do in the face of ambiguity?",
    "How many ways should there be to do it?", "For whom may the way not be obvious at first?",
    "What is better than never?", "Is never better than *right* now?",
    "What does it mean if the implementation is hard to explain?",
    "What does it mean if the implementation is easy to explain?", "Any great ideas?",
]
_TRAIN_ROWS = 17  # the Hub's split: train_test_split(test_size=0.1, shuffle=False) of 19 rows


def load_dataset(path, name=None, split=None, streaming=False, **kwargs):
    """`datasets.load_dataset` for `trl-internal-testing/zen` (prompt-only configurations), built in memory."""
    from datasets import Dataset, DatasetDict, IterableDatasetDict

    if path != f"{ORG}/zen":
        raise ValueError(f"no local stand-in for the dataset {path!r}")
    prompts = {"standard_prompt_only": ZEN_PROMPTS,
               "conversational_prompt_only": [[{"role": "user", "content": q}] for q in ZEN_QUESTIONS]}
    if name not in prompts:
        raise ValueError(f"no local stand-in for the configuration {name!r} of {path}")
    rows = prompts[name]
    splits = {"train": Dataset.from_dict({"prompt": rows[:_TRAIN_ROWS]}),
              "test": Dataset.from_dict({"prompt": rows[_TRAIN_ROWS:]})}
    if streaming:
        splits = {key: value.to_iterable_dataset() for key, value in splits.items()}
    if split is not None:
        return splits[split]
    return IterableDatasetDict(splits) if streaming else DatasetDict(splits)
