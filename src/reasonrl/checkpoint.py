"""Checkpoints: `output_dir/checkpoint-N`, written atomically, holding everything needed to resume exactly.

Layout: the model (full weights, or the LoRA adapter) as safetensors via save_pretrained, the tokenizer,
optimizer.pt, scheduler.pt, rng_state.pt (loaded with weights_only=True: no arbitrary unpickling), and
trainer_state.json (step, data position, metrics) and config.yaml. A checkpoint saved in the middle of a round (a
round that spans several optimizer steps) also holds the rest of that round: round.safetensors (the scored batch's
tensors and the micro-batch orders) and round.json (where the round stands, its metrics, its decoded texts), so that
resuming finishes the round exactly as an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LEFTOVER_RE = re.compile(r"^\.checkpoint-\d+\.(tmp|old)$")  # a staging folder, or one set aside to be deleted


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def rng_state(generator: torch.Generator | None = None) -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    # numpy's state as plain values and a tensor, so that torch.load(weights_only=True) can read it back
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    random.setstate(_to_python_tuple(state["python"]))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_python_tuple(value):
    return tuple(_to_python_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(output_dir: str, step: int, *, model, tokenizer, optimizer, scheduler, trainer_state: dict,
                    config_yaml: str, generator: torch.Generator | None = None, save_total_limit: int | None = None,
                    round_state: tuple[dict, dict] | None = None) -> str:
    """Write checkpoint-{step} atomically: into a hidden temporary folder, fsync, then rename.

    round_state: (tensors, values) of a round in progress (see save_round), when the step is in a round's middle.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    staging = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    if round_state is not None:
        save_round(staging, *round_state)
    model.save_pretrained(staging, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    torch.save(optimizer.state_dict(), os.path.join(staging, "optimizer.pt"))
    torch.save(scheduler.state_dict(), os.path.join(staging, "scheduler.pt"))
    torch.save(rng_state(generator), os.path.join(staging, "rng_state.pt"))
    with open(os.path.join(staging, "trainer_state.json"), "w") as handle:
        json.dump(trainer_state, handle, indent=1)
    with open(os.path.join(staging, "config.yaml"), "w") as handle:
        handle.write(config_yaml)
    _fsync_tree(staging)
    replaced = None
    if os.path.exists(final):  # re-saving the same step (e.g. the final one): set the old one aside, then drop it
        replaced = _set_aside(final)
    os.rename(staging, final)
    _fsync_dir(output_dir)
    if replaced:
        shutil.rmtree(replaced, ignore_errors=True)
    for name in os.listdir(output_dir):  # what killed runs left half-written or half-deleted
        if LEFTOVER_RE.match(name):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    if save_total_limit:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(_set_aside(old), ignore_errors=True)
    return final


def _set_aside(path: str) -> str:
    """Rename a checkpoint to a hidden name before deleting it, so that a kill during the deletion never leaves a
    half-deleted folder that still looks like a checkpoint."""
    hidden = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old")
    shutil.rmtree(hidden, ignore_errors=True)
    os.rename(path, hidden)
    return hidden


def _fsync_dir(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------- a round in progress

ROUND_TENSORS, ROUND_VALUES = "round.safetensors", "round.json"


def save_round(folder: str, tensors: dict[str, torch.Tensor], values: dict) -> None:
    """The rest of a round: its tensors as safetensors, everything else (numbers, texts) as JSON. No pickle."""
    from safetensors.torch import save_file

    # own contiguous CPU copies: safetensors refuses tensors that share memory (loss_mask may be completion_mask)
    save_file({name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()},
              os.path.join(folder, ROUND_TENSORS))
    with open(os.path.join(folder, ROUND_VALUES), "w") as handle:
        json.dump(values, handle, default=str)


def load_round(folder: str, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, values) of the round a checkpoint was saved in the middle of, or None (saved at a round's end)."""
    if not os.path.isfile(os.path.join(folder, ROUND_VALUES)):
        return None
    from safetensors.torch import load_file

    with open(os.path.join(folder, ROUND_VALUES)) as handle:
        values = json.load(handle)
    return load_file(os.path.join(folder, ROUND_TENSORS), device=str(device)), values


def split_dataclass(obj, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A dataclass's tensor fields and its other (JSON) fields, keyed prefix + name; nested dataclasses skipped."""
    tensors, values = {}, {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, torch.Tensor):
            tensors[prefix + field.name] = value
        elif not dataclasses.is_dataclass(value):
            values[prefix + field.name] = value
    return tensors, values


def build_dataclass(cls, tensors: dict[str, torch.Tensor], values: dict, prefix: str, **given):
    """split_dataclass's inverse: `cls` from the fields stored under prefix (and `given` ones)."""
    kwargs = dict(given)
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if field.name in kwargs:
            continue
        if key in tensors:
            kwargs[field.name] = tensors[key]
        elif key in values:
            kwargs[field.name] = values[key]
    return cls(**kwargs)


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first. Half-written ones (.tmp folders) never appear."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str) -> str | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def load_training_state(path: str) -> tuple[dict, dict, dict, dict]:
    """(optimizer, scheduler, rng, trainer_state) of a checkpoint; tensors only, no arbitrary objects."""
    def load(name):
        return torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)

    with open(os.path.join(path, "trainer_state.json")) as handle:
        trainer_state = json.load(handle)
    return load("optimizer.pt"), load("scheduler.pt"), load("rng_state.pt"), trainer_state
