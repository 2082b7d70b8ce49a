"""GRPOConfig: one dataclass that is the Python API, the YAML file and the CLI at once.

Option names, meanings and defaults follow TRL 1.16's `GRPOConfig` (and the `TrainingArguments` fields it inherits),
so a TRL config carries over by name. Fields TRL does not have are marked "reasonrl:" in their docstring; the few
defaults that differ from TRL say so ("Differs from TRL"). Each field is documented by the string right under it;
`describe_fields()` reads those strings from this file so that `reasonrl train --help` prints them.

Values may arrive as strings (from the CLI or from YAML, which reads `1e-5` as a string): every field is coerced to its
annotation, and a value that cannot be gives a one-line `ConfigError` naming the field and the expected type.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import inspect
import itertools
import math
import os
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reasonrl.errors import ConfigError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# The schedules transformers.get_scheduler builds from (warmup, total steps) alone, plus cosine_with_min_lr, which
# needs min_lr or min_lr_rate in lr_scheduler_kwargs.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "cosine_with_min_lr")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "adamw_8bit", "paged_adamw_8bit")
BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
LOGGERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # report_to value -> package it needs
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class GRPOConfig:
    """Everything a GRPO run needs; see `describe_fields()` or `reasonrl train --help` for each option."""

    # ---- model (reasonrl; TRL keeps these in ModelConfig)
    model_name_or_path: str | None = None
    """reasonrl: hub id or local folder of the causal LM to train (TRL takes it as the trainer's `model` argument)."""
    gguf_file: str | None = None
    """reasonrl: train from this GGUF file (llama.cpp, Ollama) in model_name_or_path: its weights are dequantized to
    `dtype`, its tokenizer and chat template read from it; checkpoints and exports are plain safetensors. A
    model_name_or_path ending in .gguf needs none. As transformers' `from_pretrained(gguf_file=)`; TRL has no such
    option."""
    dtype: str = "float32"
    """reasonrl: dtype the weights are loaded in: float32, bfloat16, float16 or auto (as saved). As TRL's ModelConfig."""
    model_init_kwargs: dict[str, Any] | None = None
    """Extra keyword arguments for `AutoModelForCausalLM.from_pretrained` when the model is given by name."""
    trust_remote_code: bool = False
    """Allow models and tokenizers that ship their own Python code. Only enable for code you trust."""
    disable_dropout: bool = False
    """Turn off dropout in the policy, so old, new and reference log-probs of the same tokens agree."""
    use_peft: bool = False
    """reasonrl: train a LoRA adapter instead of all weights (TRL ModelConfig name)."""
    lora_r: int = 16
    """reasonrl: LoRA rank (TRL ModelConfig default)."""
    lora_alpha: int = 32
    """reasonrl: LoRA scaling alpha (TRL ModelConfig default)."""
    lora_dropout: float = 0.05
    """reasonrl: dropout on the LoRA input (TRL ModelConfig default)."""
    lora_target_modules: str | list[str] | None = "all-linear"
    """reasonrl: modules that get adapters: 'all-linear', a list of names, or None for PEFT's per-architecture choice.
    Differs from TRL's ModelConfig (None), which fails on architectures PEFT has no preset for."""

    # ---- data (reasonrl; TRL keeps these in ScriptArguments)
    dataset_name: str | None = None
    """reasonrl: dataset to train on: a hub id, or a local .jsonl/.json/.csv/.parquet file or folder."""
    dataset_config: str | None = None
    """reasonrl: dataset configuration (subset) name, e.g. 'main' for gsm8k."""
    dataset_train_split: str = "train"
    """reasonrl: split to train on."""
    dataset_test_split: str = "test"
    """reasonrl: split to evaluate on."""
    prompt_column: str = "prompt"
    """reasonrl: dataset column holding the prompt (plain text or a list of chat messages)."""
    shuffle_dataset: bool = True
    """Shuffle the training prompts."""
    remove_unused_columns: bool = False
    """Drop dataset columns other than the prompt. Keep False when reward functions read extra columns (e.g. answer)."""
    max_prompt_length: int = 512
    """reasonrl: prompts longer than this many tokens are cut from the left. TRL 1.16 dropped this option; 512 is the
    default of the last TRL versions that had it."""

    # ---- rewards (reasonrl; TRL takes reward functions as a trainer argument)
    reward_funcs: list[str] = field(default_factory=list)
    """reasonrl: reward functions by registry name or dotted path 'pkg.module.func'. Training needs at least one
    (here, or as callables passed to the trainer)."""
    reward_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """reasonrl: keyword arguments per reward function, e.g. {length: {ideal_length: 50}}."""
    reward_weights: list[float] | None = None
    """Weight of each reward function in the summed reward; one per function. None weighs each 1.0."""
    reward_timeout: float | None = None
    """reasonrl: seconds one call of a reward function (on a whole generation round) may take; past it, that call's
    values count as failed (unscorable, like None) and in the metric rewards/<fn>/errors. The call runs in a daemon
    thread that is abandoned on timeout (Python cannot stop it): it finishes in the background and its result is
    dropped. None waits forever and calls the function directly."""
    max_reward_error_fraction: float = 0.5
    """reasonrl: stop training (one-line error, no checkpoint of the failing state) when more than this fraction of
    a generation round's reward values failed: over all functions, the values of calls that raised or timed out.
    Below it, failed values are unscorable (None semantics: left out of the group statistics; a completion every
    function failed on gets advantage 0), counted in rewards/<fn>/errors, and each (function, exception type)'s
    first traceback is logged once. A None returned by the function is not a failure. 1.0 never stops."""

    # ---- generation
    num_generations: int = 8
    """Completions sampled per prompt (the group size G). The generation batch must be a multiple of it."""
    max_completion_length: int = 512
    """Maximum number of tokens generated per completion."""
    temperature: float = 1.0
    """Sampling temperature; higher gives more varied completions."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p. 1.0 keeps all."""
    top_k: int = 0
    """Keep only the k most likely tokens when sampling. 0 disables top-k filtering."""
    repetition_penalty: float = 1.0
    """Penalty on tokens already in the prompt or completion; > 1 discourages repeats, 1.0 disables it."""
    generation_batch_size: int | None = None
    """Completions generated per generation round. None means per_device_train_batch_size * steps_per_generation.
    Set this or steps_per_generation, not both. (TRL fills it in at init; reasonrl keeps None, see
    `generation_batch_size_resolved`.)"""
    steps_per_generation: int | None = None
    """Optimizer micro-steps that share one generation round. None means gradient_accumulation_steps."""
    num_generations_eval: int | None = None
    """Completions per prompt during evaluation; None uses num_generations."""

    # ---- the GRPO objective
    beta: float = 0.0
    """KL coefficient against the reference policy. 0.0 loads no reference model; DeepSeek-R1 used 0.001."""
    epsilon: float = 0.2
    """Lower clipping range of the importance ratio: r is clipped to [1 - epsilon, 1 + epsilon_high]."""
    epsilon_high: float | None = None
    """Upper clipping range; None uses epsilon. DAPO recommends 0.28. With loss_type=cispo it is the cap on the
    importance weight instead (ScaleRL's epsilon_max, recommended 5.0)."""
    delta: float | None = None
    """Two-sided clipping (INTELLECT-2): caps the ratio at delta when set. Must be > 1 + epsilon_high (TRL only
    recommends this; reasonrl enforces it). None disables it."""
    loss_type: str = "dapo"
    """The loss formulation. Clipped surrogate, averaged over: grpo (per sequence, then mean), bnpo (tokens of the
    local batch), dr_grpo (constant batch * max_completion_length), dapo (tokens of the whole accumulated step), luspo
    (each sequence's token sum, then mean; pair it with importance_sampling_level=sequence). Other surrogates: cispo
    (REINFORCE with the importance weight capped at epsilon_high and detached; MiniMax-M1), sapo (a soft
    temperature-controlled gate instead of the clip; averaged as grpo), vespo (a smooth Gamma weight of each
    sequence's importance weight; keep importance_sampling_level=token); cispo and vespo average as dapo."""
    scale_rewards: str = "group"
    """Divide advantages by the reward std of the group ('group', or true), of the batch ('batch'), or not at all
    ('none', or false; Dr. GRPO's advice)."""
    importance_sampling_level: str = "token"
    """Importance ratio per 'token', or one per 'sequence' (GSPO; pair it with loss_type grpo, as TRL warns)."""
    num_iterations: int = 1
    """Optimisation passes over each generation round (mu in the GRPO paper)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length out of the loss (DAPO)."""
    use_bias_correction_kl: bool = True
    """Multiply the KL term by the importance ratio, giving the unbiased reverse-KL gradient (DeepSeek-V3.2). Only
    matters when beta != 0."""
    sapo_temperature_neg: float = 1.05
    """Temperature of the sapo loss's gate for tokens with non-positive advantage (Soft Adaptive Policy Optimization,
    arXiv 2511.20347)."""
    sapo_temperature_pos: float = 1.0
    """Temperature of the sapo loss's gate for tokens with positive advantage (SAPO paper)."""
    vespo_k_pos: float = 2.0
    """VESPO's power exponent k for positive advantages: how strongly sequences with an importance weight below 1
    are down-weighted."""
    vespo_lambda_pos: float = 3.0
    """VESPO's decay factor lambda for positive advantages: how strongly sequences with an importance weight above 1
    are down-weighted."""
    vespo_k_neg: float = 3.0
    """VESPO's power exponent k for negative advantages (importance weights below 1)."""
    vespo_lambda_neg: float = 2.0
    """VESPO's decay factor lambda for negative advantages (importance weights above 1)."""
    top_entropy_quantile: float = 1.0
    """Entropy masking (rho of "Beyond the 80/20 Rule"): the policy loss keeps only the tokens whose entropy is in
    the top rho quantile of the micro-batch's loss tokens (the KL term keeps all). In [0, 1]: 1.0 keeps every token,
    0.0 only the highest-entropy one; the paper recommends 0.2. With mask_truncated_completions, only tokens of
    non-truncated completions count. Below 1, each micro-batch goes through forward and backward in one piece
    (backward_chunk_rows is not used), because the threshold needs the entropies of all its rows."""

    # ---- optimisation
    learning_rate: float = 1e-6
    """Peak learning rate."""
    per_device_train_batch_size: int = 8
    """Completions (not prompts) per micro-step, as in TRL."""
    gradient_accumulation_steps: int = 1
    """Micro-steps accumulated into one optimizer step."""
    num_train_epochs: float = 3.0
    """Passes over the training prompts; ignored when max_steps > 0."""
    max_steps: int = -1
    """Optimizer steps to train for; -1 uses num_train_epochs."""
    optim: str = "adamw_torch_fused"
    """Optimizer: adamw_torch, adamw_torch_fused (TRL's default with torch >= 2.8; also runs on CPU), sgd, adafactor,
    adamw_8bit or paged_adamw_8bit (these two need bitsandbytes)."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup,
    inverse_sqrt or cosine_with_min_lr (set min_lr or min_lr_rate in lr_scheduler_kwargs)."""
    lr_scheduler_kwargs: dict[str, Any] | None = None
    """Extra arguments for the schedule, e.g. {num_cycles: 2} for cosine_with_restarts."""
    warmup_steps: int | float = 0
    """Linear warmup: a number of steps, or a float in [0, 1) read as a fraction of all steps (transformers 5)."""
    warmup_ratio: float = 0.0
    """reasonrl: warmup as a fraction of all steps, the name older TRL/transformers used (default 0.0 there).
    Transformers 5 folded it into warmup_steps; set one of the two."""
    weight_decay: float = 0.0
    """Decoupled weight decay of AdamW."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this value; 0 disables clipping."""
    gradient_checkpointing: bool = True
    """Bound the training forward's activation memory (TRL's default: on). reasonrl keeps the bound by running a
    micro-batch's completions through forward and backward in small row chunks (backward_chunk_rows; the default on
    a CPU), which needs no recompute; where a chunk is the whole micro-batch (a GPU by default, DDP, entropy
    masking, backward_chunk_rows=0) it recomputes the decoder layers in the backward, as transformers does. False:
    no recompute, chunks as backward_chunk_rows says."""
    backward_chunk_rows: int | None = None
    """reasonrl: completions of a micro-batch that go through forward and backward together (0 = all of them). Its
    prompts still run once, and the gradient is the same; smaller chunks hold fewer activations at some speed cost.
    None (auto): on CPU, as many rows as fit about 256 completion tokens in bf16 or 128 in fp32 (SmolLM-135M, 96
    tokens: 2 rows in bf16, 1 in fp32; docs/PERFORMANCE.md has what each costs); on GPU the whole micro-batch, as
    small matmuls waste the device. Used by a single process with top_entropy_quantile 1.0 (DDP and entropy masking
    run a micro-batch at once)."""
    cast_frozen_weights_to_bf16: bool = True
    """reasonrl: under bf16 with LoRA, the frozen base weights of a model object given in float32 are cast to
    bfloat16 once at start, as a model loaded by name is loaded (the adapter stays float32): half their memory and
    the bf16 matmuls autocast would do anyway. False keeps them in the dtype they came in."""
    bf16: bool | None = None
    """bfloat16 autocast. None (TRL's default) means auto: on when CUDA supports bf16, else float32. TRL resolves None
    to True and then refuses plain CPU; reasonrl picks float32 there and allows bf16=true on CPU."""
    adapt_cpu_threads: bool = True
    """reasonrl: on a CPU, before each round, use as many torch threads as the cores other programs left free over
    the last one (cpu.py): threads waiting for a descheduled peer make a shared CPU far slower than the time others
    take. An idle machine keeps all threads. Logged as cpu_threads. False keeps torch's thread count."""
    seed: int = 42
    """Random seed for sampling, shuffling and initialisation."""

    # ---- output, logging, checkpoints
    output_dir: str = "trainer_output"
    """Folder for checkpoints, logs and the final model."""
    overwrite_output_dir: bool = False
    """reasonrl: allow training into an output_dir that already holds a run (transformers 5 dropped the option)."""
    resume_from_checkpoint: str | None = None
    """Checkpoint folder to resume training from (TrainingArguments has it; TRL reads it via train())."""
    logging_steps: int | float = 10
    """Log every this many optimizer steps; a float in (0, 1) is a fraction of all steps."""
    save_steps: int | float = 500
    """Save a checkpoint every this many optimizer steps; a float in (0, 1) is a fraction of all steps."""
    save_total_limit: int | None = None
    """Keep at most this many checkpoints, deleting the oldest; None keeps all."""
    report_to: str | list[str] = "none"
    """Where metrics go besides the console and metrics.jsonl: none, tensorboard, wandb, or a list of them."""
    log_completions: bool = False
    """Log a sample of (prompt, completion, reward) every logging_steps."""
    num_completions_to_print: int | None = None
    """How many logged completions to print; None prints all of them."""

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation

    def validate(self) -> None:
        """Coerce every field to its annotation and check values; raise `ConfigError` on the first problem."""
        if isinstance(self.scale_rewards, (bool, str)):  # TRL accepts true/false for group/none
            lowered = str(self.scale_rewards).strip().lower()
            self.scale_rewards = {"true": "group", "false": "none"}.get(lowered, self.scale_rewards)
        hints = _type_hints()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name], f.type))
        if isinstance(self.dtype, str):
            self.dtype = _DTYPE_ALIASES.get(self.dtype.lower(), self.dtype.lower())

        for f in dataclasses.fields(self):  # inf passes every range check below and then poisons the weights
            value = getattr(self, f.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    raise ConfigError(f"{f.name} must hold finite numbers (got {value})", f.name)
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise ConfigError("output_dir is empty; set it to a folder for checkpoints and logs, e.g. "
                              "output_dir=runs/my_run", "output_dir")
        _require(self, "seed", 0 <= self.seed < 2**32, "must be in [0, 2**32 - 1] (numpy's seed range)")
        _require(self, "learning_rate", self.learning_rate < 3.4e38, "must be below 3.4e38 (a float32)")

        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _check_choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        _check_choice("lr_scheduler_type", self.lr_scheduler_type, LR_SCHEDULERS)
        _check_choice("optim", self.optim, OPTIMIZERS)
        _check_choice("dtype", self.dtype, DTYPES)

        _require(self, "num_generations", self.num_generations >= 2,
                 "must be >= 2 to compare completions within a group")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                     "max_completion_length", "max_prompt_length", "lora_r"):
            _require(self, name, getattr(self, name) >= 1, "must be >= 1")
        for name in ("generation_batch_size", "steps_per_generation", "save_total_limit", "num_completions_to_print"):
            _require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "must be >= 1 or None")
        _require(self, "num_generations_eval", self.num_generations_eval is None or self.num_generations_eval >= 2,
                 "must be >= 2 or None")
        for name in ("learning_rate", "epsilon", "beta", "weight_decay", "max_grad_norm", "top_k", "warmup_steps"):
            _require(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("temperature", "repetition_penalty", "adam_epsilon", "lora_alpha", "logging_steps",
                     "save_steps"):
            _require(self, name, getattr(self, name) > 0, "must be > 0")
        _require(self, "epsilon_high", self.epsilon_high is None or self.epsilon_high >= 0, "must be >= 0 or None")
        _require(self, "backward_chunk_rows", self.backward_chunk_rows is None or self.backward_chunk_rows >= 0,
                 "must be >= 0 (0 = the whole micro-batch) or None (auto)")
        _require(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        _require(self, "top_entropy_quantile", 0 <= self.top_entropy_quantile <= 1,
                 "must be in [0, 1] (1.0 keeps every token in the loss; the paper uses 0.2)")
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            _require(self, name, getattr(self, name) > 0, "must be > 0 (the sapo gate divides by it)")
        for name in ("vespo_k_pos", "vespo_k_neg", "vespo_lambda_pos", "vespo_lambda_neg"):
            _require(self, name, getattr(self, name) >= 0, "must be >= 0 (the Gamma weight's shape and rate)")
        _require(self, "warmup_ratio", 0 <= self.warmup_ratio <= 1, "must be in [0, 1]")
        _require(self, "lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)")
        _require(self, "max_reward_error_fraction", 0 <= self.max_reward_error_fraction <= 1, "must be in [0, 1]")
        _require(self, "reward_timeout", self.reward_timeout is None or self.reward_timeout > 0, "must be > 0 or None")
        for name in ("adam_beta1", "adam_beta2"):
            _require(self, name, 0 <= getattr(self, name) < 1, "must be in [0, 1)")
        if self.max_steps <= 0:
            _require(self, "num_train_epochs", self.num_train_epochs > 0, "must be > 0 when max_steps is -1")
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio} and warmup_steps={self.warmup_steps} are both set; "
                              "set only one (warmup_steps=0.1 also means 10% of the steps)", "warmup_ratio")
        if self.delta is not None and self.delta <= 1 + self.effective_epsilon_high:
            raise ConfigError(f"delta must be > 1 + epsilon_high = {1 + self.effective_epsilon_high:g} to cap only "
                              f"ratios above the clip range (got {self.delta}); try delta=4 or delta=null", "delta")
        if self.lr_scheduler_type == "cosine_with_min_lr" and not (
                {"min_lr", "min_lr_rate"} & set(self.lr_scheduler_kwargs or {})):
            raise ConfigError("lr_scheduler_type=cosine_with_min_lr needs min_lr or min_lr_rate; set e.g. "
                              "lr_scheduler_kwargs={min_lr_rate: 0.1}", "lr_scheduler_kwargs")
        if self.lr_scheduler_kwargs:
            _check_scheduler_kwargs(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        if self.optim in BITSANDBYTES_OPTIMIZERS and not _module_available("bitsandbytes"):
            raise ConfigError(f"optim={self.optim!r} needs bitsandbytes (pip install bitsandbytes), which is not "
                              "installed; use optim=adamw_torch", "optim")
        self._validate_report_to()
        self._validate_generation_batch()
        self._validate_rewards()
        self._warn_about_loss_pairings()

    def _warn_about_loss_pairings(self) -> None:
        """TRL's warnings about settings that run but do not mean what the papers meant (plus cispo's cap)."""
        level, loss_type = self.importance_sampling_level, self.loss_type
        if level == "sequence" and loss_type in ("bnpo", "dr_grpo", "dapo", "cispo"):
            warnings.warn(f"importance_sampling_level='sequence' with loss_type={loss_type!r} weighs each "
                          "sequence by its length; set loss_type=grpo for GSPO as in the paper", stacklevel=4)
        if loss_type == "luspo" and level != "sequence":
            warnings.warn("loss_type='luspo' is defined with sequence-level importance ratios; set "
                          "importance_sampling_level=sequence as in the paper", stacklevel=4)
        if loss_type == "vespo" and level != "token":
            warnings.warn("loss_type='vespo' computes its own sequence-level weight; keep importance_sampling_level="
                          "token (it then only changes the bias-corrected KL)", stacklevel=4)
        if loss_type == "cispo" and self.effective_epsilon_high < 1:
            warnings.warn(f"loss_type='cispo' caps the importance weight at epsilon_high, here "
                          f"{self.effective_epsilon_high:g} (epsilon_high unset uses epsilon), which scales every "
                          "token down; the ScaleRL paper uses epsilon_high=5.0", stacklevel=4)

    def _validate_report_to(self) -> None:
        requested = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        for name in requested:
            _check_choice("report_to", name, tuple(LOGGERS))
            package = LOGGERS[name]
            if package and not _module_available(package):
                raise ConfigError(f"report_to={name!r} needs {package} (pip install {package}), which is not "
                                  "installed; use report_to=none", "report_to")
        if "none" in requested and len(requested) > 1:
            raise ConfigError(f"report_to={requested} mixes 'none' with loggers; drop 'none'", "report_to")

    def _validate_generation_batch(self) -> None:
        batch, num_generations = self.per_device_train_batch_size, self.num_generations
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ConfigError(f"generation_batch_size={self.generation_batch_size} and steps_per_generation="
                              f"{self.steps_per_generation} are both set; set only one", "generation_batch_size")
        world = self.world_size
        if self.generation_batch_size is not None:
            size = self.generation_batch_size
            if size % (batch * world):
                processes = f" * {world} processes" if world > 1 else ""
                raise ConfigError(f"generation_batch_size={size} must be a multiple of per_device_train_batch_size="
                                  f"{batch}{processes}; set generation_batch_size={_round_up(size, batch * world)}",
                                  "generation_batch_size")
            if world > 1 and (size // world) % num_generations:
                fix = world * _round_up(size // world, math.lcm(batch, num_generations))
                raise ConfigError(f"generation_batch_size={size} gives {size // world} completions per process, not "
                                  f"divisible by num_generations={num_generations}, so a prompt's group would be "
                                  f"split across processes; set generation_batch_size={fix}", "generation_batch_size")
            if size % num_generations:
                fix = _round_up(size, math.lcm(batch, num_generations))
                raise ConfigError(f"generation_batch_size={size} is not divisible by num_generations="
                                  f"{num_generations}, so a prompt's group would be split; set "
                                  f"generation_batch_size={fix}", "generation_batch_size")
            return
        steps = self.effective_steps_per_generation
        size = batch * steps
        if size % num_generations:
            steps_name = "steps_per_generation" if self.steps_per_generation else "gradient_accumulation_steps"
            fixed_batch = _round_up(batch, num_generations // math.gcd(num_generations, steps))
            divisors = [g for g in range(num_generations, 1, -1) if size % g == 0]
            or_fewer = f" or num_generations={divisors[0]}" if divisors else ""
            raise ConfigError(f"the generation batch of {size} completions (per_device_train_batch_size={batch} * "
                              f"{steps_name}={steps}) is not divisible by num_generations={num_generations}, so a "
                              f"prompt's group would be split; set per_device_train_batch_size={fixed_batch}"
                              f"{or_fewer}", "num_generations")

    def _validate_rewards(self) -> None:
        for name, kwargs in self.reward_kwargs.items():
            if not isinstance(kwargs, dict):
                raise ConfigError(f"reward_kwargs[{name!r}] must be a mapping of argument: value (got {kwargs!r})",
                                  "reward_kwargs")
            if self.reward_funcs and name not in self.reward_funcs:
                raise ConfigError(f"reward_kwargs has an entry for {name!r}, which is not in reward_funcs "
                                  f"{self.reward_funcs}; add it there or fix the name", "reward_kwargs")
        if self.reward_funcs and self.reward_weights is not None:
            self.check_reward_weights(len(self.reward_funcs))

    def check_reward_weights(self, num_reward_funcs: int) -> None:
        """Called by the trainer once it knows how many reward functions there are (the Python API passes callables)."""
        if num_reward_funcs < 1:
            raise ConfigError("no reward functions: set reward_funcs (e.g. reward_funcs=[length]) or pass "
                              "reward_funcs= to the trainer", "reward_funcs")
        if self.reward_weights is not None and len(self.reward_weights) != num_reward_funcs:
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} values but there are "
                              f"{num_reward_funcs} reward functions; give one weight per reward function",
                              "reward_weights")

    # ---- derived values

    @property
    def effective_steps_per_generation(self) -> int:
        """Micro-steps per generation round (TRL's resolved steps_per_generation)."""
        if self.steps_per_generation is not None:
            return self.steps_per_generation
        if self.generation_batch_size is not None:
            return self.generation_batch_size // (self.per_device_train_batch_size * self.world_size)
        return self.gradient_accumulation_steps

    @property
    def world_size(self) -> int:
        """Processes training together (torchrun / accelerate launch set WORLD_SIZE); 1 when run plainly."""
        from reasonrl.distributed import env_world_size

        return env_world_size()

    @property
    def generation_batch_size_resolved(self) -> int:
        """Completions generated per generation round over all processes (TRL's resolved generation_batch_size:
        per_device_train_batch_size * world_size * steps_per_generation)."""
        if self.generation_batch_size is not None:
            return self.generation_batch_size
        return self.per_device_train_batch_size * self.world_size * self.effective_steps_per_generation

    @property
    def prompts_per_generation(self) -> int:
        """Distinct prompts per generation round, over all processes."""
        return self.generation_batch_size_resolved // self.num_generations

    @property
    def prompts_per_process(self) -> int:
        """Distinct prompts each process generates for in a round (each keeps whole groups of G)."""
        return self.prompts_per_generation // self.world_size

    @property
    def effective_epsilon_high(self) -> float:
        """Upper clip range actually used: epsilon_high, or epsilon when it is None."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def loggers(self) -> list[str]:
        """report_to as a list without 'none'."""
        requested = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        return [name for name in requested if name != "none"]

    def use_bf16(self) -> bool:
        """bf16 with None resolved: True only on CUDA devices that support bf16."""
        if self.bf16 is not None:
            return self.bf16
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    def num_warmup_steps(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` optimizer steps (as transformers' get_warmup_steps)."""
        if self.warmup_ratio > 0:
            return math.ceil(total_steps * self.warmup_ratio)
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(total_steps * self.warmup_steps)

    # ---- dict / YAML / key=value

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GRPOConfig:
        """Build from a mapping; an unknown key is an error that suggests the nearest field name."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(f"unknown config key {key!r}{_did_you_mean(str(key), names)}", str(key))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GRPOConfig:
        """Load a YAML file of `option: value`, then apply `key=value` overrides (CLI style) on top."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
        except FileNotFoundError:
            raise ConfigError(f"config file '{path}' not found; check the path") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file '{path}': {getattr(error, 'strerror', None) or error}") from None
        try:
            values = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = " ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
            raise ConfigError(f"{where}: invalid YAML: {problem or error}".replace("\n", " ")) from None
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of option: value (got a "
                              f"{type(values).__name__}); see configs/ for examples")
        values = apply_overrides(values, overrides)
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            source = next((o for o in overrides if _override_field(o) == error.field), None)
            prefix = f"override '{source}'" if source else str(path)
            raise ConfigError(f"{prefix}: {error}", error.field) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain {field: value}; `from_dict(cfg.to_dict()) == cfg`."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text, in field order; also written to `path` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """{field name: its docstring}."""
        return {name: doc for name, _, _, doc in describe_fields()}


def apply_overrides(values: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of `values` with `key=value` strings applied; `a.b.c=v` sets a key inside a dict field."""
    result = dict(values)
    names = [f.name for f in dataclasses.fields(GRPOConfig)]
    for override in overrides:
        key, sep, raw = override.partition("=")
        name, path = _override_field(override), key.strip().split(".")[1:]
        if not sep or not name:
            raise ConfigError(f"override {override!r} is not key=value; write e.g. learning_rate=1e-5")
        if name not in names:
            raise ConfigError(f"override {override!r}: unknown config key {name!r}{_did_you_mean(name, names)}", name)
        if not path:
            result[name] = raw
            continue
        current = result.get(name)
        current = _parse_scalar(current) if isinstance(current, str) else current
        if not isinstance(current, (dict, type(None))):
            raise ConfigError(f"override {override!r}: {name} is not a mapping, so it has no key {path[0]!r}", name)
        container = result[name] = dict(current or {})
        for part in path[:-1]:
            if not isinstance(container.get(part) or {}, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a mapping", name)
            container[part] = dict(container.get(part) or {})
            container = container[part]
        container[path[-1]] = _parse_scalar(raw)
    return result


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """[(name, type as written, default, docstring)] for every field, read from the class source with `ast`."""
    return list(_field_rows())


@functools.cache
def _field_rows() -> tuple[tuple[str, str, Any, str], ...]:
    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "GRPOConfig").body
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(following.value.value.split())  # one paragraph; the CLI wraps it
    rows = []
    for f in dataclasses.fields(GRPOConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append((f.name, str(f.type), default, docs.get(f.name, "")))
    return tuple(rows)


# ---- helpers


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML would keep the last value
    silently, and a run would train with a setting its author thinks is something else."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null", "~")


def _override_field(override: str) -> str:
    """The field an override sets: 'reward_kwargs.length.x=1' -> reward_kwargs; '--max-steps=5' -> max_steps."""
    return override.partition("=")[0].strip().lstrip("-").split(".")[0].replace("-", "_")


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(GRPOConfig)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def _did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported{_did_you_mean(str(value), choices)}; choose one of: "
                          f"{', '.join(choices)}", name)


def _check_scheduler_kwargs(scheduler: str, kwargs: dict) -> None:
    """lr_scheduler_kwargs must be options of the schedule's function (transformers passes them on by keyword)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(scheduler)]
    # the optimizer, warmup and total steps come from the trainer
    own = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}
    accepted = [name for name in inspect.signature(function).parameters if name not in own]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes none"
        raise ConfigError(f"lr_scheduler_kwargs has {', '.join(map(repr, unknown))}, which lr_scheduler_type="
                          f"{scheduler} does not take ({takes})", "lr_scheduler_kwargs")


def _require(config: GRPOConfig, name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule} (got {getattr(config, name)!r})", name)


def _parse_scalar(text: str) -> Any:
    """A CLI/YAML scalar: YAML parsing, plus floats PyYAML reads as strings (1e-5)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(name: str, value: Any, hint: Any, type_text: str) -> Any:
    """`value` converted to the annotation `hint`, or a ConfigError naming the field and the expected type."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = list(typing.get_args(hint)) if is_union else [hint]
    if type(None) in options and (value is None or isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    if isinstance(value, str) and (value.strip().startswith("[") or "," in value):
        options.sort(key=lambda option: typing.get_origin(option) is not list)  # "a,b" is a list if one is allowed
    for option in options:
        try:
            return _convert(value, option)
        except (ValueError, TypeError, yaml.YAMLError):
            continue
    raise ConfigError(f"{name} must be {type_text} (got {value!r})", name)


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif hint is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                value = float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        number = float(value.strip() if isinstance(value, str) else value)
        if not math.isnan(number):
            return number
    elif hint is str:
        if isinstance(value, (str, os.PathLike)):  # output_dir=Path(...) from Python
            return os.fspath(value)
    elif origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, (list, tuple)):
            (item_hint,) = typing.get_args(hint) or (Any,)
            return [_convert(item, item_hint) for item in value]
    elif origin is dict or hint is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, dict):
            return dict(value)
    raise TypeError(f"cannot convert {value!r} to {hint}")
