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
import functools
import inspect
import itertools
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reasonrl import config_checks, config_parse
from reasonrl.config_checks import (  # noqa: F401 - the choices of each option, imported from here too
    BITSANDBYTES_OPTIMIZERS,
    DTYPES,
    IMPORTANCE_SAMPLING_LEVELS,
    LOGGERS,
    LOSS_TYPES,
    LR_SCHEDULERS,
    OPTIMIZERS,
    SCALE_REWARDS,
)
from reasonrl.errors import ConfigError

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
    """reasonrl: dtype the weights are loaded in: float32, bfloat16, float16 or auto (as saved). As TRL's
    ModelConfig."""
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
    tools: list[str] = field(default_factory=list)
    """reasonrl: tool functions the model may call, as specs 'module:function' or 'path/to/file.py:function' (TRL
    takes them as the trainer's `tools` argument, which reasonrl's trainer takes too). Each needs type hints and a
    docstring (its description for the model); prompts must be conversational and the chat template must render
    tool calls. Tool results join the completion as context, masked out of the loss."""
    max_tool_calling_iterations: int | None = None
    """Maximum number of tool-calling turns when training with tools. If None, there is no limit and generation stops
    when the model writes a turn with no tool call or when the completion reaches max_completion_length."""
    tool_timeout: float | None = 10.0
    """reasonrl: seconds one tool call may take; past it the call's result is an error message (counted in
    tools/failure_frequency and tools/timeouts) and its daemon thread is abandoned. None waits forever (TRL)."""
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
    take. An idle machine keeps all threads. Logged as cpu_threads. False keeps torch's thread count.
    The thread count changes how some CPU ops split their sums, so on a busy machine two runs with the same seed
    (or a run and its resumed copy) can differ in the last bits; set it false for bitwise reproducibility."""
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
            setattr(self, f.name, config_parse.coerce(f.name, getattr(self, f.name), hints[f.name], f.type))
        if isinstance(self.dtype, str):
            self.dtype = _DTYPE_ALIASES.get(self.dtype.lower(), self.dtype.lower())

        config_checks.check(self)

    def check_reward_weights(self, num_reward_funcs: int) -> None:
        """Called by the trainer once it knows how many reward functions there are (the Python API passes callables)."""
        config_checks.check_reward_weights(self, num_reward_funcs)

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

    def total_steps(self, dataset_size: int) -> int:
        """Optimizer steps in a run: max_steps, or those of num_train_epochs passes over `dataset_size` prompts."""
        if self.max_steps > 0:
            return self.max_steps
        steps_per_round = self.num_iterations * self.effective_steps_per_generation // self.gradient_accumulation_steps
        rounds_per_epoch = math.ceil(dataset_size / self.prompts_per_generation)
        return math.ceil(self.num_train_epochs * rounds_per_epoch) * steps_per_round

    def num_warmup_steps(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` optimizer steps (as transformers' get_warmup_steps)."""
        if self.warmup_ratio > 0:
            return math.ceil(total_steps * self.warmup_ratio)
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(total_steps * self.warmup_steps)

    # ---- dict / YAML / key=value

    @classmethod
    def coerce(cls, args) -> GRPOConfig:
        """A trainer's `args`: a GRPOConfig, a dict of its fields, or None (the defaults)."""
        if args is None:
            return cls()
        if isinstance(args, dict):
            return cls.from_dict(args)
        if not isinstance(args, cls):
            raise ConfigError(f"args must be a reasonrl GRPOConfig or a dict of its options (got "
                              f"{type(args).__module__}.{type(args).__name__}); use `from reasonrl import GRPOConfig`")
        return args

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GRPOConfig:
        """Build from a mapping; an unknown key is an error that suggests the nearest field name."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(f"unknown config key {key!r}{config_parse.did_you_mean(str(key), names)}", str(key))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GRPOConfig:
        """Load a YAML file of `option: value`, then apply `key=value` overrides (CLI style) on top."""
        path = Path(path)
        values = config_parse.read_yaml(path)
        values = apply_overrides(values, overrides)
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            source = next((o for o in overrides if config_parse.override_field(o) == error.field), None)
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
    return config_parse.apply_overrides(values, overrides, [f.name for f in dataclasses.fields(GRPOConfig)])


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


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(GRPOConfig)
