"""Forward and backward of one micro-batch of a scored round: the policy's log-probs of its completions, the GRPO
loss (core.grpo_loss) scaled to its share of the optimizer step (core.StepNormaliser), and loss.backward().

How the forward runs was decided once, at start-up (policy.plan_forward): the micro-batch's prompts run once
(policy.PromptPrefix) and its completions go through forward and backward a few rows at a time, each chunk's loss
weighted by its share of the micro-batch's normaliser, so the gradient is the micro-batch's; or all rows at once
(DDP, entropy masking), the prompts' cache then staying in the graph.

`logps_in_chunks` is the same forward without gradient, over a whole round: the log-probs at sampling time (when a
round is reused) and the reference's (beta > 0).
"""

from __future__ import annotations

import torch

from reasonrl import distributed
from reasonrl.core import StepNormaliser, entropy_bonus, grpo_loss, high_entropy_mask, masked_mean, sequence_metrics
from reasonrl.policy import ForwardPlan, PromptPrefix, sequence_logprobs
from reasonrl.rounds import Batch


class MicroStep:
    """`micro_step(batch, rows, normaliser, index)`: gradients of micro-batch `index` of an optimizer step (rows: its
    row indices into the round) added to the model's .grad; returns its scaled loss and its metrics (the window's
    loss is the sum of its micro-batches' scaled losses)."""

    def __init__(self, model, args, plan: ForwardPlan, dist, autocast):
        self.model = model  # the training forward's model (DDP-wrapped under torchrun)
        self.args, self.plan, self.dist, self.autocast = args, plan, dist, autocast
        self.entropy_masking = args.top_entropy_quantile < 1.0
        self.sequence_metrics = sequence_metrics(args.importance_sampling_level)  # combined over chunks by rows
        self.entropy_coef = EntropyCoefficient(args)  # the entropy bonus's coefficient (adaptive or not)

    def __call__(self, batch: Batch, rows: torch.Tensor, normaliser: StepNormaliser, index: int):
        args, rollout = self.args, batch.rollout
        completion_mask = rollout.completion_mask[rows]
        # trim padding columns this micro-batch does not need
        width = int(completion_mask.sum(-1).max().clamp(min=1))
        columns = slice(0, width)
        prompt_mask = rollout.prompt_mask[rows]
        prompt_start = int((prompt_mask.sum(0) > 0).nonzero()[0])
        prompt_ids, prompt_mask = rollout.prompt_ids[rows][:, prompt_start:], prompt_mask[:, prompt_start:]
        completion_ids, completion_mask = rollout.completion_ids[rows][:, columns], completion_mask[:, columns]
        mask = batch.loss_mask[rows][:, columns]  # [b, C]
        old_logps = None if batch.old_logps is None else batch.old_logps[rows][:, columns]
        ref_logps = None if batch.ref_logps is None else batch.ref_logps[rows][:, columns]
        sampler_weights = None if batch.sampler_weights is None else batch.sampler_weights[rows][:, columns]
        # vLLM's log-probs stand for the sampling policy in the off-policy mask (TRL); a rollout_func's are not used
        sampled_by_engine = args.use_vllm and rollout.sampling_logps is not None
        sampling_logps = rollout.sampling_logps[rows][:, columns] if sampled_by_engine else None
        num_rows = len(rows)
        chunk_rows = self.plan.rows_per_chunk(num_rows, width)
        prefix = None
        if self.plan.chunked:
            with self.autocast():
                prefix = PromptPrefix(self.model, prompt_ids, prompt_mask)

        loss_total, values = 0.0, {}
        for start in range(0, num_rows, chunk_rows):
            chunk = slice(start, start + chunk_rows)
            with self.autocast():  # log-probs [n, C] and, for the metric, entropies [n, C]
                if prefix is not None:
                    logps, entropy = prefix.completion_logprobs(chunk, completion_ids[chunk], completion_mask[chunk],
                                                                args.temperature, with_entropy=True)
                else:
                    logps, entropy = sequence_logprobs(self.model, prompt_ids, prompt_mask, completion_ids,
                                                       completion_mask, args.temperature, with_entropy=True,
                                                       share_prompts=self.plan.share_prompts)
            entropy_mask = None
            if self.entropy_masking:  # over the micro-batch's loss tokens on every process, as TRL
                pool = distributed.all_gather_varlen(entropy.detach()[mask[chunk].bool()].float(), self.dist)
                entropy_mask = high_entropy_mask(entropy.detach(), mask[chunk], args.top_entropy_quantile, pool)
            loss, metrics = grpo_loss(
                logps.float(), None if old_logps is None else old_logps[chunk],
                None if ref_logps is None else ref_logps[chunk], batch.advantages[rows][chunk], mask[chunk],
                loss_type=args.loss_type, epsilon=args.epsilon, epsilon_high=args.epsilon_high, beta=args.beta,
                importance_sampling_level=args.importance_sampling_level,
                max_completion_length=args.max_completion_length, delta=args.delta,
                num_items=normaliser.num_items, use_bias_correction_kl=args.use_bias_correction_kl,
                sapo_temperature_pos=args.sapo_temperature_pos, sapo_temperature_neg=args.sapo_temperature_neg,
                vespo_k_pos=args.vespo_k_pos, vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
                vespo_lambda_neg=args.vespo_lambda_neg, entropy_mask=entropy_mask,
                off_policy_threshold=args.off_policy_mask_threshold,
                sampler_weights=None if sampler_weights is None else sampler_weights[chunk],
                sampling_logps=None if sampling_logps is None else sampling_logps[chunk])
            scaled = normaliser.scaled(loss, index, mask[chunk], mask)
            if self.entropy_coef.enabled:  # L = L_policy - entropy_coef * H, over the tokens the policy loss uses
                bonus_mask = mask[chunk] if entropy_mask is None else mask[chunk] * entropy_mask
                bonus_tokens = mask.sum() if entropy_mask is None else bonus_mask.sum()  # the micro-batch's
                bonus = entropy_bonus(entropy, bonus_mask, bonus_tokens, len(normaliser.divisors))
                self.entropy_coef.observe(entropy.detach(), bonus_mask)
                values["policy_loss"] = values.get("policy_loss", 0.0) + scaled.item() * len(normaliser.divisors)
                scaled = scaled - self.entropy_coef.applied * bonus
            scaled.backward()
            loss_total += scaled.item()
            entropy = entropy.detach()
            # over the loss tokens, as TRL: not over tool results (or an environment's tokens) nor, with
            # mask_truncated_completions, truncated completions
            metrics["entropy"] = masked_mean(entropy, mask[chunk])
            # token-weighted (row-weighted for means over sequences), so that the chunks' metrics add up to the
            # micro-batch's means
            loss_share = mask[chunk].sum().item() / max(1, mask.sum().item())
            shares = {"entropy": loss_share}
            shares.update(dict.fromkeys(self.sequence_metrics, logps.size(0) / num_rows))
            for key, value in metrics.items():
                values[key] = values.get(key, 0.0) + shares.get(key, loss_share) * value.item()
            del logps, entropy, loss, scaled
        if prefix is not None:
            prefix.backward()
        return loss_total, values


