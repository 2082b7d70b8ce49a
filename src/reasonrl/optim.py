"""The optimizer and learning-rate schedule a GRPOConfig names (TrainingArguments' `optim` and `lr_scheduler_type`), or
the ones given to the trainer (TRL's `optimizers=(optimizer, scheduler)`)."""

from __future__ import annotations

import torch

from reasonrl.config import ConfigError, GRPOConfig


def make_optimizer(model, args: GRPOConfig):
    """The optimizer over the model's trainable parameters (the LoRA adapter, or every weight)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters: unfreeze it, or set use_peft=true for LoRA")
    if args.optim == "adafactor":
        return torch.optim.Adafactor(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optim == "sgd":
        return torch.optim.SGD(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optim in ("adamw_8bit", "paged_adamw_8bit"):
        # as transformers builds them: bitsandbytes' AdamW with 8-bit states, paged (its states in memory the GPU
        # driver can page out to the CPU under pressure) for paged_adamw_8bit
        import bitsandbytes

        return bitsandbytes.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                        eps=args.adam_epsilon, weight_decay=args.weight_decay, optim_bits=8,
                                        is_paged=args.optim == "paged_adamw_8bit")
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, weight_decay=args.weight_decay,
                             fused=args.optim == "adamw_torch_fused" or None)


def make_scheduler(optimizer, args: GRPOConfig, total_steps: int):
    """transformers' get_scheduler with the config's warmup and kwargs."""
    from transformers import get_scheduler

    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps(total_steps),
                         num_training_steps=total_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)


def optimizer_and_scheduler(model, args: GRPOConfig, total_steps: int, given=(None, None)):
    """TRL's `optimizers=(optimizer, scheduler)`: a given optimizer is used as it is (its parameters must be the
    model's trainable ones), a missing one is built from the config; a missing scheduler is built for the optimizer."""
    optimizer, scheduler = given
    if optimizer is None:
        if scheduler is not None:
            raise ConfigError("optimizers=(None, scheduler): a scheduler steps its own optimizer; pass "
                              "optimizers=(optimizer, scheduler), or (optimizer, None) to get the config's schedule")
        optimizer = make_optimizer(model, args)
    else:
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not trainable & held:
            raise ConfigError("the optimizer given in optimizers= holds none of the model's trainable parameters; "
                              "build it over them (with LoRA, apply get_peft_model yourself and pass the peft model "
                              "instead of peft_config, which wraps the model inside the trainer)")
    if scheduler is None:
        scheduler = make_scheduler(optimizer, args, total_steps)
    return optimizer, scheduler


def check_optimizers(optimizers) -> tuple:
    """The trainer's `optimizers` argument as a pair, or a ConfigError saying what it must be."""
    if not isinstance(optimizers, (tuple, list)) or len(optimizers) != 2:
        raise ConfigError(f"optimizers must be a pair (optimizer, scheduler), either of them None (got "
                          f"{type(optimizers).__name__}); e.g. optimizers=(torch.optim.AdamW(params), None)")
    optimizer, scheduler = optimizers
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizers[0] must be a torch.optim.Optimizer or None (got {type(optimizer).__name__})")
    if scheduler is not None and not hasattr(scheduler, "step"):
        raise ConfigError(f"optimizers[1] must be a learning-rate scheduler (with step()) or None (got "
                          f"{type(scheduler).__name__})")
    return optimizer, scheduler
