"""The problems a user can fix: one family of exceptions, each message one line.

Every error a user's input can cause (a config value, a dataset, a model, a reward function, an output folder, a
checkpoint) is a `ReasonRLError` whose message says what is wrong, where, and how to fix it. The CLI prints it as
`reasonrl <command>: error: <message>` and exits with code 2; the Python API raises it with no chained
traceback. Exceptions of the libraries reasonrl calls (datasets, pyarrow, transformers, peft, safetensors, jinja,
numpy) that user input can trigger are translated into these where they enter; anything else is a bug of ours and
keeps its traceback.

The subclasses say which input was wrong; each is also a ValueError (RuntimeError for TrainingDiverged), so code
written against earlier versions that caught those keeps working.
"""

from __future__ import annotations


class ReasonRLError(Exception):
    """A problem the user can fix; `str(error)` is one line naming it and the fix."""

    exit_code = 2

    def __init__(self, message: str, *args):
        super().__init__(one_line(message), *args)


class UsageError(ReasonRLError):
    """A command-line argument that cannot work (a count below 1, a file that cannot be read)."""


class ConfigError(ReasonRLError, ValueError):
    """A GRPOConfig value: its `field` names the option."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class DataError(ReasonRLError, ValueError):
    """A dataset that cannot be read or used (its file, row or column named)."""


class ModelLoadError(ReasonRLError, ValueError):
    """A model or tokenizer that cannot be loaded or cannot be trained with GRPO."""


class RewardSpecError(ReasonRLError, ValueError):
    """A reward name or spec that gives no usable reward function."""


class RewardError(ReasonRLError, ValueError):
    """A reward function that broke its contract, or failed on too much of a round."""


class ToolError(ReasonRLError, ValueError):
    """A tool (GRPOTrainer(tools=...), the `tools` option) that cannot be used: not a function, not importable,
    not describable to the model, or a chat template or dataset that cannot carry tool calls."""


class RolloutError(ReasonRLError, ValueError):
    """A `rollout_func` or `environment_factory` (GRPOTrainer's arguments, or the options naming them) that cannot
    be used or broke its contract: not importable, not callable, a rollout_func's output without TRL's keys or with
    rows of the wrong count or shape, an environment without `reset`."""


class TaskError(ReasonRLError, ValueError):
    """An unknown built-in task or a task option out of range."""


class CheckpointError(ReasonRLError, ValueError):
    """A checkpoint that cannot be resumed from (missing or damaged files, other settings)."""


class ExportError(ReasonRLError, ValueError):
    """An export problem (missing checkpoint, occupied output folder, no base model, hub errors)."""


class TrainingDiverged(ReasonRLError, RuntimeError):
    """Training cannot go on: steps in a row were not finite, or a step left non-finite weights."""


class VLLMServerError(ReasonRLError, ConnectionError):
    """A `reasonrl vllm-serve` server (vllm_mode=server) that cannot be reached, stopped answering, or serves another
    model than the policy."""


class OutOfMemory(ReasonRLError, MemoryError):
    """The settings need more memory than the machine has (the pre-flight worst-case check, preflight.py)."""


def one_line(message: str) -> str:
    """`message` with its whitespace (newlines included) collapsed: a library's multi-line text stays one line."""
    return " ".join(str(message).split())


def reason_of(error: BaseException, limit: int = 300) -> str:
    """The first line of a library exception's message (or its type name), shortened, for quoting in ours."""
    text = (str(error).strip().splitlines() or [""])[0].strip() or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
