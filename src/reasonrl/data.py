"""Datasets: load from the hub or local files, check columns, render prompts (chat templates), tokenize.

TRL's formats: "standard" rows have `prompt` as a string; "conversational" rows have `prompt` as a list of
{"role", "content"} messages, rendered with the tokenizer's chat template. Other columns go to the rewards.
"""

from __future__ import annotations

import json
import logging
import os

from reasonrl.errors import DataError, reason_of

logger = logging.getLogger("reasonrl")

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _read_jsonl(path: str):
    """Our own JSONL reader, so that a bad line is reported by its number."""

    rows = []
    try:
        with open(path, encoding="utf-8-sig") as handle:
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
    return _from_rows(rows, path)


def _from_rows(rows: list, source: str):
    """Dataset.from_list, with pyarrow's complaint about a column of mixed types turned into one line."""
    from datasets import Dataset

    try:
        return Dataset.from_list(rows)
    except Exception as error:
        if type(error).__module__.startswith(("pyarrow", "datasets")) or isinstance(error, (TypeError, ValueError)):
            raise DataError(f"{source}: a column mixes value types ({reason_of(error, 160)}); give every row the "
                            f"same type in each column (e.g. all answers as strings)") from None
        raise


def as_dataset(data, what: str = "train_dataset"):
    """A datasets.Dataset from what the Python API accepts: a Dataset, a list of row dicts, a dict of columns or a
    pandas DataFrame. Anything else is a one-line DataError saying what to pass."""
    import datasets

    if isinstance(data, datasets.Dataset):
        if len(data) == 0:
            raise DataError(f"{what} is empty; it needs at least one row")
        return data
    if isinstance(data, datasets.DatasetDict):
        splits = ", ".join(data)
        raise DataError(f"{what} is a DatasetDict (splits: {splits}); pass one split, e.g. dataset['train']")
    if isinstance(data, datasets.IterableDataset):
        raise DataError(f"{what} is an IterableDataset, which reasonrl cannot train on yet; materialize it, e.g. "
                        f"Dataset.from_list(list(dataset.take(10000)))")
    if isinstance(data, list):
        if not data:
            raise DataError(f"{what} is an empty list; it needs at least one row")
        if not all(isinstance(row, dict) for row in data):
            bad = next(row for row in data if not isinstance(row, dict))
            raise DataError(f"{what} is a list, but not of row dicts (found a {type(bad).__name__}); pass "
                            f"[{{'prompt': ...}}, ...]")
        return _from_rows(data, what)
    if isinstance(data, dict):
        try:
            dataset = datasets.Dataset.from_dict(data)
        except Exception as error:  # noqa: BLE001 - pyarrow's errors for ragged or mixed columns
            raise DataError(f"{what}: the dict of columns cannot be a table ({reason_of(error, 160)}); give "
                            f"every column the same number of values of one type") from None
        return as_dataset(dataset, what)
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_dict"):
        return as_dataset(data.to_dict("records"), what)
    raise DataError(f"{what} must be a datasets.Dataset, a list of row dicts, a dict of columns or a pandas "
                    f"DataFrame (got {type(data).__name__})")


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


def prompt_problem(prompt) -> str | None:
    """What is wrong with one prompt, or None: a non-empty string, or a list of {role, content} messages whose role
    and content are strings (the chat template reads both)."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "is empty"
    if not isinstance(prompt, list) or not prompt:
        return f"must be a string or a list of chat messages, got {type(prompt).__name__} ({prompt!r:.50})"
    for message in prompt:
        if not isinstance(message, dict) or "role" not in message:
            return f"is a list, but not of chat messages {{'role': ..., 'content': ...}} (found {message!r:.50})"
        if not isinstance(message.get("role"), str):
            return f"has a message whose role is not a string ({message!r:.60})"
        if not isinstance(message.get("content"), str):
            return f"has a message without text content ({message!r:.60}); give each message 'content': '...'"
    return None


def check_prompts(dataset, column: str = "prompt") -> None:
    """DataError naming the first row whose prompt cannot be rendered; all rows, before any model loads."""
    for index, prompt in enumerate(dataset[column]):
        problem = prompt_problem(prompt)
        if problem:
            raise DataError(f"row {index} of the training data: the prompt {problem}; fix that row of the "
                            f"'{column}' column")
    kinds = {is_conversational(prompt) for prompt in dataset[column]}
    if len(kinds) > 1:
        raise DataError("the prompt column mixes plain-text prompts and chat messages; use one kind for every row")


def render_prompt(prompt, tokenizer, tools: list[dict] | None = None) -> str:
    """The text the model sees: a string as is, a conversation through the chat template (with the JSON schemas
    of `tools`, if any)."""
    problem = prompt_problem(prompt)
    if problem:
        raise DataError(f"a prompt {problem}; fix that row of the dataset's prompt column")
    if is_conversational(prompt):
        if tokenizer.chat_template is None:
            raise DataError("the prompts are conversational but the tokenizer has no chat template; use a chat "
                            "model or plain-text prompts")
        try:
            return tokenizer.apply_chat_template(prompt, tools=tools or None, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - jinja2's TemplateError and what the template itself raises
            raise DataError(f"the tokenizer's chat template fails on a prompt ({type(error).__name__}: "
                            f"{reason_of(error, 150)}); check the prompt's messages ({prompt!r:.80})") from None
    return prompt


class PromptTokenizer:
    """Left-pads and left-truncates prompts to max_prompt_length; warns once and counts what it cut."""

    def __init__(self, tokenizer, max_prompt_length: int | None, tools: list[dict] | None = None):
        self.tokenizer = tokenizer
        self.tools = tools  # JSON schemas the chat template renders into every prompt
        self.max_prompt_length = max_prompt_length
        self.truncated = 0

    def longest(self, prompts: list, batch_size: int = 1024) -> int:
        """Tokens of the longest of `prompts` as the model gets it (rendered, cut to max_prompt_length); counts no
        truncation. Every prompt is rendered, so a chat template that fails on one fails here."""
        longest = 0
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start: start + batch_size]
            texts = [render_prompt(prompt, self.tokenizer, self.tools) for prompt in batch]
            encoded = self.tokenizer(texts, add_special_tokens=not is_conversational(batch[0]))["input_ids"]
            longest = max(longest, *(len(ids) for ids in encoded))
        return min(longest, self.max_prompt_length) if self.max_prompt_length else longest

    def __call__(self, prompts: list, device="cpu"):
        import torch

        texts = [render_prompt(p, self.tokenizer, self.tools) for p in prompts]
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


def load_train_dataset(train_dataset, args):
    """The trainer's training data: `train_dataset` (a datasets.Dataset, a list of dicts, ...) or, when None, the
    config's dataset_name (a hub id or a file); its prompt column named "prompt" and checked."""
    from reasonrl import rundir

    if train_dataset is None:
        if not args.dataset_name:
            raise DataError("no training data: pass train_dataset= or set dataset_name to a hub id or a file")
        if os.path.isfile(args.dataset_name):
            rundir.ensure_not_run_file(args.dataset_name, args.output_dir, "dataset_name")
        train_dataset = load_dataset_any(args.dataset_name, config=args.dataset_config, split=args.dataset_train_split)
    dataset = ensure_prompt_column(as_dataset(train_dataset), args.prompt_column)
    if args.remove_unused_columns:
        dataset = dataset.select_columns(["prompt"])
    check_prompts(dataset)
    return dataset
