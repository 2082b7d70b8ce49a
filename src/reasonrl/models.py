"""Load the policy and its tokenizer, add LoRA, and get reference log-probs without a second copy of the model."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import re
import struct

import torch

from reasonrl.chat_templates import set_chat_template
from reasonrl.core import dropout
from reasonrl.cpu import page_out
from reasonrl.errors import ConfigError, ModelLoadError, reason_of

logger = logging.getLogger("reasonrl")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


# A Hugging Face Hub repo id, 'gpt2' or 'org/name'; other names that do not exist are local paths.
_HUB_ID = re.compile(r"^[A-Za-z0-9_-][\w.-]*(/[\w.-]+)?$")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, gguf_file: str | None = None):
    """AutoTokenizer with left padding (for generation) and a pad token (EOS if the tokenizer has none).

    gguf_file: read the tokenizer (and its chat template) from this GGUF file in `name_or_path`; a `name_or_path`
    that is itself a .gguf file needs none (see split_gguf)."""
    from transformers import AutoTokenizer

    name_or_path, gguf_file = split_gguf(name_or_path, gguf_file)
    if gguf_file is not None:
        return prepare_tokenizer(read_gguf(name_or_path, gguf_file, "tokenizer", AutoTokenizer.from_pretrained))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except _LOAD_ERRORS as error:
        raise ModelLoadError(_load_error_message(name_or_path, "tokenizer", error)) from None
    if not tokenizer("hello", add_special_tokens=False)["input_ids"]:  # transformers 5 builds an empty one
        raise ModelLoadError(f"{name_or_path!r} has no tokenizer files (the tokenizer loaded from it is empty); "
                             f"save the tokenizer there with tokenizer.save_pretrained(...)")
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an EOS token; add one with "
                                 "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and save it")
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("notice: the tokenizer has no pad token; using its EOS token %r for padding",
                       tokenizer.eos_token)
    return tokenizer


def _load_error_types() -> tuple[type[BaseException], ...]:
    types = [OSError, ValueError, ImportError, KeyError, TypeError]
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


# what transformers raises for a model the user named badly: missing or damaged files (OSError, ValueError,
# safetensors' own error), an optional package the model needs (ImportError), an unknown architecture (KeyError)
_LOAD_ERRORS = _load_error_types()


def _load_error_message(name_or_path: str, what: str, error: Exception) -> str:
    reason = reason_of(error, 200).rstrip(".")
    if isinstance(error, TypeError):  # from_pretrained got a keyword argument it does not know
        return f"could not load the {what} {name_or_path!r}: {reason}; check model_init_kwargs"
    if isinstance(error, ImportError):
        return (f"loading the {what} {name_or_path!r} needs a package that is not installed: {reason}; install it "
                f"(pip install ...) and retry")
    if os.path.exists(name_or_path):
        return f"could not load the {what} from {name_or_path!r}: {reason}"
    if not _HUB_ID.match(name_or_path):
        return f"model path {name_or_path!r} does not exist; check the path (or give a hub id like org/name)"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"could not load the {what} {name_or_path!r}: it is not a local folder, and loading it from the Hugging "
            f"Face Hub failed ({'offline mode is on' if offline else 'no network, or the id is wrong'}): {reason}. "
            f"Check the path or id, or download the model while online")


def load_model(name_or_path: str, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               gguf_file: str | None = None, **model_init_kwargs):
    """AutoModelForCausalLM from a hub id or a local folder; weights only from safetensors, or from a GGUF file.

    gguf_file: load from this GGUF file in `name_or_path` (or give a .gguf path as `name_or_path`), dequantized to
    ordinary `dtype` weights: a plain model that trains, and saves as safetensors without a quantization config."""
    from transformers import AutoModelForCausalLM

    name_or_path, gguf_file = split_gguf(name_or_path, gguf_file)
    if gguf_file is not None:
        return _load_gguf_model(name_or_path, gguf_file, dtype=dtype, **model_init_kwargs)
    _refuse_remote_code(name_or_path, trust_remote_code)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    kwargs.update(model_init_kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except _LOAD_ERRORS as error:
        raise ModelLoadError(_load_error_message(name_or_path, "model", error)) from None
    return model


def _refuse_remote_code(name_or_path: str, trust_remote_code: bool) -> None:
    """A local model that ships its own Python code (auto_map in config.json) is refused unless the user trusts it:
    said plainly, instead of transformers' error about an unknown architecture."""
    import json

    config_file = os.path.join(name_or_path, "config.json")
    if trust_remote_code or not os.path.isfile(config_file):
        return
    try:
        with open(config_file, encoding="utf-8") as handle:
            auto_map = json.load(handle).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return  # a damaged config: AutoConfig says what is wrong with it
    if auto_map:
        raise ModelLoadError(f"{name_or_path} ships its own model code (auto_map in config.json), which reasonrl does "
                             f"not run unless asked: pass --trust-remote-code (trust_remote_code=true), and only for "
                             f"code you trust")


