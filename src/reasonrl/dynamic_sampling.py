"""DAPO's dynamic sampling, the loop part: a round made of generation batches until it holds enough groups with a
learning signal (config: dynamic_sampling, max_num_gen_batches; the filter itself is core.groups_with_signal).

Each generation batch is an ordinary round (the trainer's make_round: draw prompts, generate, score), so a prompt
samples the same completions whether or not dynamic sampling is on (its seed is its draw number), and the prompt
sampler's position after the extra draws is what a checkpoint saves: resuming redoes nothing and skips nothing.

Several processes (DDP): every process draws each generation batch's global prompts and generates for its own
slice, so each holds the groups of its slice. A process keeps its own groups with a signal, up to its share of the
round (prompts_per_generation / world size), so that every process trains on as many rows as the others; the
signal counts are gathered after each generation batch and all processes draw another one until every one has its
share (or max_num_gen_batches is reached), the same decision everywhere, so the prompt sampler stays in step and
resume stays exact. Which groups are kept can differ from one process's choice over the whole round (each process
takes its first, not the round's first), so 2 processes with batch b train like 1 with 2b in expectation, not
exactly. Advantages are computed over the kept groups of all processes, as by one process.
"""

from __future__ import annotations

import logging
import math

import torch

from reasonrl import distributed
from reasonrl.core import group_advantages
from reasonrl.core.filtering import groups_with_signal, select_groups
from reasonrl.rollout import Rollout
from reasonrl.rounds import Batch

logger = logging.getLogger("reasonrl")

PREFIX = "dynamic_sampling/"


class DynamicSampler:
    """Makes the trainer's rounds: as they are when dynamic_sampling is off, refilled when it is on.

    Either way it logs completions_generated and frac_groups_no_signal, the share of the generated groups whose
    rewards all agree by core.groups_with_signal (frac_reward_zero_std misses groups of equal weighted sums such as
    eight 1.2 = 1 + 0.2, whose float32 std is about 1e-7, not 0).
    """

    def __init__(self, args, pad_token_id: int, dist_state: distributed.DistributedState | None = None):
        self.args, self.pad_token_id = args, pad_token_id
        self.dist = dist_state or distributed.DistributedState()
        self.short_rounds = 0  # rounds that hit max_num_gen_batches (the warning is throttled by it)

    def __call__(self, make_round) -> tuple[Batch, dict]:
        """make_round() -> (Batch, metrics) of one generation batch; returns the round's (Batch, metrics)."""
        args, g = self.args, self.args.num_generations
        if not args.dynamic_sampling:
            batch, metrics = make_round()
            # frac_groups_no_signal: of this process's groups (all of them in one process)
            return batch, {**metrics, "completions_generated": args.prompts_per_generation * g,  # all processes
                           "frac_groups_no_signal": 1.0 - groups_with_signal(batch.rewards, g).double().mean().item()}
        wanted = args.prompts_per_generation // self.dist.world_size  # this process's groups in a round
        batches, metrics, signal = [], [], []
        while True:
            batch, batch_metrics = make_round()
            batches.append(batch)
            metrics.append(batch_metrics)
            signal.append(groups_with_signal(batch.rewards, g))  # this process's groups [n]
            counts = distributed.gather_objects(sum(int(s.sum()) for s in signal), self.dist)  # per process
            if min(counts) >= wanted or len(batches) >= args.max_num_gen_batches:  # alike on every process
                break
        kept, _ = select_groups(signal, wanted)
        fillers = [wanted - min(count, wanted) for count in counts]  # what select_groups filled on each process
        if self.dist.is_main and sum(fillers):
            filler, wanted_all = sum(fillers), wanted * self.dist.world_size
            self.short_rounds += 1
            if math.log10(self.short_rounds).is_integer():
                logger.warning("dynamic sampling: %d generation batches (max_num_gen_batches) gave %d of the %d groups "
                               "with a learning signal the round needs; it is filled up with %d groups whose "
                               "rewards all agree (%d such round%s so far); raise max_num_gen_batches, or make the "
                               "task easier/harder for the model", len(batches), wanted_all - filler, wanted_all,
                               filler, self.short_rounds, "" if self.short_rounds == 1 else "s")
        round_batch = concatenate([_rows_of(b, groups, g) for b, groups in zip(batches, kept)], self.pad_token_id)
        # advantages over the kept groups of every process (scale_rewards=batch needs them all), rank order
        rewards = torch.cat(distributed.gather_objects(round_batch.rewards.cpu(), self.dist))  # [all kept rows]
        mine = distributed.shard(rewards.numel(), self.dist)
        round_batch.advantages = group_advantages(rewards, g, scale=args.scale_rewards)[mine].to(
            round_batch.advantages.device)
        generated = sum(int(s.numel()) for s in signal) * self.dist.world_size  # groups of all processes
        with_signal = sum(counts)
        round_metrics = combine_metrics(metrics)
        round_metrics.update({
            "completions_generated": generated * g,
            "frac_groups_no_signal": 1.0 - with_signal / generated,
            PREFIX + "num_gen_batches": len(batches),
            PREFIX + "extra_prompts": generated - args.prompts_per_generation,
            PREFIX + "groups_dropped": generated - with_signal,
            PREFIX + "groups_filled": sum(fillers),
        })
        return round_batch, round_metrics


