"""`reasonrl plot RUN_DIR`: PNG curves of a run's metrics.jsonl (reward, accuracy, KL, completion length, groups
without signal)."""

from __future__ import annotations

import json
import os

PANELS = {
    "reward": ("reward", "mean reward per step"),
    "accuracy": (None, "accuracy"),
    "kl": ("kl", "KL(policy || reference), k3 estimate"),
    "completion_length": ("completions/mean_length", "mean completion length (tokens)"),
    "no_signal": ("frac_groups_no_signal", "share of groups with no learning signal (G equal rewards)"),
}
# evaluation rows drawn as points on a panel: the demo's greedy validation accuracy and eval_strategy's metrics
EVALUATIONS = {
    "reward": [("eval_reward", "eval_reward (sampled, eval prompts)", "C1")],
    "accuracy": [("eval/accuracy", "greedy accuracy on validation problems", "C3"),
                 ("eval_accuracy", "eval_accuracy (sampled, eval prompts)", "C1")],
}


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; give the output_dir of a reasonrl run")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a blank line, or the torn last line of a killed run
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{path} holds no metrics rows; give the output_dir of a run that took a step")
    return rows


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: str, out_dir: str | None = None, references: dict | None = None) -> list[str]:
    """Write reward.png, accuracy.png, kl.png, completion_length.png and no_signal.png; returns their paths.
    `references`: {panel: [(value, label), ...]} drawn as dashed horizontal lines (e.g. the demo's lr-0 control
    on the reward panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    steps = [row["step"] for row in rows]
    window = max(1, len(rows) // 20)
    written = []
    for name, (key, title) in PANELS.items():
        figure, axis = plt.subplots(figsize=(6, 3.6), dpi=110)
        series = {}
        if name == "accuracy":
            for metric in sorted({k for row in rows for k in row}):
                if metric.startswith("rewards/") and "accuracy" in metric and metric.endswith("/mean"):
                    series[f"train: {metric.split('/')[1]}"] = metric
        else:
            series[key] = key
        for label, metric in series.items():
            points = [(row["step"], row[metric]) for row in rows
                      if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]
            if not points:
                continue
            xs, ys = zip(*points)
            axis.plot(xs, ys, alpha=0.3, linewidth=1, color="C0")
            axis.plot(xs, _smooth(list(ys), window), linewidth=2, color="C0", label=f"{label} (mean of {window})")
        # evaluations: the demo's greedy validation accuracy, and the trainer's (eval_strategy) sampled metrics
        for metric, label, color in EVALUATIONS.get(name, ()):
            evals = [(row["step"], row[metric]) for row in rows if isinstance(row.get(metric), (int, float))]
            if evals:
                xs, ys = zip(*evals)
                axis.plot(xs, ys, "o-", color=color, label=label)
        for value, label in (references or {}).get(name, ()):
            axis.axhline(value, linestyle="--", color="C7", label=label)
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.set_xlim(min(steps), max(steps) if len(steps) > 1 else min(steps) + 1)
        figure.tight_layout()
        path = os.path.join(out_dir, f"{name}.png")
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written
