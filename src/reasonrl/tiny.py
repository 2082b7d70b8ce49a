"""Small models built locally: a real Hugging Face character tokenizer and a random Qwen2/Llama of any size.

They make reasonrl usable and testable with no network: the demo warm-starts one, and the tests build them.
"""

from __future__ import annotations

import torch

PAD, EOS, UNK, IM_START = "<|pad|>", "<|im_end|>", "<|unk|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, EOS, UNK, IM_START]

# ChatML, as SmolLM-Instruct and Qwen2 use it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ChatML with Hermes/Qwen2.5-style tool calls, compact for a character tokenizer: each tool on one line of the
# system turn as name(parameters): description; a call is <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
TOOL_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\ntools:' }}"
    "{% for tool in tools %}{% set f = tool['function'] if 'function' in tool else tool %}"
    "{{ ' ' + f['name'] + '(' + (f['parameters']['properties'] | list | join(',')) + '): ' + f['description'] }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{ call['function']['arguments'] | tojson }}{{ '}</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_char_tokenizer(tools: bool = False):
    """A PreTrainedTokenizerFast with one token per byte (so per character for ASCII), special tokens and ChatML.

    It is a byte-level BPE with no merges: 256 byte tokens + pad/eos/unk/im_start = 260 entries. Being byte-level
    BPE, it round-trips any text and reloads through AutoTokenizer for Qwen2 and Llama configs alike. With `tools`
    its chat template renders tool schemas, tool calls and tool results (TOOL_CHAT_TEMPLATE).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + byte_tokens)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, additional_special_tokens=[IM_START]
    )
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE if tools else CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    tokenizer=None,
    *,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised causal LM of the Qwen2 or Llama architecture, sized for CPU tests and demos."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = tokenizer or build_char_tokenizer()
    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_class(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_reasoning_model(tokenizer=None, *, hidden_size: int = 128, num_hidden_layers: int = 4, seed: int = 0):
    """The ~1M-parameter character-level Qwen2 that `reasonrl sft` (without --model) and the demo warm-start:
    4 attention heads, 2 KV heads, an MLP 4x the hidden size."""
    return build_tiny_model(tokenizer, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=4 * hidden_size, seed=seed)


def smollm_135m_config(**overrides):
    """The SmolLM-135M architecture (LlamaConfig), for building it locally with random weights."""
    from transformers import LlamaConfig

    values = dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0,
        # the ids of build_char_tokenizer()'s pad and EOS, so that the pair works together out of the box
        pad_token_id=SPECIAL_TOKENS.index(PAD), eos_token_id=SPECIAL_TOKENS.index(EOS), bos_token_id=None,
    )
    values.update(overrides)
    return LlamaConfig(**values)
