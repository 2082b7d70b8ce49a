"""What a run writes about itself: a round's metrics, metrics.jsonl and completions.jsonl, the progress lines.

Rank 0 writes; every rank computes the same (global) values. The trainer calls these; none of them changes training.
"""

from __future__ import annotations

import copy
import json
import math
import os

import torch

from reasonrl.core import nanstd

# what the progress line prints every logging_steps
PROGRESS_KEYS = ("reward", "reward_std", "loss", "kl", "entropy", "completions/mean_length", "grad_norm")


def round_metrics(rewards: torch.Tensor, rewards_per_func: torch.Tensor, errors: dict, reward_names: list[str],
                  lengths: torch.Tensor, is_truncated: torch.Tensor, num_generations: int, scale_rewards: str,
                  truncated_prompts: int) -> dict:
    """TRL's round metrics from the whole round (all processes): rewards [B_all] combined and rewards_per_func
    [B_all, F] (NaN where a call failed), completion lengths and truncation flags [B_all]."""
    # as TRL: the std that scaled the advantages (the batch's under scale_rewards="batch")
    group_std = nanstd(rewards) if scale_rewards == "batch" else nanstd(rewards.view(-1, num_generations), dim=1)
    metrics = {
        "reward": torch.nanmean(rewards).item(),
        "reward_std": nanstd(rewards).item(),
        "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std)).float().mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": is_truncated.mean().item(),
        "prompts/truncated": truncated_prompts,
        "rollout_tokens": int(lengths.sum()),
    }
    for i, name in enumerate(reward_names):
        metrics[f"rewards/{name}/mean"] = torch.nanmean(rewards_per_func[:, i]).item()
        metrics[f"rewards/{name}/std"] = nanstd(rewards_per_func[:, i]).item()
        metrics[f"rewards/{name}/errors"] = errors[name]
    return metrics


def add_logged_metrics(metrics: dict, logged: dict[str, tuple[float, int]]) -> dict:
    """The round's metrics plus what the rewards logged with log_metric: each name's mean over the round's calls
    and processes (TRL's sum / count), under the name as given. A name that is one of the round's own metrics is
    a RewardError (it would silently replace it)."""
    from reasonrl.errors import RewardError

    for name, (total, count) in logged.items():
        if name in metrics:
            raise RewardError(f"a reward function called log_metric({name!r}, ...), which is the name of one of the "
                              f"run's own metrics; log it under another name")
        metrics[name] = total / count
    return metrics


def completion_samples(prompts: list, texts: list[str], rewards_per_func: torch.Tensor, advantages: torch.Tensor,
                       reward_names: list[str], num_generations: int, step: int,
                       extra_columns: dict[str, list] | None = None) -> list[dict]:
    """The first completion of each prompt, with its rewards (None where the call failed), advantage and the
    columns the rewards logged with log_extra (under "extra")."""
    samples = []
    for i in range(0, len(texts), num_generations):
        rewards = {name: (None if math.isnan(v) else v) for name, v in zip(reward_names, rewards_per_func[i].tolist())}
        sample = {"step": step, "prompt": prompts[i], "completion": texts[i], "rewards": rewards,
                  "advantage": advantages[i].item()}
        if extra_columns:
            sample["extra"] = {column: values[i] for column, values in extra_columns.items()}
        samples.append(sample)
    return samples


def append_jsonl(path: str, rows: list[dict], default=None) -> None:
    """`default` as json.dumps's: None raises on a value JSON cannot hold (metrics), str writes its text (samples)."""
    with open(path, "a") as handle:
        handle.writelines(json.dumps(row, default=default) + "\n" for row in rows)


def print_progress(row: dict, completions: list | None, num_completions: int | None) -> None:
    """One line of the step's main metrics, and a few of the round's completions when given."""
    from tqdm.auto import tqdm

    tqdm.write(f"step {row['step']}: " + "  ".join(f"{k}={row[k]:.4g}" for k in PROGRESS_KEYS if k in row))
    for sample in (completions or [])[:num_completions]:  # None: all of them, as TRL
        extra = "".join(f"\n  {column}: {value!r}" for column, value in sample.get("extra", {}).items())
        tqdm.write(f"  prompt: {str(sample['prompt'])[-200:]!r}\n  completion: {sample['completion']!r}"
                   f"\n  rewards: {sample['rewards']}{extra}")


# what the evaluation line prints (after the prefix: eval_reward, eval_my_set_reward, ...)
EVALUATION_KEYS = ("reward", "reward_std", "accuracy", "completions/mean_length", "loss", "runtime")


def print_evaluation(row: dict) -> None:
    """One line of an evaluation's main metrics, with its pass@k."""
    from tqdm.auto import tqdm

    shown = [key for key in row if key.endswith(tuple(f"_{name}" for name in EVALUATION_KEYS)) or "_pass_at_" in key]
    tqdm.write(f"eval at step {row['step']}: " + "  ".join(
        f"{key}={row[key]:.4g}" for key in shown if isinstance(row[key], (int, float))))


