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

from reasonrl.errors import CheckpointError, reason_of

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
                    round_state: tuple[dict, dict] | None = None, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> str:
    """Write checkpoint-{step} atomically: into a hidden temporary folder, fsync, then rename.

    model_state, optimizer_state: what to save instead of the model's and optimizer's own state dicts (a sharded
    model's, gathered whole: fsdp.full_state).

    round_state: (tensors, values) of a round in progress (see save_round), when the step is in a round's middle.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    staging = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        if round_state is not None:
            save_round(staging, *round_state)
        model.save_pretrained(staging, safe_serialization=True,
                              **({} if model_state is None else {"state_dict": model_state}))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state,
                   os.path.join(staging, "optimizer.pt"))
        torch.save(scheduler.state_dict(), os.path.join(staging, "scheduler.pt"))
        torch.save(rng_state(generator), os.path.join(staging, "rng_state.pt"))
        with open(os.path.join(staging, "trainer_state.json"), "w") as handle:
            json.dump(trainer_state, handle, indent=1)
        with open(os.path.join(staging, "config.yaml"), "w") as handle:
            handle.write(config_yaml)
        _fsync_tree(staging)
    except Exception as error:  # a full disk, a quota, a folder gone (OSError, safetensors' error)
        if not isinstance(error, (OSError, RuntimeError)) and "safetensors" not in type(error).__module__:
            raise
        shutil.rmtree(staging, ignore_errors=True)
        earlier = latest_checkpoint(output_dir)
        reason = getattr(error, "strerror", None) or reason_of(error, 120)
        raise CheckpointError(f"could not write checkpoint-{step} in {output_dir} ({reason}); free space there and "
                              f"resume from {earlier or 'the start'} with --resume") from None
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
    if save_total_limit:  # the oldest of this timeline's earlier checkpoints; never the one just written
        earlier = [path for path in list_checkpoints(output_dir) if checkpoint_step(path) < step]
        for old in earlier[: max(0, len(earlier) - (save_total_limit - 1))]:
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


def checkpoint_step(path: str) -> int:
    """N of a `checkpoint-N` folder."""
    return int(CHECKPOINT_RE.match(os.path.basename(os.path.abspath(path))).group(1))


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


# ---------------------------------------------------------------- checks before resuming

TRAINING_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pt")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_STATE_KEYS = ("global_step", "epoch", "sampler")


def validate_checkpoint(path: str) -> None:
    """CheckpointError unless `path` is a complete, readable checkpoint: its files present, trainer_state.json
    well-formed, its weights' safetensors headers readable and covering the file. Reads no tensor data."""
    if not os.path.isfile(os.path.join(path, "trainer_state.json")):
        raise CheckpointError(f"cannot resume from {path}: not a checkpoint folder (no trainer_state.json); give one "
                              f"like {os.path.join(os.path.dirname(path.rstrip(os.sep)) or '.', 'checkpoint-100')}, "
                              f"or --resume alone for the latest")
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot resume from {path}: trainer_state.json is damaged ({reason_of(error, 120)}); "
                              f"resume from an earlier checkpoint") from None
    if not isinstance(state, dict) or any(key not in state for key in _STATE_KEYS) or not isinstance(
            state.get("global_step"), int) or not isinstance(state.get("sampler"), dict):
        raise CheckpointError(f"cannot resume from {path}: trainer_state.json lacks the run's position "
                              f"({', '.join(_STATE_KEYS)}); resume from an earlier checkpoint")
    missing = [name for name in TRAINING_FILES if not os.path.isfile(os.path.join(path, name))]
    weights = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    if not weights:
        missing.append("the weights (adapter_model.safetensors or model.safetensors)")
    if missing:
        raise CheckpointError(f"cannot resume from {path}: it is incomplete (missing {', '.join(missing)}); resume "
                              f"from an earlier checkpoint")
    for name in _weight_shards(path, weights[0]):
        _check_safetensors(os.path.join(path, name))


def _weight_shards(path: str, name: str) -> list[str]:
    if not name.endswith(".index.json"):
        return [name]
    try:
        with open(os.path.join(path, name), encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"cannot resume from {path}: {name} is damaged ({reason_of(error, 120)})") from None
    missing = [shard for shard in shards if not os.path.isfile(os.path.join(path, shard))]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: weight shard(s) {', '.join(missing)} missing")
    return shards


