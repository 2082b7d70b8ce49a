"""Evaluation during training (TRL's `trainer.evaluate()` and `eval_strategy`): sample, score, report; no step.

What TRL 1.16's GRPOTrainer does in eval mode: each eval prompt gets num_generations_eval completions sampled as in
training (the sampling options and generation_kwargs, the chat template's kwargs, tools), every reward function
scores them, and its metrics are logged with the prefix eval_: reward, reward_std, frac_reward_zero_std,
rewards/<fn>/mean and /std, completions/mean_length, /min_length, /max_length, /clipped_ratio, tools/*, what the
rewards log_metric, and the loss of the batch with its entropy, kl and clip ratios (on-policy, so its importance
ratio is 1), plus eval_runtime, eval_samples_per_second and eval_steps_per_second. As in TRL, each of these is
computed per eval batch (per_device_eval_batch_size completions, whole prompts) and averaged over the batches, NaN
values left out.

reasonrl adds eval_accuracy (the share of sampled completions that are correct: pass@1) and eval_pass_at_<k> for
k = 2, 4, ... and num_generations_eval (evaluate.py's unbiased estimator, averaged over prompts) when it can tell a
correct completion: a reward function that is a verifier (the built-in `accuracy`, a task's `<task>_accuracy`,
TRL's `accuracy_reward`, `reasoning_gym`; above 0.5 is correct, as `reasonrl eval`), or else reasonrl's accuracy
reward when the rows have an `answer` or `solution` column.

Evaluation leaves training as it was: its samples are drawn from seeds of their own (the eval prompt's index under
the run's seed, never a training draw number), so the same weights give the same evaluation, and the global random
states are restored afterwards; no training counter moves. A run with evaluation trains the same weights as one
without, and resumes bitwise.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

from reasonrl import checkpoint as ckpt
from reasonrl import distributed, runlog
from reasonrl.core import group_advantages, grpo_loss, high_entropy_mask, masked_mean
from reasonrl.data import PromptTokenizer, load_eval_dataset
from reasonrl.errors import DataError, RewardError
from reasonrl.evaluate import mean_pass_at_k
from reasonrl.models import reference_policy
from reasonrl.policy import sequence_logprobs
from reasonrl.rollout import Rollout, sampling_options
from reasonrl.scoring import call_reward, combine_rewards, log_failures_once, score_rollout
from reasonrl.tools import tool_metrics

EVAL_SEED_OFFSET = 2**32  # seed + this: a stream of sampling seeds no training draw uses (seed < 2**32)
NOT_EVAL_METRICS = ("prompts/truncated", "rollout_tokens")  # round_metrics' keys about the training stream


def is_verifier(name: str) -> bool:
    """A reward whose value says whether a completion is correct (by its name: `accuracy`, `<task>_accuracy`,
    TRL's `accuracy_reward`, `reasoning_gym`)."""
    return name.removesuffix("_reward").endswith("accuracy") or name == "reasoning_gym"


def pass_at_k_sizes(num_generations: int) -> list[int]:
    """The k of eval_pass_at_<k>: 2, 4, 8, ... below num_generations, and num_generations itself."""
    sizes = [2**i for i in range(1, num_generations.bit_length()) if 2**i < num_generations]
    return sizes + [num_generations] if num_generations > 1 else []


@dataclass
class Evaluator:
    """What an evaluation needs from the trainer (built once; `evaluator(rows, trainer_state, prefix)`)."""

    model: torch.nn.Module
    tokenizer: object
    args: object
    dist: object
    reward_funcs: list
    reward_names: list[str]
    reward_weights: torch.Tensor
    rollouts: object  # the trainer's rollout_hooks.RolloutStage: sampling, tools, environments or rollout_func
    autocast: object  # the trainer's bf16 context
    reference_model: torch.nn.Module | None = None
    logged_failures: set = field(default_factory=set)

    def __call__(self, rows: list[dict], trainer_state, prefix: str = "eval", after_batch=None) -> dict:
        """The metrics of one eval set, keys prefixed `prefix`_ (as TRL's metric_key_prefix); `after_batch()` runs
        after each eval batch (the trainer's on_prediction_step)."""
        args, g = self.args, self.args.num_generations_eval or self.args.num_generations
        start = time.perf_counter()
        judge = self._judge(rows[0])
        # whole prompts per batch: per_device_eval_batch_size completions, at least one prompt
        prompts_per_batch = max(1, args.per_device_eval_batch_size // g)
        seeds = distributed.prompt_seeds(args.seed + EVAL_SEED_OFFSET, 0, len(rows))
        prompt_tokenizer = PromptTokenizer(self.tokenizer, args.max_prompt_length,  # its own truncation count
                                           self.rollouts.schemas,
                                           args.chat_template_kwargs)
        mine = list(range(self.dist.rank, len(rows), self.dist.world_size))  # this process's prompts
        batches, correct_counts, errors = [], [], dict.fromkeys(self.reward_names, 0)
        was_training = self.model.training
        self.model.eval()
        with _global_rng_kept(), torch.no_grad():
            for first in range(0, len(mine), prompts_per_batch):
                indices = mine[first: first + prompts_per_batch]
                batch_rows = [rows[i] for i in indices]
                prompt_ids, prompt_mask = prompt_tokenizer([row["prompt"] for row in batch_rows],
                                                           device=self.dist.device)
                with self.autocast():
                    rollout = self.rollouts(
                        self.model, batch_rows, prompt_ids, prompt_mask, num_generations=g,
                        max_new_tokens=args.max_completion_length, eos_token_id=self.tokenizer.eos_token_id,
                        pad_token_id=self.tokenizer.pad_token_id, seeds=[seeds[i] for i in indices],
                        **sampling_options(args))  # the training rollouts' (generation_kwargs included)
                scores = score_rollout(self.reward_funcs, self.reward_names, batch_rows, rollout, g, trainer_state,
                                       timeout=args.reward_timeout)
                log_failures_once(scores, self.logged_failures)
                for name, count in scores.errors.items():
                    errors[name] += count
                rewards = combine_rewards(scores.rewards_per_func, self.reward_weights, self.reward_names)  # [b*G]
                batches.append({**self._reward_metrics(rollout, scores, rewards, g),
                                **self._loss_metrics(rollout, rewards, g)})
                if judge is not None:
                    correct = self._correct(judge, scores, batch_rows, rollout, g)  # [b*G] bool
                    correct_counts += correct.view(-1, g).sum(-1).tolist()
                if after_batch is not None:
                    after_batch()
        self.model.train(was_training)
        # one collective for the whole evaluation: every process's batches and counts
        parts = distributed.gather_objects((batches, correct_counts, errors), self.dist)
        batches = [batch for part in parts for batch in part[0]]
        correct_counts = [count for part in parts for count in part[1]]
        errors = {name: sum(part[2][name] for part in parts) for name in self.reward_names}
        failed = sum(errors.values())
        if failed and failed > args.max_reward_error_fraction * len(rows) * g * len(self.reward_funcs):
            raise RewardError(f"{failed} of the {len(rows) * g * len(self.reward_funcs)} reward values of the "
                              f"evaluation failed, more than max_reward_error_fraction="
                              f"{args.max_reward_error_fraction:g}; fix the reward function (its first failure is "
                              f"logged above), or raise max_reward_error_fraction")
        metrics = _average(batches)
        metrics.update({f"rewards/{name}/errors": count for name, count in errors.items()})  # values, not means
        if correct_counts:
            metrics["accuracy"] = sum(correct_counts) / (len(correct_counts) * g)
            for k, value in mean_pass_at_k(correct_counts, g, pass_at_k_sizes(g)).items():
                metrics[f"pass_at_{k}"] = value
        runtime = time.perf_counter() - start
        completions = len(rows) * g
        steps = math.ceil(completions / (args.per_device_eval_batch_size * self.dist.world_size))
        metrics.update(runtime=round(runtime, 4), samples_per_second=round(completions / runtime, 3),
                       steps_per_second=round(steps / runtime, 3))
        return {f"{prefix}_{key}": value for key, value in metrics.items()}

    # ---------------------------------------------------------------- one batch

    def _reward_metrics(self, rollout: Rollout, scores, rewards: torch.Tensor, g: int) -> dict:
        """TRL's reward and completion metrics of one batch (runlog.round_metrics, as training logs them)."""
        model_tokens = rollout.completion_mask if rollout.tool_mask is None else (
            rollout.completion_mask * rollout.tool_mask)  # tool-result tokens are not the model's length
        metrics = runlog.round_metrics(rewards, scores.rewards_per_func, scores.errors, self.reward_names,
                                       model_tokens.sum(-1).float(), rollout.is_truncated.float(), g,
                                       self.args.scale_rewards, 0)
        for key in [*NOT_EVAL_METRICS, *(f"rewards/{name}/errors" for name in self.reward_names)]:
            metrics.pop(key)  # counted over the whole evaluation instead
        if g == 1:  # TRL: a group of one has std 0
            metrics["frac_reward_zero_std"] = 1.0
        runlog.add_logged_metrics(metrics, scores.logged_metrics)  # the rewards' log_metric values, as TRL's eval
        if rollout.tool_counts is not None:
            metrics.update(tool_metrics(rollout.tool_counts))
        return metrics

    def _loss_metrics(self, rollout: Rollout, rewards: torch.Tensor, g: int) -> dict:
        """The batch's GRPO loss (no gradient; old log-probs = the policy's, so the ratio is 1), entropy and the
        loss's metrics (kl, clip ratios), as TRL's compute_loss in eval mode."""
        args = self.args
        advantages = group_advantages(rewards, g, scale=args.scale_rewards).to(rollout.completion_ids.device)  # [B]
        loss_mask = rollout.completion_mask if rollout.tool_mask is None else (
            rollout.completion_mask * rollout.tool_mask)
        if args.mask_truncated_completions:
            loss_mask = loss_mask * (~rollout.is_truncated).long()[:, None]
        forward = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        with self.autocast():
            logps, entropy = sequence_logprobs(self.model, *forward, args.temperature, share_prompts=True,
                                               with_entropy=True)  # [B, C] each
            ref_logps = None
            if args.beta != 0.0:
                with reference_policy(self.model, self.reference_model) as reference:
                    ref_logps = sequence_logprobs(reference, *forward, args.temperature, share_prompts=True).float()
        entropy_mask = None
        if args.top_entropy_quantile < 1.0:
            entropy_mask = high_entropy_mask(entropy, loss_mask, args.top_entropy_quantile)
        loss, metrics = grpo_loss(
            logps.float(), None, ref_logps, advantages, loss_mask, loss_type=args.loss_type, epsilon=args.epsilon,
            epsilon_high=args.epsilon_high, beta=args.beta, importance_sampling_level=args.importance_sampling_level,
            max_completion_length=args.max_completion_length, delta=args.delta,
            use_bias_correction_kl=args.use_bias_correction_kl, sapo_temperature_pos=args.sapo_temperature_pos,
            sapo_temperature_neg=args.sapo_temperature_neg, vespo_k_pos=args.vespo_k_pos,
            vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
            vespo_lambda_neg=args.vespo_lambda_neg, entropy_mask=entropy_mask)
        return {"loss": loss.item(), "entropy": masked_mean(entropy.float(), loss_mask).item(),
                **{key: value.item() for key, value in metrics.items()}}

    # ---------------------------------------------------------------- correctness

    def _judge(self, row: dict):
        """The index of the verifier among the reward functions, else reasonrl's accuracy reward when the rows
        have a reference answer, else None (no eval_accuracy)."""
        for index, name in enumerate(self.reward_names):
            if is_verifier(name):
                return index
        if {"answer", "solution"} & set(row):
            from reasonrl.rewards import accuracy_reward

            return accuracy_reward
        return None

    def _correct(self, judge, scores, rows: list[dict], rollout: Rollout, g: int) -> torch.Tensor:
        if isinstance(judge, int):
            values = scores.rewards_per_func[:, judge]
        else:
            columns = {key: [row[key] for row in rows for _ in range(g)] for key in ("answer", "solution")
                       if key in rows[0]}
            values = torch.tensor(call_reward(judge, "accuracy", [], rollout.texts, [], columns), dtype=torch.float32)
        return values.nan_to_num(0.0) > 0.5  # unscorable: not correct


def eval_sets(eval_data, prefix: str = "eval") -> list:
    """[(metric prefix, Dataset)] of prepared eval data (data.load_eval_dataset): one set, or a dict of named ones,
    each with its name in the prefix (eval_<name>), as transformers' evaluate does."""
    if eval_data is None:
        return []
    if isinstance(eval_data, dict):
        return [(f"{prefix}_{name}", data) for name, data in eval_data.items()]
    return [(prefix, eval_data)]


def chosen_eval_sets(eval_dataset, own, args, prefix: str, check) -> list:
    """What trainer.evaluate(eval_dataset) evaluates: the trainer's own sets (`own`) for None, one of its named sets
    for a name, else the data given, prepared as the trainer's were and checked by `check(prefix, dataset)`."""
    if eval_dataset is None:
        if own is None:
            raise DataError("evaluation needs an eval dataset: pass eval_dataset= to GRPOTrainer or to evaluate()")
        return eval_sets(own, prefix)
    if isinstance(eval_dataset, str):
        if not isinstance(own, dict) or eval_dataset not in own:
            names = ", ".join(own) if isinstance(own, dict) else "none"
            raise DataError(f"evaluate(eval_dataset={eval_dataset!r}) names none of the trainer's eval sets (named: "
                            f"{names})")
        return [(prefix, own[eval_dataset])]
    sets = eval_sets(load_eval_dataset(eval_dataset, args, data_from_config=False), prefix)
    for name, data in sets:
        check(name, data)
    return sets


def _average(batches: list[dict]) -> dict:
    """Each metric's mean over the batches that have a finite value of it (None when none has)."""
    keys = dict.fromkeys(key for batch in batches for key in batch)
    averaged = {}
    for key in keys:
        values = [batch[key] for batch in batches if key in batch and not math.isnan(batch[key])]
        averaged[key] = sum(values) / len(values) if values else None
    return averaged


@contextlib.contextmanager
def _global_rng_kept():
    """Python's, numpy's and torch's global random states as they were before (a reward function may draw)."""
    state = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.restore_rng_state(state)
