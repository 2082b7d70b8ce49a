"""The rules a GRPOConfig's values must follow, each broken one a one-line ConfigError naming the option and how to
fix it (config.py coerces the types first, then calls `check`). The choices each option allows are listed here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
from typing import Any

from reasonrl.config_parse import did_you_mean
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
# report_to value -> the package it needs
LOGGERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
DTYPES = ("auto", "float32", "bfloat16", "float16")
EVAL_STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = ("no", "steps", "epoch")
TOOL_ISOLATIONS = ("thread", "process")
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
VLLM_MODES = ("colocate", "server")
VLLM_MODEL_IMPLS = ("vllm", "transformers")
VLLM_IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def check(config) -> None:
    """Every rule on a config whose fields hold their annotated types; ConfigError on the first broken one."""
    for f in dataclasses.fields(config):  # inf passes every range check below and then poisons the weights
        value = getattr(config, f.name)
        for number in value if isinstance(value, list) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"{f.name} must hold finite numbers (got {value})", f.name)
    if not isinstance(config.output_dir, str) or not config.output_dir.strip():
        raise ConfigError("output_dir is empty; set it to a folder for checkpoints and logs, e.g. "
                          "output_dir=runs/my_run", "output_dir")
    _require(config, "seed", 0 <= config.seed < 2**32, "must be in [0, 2**32 - 1] (numpy's seed range)")
    _require(config, "learning_rate", config.learning_rate < 3.4e38, "must be below 3.4e38 (a float32)")

    _check_choice("loss_type", config.loss_type, LOSS_TYPES)
    _check_choice("scale_rewards", config.scale_rewards, SCALE_REWARDS)
    _check_choice("importance_sampling_level", config.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    _check_choice("lr_scheduler_type", config.lr_scheduler_type, LR_SCHEDULERS)
    _check_choice("optim", config.optim, OPTIMIZERS)
    _check_choice("tool_isolation", config.tool_isolation, TOOL_ISOLATIONS)
    _check_choice("dtype", config.dtype, DTYPES)
    _check_choice("eval_strategy", config.eval_strategy, EVAL_STRATEGIES)
    _check_choice("save_strategy", config.save_strategy, SAVE_STRATEGIES)
    _check_choice("multi_objective_aggregation", config.multi_objective_aggregation, MULTI_OBJECTIVE_AGGREGATIONS)
    _check_trl_compatibility_options(config)

    _require(config, "num_generations", config.num_generations >= 2,
             "must be >= 2 to compare completions within a group")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                 "max_completion_length", "max_prompt_length", "lora_r", "per_device_eval_batch_size"):
        _require(config, name, getattr(config, name) >= 1, "must be >= 1")
    for name in ("generation_batch_size", "steps_per_generation", "save_total_limit", "num_completions_to_print"):
        _require(config, name, getattr(config, name) is None or getattr(config, name) >= 1, "must be >= 1 or None")
    _require(config, "num_generations_eval", config.num_generations_eval is None or config.num_generations_eval >= 1,
             "must be >= 1 or None (num_generations)")
    for name in ("learning_rate", "epsilon", "beta", "weight_decay", "max_grad_norm", "top_k", "warmup_steps"):
        _require(config, name, getattr(config, name) >= 0, "must be >= 0")
    for name in ("temperature", "repetition_penalty", "adam_epsilon", "lora_alpha", "logging_steps",
                 "save_steps"):
        _require(config, name, getattr(config, name) > 0, "must be > 0")
    _require(config, "epsilon_high", config.epsilon_high is None or config.epsilon_high >= 0, "must be >= 0 or None")
    _require(config, "backward_chunk_rows", config.backward_chunk_rows is None or config.backward_chunk_rows >= 0,
             "must be >= 0 (0 = the whole micro-batch) or None (auto)")
    _require(config, "top_p", 0 < config.top_p <= 1, "must be in (0, 1]")
    _require(config, "max_num_gen_batches", config.max_num_gen_batches >= 1,
             "must be >= 1 (generation batches a round may draw with dynamic_sampling, the first included)")
    _require(config, "top_entropy_quantile", 0 <= config.top_entropy_quantile <= 1,
             "must be in [0, 1] (1.0 keeps every token in the loss; the paper uses 0.2)")
    for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
        _require(config, name, getattr(config, name) > 0, "must be > 0 (the sapo gate divides by it)")
    for name in ("vespo_k_pos", "vespo_k_neg", "vespo_lambda_pos", "vespo_lambda_neg"):
        _require(config, name, getattr(config, name) >= 0, "must be >= 0 (the Gamma weight's shape and rate)")
    _require(config, "warmup_ratio", 0 <= config.warmup_ratio <= 1, "must be in [0, 1]")
    _require(config, "lora_dropout", 0 <= config.lora_dropout < 1, "must be in [0, 1)")
    _require(config, "max_reward_error_fraction", 0 <= config.max_reward_error_fraction <= 1, "must be in [0, 1]")
    _require(config, "reward_timeout", config.reward_timeout is None or config.reward_timeout > 0,
             "must be > 0 or None")
    _require(config, "tool_timeout", config.tool_timeout is None or config.tool_timeout > 0, "must be > 0 or None")
    _require(config, "max_tool_calling_iterations",
             config.max_tool_calling_iterations is None or config.max_tool_calling_iterations >= 0,
             "must be >= 0 or None (no limit)")
    for name in ("adam_beta1", "adam_beta2"):
        _require(config, name, 0 <= getattr(config, name) < 1, "must be in [0, 1)")
    if config.max_steps <= 0:
        _require(config, "num_train_epochs", config.num_train_epochs > 0, "must be > 0 when max_steps is -1")
    if config.warmup_ratio > 0 and config.warmup_steps > 0:
        raise ConfigError(f"warmup_ratio={config.warmup_ratio} and warmup_steps={config.warmup_steps} are both set; "
                          "set only one (warmup_steps=0.1 also means 10% of the steps)", "warmup_ratio")
    if config.delta is not None and config.delta <= 1 + config.effective_epsilon_high:
        raise ConfigError(f"delta must be > 1 + epsilon_high = {1 + config.effective_epsilon_high:g} to cap only "
                          f"ratios above the clip range (got {config.delta}); try delta=4 or delta=null", "delta")
    if config.lr_scheduler_type == "cosine_with_min_lr" and not (
            {"min_lr", "min_lr_rate"} & set(config.lr_scheduler_kwargs or {})):
        raise ConfigError("lr_scheduler_type=cosine_with_min_lr needs min_lr or min_lr_rate; set e.g. "
                          "lr_scheduler_kwargs={min_lr_rate: 0.1}", "lr_scheduler_kwargs")
    if config.lr_scheduler_kwargs:
        _check_scheduler_kwargs(config.lr_scheduler_type, config.lr_scheduler_kwargs)
    if config.optim in BITSANDBYTES_OPTIMIZERS and not _module_available("bitsandbytes"):
        raise ConfigError(f"optim={config.optim!r} needs bitsandbytes (pip install bitsandbytes), which is not "
                          "installed; use optim=adamw_torch", "optim")
    _require(config, "min_p", config.min_p is None or 0 <= config.min_p <= 1, "must be in [0, 1] or None")
    if config.prompt_template is not None and "{prompt}" not in config.prompt_template:
        raise ConfigError(f"prompt_template must contain {{prompt}} where the prompt goes (got "
                          f"{config.prompt_template!r:.80})", "prompt_template")
    _check_generation_kwargs(config.generation_kwargs or {})
    _check_fsdp(config)
    if config.dataset_streaming and config.max_steps <= 0:
        raise ConfigError("dataset_streaming=true reads a stream of unknown length, so num_train_epochs cannot say "
                          "when to stop; set max_steps (e.g. max_steps=1000)", "max_steps")
    _check_step_intervals(config)
    _check_report_to(config)
    _check_generation_batch(config)
    _check_rewards(config)
    _check_vllm(config)


def _check_trl_compatibility_options(config) -> None:
    """TRL options reasonrl takes with a narrower meaning (use_liger_kernel, pad_to_multiple_of, ...) or that need
    another option (sync_ref_model)."""
    if config.use_liger_kernel:
        raise ConfigError("use_liger_kernel=true: reasonrl has no liger-kernel loss (its log-probs already avoid a "
                          "float32 copy of the logits); set use_liger_kernel=false", "use_liger_kernel")
    pad = config.pad_to_multiple_of
    _require(config, "pad_to_multiple_of", pad is None or pad == "auto" or (isinstance(pad, int) and pad >= 1),
             "must be an int >= 1, 'auto' or None")
    _require(config, "dataloader_num_workers", config.dataloader_num_workers >= 0, "must be >= 0")
    _require(config, "off_policy_mask_threshold",
             config.off_policy_mask_threshold is None or config.off_policy_mask_threshold >= 0, "must be >= 0 or None")
    for name in ("entropy_coef_min", "entropy_coef_delta", "entropy_target"):
        _require(config, name, getattr(config, name) >= 0, "must be >= 0")
    _require(config, "entropy_coef_max", config.entropy_coef_max >= config.entropy_coef_min,
             "must be >= entropy_coef_min")
    _require(config, "ref_model_mixup_alpha", 0 <= config.ref_model_mixup_alpha <= 1, "must be in [0, 1]")
    _require(config, "ref_model_sync_steps", config.ref_model_sync_steps >= 1, "must be >= 1")
    if config.multi_objective_aggregation == "normalize_then_sum" and config.dynamic_sampling:
        raise ConfigError("dynamic_sampling with multi_objective_aggregation=normalize_then_sum: dynamic sampling "
                          "recomputes the advantages of the groups it keeps from the summed reward; use "
                          "sum_then_normalize or dynamic_sampling=false", "multi_objective_aggregation")
    if config.sync_ref_model and config.beta == 0.0:
        raise ConfigError("sync_ref_model=true with beta=0: there is no reference policy to move; set beta > 0 "
                          "(e.g. beta=0.04) or sync_ref_model=false", "sync_ref_model")


def _check_vllm(config) -> None:
    """The vLLM options (TRL's rules on them), and what reasonrl's vLLM rollouts do not cover yet."""
    _check_choice("vllm_mode", config.vllm_mode, VLLM_MODES)
    _check_choice("vllm_model_impl", config.vllm_model_impl, VLLM_MODEL_IMPLS)
    _check_choice("vllm_importance_sampling_mode", config.vllm_importance_sampling_mode,
                  VLLM_IMPORTANCE_SAMPLING_MODES)
    _require(config, "vllm_gpu_memory_utilization", 0 < config.vllm_gpu_memory_utilization <= 1, "must be in (0, 1]")
    _require(config, "vllm_max_model_length", config.vllm_max_model_length is None or config.vllm_max_model_length >= 1,
             "must be >= 1 or None")
    low, high = config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max
    if low is not None and high is not None and low >= high:
        raise ConfigError(f"vllm_importance_sampling_clip_min ({low}) must be less than "
                          f"vllm_importance_sampling_clip_max ({high})", "vllm_importance_sampling_clip_min")
    truncate = config.vllm_importance_sampling_mode.endswith("_truncate")
    if config.vllm_importance_sampling_correction and truncate and low is None and high is None:
        raise ConfigError(f"vllm_importance_sampling_mode={config.vllm_importance_sampling_mode} needs a bound; set "
                          "vllm_importance_sampling_clip_max (e.g. 3.0) or vllm_importance_sampling_clip_min",
                          "vllm_importance_sampling_clip_max")
    _require(config, "vllm_server_timeout", config.vllm_server_timeout > 0, "must be > 0 (seconds)")
    _require(config, "vllm_server_port", 1 <= config.vllm_server_port <= 65535, "must be a TCP port (1-65535)")
    if config.vllm_server_base_url is not None and not config.vllm_server_base_url.startswith(("http://", "https://")):
        raise ConfigError(f"vllm_server_base_url={config.vllm_server_base_url!r} is not an http(s) URL; give e.g. "
                          f"http://127.0.0.1:8000", "vllm_server_base_url")
    if not config.use_vllm:
        return
    _require(config, "vllm_tensor_parallel_size", config.vllm_tensor_parallel_size == 1,
             "must be 1 (reasonrl's colocated engine is not split over devices)")
    if config.world_size > 1 and config.vllm_mode == "colocate":
        raise ConfigError(f"use_vllm=true with vllm_mode=colocate runs in one process for now (WORLD_SIZE="
                          f"{config.world_size}); use vllm_mode=server (reasonrl vllm-serve), train with one process "
                          f"or set use_vllm=false", "use_vllm")
    if config.fsdp and config.vllm_mode == "server":
        raise ConfigError("use_vllm=true vllm_mode=server with fsdp is not supported yet (rank 0 sends its whole "
                          "copy of the weights); train with DDP (no fsdp) or set use_vllm=false", "fsdp")
    if "suppress_tokens" in (config.generation_kwargs or {}):
        raise ConfigError("generation_kwargs suppress_tokens is not supported with use_vllm=true; remove it or set "
                          "use_vllm=false", "generation_kwargs")
    if config.tools or config.rollout_func or config.environment_factory:
        given = "tools" if config.tools else "rollout_func" if config.rollout_func else "environment_factory"
        raise ConfigError(f"use_vllm=true with {given} is not supported yet (vLLM samples single-turn completions); "
                          f"set use_vllm=false", "use_vllm")
    if (config.loss_type == "vespo" and config.vllm_importance_sampling_correction
            and config.vllm_importance_sampling_mode not in ("token_truncate", "token_mask")):
        raise ConfigError(f"loss_type=vespo with vLLM's importance sampling correction needs "
                          f"vllm_importance_sampling_mode token_truncate or token_mask (got "
                          f"{config.vllm_importance_sampling_mode}), as in TRL", "vllm_importance_sampling_mode")
    if config.vllm_mode == "colocate":  # a server runs vLLM in its own environment; the trainer needs only HTTP
        from reasonrl.vllm_engine import check_vllm_installed

        check_vllm_installed()


def warn_about_loss_pairings(config, warn) -> None:
    """TRL's warnings about settings that run but do not mean what the papers meant (plus cispo's cap), given to
    `warn` (the trainer's logger.warning: TRL logs them when the trainer is built)."""
    level, loss_type = config.importance_sampling_level, config.loss_type
    if level == "sequence" and loss_type in ("bnpo", "dr_grpo", "dapo", "cispo"):
        warn(f"importance_sampling_level='sequence' with loss_type={loss_type!r} sums per-token contributions, which "
             "weights each sequence by its completion length; set loss_type=grpo for GSPO as in the paper")
    if loss_type == "luspo" and level != "sequence":
        warn("loss_type='luspo' is defined with sequence-level importance ratios; set "
             "importance_sampling_level=sequence as in the paper")
    if loss_type == "vespo" and level != "token":
        warn("loss_type='vespo' computes its own sequence-level weight; keep importance_sampling_level="
             "token (it then only changes the bias-corrected KL)")
    if loss_type == "cispo" and config.effective_epsilon_high < 1:
        warn(f"loss_type='cispo' caps the importance weight at epsilon_high, here {config.effective_epsilon_high:g} "
             "(epsilon_high unset uses epsilon), which scales every token down; the ScaleRL paper uses "
             "epsilon_high=5.0")


# generation_kwargs key -> (rule on its value, the rule in words); rollout.SAMPLING_KEYS lists the same keys
_SAMPLING_RULES = {
    "temperature": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "min_p": (lambda v: v is None or _is_number(v) and 0 <= v <= 1, "a number in [0, 1] or null"),
    "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "suppress_tokens": (lambda v: isinstance(v, list) and all(isinstance(t, int) and t >= 0 for t in v),
                        "a list of token ids"),
    "do_sample": (lambda v: isinstance(v, bool), "true or false"),
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_generation_kwargs(kwargs: dict) -> None:
    _check_keyed_options(kwargs, _SAMPLING_RULES, "generation_kwargs", "reasonrl's sampler")


def _check_keyed_options(options: dict, rules: dict, name: str, owner: str) -> None:
    """Each key of the mapping option `name` is one of `rules` ({key: (rule, words)}) and its value passes the rule."""
    for key, value in options.items():
        if key not in rules:
            raise ConfigError(f"{name} has {key!r}, which {owner} does not support (it honours: "
                              f"{', '.join(rules)}); remove it", name)
        rule, words = rules[key]
        if not rule(value):
            raise ConfigError(f"{name}[{key!r}] must be {words} (got {value!r})", name)
def _check_step_intervals(config) -> None:
    """TrainingArguments' rules for logging_steps, eval_steps and save_steps, and the eval batch's groups."""
    _require(config, "eval_steps", config.eval_steps is None or config.eval_steps > 0,
             "must be > 0, or None to use logging_steps")
    for name in ("logging_steps", "eval_steps", "save_steps"):
        every = getattr(config, name)
        if every is not None and every > 1 and every != int(every):
            raise ConfigError(f"{name} must be a whole number of steps when above 1, or a fraction of all steps in "
                              f"(0, 1) (got {every}); try {name}={math.ceil(every)}", name)
    if config.eval_strategy != "no":
        generations = config.num_generations_eval or config.num_generations
        world = config.world_size
        if (config.per_device_eval_batch_size * world) % generations:
            processes = f" x {world} processes" if world > 1 else ""
            fixed = _round_up(config.per_device_eval_batch_size, generations // math.gcd(generations, world))
            raise ConfigError(f"per_device_eval_batch_size={config.per_device_eval_batch_size}{processes} is not a "
                              f"multiple of num_generations_eval={generations} (the completions of an evaluation "
                              f"prompt are generated together); set per_device_eval_batch_size={fixed}",
                              "per_device_eval_batch_size")


FSDP_WORDS = ("full_shard", "auto_wrap")  # fsdp's words (transformers' FSDPOption values) reasonrl runs
# fsdp_config key -> (rule on its value, the rule in words)
FSDP_CONFIG_RULES = {
    "reshard_after_forward": (lambda v: isinstance(v, bool), "true or false"),
    "version": (lambda v: v == 2 or v == "2", "2 (FSDP2; FSDP1 is not supported)"),
    "state_dict_type": (lambda v: v == "FULL_STATE_DICT",
                        "FULL_STATE_DICT (checkpoints hold full weights; sharded ones are not supported)"),
}


def fsdp_options(fsdp_config: dict | None) -> dict:
    """fsdp_config with transformers' `fsdp_` prefix dropped from its keys, and true/false strings as booleans."""
    options = {}
    for key, value in (fsdp_config or {}).items():
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        options[key.removeprefix("fsdp_")] = value
    return options


def _check_fsdp(config) -> None:
    """fsdp's value, fsdp_config's keys, and the options FSDP2 cannot run with."""
    if config.fsdp_config is not None and not isinstance(config.fsdp_config, dict):
        raise ConfigError(f"fsdp_config must be a mapping of option: value (got {config.fsdp_config!r:.80})",
                          "fsdp_config")
    if not config.fsdp:
        if config.fsdp_config:
            raise ConfigError("fsdp_config is set but fsdp is not, so nothing would use it; set fsdp=full_shard or "
                              "remove fsdp_config", "fsdp_config")
        return
    unsupported = [word for word in config.fsdp.split() if word not in FSDP_WORDS]
    if unsupported or not config.fsdp.split():
        raise ConfigError(f"fsdp={config.fsdp!r}: {' '.join(unsupported) or 'this value'} is not supported "
                          f"(reasonrl's FSDP2 shards parameters, gradients and optimizer state: fsdp=full_shard, "
                          f"optionally with auto_wrap); set fsdp=full_shard, or leave fsdp unset for none", "fsdp")
    options = fsdp_options(config.fsdp_config)
    if "activation_checkpointing" in options:
        raise ConfigError("fsdp_config has activation_checkpointing; reasonrl recomputes layers with its own "
                          "option: remove it and set gradient_checkpointing=true", "fsdp_config")
    _check_keyed_options(options, FSDP_CONFIG_RULES, "fsdp_config", "reasonrl's FSDP2")
    # options that need the whole weights in every process, or a parameter layout FSDP2's groups cannot hold
    if config.optim in BITSANDBYTES_OPTIMIZERS:
        raise ConfigError(f"optim={config.optim!r} with fsdp: bitsandbytes' optimizers do not step sharded (DTensor) "
                          f"parameters; use optim=adamw_torch, or train without fsdp", "optim")
    if config.cast_lm_head_to_fp32:
        raise ConfigError("cast_lm_head_to_fp32=true with fsdp: a float32 output layer among bf16 weights breaks "
                          "FSDP2's rule of one dtype per shard group; set cast_lm_head_to_fp32=false or train "
                          "without fsdp", "cast_lm_head_to_fp32")
    if config.dynamic_sampling:
        raise ConfigError("dynamic_sampling with fsdp: dynamic sampling runs in one process or under DDP, not with "
                          "sharded processes yet; unset fsdp (DDP) or set dynamic_sampling=false", "dynamic_sampling")


def _check_report_to(config) -> None:
    requested = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    for name in requested:
        _check_choice("report_to", name, tuple(LOGGERS))
        package = LOGGERS[name]
        if package and not _module_available(package):
            raise ConfigError(f"report_to={name!r} needs {package} (pip install {package}), which is not "
                              "installed; use report_to=none", "report_to")
    if "none" in requested and len(requested) > 1:
        raise ConfigError(f"report_to={requested} mixes 'none' with loggers; drop 'none'", "report_to")


def _check_generation_batch(config) -> None:
    batch, num_generations = config.per_device_train_batch_size, config.num_generations
    if config.generation_batch_size is not None and config.steps_per_generation is not None:
        raise ConfigError(f"generation_batch_size={config.generation_batch_size} and steps_per_generation="
                          f"{config.steps_per_generation} are both set; set only one", "generation_batch_size")
    world = config.world_size
    if config.generation_batch_size is not None:
        size = config.generation_batch_size
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
    steps = config.effective_steps_per_generation
    size = batch * steps
    if size % num_generations:
        steps_name = "steps_per_generation" if config.steps_per_generation else "gradient_accumulation_steps"
        fixed_batch = _round_up(batch, num_generations // math.gcd(num_generations, steps))
        divisors = [g for g in range(num_generations, 1, -1) if size % g == 0]
        or_fewer = f" or num_generations={divisors[0]}" if divisors else ""
        raise ConfigError(f"the generation batch of {size} completions (per_device_train_batch_size={batch} * "
                          f"{steps_name}={steps}) is not divisible by num_generations={num_generations}, so a "
                          f"prompt's group would be split; set per_device_train_batch_size={fixed_batch}"
                          f"{or_fewer}", "num_generations")


def _check_rewards(config) -> None:
    for name, kwargs in config.reward_kwargs.items():
        if not isinstance(kwargs, dict):
            raise ConfigError(f"reward_kwargs[{name!r}] must be a mapping of argument: value (got {kwargs!r})",
                              "reward_kwargs")
        if config.reward_funcs and name not in config.reward_funcs:
            raise ConfigError(f"reward_kwargs has an entry for {name!r}, which is not in reward_funcs "
                              f"{config.reward_funcs}; add it there or fix the name", "reward_kwargs")
    if config.reward_funcs and config.reward_weights is not None:
        check_reward_weights(config, len(config.reward_funcs))


def check_reward_weights(config, num_reward_funcs: int) -> None:
    """Called by the trainer once it knows how many reward functions there are (the Python API passes callables)."""
    if num_reward_funcs < 1:
        raise ConfigError("no reward functions: set reward_funcs (e.g. reward_funcs=[length]) or pass "
                          "reward_funcs= to the trainer", "reward_funcs")
    if config.reward_weights is not None and len(config.reward_weights) != num_reward_funcs:
        raise ConfigError(f"reward_weights has {len(config.reward_weights)} values but there are "
                          f"{num_reward_funcs} reward functions; give one weight per reward function",
                          "reward_weights")


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported{did_you_mean(str(value), choices)}; choose one of: "
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


def _require(config, name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule} (got {getattr(config, name)!r})", name)


