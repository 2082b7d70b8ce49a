"""Export a checkpoint: merge the LoRA adapter into the base weights, save_pretrained (safetensors), write a
model card, and optionally push to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from reasonrl.checkpoint import latest_checkpoint
from reasonrl.errors import ExportError, ModelLoadError
from reasonrl.models import load_model, load_tokenizer


def load_for_inference(path: str, *, base: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a model folder, a hub id, or a checkpoint holding a LoRA adapter."""
    adapter_config = os.path.join(path, "adapter_config.json")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        latest = latest_checkpoint(path)
        if latest is not None:  # a run's output_dir: the models are in its checkpoint folders
            raise ExportError(f"{path} is a training run's folder, not a model; give one of its checkpoints, "
                              f"e.g. {latest}")
    if not os.path.isfile(adapter_config):
        return (load_model(path, trust_remote_code=trust_remote_code),
                load_tokenizer(path, trust_remote_code=trust_remote_code))
    from peft import PeftModel

    with open(adapter_config) as handle:
        base = base or json.load(handle).get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{path} holds a LoRA adapter but does not name its base model; pass --base PATH_OR_ID")
    try:
        model = load_model(base, trust_remote_code=trust_remote_code)
    except ModelLoadError as error:
        raise ExportError(f"the base model of the LoRA adapter in {path}: {error}; pass --base PATH_OR_ID") from None
    tokenizer_source = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else base
    return PeftModel.from_pretrained(model, path), load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)


def model_card(base_model: str, steps, metrics: dict, config_yaml: str, merged: bool, title: str = "",
               tags: list[str] | None = None) -> str:
    """A README.md: the base model, the training config and the last logged metrics."""
    rows = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in metrics.items())
    tags = ", ".join(["reasonrl", "grpo", "reinforcement-learning", *(tags or [])])
    return f"""---
library_name: transformers
tags: [{tags}]
---
# {title or base_model} — trained with reasonrl (GRPO)

Base model: `{base_model}`. {'LoRA adapter merged into the base weights.' if merged else ''}
Trained for {steps} optimizer steps with [reasonrl](https://pypi.org/project/reasonrl/).

## Final metrics

| metric | value |
|---|---|
{rows}

## Training configuration

```yaml
{config_yaml.strip()}
```
"""


def checkpoint_model_card(checkpoint: str, merged: bool) -> str:
    """model_card of a checkpoint folder, from its config.yaml and trainer_state.json."""
    config_text, state = "", {}
    if os.path.isfile(os.path.join(checkpoint, "config.yaml")):
        with open(os.path.join(checkpoint, "config.yaml")) as handle:
            config_text = handle.read()
    if os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
            state = json.load(handle)
    last = {key: value for row in state.get("log_history") or [] for key, value in row.items()}  # step + eval
    return model_card(state.get("model_name", "unknown"), state.get("global_step", "?"), last, config_text, merged,
                      title=os.path.basename(os.path.abspath(checkpoint)))


def check_model_folder(out: str, *, overwrite: bool = False, option: str = "--out") -> None:
    """ExportError unless a model can be written to `out`: a new or empty folder, or (overwrite) any folder."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"{option} {out} is a file; give a folder to write the model to")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ExportError(f"{option} {out} is not empty ({', '.join(sorted(os.listdir(out))[:4])}); choose a new "
                          f"folder, or pass --overwrite to replace what is there")
    ancestor = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
        raise ExportError(f"{option} {out} cannot be created ({ancestor} is not a writable folder)")


def save_model_folder(out: str, write, *, overwrite: bool = False, option: str = "--out") -> str:
    """Run `write(folder)` into a hidden sibling of `out`, then move it into place: a failed or killed save leaves
    `out` as it was. With overwrite, the old folder is replaced only once the new one is complete."""
    check_model_folder(out, overwrite=overwrite, option=option)
    out = os.path.abspath(out)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=_existing_parent(out))
    try:
        write(staging)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"could not write the model to {out}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.isdir(out):  # overwrite: the old folder goes only after the new one is whole
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "model"))
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
    return out


def _existing_parent(path: str) -> str:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return parent


def gguf_model_card(gguf_path: str) -> str:
    """A README.md for a model converted from a GGUF file (no training: no config, no metrics)."""
    return f"""---