class EntropyCoefficient:
    """The entropy bonus's coefficient (entropy_coef). Static, or under use_adaptive_entropy (Skywork-OR1) moved
    after each optimizer step by the step's mean entropy over the tokens the policy loss used, on every process:
    up by entropy_coef_delta at or below entropy_target, down above it. `applied` is what the step's micro-batches
    use: the coefficient, or 0 (adaptive) when the previous step's entropy was above the target (none yet: 0)."""

    def __init__(self, args):
        self.args = args
        self.value = args.entropy_coef
        self.enabled = args.entropy_coef != 0.0 or args.use_adaptive_entropy
        self.last_entropy = float("inf")  # the mean entropy of the last optimizer step
        self._window = torch.zeros(2, dtype=torch.float64)  # this step's entropy sum and token count

    @property
    def applied(self) -> float:
        if self.args.use_adaptive_entropy and self.last_entropy > self.args.entropy_target:
            return 0.0
        return self.value

    def observe(self, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        self._window += torch.stack([(entropy * mask).sum(), mask.sum()]).double().cpu()

    def end_step(self, dist) -> None:
        """After the step's last micro-batch: update the coefficient (adaptive) from the step's mean entropy."""
        if self.args.use_adaptive_entropy:
            total, tokens = distributed.all_reduce_sum(self._window.to(dist.device, copy=True), dist).tolist()
            self.last_entropy = total / max(tokens, 1.0)
            args = self.args
            if self.last_entropy <= args.entropy_target:
                self.value = min(self.value + args.entropy_coef_delta, args.entropy_coef_max)
            else:
                self.value = max(self.value - args.entropy_coef_delta, args.entropy_coef_min)
        self._window.zero_()

    def discard_step(self) -> None:
        """Forget what this step observed (the pre-flight check's stand-in micro-step)."""
        self._window.zero_()

    def state_dict(self) -> dict:
        return {"entropy_coef": self.value, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.last_entropy = state["entropy_coef"], state["last_entropy"]


def logps_in_chunks(model, rollout, args, autocast, share_prompts: bool = True) -> torch.Tensor:
    """Log-probs [B, C] of a round's completions under `model` (the policy at sampling time, or the reference),
    per_device_train_batch_size rows at a time, in eval mode; call it under torch.no_grad()."""
    was_training = model.training
    model.eval()
    size = args.per_device_train_batch_size
    pieces = []
    for start in range(0, rollout.completion_ids.size(0), size):
        rows = slice(start, start + size)
        with autocast():  # rows with the same prompt compute it once (share_prompts)
            logps = sequence_logprobs(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                                      rollout.completion_ids[rows], rollout.completion_mask[rows], args.temperature,
                                      share_prompts=share_prompts)
        pieces.append(logps.float())
    model.train(was_training)
    return torch.cat(pieces)
