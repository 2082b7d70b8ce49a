"""The pre-flight memory check: one micro-step at the worst case, before the first optimizer step.

A run's memory peaks in the training forward and backward of a micro-batch, and that peak grows with the longest
completion in it. The first rounds of a run often have short completions, so a run that fits at step 1 can run
out of memory at step 120, when a micro-batch first holds per_device_train_batch_size completions of
max_completion_length tokens (trl#2927, #3678). This check runs that micro-batch once before training:
per_device_train_batch_size rows, each the longest prompt of the training data (at most max_prompt_length
tokens) followed by max_completion_length completion tokens, through the same MicroStep the loop uses (the same
chunking, layer checkpointing and loss), with the optimizer's state allocated beside it as after the first step.

It changes nothing training reads: the weights are never stepped (the optimizer's state is stood in for by
tensors of its size, the real optimizer is not touched), the gradients it makes are dropped, the random state
(dropout draws) is restored and the synthetic rows come from their own generator. Out of memory (CUDA's
OutOfMemoryError, or on a CPU a MemoryError or the allocator's RuntimeError) becomes one `OutOfMemory` line naming
the settings to lower. `skip_memory_check` turns it off.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from reasonrl import distributed
from reasonrl.core import StepNormaliser
from reasonrl.cpu import release_freed_memory
from reasonrl.errors import OutOfMemory, reason_of
from reasonrl.rollout import Rollout
from reasonrl.rounds import Batch

logger = logging.getLogger("reasonrl")

# what allocators say when they run out (CUDA's OutOfMemoryError is a RuntimeError with the first of these)
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(text in str(error).lower() for text in OOM_MESSAGES))


def optimizer_state_standin(params: list[torch.Tensor], optim: str) -> list[torch.Tensor]:
    """Tensors as large as the state `optim` keeps for `params` after its first step (allocated and written, so
    that a CPU counts them too): AdamW's two moments; 8-bit AdamW's two one-byte moments (the paged one keeps them
    in pageable memory: none here); Adafactor's row and column factors; nothing for SGD (momentum 0)."""
    standin = []
    for p in params:
        if optim in ("adamw_torch", "adamw_torch_fused"):
            standin += [torch.zeros_like(p), torch.zeros_like(p)]
        elif optim == "adamw_8bit":
            standin.append(torch.zeros(2 * p.numel(), dtype=torch.uint8, device=p.device))
        elif optim == "adafactor":
            shape = (sum(p.shape[-2:]),) if p.dim() >= 2 else p.shape
            standin.append(torch.zeros(shape, dtype=p.dtype, device=p.device))
    return standin


def worst_case_batch(rows: int, prompt_length: int, completion_length: int, vocab_size: int, args,
                     device) -> Batch:
    """`rows` completions of `completion_length` tokens after prompts of `prompt_length`, every token counted;
    random token ids from a generator of their own (the run's random state is not drawn from). The rows share
    prompts as a round's micro-batch at its worst does (a group's G rows are kept together, so a micro-batch holds
    the prompts of the groups it overlaps, each computed once), not one prompt per row, which would overstate the
    prompts' share of the memory G-fold."""
    generator = torch.Generator().manual_seed(0)
    prompt_of_row = worst_case_prompt_rows(rows, args.num_generations)
    distinct = torch.randint(vocab_size, (int(prompt_of_row.max()) + 1, prompt_length), generator=generator)
    prompt_ids = distinct[prompt_of_row].to(device)
    completion_ids = torch.randint(vocab_size, (rows, completion_length), generator=generator).to(device)
    ones = torch.ones(rows, completion_length, dtype=torch.long, device=device)
    rollout = Rollout(prompt_ids, torch.ones_like(prompt_ids), completion_ids, ones, None,
                      torch.ones(rows, dtype=torch.bool, device=device))
    advantages = torch.tensor([1.0, -1.0] * rows, device=device)[:rows]
    reuses_round = args.num_iterations > 1 or args.effective_steps_per_generation > args.gradient_accumulation_steps
    zeros = torch.zeros(rows, completion_length, device=device)
    return Batch(rollout, advantages, ones, zeros if reuses_round else None, zeros if args.beta != 0.0 else None)


