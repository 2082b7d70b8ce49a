"""FSDP2 sharding (`fsdp=full_shard`): torch.distributed.fsdp.fully_shard over the processes of a launch.

What a process holds: 1/world_size of every weight, gradient and optimizer state (DTensors sharded on dim 0). Each
decoder layer is its own shard group, then the root (embeddings, final norm, output layer): a layer's weights are
all-gathered just before its forward and freed after it (reshard_after_forward), gathered again for its backward,
and its gradients reduce-scattered (averaged over processes) as its backward ends, at every micro-batch, so that
gradient memory stays sharded through an accumulation window.

An all-gather is a collective: every process must run the same forwards. The training forward is planned for that
(one forward per micro-batch, no row chunks, no prompt sharing: policy.plan_forward). Phases whose forwards depend
on the data run on gathered weights instead (`full_weights`): the rollout (each process's completions stop at their
own EOS) and, for simplicity, the old and reference log-probs and evaluation. While gathered, a process holds the
whole model once more; the weights' shards, gradients and optimizer state stay sharded.

Checkpoints hold full tensors, as a single process writes them (`full_state`): the weights gathered to rank 0 and
saved by save_pretrained (loadable by plain transformers), the optimizer state gathered and keyed by parameter
index like torch.optim's own state_dict. So a checkpoint does not depend on the world size or on fsdp, and
`load_optimizer_state` loads any of them into a sharded model.
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from reasonrl.errors import ConfigError
from reasonrl.models import is_peft_model, unwrap_model


def shard(model: torch.nn.Module, reshard_after_forward: bool = True) -> torch.nn.Module:
    """fully_shard each decoder layer of `model` (its class in transformers' _no_split_modules), then the whole
    model (a peft model included: LoRA's weights shard with their layer). In place; returns `model`."""
    layer_classes = set(getattr(unwrap_model(model), "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in layer_classes]
    if not layers:
        raise ConfigError(f"fsdp: {type(unwrap_model(model)).__name__} names no decoder layer class "
                          f"(_no_split_modules) to shard by; train it without fsdp", "fsdp")
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def full_weights(*models):
    """Within: every shard group of `models` (None and unsharded ones skipped) holds its gathered weights, so that
    a forward needs no collective and a module's .weight is a plain tensor (the lean decoder reads them). On exit
    the weights go back to shards."""
    modules = [module for model in models if model is not None and is_sharded(model)
               for module in model.modules() if isinstance(module, FSDPModule)]
    if not modules:
        yield
        return
    groups = [module._get_fsdp_state()._fsdp_param_group for module in modules]
    # FSDP2 keeps a group's resharding as its post-forward mesh (set_reshard_after_forward sets it); kept to put back
    resharding = [group.post_forward_mesh_info if group is not None else None for group in groups]
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module, group, mesh_info in zip(modules, groups, resharding):
            if group is not None:
                group.post_forward_mesh_info = mesh_info
            module.reshard()


def clip_grad_norm_(parameters: list[torch.Tensor], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_ for sharded gradients: the norm over every process's shards (one
    all-reduce), each shard scaled by the same factor; returns the norm."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)  # a replicated DTensor: the global norm
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return (total.full_tensor() if isinstance(total, DTensor) else total).item()


def _trainable_names(model) -> list[str]:
    """Names of the trainable parameters, in the order the optimizer holds them (optim.make_optimizer)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def full_state(model, optimizer) -> tuple[dict, dict | None]:
    """(weights, optimizer state) gathered whole on rank 0 (empty elsewhere); a collective, every rank calls it.

    weights: the model's state dict (a peft model's trainable weights only: its adapter) without the second name
    of a tied weight, as save_pretrained writes it. optimizer state: torch.optim's state_dict layout (states keyed
    by parameter index), the same file a single process writes."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=is_peft_model(model))
    weights = get_model_state_dict(model, options=options)
    seen = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):  # tied: the first name only
        if id(parameter) in seen:
            weights.pop(name, None)
        seen.add(id(parameter))
    if optimizer is None:
        return weights, None
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:  # ranks other than 0
        return weights, None
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in named["param_groups"]]
    return weights, {"state": {index[name]: value for name, value in named["state"].items()}, "param_groups": groups}


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a whole optimizer state_dict (keyed by parameter index, as `full_state` and torch.optim save it) into
    the optimizer of a sharded model: each process keeps its shards. Every rank calls it with the same state."""
    names = _trainable_names(model)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    by_name = dict(model.named_parameters())
    if len(held) != len(names) or any(p is not by_name[name] for p, name in zip(held, names)):
        raise ValueError("the optimizer does not hold the model's trainable parameters in order")
    named = {"state": {names[i]: value for i, value in state["state"].items()},
             "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                              for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


def like_parameters(state: dict[str, torch.Tensor], expected: dict) -> dict:
    """Full tensors of `state` sharded as the tensors of the same name in `expected` (a sharded model's state
    dict) are, so that load_state_dict can copy them into DTensor parameters; others unchanged. Every rank calls it
    with the same full tensors (distribute_tensor keeps rank 0's)."""
    result = {}
    for name, tensor in state.items():
        target = expected.get(name)
        if isinstance(target, DTensor) and not isinstance(tensor, DTensor):
            tensor = distribute_tensor(tensor.to(target.dtype), target.device_mesh, target.placements)
        result[name] = tensor
    return result
