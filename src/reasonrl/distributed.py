"""Data-parallel GRPO on torch.distributed: process group from the launcher's environment, and the few collectives
the trainer needs.

`torchrun` and `accelerate launch` both start one process per device and set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `setup()` reads them (gloo on CPU, nccl on CUDA with device cuda:LOCAL_RANK). With
WORLD_SIZE unset or 1 every helper here is a no-op, so the single-process trainer pays nothing.

How a round is split (TRL's convention: per_device_train_batch_size is per process): every process draws the same
global list of prompts from the same seeded sampler and keeps its own contiguous slice; each prompt's G completions
stay on one process. Rewards are gathered, so advantages (also scale_rewards=batch) and the logged metrics are the
global ones. Gradients are averaged by DistributedDataParallel; the trainer scales each process's loss so that the
average equals the single-process gradient of the same global batch (see core.losses.micro_batch_divisors).

With fsdp=full_shard the model is sharded instead (fsdp.py): FSDP2 averages the gradients in its reduce-scatter,
so the same loss scaling holds; `wrap`, `gradient_sync`, `clip_grad_norm_` and `full_weights` are the seams where
the two modes differ, decided once by the DistributedState.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from reasonrl.errors import ConfigError


@dataclass(frozen=True)
class DistributedState:
    """Where this process sits in the job: rank 0 of 1 when not launched by torchrun or accelerate."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fsdp: bool = False  # the model is sharded (fsdp.py), also with one process; else DDP when world_size > 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, completions, progress bars and checkpoints."""
        return self.rank == 0


def env_world_size() -> int:
    """Processes in the job: torch.distributed's count once initialised, else the launcher's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup(fsdp: bool = False) -> DistributedState:
    """Initialise the default process group from the environment when WORLD_SIZE > 1, or with `fsdp` under a
    launcher of one process (idempotent).

    fsdp without a launcher is refused, as transformers' Trainer does ("fsdp only works in distributed training"):
    `torchrun --nproc_per_node 1` runs one shard."""
    world_size = env_world_size()
    cuda = torch.cuda.is_available()
    launched = "RANK" in os.environ or (dist.is_available() and dist.is_initialized())
    if not fsdp and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":  # accelerate's FSDP config
        raise ConfigError("accelerate launch was configured for FSDP (ACCELERATE_USE_FSDP=true), which reasonrl does "
                          "not read from accelerate's config; set fsdp=full_shard in reasonrl's config, or launch "
                          "with a non-FSDP accelerate config for DDP", "fsdp")
    if fsdp and not launched:

        raise ConfigError("fsdp=full_shard shards the model over the processes of a launched job, and this process "
                          "was not started by a launcher; run `torchrun --nproc_per_node N -m reasonrl train ...` "
                          "(N=1 runs one shard), or unset fsdp", "fsdp")
    if world_size <= 1 and not fsdp:
        return DistributedState(device=torch.device("cuda" if cuda else "cpu"))
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; start multi-process runs with "
                          f"`torchrun --nproc_per_node N -m reasonrl train ...` or `accelerate launch -m reasonrl "
                          f"train ...`, or unset WORLD_SIZE")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return DistributedState(dist.get_rank(), dist.get_world_size(), local_rank, device, fsdp)


def cleanup() -> None:
    """Destroy the process group this module started (the end of a CLI run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, state: DistributedState, reshard_after_forward: bool = True) -> torch.nn.Module:
    """The training forward's model: `model` sharded in place under fsdp (fsdp.shard), DistributedDataParallel
    around it when there are several processes, else `model` itself.

    Frozen parameters (LoRA's base weights) get no gradient buckets. broadcast_buffers=False: the buffers (rotary
    frequencies) are constants, and syncing them at every forward would need every rank to run the same number of
    forwards.
    """
    if state.fsdp:
        from reasonrl import fsdp

        return fsdp.shard(model, reshard_after_forward)
    if not state.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [state.local_rank] if state.device.type == "cuda" else None
    # torch >= 2.13 names the option forward_sync_buffers (and deprecates broadcast_buffers)
    keyword = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=device_ids, **{keyword: False})


def shard_frozen(model: torch.nn.Module | None, state: DistributedState) -> torch.nn.Module | None:
    """The frozen reference copy of full fine-tuning: sharded like the policy under fsdp (its memory at rest then
    1/world_size; `full_weights` gathers it for its log-probs), else as it is (DDP keeps a copy per process)."""
    if model is None or not state.fsdp:
        return model
    from reasonrl import fsdp

    return fsdp.shard(model)


def gradient_sync(train_model: torch.nn.Module, last: bool):
    """The context of one micro-batch's backward: DDP all-reduces only on the optimizer step's last micro-batch
    (no_sync before it); FSDP2 reduce-scatters every micro-batch, so that the accumulated gradient stays sharded."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(train_model, DistributedDataParallel) and not last:
        return train_model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm_(parameters: list[torch.Tensor], max_norm: float, state: DistributedState) -> float:
    """The gradient norm over all processes, the gradients clipped to max_norm (DDP's are replicated already;
    sharded ones need the norm of every process's shards: fsdp.clip_grad_norm_)."""
    if state.fsdp:
        from reasonrl import fsdp

        return fsdp.clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm).item()