def _rows_of(batch: Batch, groups: torch.Tensor, num_generations: int) -> Batch:
    """The rows of `groups` (group indices [k]) of a batch: [k * G] rows."""
    rows = (groups[:, None] * num_generations + torch.arange(num_generations)).flatten()  # [k * G]
    r = batch.rollout
    rollout = Rollout(r.prompt_ids[rows], r.prompt_mask[rows], r.completion_ids[rows], r.completion_mask[rows],
                      None if r.sampling_logps is None else r.sampling_logps[rows], r.is_truncated[rows],
                      [r.texts[i] for i in rows.tolist()])
    return Batch(rollout, batch.advantages[rows], batch.loss_mask[rows],
                 None if batch.old_logps is None else batch.old_logps[rows],
                 None if batch.ref_logps is None else batch.ref_logps[rows], batch.rewards[rows],
                 None if batch.sampler_weights is None else batch.sampler_weights[rows])


def concatenate(batches: list[Batch], pad_token_id: int) -> Batch:
    """Batches of one round stacked by rows: prompts left-padded to the widest, completions right-padded (positions
    come from the masks, so padding changes no log-prob)."""
    if len(batches) == 1:
        return batches[0]
    prompt_width = max(b.rollout.prompt_ids.size(1) for b in batches)
    completion_width = max(b.rollout.completion_ids.size(1) for b in batches)

    def left(tensor, value):  # [n, P] -> [n, prompt_width]
        return torch.nn.functional.pad(tensor, (prompt_width - tensor.size(1), 0), value=value)

    def right(tensor, value):  # [n, C] -> [n, completion_width]
        return None if tensor is None else torch.nn.functional.pad(tensor, (0, completion_width - tensor.size(1)),
                                                                    value=value)

    def stacked(pieces):
        return None if any(p is None for p in pieces) else torch.cat(pieces)

    rollout = Rollout(
        torch.cat([left(b.rollout.prompt_ids, pad_token_id) for b in batches]),
        torch.cat([left(b.rollout.prompt_mask, 0) for b in batches]),
        torch.cat([right(b.rollout.completion_ids, pad_token_id) for b in batches]),
        torch.cat([right(b.rollout.completion_mask, 0) for b in batches]),
        stacked([right(b.rollout.sampling_logps, 0.0) for b in batches]),
        torch.cat([b.rollout.is_truncated for b in batches]),
        [text for b in batches for text in b.rollout.texts])
    return Batch(rollout, torch.cat([b.advantages for b in batches]),
                 torch.cat([right(b.loss_mask, 0) for b in batches]),
                 stacked([right(b.old_logps, 0.0) for b in batches]),
                 stacked([right(b.ref_logps, 0.0) for b in batches]),
                 torch.cat([b.rewards for b in batches]),
                 stacked([right(b.sampler_weights, 1.0) for b in batches]))


def combine_metrics(rows: list[dict]) -> dict:
    """One round's metrics from its generation batches' (all of the same size): means averaged, minima and maxima
    kept, counts summed, running totals (prompts/truncated) the last."""
    combined = {}
    for key, value in rows[-1].items():
        values = [row[key] for row in rows if key in row]
        if not isinstance(value, (int, float)) or key == "prompts/truncated":
            combined[key] = value
        elif key.endswith("min_length"):
            combined[key] = min(values)
        elif key.endswith("max_length"):
            combined[key] = max(values)
        elif key == "rollout_tokens" or key.endswith("/errors"):
            combined[key] = sum(values)
        else:
            combined[key] = sum(values) / len(values)
    return combined
