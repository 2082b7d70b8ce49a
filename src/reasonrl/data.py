"""Datasets: load from the hub or local files, check columns, render prompts (chat templates), tokenize.

TRL's formats: "standard" rows have `prompt` as a string; "conversational" rows have `prompt` as a list of
{"role", "content"} messages, rendered with the tokenizer's chat template. Other columns go to the rewards.
"""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger("reasonrl")

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class DataError(ValueError):
    """A dataset problem the user can fix (one line: what, where, how)."""


def _read_jsonl(path: str):
    """Our own JSONL reader, so that a bad line is reported by its number."""
    from datasets import Dataset

    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg}); fix or remove that line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: each JSONL line must be an object like {{\"prompt\": ...}}, "
                                    f"got a {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}); re-encode it as UTF-8") from None
    except OSError as error:
        raise DataError(f"cannot read dataset file {path}: {error.strerror}") from None
    if not rows:
        raise DataError(f"dataset file {path} is empty; it needs at least one row")
    return Dataset.from_list(rows)


def load_dataset_any(name_or_path: str, *, config: str | None = None, split: str = "train"):
    """A `datasets.Dataset` from a local file (.jsonl .json .csv .parquet), a local folder, or a hub id."""
    import datasets

    if os.path.isfile(name_or_path):
        extension = os.path.splitext(name_or_path)[1].lower()
        if extension == ".jsonl":
            return _read_jsonl(name_or_path)
        if extension not in LOCAL_BUILDERS:
            raise DataError(f"unsupported dataset file type {extension!r} ({name_or_path}); use "
                            f"{', '.join(LOCAL_BUILDERS)}")
        return _checked(lambda: datasets.load_dataset(LOCAL_BUILDERS[extension], data_files=name_or_path,
                                                      split="train"), name_or_path)
    looks_local = name_or_path.startswith((".", "/", "~")) or os.path.splitext(name_or_path)[1] in LOCAL_BUILDERS
    if looks_local and not os.path.exists(name_or_path):
        raise DataError(f"dataset file {name_or_path} does not exist; check the path")
    return _checked(lambda: datasets.load_dataset(name_or_path, config, split=split), name_or_path, split)


def _checked(load, name: str, split: str | None = None):
    try:
        dataset = load()
    except Exception as error:  # noqa: BLE001 - datasets raises many types: hub, network, parsing errors
        raise DataError(_load_error_message(name, error)) from None
    if len(dataset) == 0:
        raise DataError(f"dataset {name!r} is empty; it needs at least one row")
    return dataset


def _load_error_message(name: str, error: Exception) -> str:
    """One line for a failed `datasets.load_dataset`: the root cause, not datasets' generic wrapper."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    if any(isinstance(e, UnicodeDecodeError) for e in chain):
        return f"dataset {name} is not UTF-8 text; re-encode it as UTF-8"
    # DatasetGenerationError says only "An error occurred while generating the dataset"; the parser's error says why
    shown = chain[-1] if type(error).__name__ == "DatasetGenerationError" else error
    reason = (str(shown).splitlines() or [type(shown).__name__])[0][:300]
    if os.path.exists(name):
        if "corresponds to no data" in reason:  # datasets' words for a file with a header but no rows
            return f"dataset {name!r} is empty; it needs at least one row"
        return f"could not read dataset {name!r}: {reason}; check that it is {_format_of(name)}"
    if isinstance(error, ValueError):
        return f"could not load dataset {name!r}: {reason}"  # e.g. an unknown split or config of a hub dataset
    offline = "offline mode is on" if os.environ.get("HF_HUB_OFFLINE") == "1" else "no network, or a wrong id?"
    return (f"could not load dataset {name!r}: it is not a local file or folder, and loading it from the Hugging "
            f"Face Hub failed ({offline}): {reason}")


def _format_of(name: str) -> str:
    extension = os.path.splitext(name)[1].lower()
    return {".json": "valid JSON", ".csv": "valid CSV", ".parquet": "valid Parquet", ".txt": "UTF-8 text"}.get(
        extension, "a folder of .jsonl/.json/.csv/.parquet files")


def ensure_prompt_column(dataset, prompt_column: str = "prompt"):
    """Return the dataset with its prompts in a `prompt` column, or say which column to use."""
    columns = list(dataset.column_names)
    if prompt_column not in columns:
        hint = next((c for c in ("prompt", "question", "problem", "query", "instruction", "messages")
                     if c in columns), None)
        hint = hint or (columns[0] if len(columns) == 1 else None)
        fix = f"set prompt_column={hint}" if hint else "set prompt_column to the column that holds the prompts"
        raise DataError(f"dataset has no {prompt_column!r} column (found: {', '.join(columns)}); {fix}")
    if prompt_column != "prompt":
        if "prompt" in columns:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(prompt_column, "prompt")
    return dataset


def is_conversational(prompt) -> bool:
    return isinstance(prompt, list) and len(prompt) > 0 and isinstance(prompt[0], dict) and "role" in prompt[0]


def render_prompt(prompt, tokenizer) -> str:
    """The text the model sees: a string as is, a conversation through the chat template."""
    if is_conversational(prompt):
        if tokenizer.chat_template is None:
            raise DataError("the prompts are conversational but the tokenizer has no chat template; use a chat "
                            "model or plain-text prompts")
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise DataError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__} "
                        f"({prompt!r:.50}); fix that row of the dataset's prompt column")
    return prompt


class PromptTokenizer:
    """Left-pads and left-truncates prompts to max_prompt_length; warns once and counts what it cut."""

    def __init__(self, tokenizer, max_prompt_length: int | None):
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.truncated = 0

    def __call__(self, prompts: list, device="cpu"):
        import torch

        texts = [render_prompt(p, self.tokenizer) for p in prompts]
        conversational = is_conversational(prompts[0])
        encoded = self.tokenizer(texts, add_special_tokens=not conversational)["input_ids"]
        if self.max_prompt_length is not None:
            for i, ids in enumerate(encoded):
                if len(ids) > self.max_prompt_length:
                    if self.truncated == 0:
                        logger.warning("a prompt of %d tokens was cut on the left to max_prompt_length=%d (counted "
                                       "in prompts/truncated; raise max_prompt_length to keep whole prompts)",
                                       len(ids), self.max_prompt_length)
                    self.truncated += 1
                    encoded[i] = ids[-self.max_prompt_length:]
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
        return input_ids, attention_mask