def last_rows(log_history: list[dict]) -> list[dict]:
    """The last optimizer step's row and the last evaluation's, in their order: what a checkpoint keeps of the log
    (a model card shows both)."""
    step = next((row for row in reversed(log_history) if "loss" in row), None)
    evaluation = next((row for row in reversed(log_history) if any(key.startswith("eval_") for key in row)), None)
    return [row for row in log_history if row is step or row is evaluation]


def record_round(rows: list[dict], rollout, scores, rewards: torch.Tensor, advantages: torch.Tensor,
                 reward_names: list[str], args, dist, truncated_prompts: int,
                 step: int) -> tuple[dict, list, list | None]:
    """A round's record: its metrics over all processes (rewards [B_all], lengths, truncation, the rewards'
    log_metric values, tool counts), the samples printed and written to completions.jsonl (the first completion
    of each prompt, every process's in rank = draw order; rank 0 writes them) and, with log_completions and a
    tracker, the trackers' table of every completion (else None). `advantages`: this process's rows'."""
    from reasonrl import distributed
    from reasonrl.tools import tool_metrics

    model_tokens = rollout.completion_mask if rollout.tool_mask is None else rollout.completion_mask * (
        rollout.tool_mask)  # as TRL: tool-result tokens are not counted in the lengths
    lengths = distributed.all_gather_rows(model_tokens.sum(-1).float(), dist)  # [B_all]
    is_truncated = distributed.all_gather_rows(rollout.is_truncated.float(), dist)  # [B_all]
    metrics = round_metrics(rewards, scores.rewards_per_func, scores.errors, reward_names, lengths, is_truncated,
                            args.num_generations, args.scale_rewards, truncated_prompts)
    add_logged_metrics(metrics, scores.logged_metrics)  # the rewards' log_metric values
    if rollout.tool_counts is not None:  # tools/*: calls, failures, timeouts and turns over all processes
        metrics.update(tool_metrics(distributed.all_reduce_sum(rollout.tool_counts.clone(), dist)))
    mine = distributed.shard(rewards.size(0), dist)
    # each rollout's own prompt where it has one (an environment's observation added), else the row's
    prompts = rollout.prompts or [row["prompt"] for row in rows for _ in range(args.num_generations)]
    extra = {column: values[mine] for column, values in scores.logged_columns.items()}  # the rewards' log_extra

    def gathered_samples(stride: int) -> list[dict]:  # every stride-th completion of every process, in rank order
        samples = completion_samples(prompts, rollout.texts, scores.rewards_per_func[mine], advantages, reward_names,
                                     stride, step, extra)
        return [sample for part in distributed.gather_objects(samples, dist) for sample in part]

    samples = gathered_samples(args.num_generations)
    table = gathered_samples(1) if args.log_completions and args.loggers else None
    if dist.is_main:
        append_jsonl(os.path.join(args.output_dir, "completions.jsonl"), samples, default=str)
    return metrics, samples, table


def train_summary(rows: list[dict], runtime: float, args, state, world_size: int) -> dict:
    """The row train() ends with, as transformers' Trainer writes it into state.log_history (`train_loss`: the mean
    step loss of this call; `train_runtime`, `train_samples_per_second`, ...), with the mean of each metric over the
    last logging_steps step rows, as TRL's rows carry the means of their logging window; no `loss`, like theirs.
    `rows`: this call's rows (steps and evaluations)."""
    steps = [row for row in rows if "loss" in row]
    window = steps[-max(1, int(state.logging_steps or 1)):]
    means = {key: sum(row[key] for row in window) / len(window) for key in window[-1]
             if key not in ("step", "epoch", "loss") and all(_is_number(row.get(key)) for row in window)} \
        if window else {}
    losses = [row["loss"] for row in steps if math.isfinite(row["loss"])]
    samples = len(steps) * args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    return {**means, "train_runtime": runtime,
            "train_samples_per_second": samples / runtime if runtime else 0.0,
            "train_steps_per_second": len(steps) / runtime if runtime else 0.0,
            "train_loss": sum(losses) / len(losses) if losses else 0.0,
            "step": state.global_step, "epoch": round(state.epoch, 4)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def start_logs(output_dir: str, global_step: int) -> None:
    """A new run starts new logs; a resumed one keeps the rows up to its checkpoint's step, so that the steps it
    redoes are not logged twice."""
    for name in ("metrics.jsonl", "completions.jsonl"):
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            continue
        kept = []
        if global_step > 0:
            with open(path) as handle:
                kept = [line for line in handle if _step_of(line) <= global_step]
        with open(path, "w") as handle:
            handle.writelines(kept)


def _step_of(line: str) -> float:
    """A log line's step; infinity (dropped on resume) for a blank line or one a killed run left half-written."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def without_trackers(args):
    """A copy of the config that reports nowhere (ranks other than 0); no re-validation."""
    quiet = copy.copy(args)
    quiet.report_to = "none"
    return quiet
