"""The optimizer and learning-rate schedule a GRPOConfig names (TrainingArguments' `optim` and `lr_scheduler_type`)."""

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
