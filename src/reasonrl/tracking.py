"""Experiment trackers named by `report_to`: TensorBoard (runs under output_dir/runs), Weights & Biases and Trackio.

They get what TRL's trainer sends them: every `logging_steps` optimizer steps, the mean of each metric over the
steps since the last log (metrics.jsonl keeps every step's row), and with `log_completions` a table of the last
round's completions (wandb and trackio: a Table under "completions"; TensorBoard: a Markdown table as text).
"""

from __future__ import annotations

import math
import os

# metrics that are a state, not a per-step measure: the last value of the interval, not its mean
LAST_VALUE_KEYS = ("epoch", "learning_rate", "skipped_steps", "prompts/truncated", "cpu_threads")
TABLE_TEXT_CHARS = 2000  # a TensorBoard cell keeps this many characters of a prompt or completion


class Trackers:
    """Sends the metrics rows to every tracker the config names (metrics.jsonl is written regardless)."""

    def __init__(self, cfg):
        self.writers = []
        self.pending: list[dict] = []  # rows since the last log
        self.last_step = 0
        for name in cfg.loggers:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.writers.append(("tensorboard", SummaryWriter(log_dir=os.path.join(cfg.output_dir, "runs"))))
            elif name == "wandb":
                import wandb

                run = wandb.init(project=os.environ.get("WANDB_PROJECT", "reasonrl"), config=cfg.to_dict(),
                                 dir=cfg.output_dir)
                self.writers.append(("wandb", run))
            elif name == "trackio":
                import trackio

                trackio.init(project=os.environ.get("TRACKIO_PROJECT", "reasonrl"),
                             name=os.path.basename(os.path.abspath(cfg.output_dir)), config=cfg.to_dict())
                self.writers.append(("trackio", trackio))

    def log(self, row: dict, step: int, due: bool = True) -> None:
        """Keep the step's row; when `due` (a logging step), send the interval's means."""
        if not self.writers:
            return
        self.pending.append(row)
        self.last_step = step
        if due:
            self._flush(step)

    def log_evaluation(self, row: dict, step: int) -> None:
        """An evaluation's row (eval_ metrics), sent at once: every evaluation is logged, as transformers does."""
        if self.writers:
            self._send(interval_means([row]), step)

    def _flush(self, step: int) -> None:
        scalars = interval_means(self.pending)
        self.pending = []
        self._send(scalars, step)

    def _send(self, scalars: dict, step: int) -> None:
        if not scalars:
            return
        scalars = {tag(key): value for key, value in scalars.items()}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in scalars.items():
                    writer.add_scalar(key, value, step)
            else:
                writer.log(scalars, step=step)

    def log_completions(self, samples: list[dict], step: int) -> None:
        """The completions table (TRL's columns: step, prompt, completion, one per reward, the log_extra columns,
        advantage)."""
        if not self.writers or not samples:
            return
        columns, rows = completion_table(samples)
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.add_text("completions", markdown_table(columns, rows), step)
            else:
                module = writer if kind == "trackio" else __import__("wandb")
                import pandas

                table = module.Table(dataframe=pandas.DataFrame(rows, columns=columns))
                writer.log({"completions": table}, step=step)

    def close(self) -> None:
        if self.pending:  # the steps after the last logging step
            self._flush(self.last_step)
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            else:
                writer.finish()
        self.writers = []


def interval_means(rows: list[dict]) -> dict[str, float]:
    """Each numeric metric's mean over `rows`, NaN values left out (as TRL's log); LAST_VALUE_KEYS keep the last
    row's value. A metric that is NaN on every row is left out."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    means = {}
    for key, numbers in values.items():
        if key in LAST_VALUE_KEYS:
            means[key] = numbers[-1]
            continue
        finite = [number for number in numbers if not math.isnan(number)]
        if finite:
            means[key] = sum(finite) / len(finite)
    return means


def completion_table(samples: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, rows) of logged completion samples (runlog.completion_samples)."""
    reward_names = list(samples[0]["rewards"])
    extra = list(dict.fromkeys(column for sample in samples for column in sample.get("extra", {})))
    columns = ["step", "prompt", "completion", *reward_names, *extra, "advantage"]
    rows = [[sample["step"], _text(sample["prompt"]), _text(sample["completion"]),
             *(sample["rewards"][name] for name in reward_names),
             *(sample.get("extra", {}).get(column) for column in extra), sample["advantage"]] for sample in samples]
    return columns, rows


def markdown_table(columns: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return "<br>".join(text[:TABLE_TEXT_CHARS].replace("|", "\\|").splitlines())  # every kind of line break

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _text(value) -> str:
    """A prompt or completion as text: conversations as 'role: content' lines."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in value)
    return str(value)


def tag(key: str) -> str:
    """A metric's tracker name, as transformers' integrations rewrite logs: eval_x is eval/x, the rest train/x."""
    return f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"