def worst_case_prompt_rows(rows: int, group_size: int) -> torch.Tensor:
    """Which prompt each of a micro-batch's `rows` rows has, for the micro-batch that overlaps the most groups of
    `group_size` rows (micro-batches are consecutive slices of group-ordered rows): e.g. 4 rows, G=4: [0, 0, 0, 0];
    4 rows, G=3: [0, 0, 0, 1] (a slice straddling two groups); 2 rows, G=1: [0, 1]."""
    period = math.lcm(rows, group_size) // rows  # micro-batch offsets repeat after this many
    best = None
    for k in range(period):
        groups = (torch.arange(rows) + k * rows) // group_size
        groups = groups - groups[0]
        if best is None or groups[-1] > best[-1]:
            best = groups
    return best


def check_worst_case_memory(micro_step, model, train_model, args, prompt_length: int, vocab_size: int,
                            dist) -> float:
    """Run one worst-case micro-step (module docstring) before the optimizer exists; its seconds (logged), or
    OutOfMemory on every process when any ran out."""
    start = time.perf_counter()
    rows, completion_length = args.per_device_train_batch_size, args.max_completion_length
    device = next(model.parameters()).device
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    failure = None
    standin: list = []
    try:
        model.train()
        standin = optimizer_state_standin(trainable, args.optim)
        batch = worst_case_batch(rows, prompt_length, completion_length, vocab_size, args, device)
        tokens = torch.tensor([float(rows * completion_length)], dtype=torch.float64)
        normaliser = StepNormaliser.of_window(args.loss_type, tokens, tokens * dist.world_size, dist.world_size)
        # no gradient all-reduce under DDP: a process that runs out must not leave the others waiting in it (FSDP
        # gathers weights in the forward anyway)
        with distributed.gradient_sync(train_model, last=False):
            micro_step(batch, torch.arange(rows), normaliser, 0)
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        failure = error
    finally:
        for p in trainable:
            p.grad = None
        micro_step.entropy_coef.discard_step()  # the stand-in's entropy is not the first step's
        del standin
        batch = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "cpu":
            release_freed_memory()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        model.train(was_training)
    if distributed.any_process(failure is not None, dist):
        where = reason_of(failure, 160) if failure is not None else "on another process"
        raise OutOfMemory(f"the pre-flight memory check ran out of memory on one micro-batch at the worst case "
                          f"({rows} completions of {prompt_length} prompt + {completion_length} completion tokens: "
                          f"{where}), so the run would fail on its longest round; lower "
                          f"{_what_to_lower(args, micro_step.plan)} (skip_memory_check=true tries anyway)")
    seconds = time.perf_counter() - start
    logger.info("pre-flight memory check: one micro-step of %d x (%d + %d) tokens fits (%.2f s; "
                "skip_memory_check=true skips it)", rows, prompt_length, completion_length, seconds)
    return seconds


def _what_to_lower(args, plan) -> str:
    """The settings that shrink a micro-step's peak, the likeliest first."""
    lower = [f"per_device_train_batch_size ({args.per_device_train_batch_size})",
             f"max_completion_length ({args.max_completion_length})"]
    if plan.chunked and plan.rows_per_chunk(args.per_device_train_batch_size, args.max_completion_length) > 1:
        lower.append("backward_chunk_rows (e.g. 1)")
    lower.append(f"max_prompt_length ({args.max_prompt_length})")
    switches = []
    if not plan.checkpoint_layers and not (plan.chunked and plan.rows_per_chunk(args.per_device_train_batch_size,
                                                                                 args.max_completion_length) == 1):
        switches.append("gradient_checkpointing=true")
    if not args.use_peft:
        switches.append("use_peft=true (LoRA)")
    text = ", ".join(lower[:-1]) + " or " + lower[-1]
    return text + (f", or set {' or '.join(switches)}" if switches else "")
