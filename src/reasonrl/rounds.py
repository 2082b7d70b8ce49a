"""The data a GRPO run carries between its stages: the prompt order, a scored round, a round in progress.

Kept apart from the loop (trainer.py) so that the loop reads top to bottom; checkpoint.py saves these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonrl.rollout import Rollout


@dataclass
class TrainerState:
    """What reward functions see as `trainer_state` (TRL passes its TrainerState; these are its common fields)."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0


class PromptSampler:
    """Shuffled passes over the dataset, one permutation per epoch from (seed, epoch): resumable by position."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        indices = []
        while len(indices) < count:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
            order = self._order()
            chunk = order[self.position: self.position + count - len(indices)]
            indices += chunk
            self.position += len(chunk)
        return indices

    @property
    def draws(self) -> int:
        """Prompts drawn so far, over all epochs: the next prompt's draw number."""
        return self.epoch * self.size + self.position

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / self.size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


@dataclass
class Batch:
    """A scored round, ready for the optimizer: B = prompts x G rows."""

    rollout: Rollout
    advantages: torch.Tensor  # [B]
    loss_mask: torch.Tensor  # [B, C] completion mask, minus truncated rows if mask_truncated_completions
    old_logps: torch.Tensor | None  # [B, C] when the round is reused (off-policy), else None
    ref_logps: torch.Tensor | None  # [B, C] when beta > 0
    rewards: torch.Tensor | None = None  # [B] combined rewards (NaN = unscorable): what dynamic sampling filters on


@dataclass
class RoundProgress:
    """A round being optimized: what a checkpoint saved in its middle holds, so that resuming finishes it exactly."""

    batch: Batch
    metrics: dict  # the round's metrics, as its next optimizer step logs them
    orders: torch.Tensor  # [num_iterations, B] the micro-batch order of each pass, all drawn at the round start
    num_windows: int  # optimizer steps in the round (num_iterations x windows per pass)
    next_window: int = 0  # optimizer steps of the round already taken
    last_completions: list | None = None  # what log_completions prints

    @property
    def done(self) -> bool:
        return self.next_window >= self.num_windows


def group_order(num_rows: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of the rows that keeps each group's rows together: groups shuffled, rows in place within them.

    Micro-batches cut from it hold whole groups (or slices of one), so their rows share a prompt that the training
    forward computes once (rollout.completion_logits(share_prompts=True)). Which rows meet in a micro-batch does not
    change an optimizer step's gradient when the step covers the round (the default), only the cost of computing it.
    """
    groups = torch.randperm(num_rows // group_size, generator=generator)  # [B / G]
    return (groups[:, None] * group_size + torch.arange(group_size)).flatten()  # [B]


def is_every(step: int, every: float, total_steps: int) -> bool:
    """TrainingArguments' convention: `every` steps, or a fraction of all steps when it is in (0, 1); 0 = never."""
    if not every:
        return False
    interval = int(every) if every >= 1 else max(1, round(every * total_steps))
    return step % interval == 0
