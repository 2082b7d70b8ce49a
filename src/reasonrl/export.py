"""Export a checkpoint: merge the LoRA adapter into the base weights, save_pretrained (safetensors), write a
model card, and optionally push to the Hugging Face Hub."""

from __future__ import annotations

import json
import os

from reasonrl.checkpoint import latest_checkpoint
from reasonrl.models import ModelLoadError, load_model, load_tokenizer


class ExportError(ValueError):
    """A one-line export problem (missing checkpoint, no base model, hub errors)."""


def load_for_inference(path: str, *, base: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a model folder, a hub id, or a checkpoint holding a LoRA adapter."""
    adapter_config = os.path.join(path, "adapter_config.json")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        latest = latest_checkpoint(path)
        if latest is not None:  # a run's output_dir: the models are in its checkpoint folders
            raise ExportError(f"{path} is a training run's folder, not a model; give one of its checkpoints, "
                              f"e.g. {latest}")
    if not os.path.isfile(adapter_config):
        return load_model(path, trust_remote_code=trust_remote_code), load_tokenizer(path, trust_remote_code=trust_remote_code)
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


def model_card(checkpoint: str, merged: bool) -> str:
    """A README.md with the training config and the final metrics of the checkpoint."""
    config_text, metrics = "", {}
    if os.path.isfile(os.path.join(checkpoint, "config.yaml")):
        with open(os.path.join(checkpoint, "config.yaml")) as handle:
            config_text = handle.read()
    state = {}
    if os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
            state = json.load(handle)
        metrics = (state.get("log_history") or [{}])[-1]
    rows = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in metrics.items())
    return f"""---
library_name: transformers
tags: [reasonrl, grpo, reinforcement-learning]
---
# {os.path.basename(os.path.abspath(checkpoint))} — trained with reasonrl (GRPO)

Base model: `{state.get('model_name', 'unknown')}`. {'LoRA adapter merged into the base weights.' if merged else ''}
Trained for {state.get('global_step', '?')} optimizer steps with [reasonrl](https://pypi.org/project/reasonrl/).

## Final metrics

| metric | value |
|---|---|
{rows}

## Training configuration

```yaml
{config_text.strip()}
```
"""


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
           trust_remote_code: bool = False) -> str:
    """Write a standalone model folder (safetensors, tokenizer, README.md) from a checkpoint (or a .gguf file)."""
    is_gguf = checkpoint.lower().endswith(".gguf")  # a GGUF file exports as a plain safetensors folder
    if not os.path.isdir(checkpoint) and not (is_gguf and os.path.isfile(checkpoint)):
        raise ExportError(f"checkpoint {checkpoint} does not exist; give a folder like runs/grpo/checkpoint-100")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out} is a file; give a folder to write the model to")
    try:
        model, tokenizer = load_for_inference(checkpoint, base=base, trust_remote_code=trust_remote_code)
    except ModelLoadError as error:
        raise ExportError(str(error)) from None
    is_adapter = hasattr(model, "merge_and_unload")
    if merge and is_adapter:
        model = model.merge_and_unload()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "README.md"), "w") as handle:
        handle.write(gguf_model_card(checkpoint) if is_gguf else model_card(checkpoint, merged=merge and is_adapter))
    return out


def push_to_hub(folder: str, repo_id: str, *, private: bool = False) -> str:
    """Upload `folder` to the Hub; one-line errors when offline or without a token."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ExportError("cannot push to the Hub: HF_HUB_OFFLINE=1 is set; unset it when online")
    if not get_token():
        raise ExportError("cannot push to the Hub: no token; run `hf auth login` or set HF_TOKEN")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo_id)
    except Exception as error:  # network and auth errors come in many types
        raise ExportError(f"cannot push to the Hub repo {repo_id}: {(str(error).splitlines() or [''])[0][:200]}"
                          ) from None
    return f"https://huggingface.co/{repo_id}"