library_name: transformers
---
# {os.path.basename(gguf_path)}

Converted from the GGUF file `{os.path.basename(gguf_path)}` by `reasonrl export`: the weights dequantized to
ordinary tensors and saved as safetensors, the tokenizer and chat template read from the file.
"""


def export(checkpoint: str, out: str, *, merge: bool = True, base: str | None = None,
           trust_remote_code: bool = False, overwrite: bool = False) -> str:
    """Write a standalone model folder (safetensors, tokenizer, README.md) from a checkpoint (or a .gguf file)."""
    is_gguf = checkpoint.lower().endswith(".gguf")  # a GGUF file exports as a plain safetensors folder
    if not os.path.isdir(checkpoint) and not (is_gguf and os.path.isfile(checkpoint)):
        raise ExportError(f"checkpoint {checkpoint} does not exist; give a folder like runs/grpo/checkpoint-100")
    check_model_folder(out, overwrite=overwrite)
    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise ExportError(f"--out {out} is the checkpoint itself; write the model to another folder")
    try:
        model, tokenizer = load_for_inference(checkpoint, base=base, trust_remote_code=trust_remote_code)
    except ModelLoadError as error:
        raise ExportError(str(error)) from None
    is_adapter = hasattr(model, "merge_and_unload")
    if merge and is_adapter:
        model = model.merge_and_unload()

    def write(folder: str) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        merged = merge and is_adapter
        card = gguf_model_card(checkpoint) if is_gguf else checkpoint_model_card(checkpoint, merged=merged)
        with open(os.path.join(folder, "README.md"), "w") as handle:
            handle.write(card)

    return save_model_folder(out, write, overwrite=overwrite)


def push_to_hub(folder: str, repo_id: str, *, private: bool = False) -> str:
    """Upload `folder` to the Hub (`reasonrl export --push-to-hub`); its URL."""
    upload_to_hub(folder, repo_id, private=private)
    return f"https://huggingface.co/{repo_id}"


def push_run_folder(args, base_model: str, steps: int, metrics: dict, *, private: bool | None = None, **upload):
    """trainer.push_to_hub's upload, once the model is saved in args.output_dir: a model card there, then the folder
    (not its checkpoints, nor what only this machine's run needs) to args.hub_model_id (default: the folder's name),
    private as `private` or else args.hub_private_repo. `upload`: upload_to_hub's token, commit_message, revision,
    blocking, and the card's tags."""
    from reasonrl import rundir

    folder = args.output_dir
    repo_id = args.hub_model_id or os.path.basename(os.path.abspath(folder))
    card = model_card(base_model, steps, metrics, args.to_yaml(), merged=False, title=repo_id.split("/")[-1],
                      tags=upload.pop("tags", None))
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card)
    rundir.record_model_save(folder)  # the card is the run's, as the model files are
    return upload_to_hub(folder, repo_id, private=args.hub_private_repo if private is None else private,
                         ignore_patterns=["_*", "checkpoint-*", ".checkpoint-*", "superseded-*", rundir.MARK],
                         **upload)


def upload_to_hub(folder: str, repo_id: str, *, private: bool | None = None, token: str | None = None,
                  commit_message: str | None = None, revision: str | None = None, blocking: bool = True,
                  ignore_patterns: list[str] | None = None):
    """Create the Hub repository `repo_id` if missing and upload `folder` to it (huggingface_hub's create_repo and
    upload_folder, as transformers' Trainer.push_to_hub); its CommitInfo (a Future when not blocking). One-line
    errors when offline, without a token, or when the Hub refuses."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ExportError("cannot push to the Hub: HF_HUB_OFFLINE=1 is set; unset it when online")
    if not (token or get_token()):
        raise ExportError("cannot push to the Hub: no token; run `hf auth login` or set HF_TOKEN")
    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(folder_path=folder, repo_id=getattr(repo, "repo_id", repo_id),
                                 commit_message=commit_message, revision=revision, run_as_future=not blocking,
                                 ignore_patterns=ignore_patterns)
    except Exception as error:  # noqa: BLE001 - network and auth errors come in many types
        raise ExportError(f"cannot push to the Hub repo {repo_id}: {(str(error).splitlines() or [''])[0][:200]}"
                          ) from None