def full_weights(state: DistributedState, *models):
    """Within: the models' whole weights on every process (fsdp.full_weights), for forwards that differ by process
    (generation) or that call the model directly; nothing to do without fsdp."""
    if not state.fsdp:
        return contextlib.nullcontext()
    from reasonrl import fsdp

    return fsdp.full_weights(*models)


def shard(total: int, state: DistributedState) -> slice:
    """This process's contiguous slice of `total` items (a multiple of the world size): rank r takes the r-th part."""
    if total % state.world_size:
        raise ValueError(f"cannot split {total} items evenly over {state.world_size} processes")
    size = total // state.world_size
    return slice(state.rank * size, (state.rank + 1) * size)


def all_reduce_sum(tensor: torch.Tensor, state: DistributedState) -> torch.Tensor:
    """Sum over processes, in place and returned (the tensor must live on state.device)."""
    if state.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor, state: DistributedState) -> torch.Tensor:
    """Concatenate every process's tensor along dim 0, in rank order (every process holds the same shape)."""
    if not state.enabled:
        return tensor
    local = tensor.to(state.device).contiguous()
    pieces = [torch.empty_like(local) for _ in range(state.world_size)]
    dist.all_gather(pieces, local)
    return torch.cat(pieces).to(tensor.device)


def all_gather_varlen(tensor: torch.Tensor, state: DistributedState) -> torch.Tensor:
    """Concatenate every process's 1-D tensor, in rank order, when their lengths differ (e.g. each process's loss
    tokens): the lengths are gathered first, and each piece is padded to the longest for all_gather."""
    if not state.enabled:
        return tensor
    local = tensor.to(state.device).contiguous()
    lengths = all_gather_rows(torch.tensor([local.numel()], device=state.device), state).tolist()
    padded = torch.zeros(max(lengths), dtype=local.dtype, device=state.device)
    padded[: local.numel()] = local
    pieces = [torch.empty_like(padded) for _ in range(state.world_size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:length] for piece, length in zip(pieces, lengths)]).to(tensor.device)


def gather_scores(scores, state: DistributedState):
    """A round's scoring.RoundScores over all processes: rewards of every rank's rows in rank order, summed error
    counts (the failures, with their tracebacks, stay local: each process logs its own)."""
    if not state.enabled:
        return scores
    import dataclasses

    names = list(scores.errors)
    errors = torch.tensor([float(scores.errors[name]) for name in names], dtype=torch.float64, device=state.device)
    all_reduce_sum(errors, state)
    # what the rewards logged: metrics summed (sum, count) over processes; columns in rank order, None-filled on
    # a process whose rewards did not log that column (as TRL)
    logged = gather_objects((scores.logged_metrics, scores.logged_columns, scores.rewards_per_func.size(0)), state)
    metrics, columns = {}, {}
    for part_metrics, _, _ in logged:
        for name, (total, count) in part_metrics.items():
            metrics[name] = (metrics.get(name, (0.0, 0))[0] + total, metrics.get(name, (0.0, 0))[1] + count)
    for column in sorted({column for _, part_columns, _ in logged for column in part_columns}):
        columns[column] = [value for _, part_columns, rows in logged
                           for value in part_columns.get(column, [None] * rows)]
    return dataclasses.replace(scores, rewards_per_func=all_gather_rows(scores.rewards_per_func, state),
                               errors={name: int(count) for name, count in zip(names, errors.tolist())},
                               logged_metrics=metrics, logged_columns=columns)


def gather_objects(value, state: DistributedState) -> list:
    """[value of rank 0, value of rank 1, ...] on every process (picklable values)."""
    if not state.enabled:
        return [value]
    gathered = [None] * state.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_processes(values: dict[str, float], state: DistributedState) -> dict[str, float]:
    """The mean over processes of each value (one all-reduce for the whole dict; same keys on every process)."""
    if not state.enabled or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=state.device)
    all_reduce_sum(packed, state)
    return {key: value / state.world_size for key, value in zip(keys, packed.tolist())}


def any_process(flag: bool, state: DistributedState) -> bool:
    """True on every process when it is True on any: keeps stop decisions (signals) in step across ranks."""
    if not state.enabled:
        return flag
    packed = torch.tensor([1.0 if flag else 0.0], device=state.device)
    return bool(all_reduce_sum(packed, state).item() > 0)


def barrier(state: DistributedState) -> None:
    if state.enabled:
        dist.barrier()


def prompt_seeds(seed: int, first_draw: int, count: int) -> list[int]:
    """One sampling seed per prompt of a round, from the run's seed and the prompt's global draw number.

    The draw number counts prompts taken from the sampler since the start of training (epoch * size + position),
    so a prompt's G samples are the same whichever process, batch or world size draws it, and after a resume.
    """
    # a multiplicative hash keeps neighbouring draws of neighbouring seeds apart; mod 2**63 fits manual_seed
    return [(seed * 0x9E3779B97F4A7C15 + draw * 0xBF58476D1CE4E5B9) % (2 ** 63)
            for draw in range(first_draw, first_draw + count)]
