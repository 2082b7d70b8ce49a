"""`reasonrl explain`: the GRPO maths of one step, worked through live by reasonrl.core.

Each completion is treated as a one-token sequence so every number on screen can be checked by hand.
"""

from __future__ import annotations

import math

import torch

from reasonrl.core import group_advantages, grpo_loss, k3_kl, nanstd


def _row(values) -> str:
    return "[" + ", ".join("  nan" if math.isnan(v) else f"{v + 0.0:+.4f}" for v in values) + "]"


def explain(
    rewards: list[float],
    num_generations: int = 4,
    eps: float = 1e-8,
    log_ratios: list[float] | None = None,
    ref_gaps: list[float] | None = None,
    epsilon: float = 0.2,
    beta: float = 0.04,
    scale: str = "group",
    print_fn=print,
) -> dict:
    """Print the worked example and return its numbers (for tests)."""
    n = len(rewards)
    reward_tensor = torch.tensor(rewards, dtype=torch.float32)  # [N]
    advantages = group_advantages(reward_tensor, num_generations, scale=scale, eps=eps)  # [N]
    grouped = reward_tensor.view(-1, num_generations)
    means = torch.nanmean(grouped, dim=1)
    stds = nanstd(grouped, dim=1)
    # On the first optimisation pass the policy *is* the sampling policy: ratio 1 unless the user says otherwise.
    log_ratio = torch.tensor(log_ratios if log_ratios is not None else [0.0] * n).view(n, 1)
    ref_gap = torch.tensor(ref_gaps if ref_gaps is not None else [0.0] * n).view(n, 1)
    logps = log_ratio.clone().requires_grad_()  # old log-prob 0, so logp = log-ratio
    ref_logps = ref_gap  # ref - old; k3 uses ref - logp
    mask = torch.ones(n, 1)
    ratio = torch.exp(log_ratio).squeeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    surrogate = -torch.minimum(ratio * advantages, clipped * advantages)
    kl = k3_kl(log_ratio, ref_logps).squeeze(1)
    loss, metrics = grpo_loss(logps, torch.zeros(n, 1), ref_logps, advantages, mask, loss_type="grpo",
                              epsilon=epsilon, beta=beta)
    loss.backward()

    p = print_fn
    p(f"GRPO, one step, worked live by reasonrl.core: {n} completions, {n // num_generations} prompts x "
      f"G={num_generations}\n")
    p("1. Rewards r_i from the reward functions (one per completion, grouped by prompt)")
    for g in range(n // num_generations):
        p(f"   prompt {g}: {_row(grouped[g].tolist())}")
    p("\n2. Group statistics: mean_g = (1/G) sum r_i,  std_g = sqrt(sum (r_i - mean_g)^2 / (G - 1))  (Bessel)")
    p(f"   means: {_row(means.tolist())}\n   stds:  {_row(stds.tolist())}")
    formula = {"group": "(r_i - mean_g) / (std_g + eps)", "batch": "(r_i - mean_g) / (std_batch + eps)",
               "none": "r_i - mean_g"}[scale]
    p(f"\n3. Advantages A_i = {formula}, eps={eps:g}  (scale_rewards={scale!r})")
    p(f"   A: {_row(advantages.tolist())}")
    p("   A group whose rewards are all equal gets A = 0: it teaches nothing (frac_reward_zero_std).")
    p("\n4. Probability ratio rho_i = exp(log pi_theta - log pi_old)")
    p(f"   rho: {_row(ratio.tolist())}")
    p(f"\n5. Clipped surrogate L_clip,i = -min(rho_i A_i, clip(rho_i, 1-{epsilon:g}, 1+{epsilon:g}) A_i)")
    p(f"   clip(rho): {_row(clipped.tolist())}\n   L_clip:    {_row(surrogate.tolist())}")
    p("\n6. KL penalty, k3 estimator: KL_i = exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1")
    p(f"   KL: {_row(kl.tolist())}")
    p(f"\n7. Total loss = mean_i (L_clip,i + beta KL_i), beta={beta:g}  (loss_type='grpo': mean over sequences)")
    p(f"   loss = {loss.item():+.6f}")
    p(f"   d loss / d log pi_theta: {_row(logps.grad.squeeze(1).tolist())}")
    if abs(loss.item()) < 1e-12 and logps.grad.abs().sum() > 0:
        p("\n   The loss is exactly 0, yet the gradient is not: on-policy, the loss value is -mean(A) = 0, but its\n"
          "   gradient -A_i/N raises the log-probability of better-than-average completions and lowers the rest.")
    return {"means": means.tolist(), "stds": stds.tolist(), "advantages": advantages.tolist(),
            "loss": loss.item(), "kl": metrics["kl"].item(), "grad": logps.grad.squeeze(1).tolist()}