def load_model_config(name_or_path: str, *, trust_remote_code: bool = False, gguf_file: str | None = None):
    """The model's config alone (no weights): enough for the checks that should fail before a long load. None for a
    GGUF file, whose config comes with the weights (checked once they have loaded)."""
    from transformers import AutoConfig

    if split_gguf(name_or_path, gguf_file)[1] is not None:
        return None
    _refuse_remote_code(name_or_path, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except _LOAD_ERRORS as error:
        raise ModelLoadError(_load_error_message(name_or_path, "model", error)) from None


def max_positions(config) -> int | None:
    """The longest sequence the model's config allows, if it says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(config, max_completion_length: int, longest_prompt: int = 1) -> None:
    """ConfigError when the longest prompt plus a completion could run past the model's positions (the static KV
    cache and the position embeddings are sized by them): found before the first rollout tries to allocate it.
    Before the data is tokenized, `longest_prompt` is 1 (a completion alone must fit)."""
    limit = None if config is None else max_positions(config)
    if limit is not None and longest_prompt + max_completion_length > limit:
        prompt = f"the longest prompt ({longest_prompt} tokens) + " if longest_prompt > 1 else ""
        raise ConfigError(f"{prompt}max_completion_length={max_completion_length} exceeds the model's {limit} "
                          f"positions; lower max_completion_length to at most {max(1, limit - longest_prompt)}"
                          f"{' (or max_prompt_length)' if prompt else ''}", "max_completion_length")


def check_policy(model, tokenizer) -> None:
    """ModelLoadError unless `model`'s vocabulary holds the tokenizer's EOS and pad tokens (see also check_causal)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    for kind in ("eos", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is None or (vocab is not None and not 0 <= token_id < vocab):
            raise ModelLoadError(f"the tokenizer's {kind} token id ({token_id}) is not in the model's vocabulary of "
                                 f"{vocab}; set tokenizer.{kind}_token to one of its tokens, or use the model's own "
                                 f"tokenizer")


def check_causal(model, tokenizer, bf16: bool = False) -> None:
    """ModelLoadError unless `model` is a causal language model. Tested, not guessed from the class: the first
    position's logits must not change when a later token does (a bidirectional model such as BERT fails this,
    whatever its head). The trainer runs it once the frozen weights have their training dtype (a forward reads every
    weight: before a cast to bf16, all the fp32 ones would be resident at once)."""
    device = next(model.parameters()).device
    probe = torch.tensor([[tokenizer.eos_token_id, 0], [tokenizer.eos_token_id, 1]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = getattr(model(input_ids=probe), "logits", None)
    except Exception as error:  # noqa: BLE001 - any model that cannot run this cannot be trained here either
        raise ModelLoadError(f"the model cannot run a forward pass on token ids ({type(error).__name__}: "
                             f"{reason_of(error, 150)}); GRPO needs a causal language model") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ModelLoadError(f"{type(model).__name__} does not return next-token logits; GRPO needs a causal "
                             f"language model (AutoModelForCausalLM)")
    if not torch.allclose(logits[0, 0].float(), logits[1, 0].float(), atol=1e-4, rtol=1e-3):
        raise ModelLoadError(f"{type(model).__name__} is not a causal language model: its prediction at a position "
                             f"depends on later tokens; GRPO needs a decoder-only model (AutoModelForCausalLM)")


def split_gguf(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name in it, or None). A `name_or_path` ending in .gguf is split into its folder
    and file name, so that the file alone names a model; transformers takes the two apart (`gguf_file=`)."""
    if gguf_file is None and name_or_path.lower().endswith(".gguf"):
        folder, gguf_file = os.path.split(name_or_path)  # a hub repo's file too: org/name/file.gguf
        return folder or ".", gguf_file
    return name_or_path, gguf_file


def read_gguf(folder: str, gguf_file: str, what: str, from_pretrained, **kwargs):
    """`from_pretrained(folder, gguf_file=...)`, with a missing file, a missing `gguf` package or a file that is not
    a readable GGUF turned into a one-line ModelLoadError."""
    path = os.path.join(folder, gguf_file)
    if os.path.isdir(folder) and not os.path.isfile(path):
        raise ModelLoadError(f"GGUF file {path} does not exist; check the path (gguf_file names a file in "
                             f"model_name_or_path, or give the .gguf path as the model)")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading the GGUF file {path} needs the gguf package; install it with "
                             f"`pip install gguf`")
    try:
        return from_pretrained(folder, gguf_file=gguf_file, **kwargs)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, NotImplementedError, struct.error) as error:
        # gguf's reader fails on a damaged file with whatever numpy or struct raised where it stopped
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200].rstrip(".")
        raise ModelLoadError(f"could not load the {what} from the GGUF file {path}: {reason}; check that it is a "
                             f"complete GGUF file of a model transformers supports") from None


def _load_gguf_model(folder: str, gguf_file: str, *, dtype: torch.dtype, **model_init_kwargs):
    """A GGUF checkpoint dequantized to a plain model (see load_model)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, **model_init_kwargs}
    try:  # transformers >= 5 can keep some GGUF weights packed (not trainable); ask for plain weights
        from transformers import GgufConfig

        kwargs.setdefault("quantization_config", GgufConfig(dequantize=True))
    except ImportError:  # transformers 4 always dequantizes
        pass
    model = read_gguf(folder, gguf_file, "model", AutoModelForCausalLM.from_pretrained, **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:  # save_pretrained would refuse the model
        raise ModelLoadError(f"the GGUF file {os.path.join(folder, gguf_file)} loaded as a quantized model, which "
                             f"cannot train; upgrade transformers (pip install -U transformers)")
    # names the file, not its folder: peft records it as the adapter's base model, so that export and generate
    # find the base weights again
    path = os.path.abspath(os.path.join(folder, gguf_file)) if os.path.isdir(folder) else f"{folder}/{gguf_file}"
    model.config.name_or_path = model.name_or_path = path
    return model


def lora_config_from(cfg):
    """peft.LoraConfig from the GRPOConfig's lora_* fields."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")


def add_lora(model, peft_config):
    """Wrap `model` with a trainable LoRA adapter (base weights frozen, peft's dropout swapped for LoraDropout)."""
    from peft import get_peft_model

    try:
        return use_lean_lora_dropout(get_peft_model(model, peft_config))
    except ValueError as error:  # peft: target modules not found, or a layer type it cannot adapt
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ConfigError(f"LoRA cannot be added with lora_target_modules={peft_config.target_modules!r}: "
                          f"{reason_of(error, 150)}; the model's linear layers are: {', '.join(linear[:12])} (or use "
                          f"'all-linear')", "lora_target_modules") from None


class LoraDropout(torch.nn.Dropout):
    """peft's LoRA dropout computed by core.dropout (same distribution, cheaper mask). It is an nn.Dropout, so
    model.eval() and disable_dropout treat it as one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def use_lean_lora_dropout(model):
    """Swap the nn.Dropout of every LoRA layer of `model` for LoraDropout (in place; returns the model)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, layer in list(dropouts.items()):
                if type(layer) is torch.nn.Dropout:
                    dropouts[name] = LoraDropout(layer.p)
    return model


def lora_layers(model) -> list:
    """peft's LoRA layers of `model` (those with an input-casting switch); empty for a plain model."""
    return [module for module in model.modules() if hasattr(module, "cast_input_dtype_enabled")]


class Autocast:
    """`autocast()`: the context every forward of the policy runs in. bf16: torch's autocast, and peft's LoRA layers
    (found once, here) keep their bf16 input instead of casting it to their fp32 weights' dtype (autocast casts it
    back to bf16 for the matmul: two copies per layer that change nothing but, with dropout, a rare double
    rounding). fp32: nothing."""

    def __init__(self, model, bf16: bool, device_type: str):
        self.bf16, self.device_type = bf16, device_type
        self.lora_layers = lora_layers(model)

    def __call__(self):
        if not self.bf16:
            return contextlib.nullcontext()
        context = contextlib.ExitStack()
        context.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
        context.enter_context(lora_inputs_not_cast(self.lora_layers))
        return context


@contextlib.contextmanager
def lora_inputs_not_cast(layers: list):
    """peft's disable_input_dtype_casting over `layers` found beforehand (lora_layers): under bf16 autocast a LoRA
    layer then keeps its bf16 input instead of casting it to the fp32 adapter's dtype, which autocast casts back for
    the matmul. peft's own helper walks every module of the model on entry and on exit, 5 ms a call on SmolLM-135M."""
    with attributes_set(layers, "cast_input_dtype_enabled", False):
        yield


@contextlib.contextmanager
def attributes_set(objects: list, name: str, value):
    """Within: attribute `name` of every object is `value`; each gets its own earlier value back on exit."""
    saved = [getattr(obj, name) for obj in objects]
    for obj in objects:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, earlier in zip(objects, saved):
            setattr(obj, name, earlier)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def unwrap_model(model):
    """The transformers model under a DistributedDataParallel and a peft wrapper, whichever are there."""
    if isinstance(getattr(model, "module", None), torch.nn.Module):  # DistributedDataParallel
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def frozen_copy(model):
    """A frozen copy of `model` in eval mode: the reference policy of full fine-tuning."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


@contextlib.contextmanager
def reference_policy(model, reference_model=None):
    """Yield the model whose log-probs are the KL reference.

    With LoRA the reference is the base model: the same weights with the adapter disabled, so no copy is held.
    In full fine-tuning it is the frozen copy made at the start of training.
    """
    if reference_model is not None:
        yield reference_model
    elif is_peft_model(model):
        with model.disable_adapter():
            yield model
    else:
        raise ValueError("beta > 0 needs a reference: use LoRA, or keep a frozen copy of the model")


def cast_frozen_weights(model, dtype: torch.dtype) -> None:
    """Cast the frozen floating-point weights of `model` to `dtype` in place (the trainable ones, e.g. a LoRA
    adapter, keep theirs); a weight shared by two modules (tied embeddings) is cast once. Each old weight's pages
    are handed back as it is replaced (cpu.page_out): weights transformers memory-mapped from a safetensors file
    would otherwise all stay resident until the last one is cast, the old and new copies together at the end."""
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != dtype:
            old = parameter.data
            parameter.data = old.to(dtype)
            page_out(old)
            del old


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, as peft's print_trainable_parameters reports them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ------------------------------------------------------------------ the trainer's policy, built in two steps


def load_policy(model, args, processing_class=None, *, bf16: bool = False, wants_lora: bool = False):
    """(model, tokenizer, model_name) for a trainer: `model` a hub id, a local path (its lengths checked against
    max_completion_length before it loads) or a transformers model object; the tokenizer prepared for generation."""
    if isinstance(model, str):
        check_lengths(load_model_config(model, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file),
                      args.max_completion_length)
        # frozen base weights can live in bf16 when only the LoRA adapter (kept fp32 by peft) trains
        dtype = torch.bfloat16 if (bf16 and wants_lora) else DTYPES.get(args.dtype, "auto")
        model_name = model
        model = load_model(model, dtype=dtype, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file,
                           **(args.model_init_kwargs or {}))
        processing_class = processing_class or load_tokenizer(
            model_name, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file)
    else:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise ModelLoadError(f"model must be a hub id, a local folder or a transformers model object (got "
                                 f"{type(model).__name__})")
        model_name = getattr(model.config, "_name_or_path", None) or type(model).__name__
        if processing_class is None:
            processing_class = load_tokenizer(model_name, trust_remote_code=args.trust_remote_code)
    tokenizer = set_chat_template(prepare_tokenizer(processing_class), args.chat_template_path,
                                  trust_remote_code=args.trust_remote_code)
    check_policy(model, tokenizer)
    return model, tokenizer, model_name


def prepare_for_training(model, args, peft_config=None, *, bf16: bool = False):
    """The policy ready to train: a LoRA adapter added (peft_config, or the lora_* options with use_peft) with the
    lean LoRA dropout, dropout disabled if asked, frozen weights in bf16 under bf16 with LoRA."""
    if peft_config is None and args.use_peft and not is_peft_model(model):
        peft_config = lora_config_from(args)
    if peft_config is not None:
        model = add_lora(model, peft_config)  # with the lean LoRA dropout
    else:
        use_lean_lora_dropout(model)  # a peft model given ready-made (a no-op for a plain model)
    if args.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if bf16 and is_peft_model(model) and args.cast_frozen_weights_to_bf16:
        cast_frozen_weights(model, torch.bfloat16)  # as if loaded by name in bf16: half the memory
    if args.cast_lm_head_to_fp32:
        cast_lm_head_to_fp32(model)
    return model


def cast_lm_head_to_fp32(model) -> None:
    """cast_lm_head_to_fp32 (ScaleRL): the output layer's weight in float32 and its matmul in float32 outside
    autocast, so the logits are computed in full precision. A weight tied to the input embeddings is shared, so it
    turns float32 there too; the embeddings' output is cast back to the dtype the layers had."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear):
        raise ModelLoadError("cast_lm_head_to_fp32=true needs a model whose output layer is a plain Linear (not one "
                             "wrapped by LoRA: leave lm_head out of the adapter's target_modules)")
    embeddings = model.get_input_embeddings()
    layers_dtype = embeddings.weight.dtype
    tied = head.weight is embeddings.weight
    head.float()

    def forward_in_fp32(hidden):
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(hidden.float(), head.weight, head.bias)

    head.forward = forward_in_fp32
    if tied and layers_dtype != torch.float32:
        embeddings.register_forward_hook(lambda module, inputs, output: output.to(layers_dtype))


@torch.no_grad()
def mix_into_reference(reference, model, alpha: float) -> None:
    """sync_ref_model (TR-DPO): reference <- alpha * model + (1 - alpha) * reference, parameter by parameter (the
    reference is a frozen copy of the model, so the parameters pair up in order)."""
    for reference_param, param in zip(reference.parameters(), model.parameters(), strict=True):
        reference_param.lerp_(param.to(reference_param.dtype), alpha)