def _check_safetensors(file: str) -> None:
    """The header parses and the tensors it lists fit in the file (a truncated copy fails here)."""
    try:
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size)) if 0 < header_size < 100_000_000 else None
        end = max((info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"), default=0)
        complete = 8 + header_size + end <= os.path.getsize(file)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        complete = False
    if not complete:
        raise CheckpointError(f"{file} is damaged or truncated (not a complete safetensors file); resume from an "
                              f"earlier checkpoint")


def load_weights(model, path: str) -> None:
    """Load a checkpoint's weights (safetensors) into `model`: the adapter for a peft model, else every weight.

    The checkpoint must match the model: a LoRA checkpoint for a LoRA model of the same rank and target modules, a
    full one for a full model with the same parameters. A mismatch is a CheckpointError, never a silent partial load.
    """
    from safetensors.torch import load_file

    from reasonrl.models import is_peft_model

    has_adapter = os.path.isfile(os.path.join(path, "adapter_model.safetensors"))
    if is_peft_model(model) != has_adapter:
        saved, now = ("a LoRA adapter", "full fine-tuning") if has_adapter else ("full weights", "LoRA")
        raise CheckpointError(f"{path} holds {saved} but this run uses {now}; resume with the settings the run was "
                              f"started with (use_peft={str(has_adapter).lower()})")
    files = ["adapter_model.safetensors"] if has_adapter else _weight_shards(
        path, next(n for n in WEIGHT_FILES[1:] if os.path.isfile(os.path.join(path, n))))
    try:
        state = {}
        for name in files:
            state.update(load_file(os.path.join(path, name)))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read the weights in {path}: {reason_of(error, 150)}; resume from an earlier "
                              f"checkpoint") from None
    from reasonrl.fsdp import is_sharded, like_parameters

    if has_adapter:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        expected = get_peft_model_state_dict(model)
        _check_keys(path, state, expected)
        set_peft_model_state_dict(model, like_parameters(state, expected) if is_sharded(model) else state)
        return
    expected = model.state_dict()
    _check_keys(path, state, expected)
    model.load_state_dict(like_parameters(state, expected) if is_sharded(model) else state, strict=False)


def _check_keys(path: str, saved: dict, expected: dict) -> None:
    """The saved tensors are exactly the model's (same names and shapes), but for tied weights saved once."""
    unknown = sorted(set(saved) - set(expected))
    if unknown:
        raise CheckpointError(f"{path} holds weights this model does not have ({unknown[0]}, {len(unknown)} in all); "
                              f"resume with the model and LoRA settings the run was started with")
    for key, tensor in saved.items():
        if tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path} was saved with other shapes ({key}: {tuple(tensor.shape)}, this model: "
                                  f"{tuple(expected[key].shape)}); resume with the settings the run was started with "
                                  f"(lora_r, lora_target_modules, the model)")
    saved_storage = {expected[key].data_ptr() for key in saved}
    missing = [key for key in expected if key not in saved and expected[key].data_ptr() not in saved_storage]
    if missing:
        raise CheckpointError(f"{path} lacks weights of this model ({missing[0]}, {len(missing)} in all); resume with "
                              f"the model and LoRA settings the run was started with")


RESUME_SETTINGS = ("optim", "lr_scheduler_type", "use_peft", "lora_r", "lora_alpha", "lora_target_modules")
"""Options a checkpoint's optimizer, schedule or weights depend on: resuming with other values is refused."""


def check_resume_settings(path: str, settings: dict) -> None:
    """CheckpointError when `settings` (the run's GRPOConfig as a dict) change an option the checkpoint's state
    depends on, e.g. an AdamW state loaded into SGD would be taken silently."""
    import yaml

    try:
        with open(os.path.join(path, "config.yaml"), encoding="utf-8") as handle:
            saved = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError):
        return  # a checkpoint without a readable config (older or hand-made): nothing to compare against
    changed = [f"{key}={settings[key]!r} (saved: {saved[key]!r})" for key in RESUME_SETTINGS
               if key in saved and key in settings and saved[key] != settings[key]]
    if changed:
        raise CheckpointError(f"cannot resume from {path} with other settings: {', '.join(changed)}; resume with the "
                              f"run's settings, or start a new run")
