"""The data a GRPO run carries between its stages: the prompt order (of a dataset, or of a stream), a scored round, a
round in progress and the optimizer steps (windows of micro-batches) it is cut into.

Kept apart from the loop (trainer.py) so that the loop reads top to bottom; checkpoint.py saves these.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from reasonrl import checkpoint as ckpt
from reasonrl.errors import ConfigError, DataError
from reasonrl.rollout import Rollout


class PromptSampler:
    """Shuffled passes over the dataset, one permutation per epoch from (seed, epoch): resumable by position."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, dataset=None):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.dataset = dataset  # what take_rows indexes
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

    def take_rows(self, count: int) -> list[dict]:
        return [self.dataset[i] for i in self.take(count)]

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
        if "drawn" in state:
            raise ConfigError("this checkpoint was saved by a run on a stream (an IterableDataset); resume it with the "
                              "same stream")
        self.epoch, self.position = state["epoch"], state["position"]


class PromptStream:
    """The prompts of a datasets.IterableDataset (a training stream) in stream order, PromptSampler's interface.

    A pass reads the stream to its end, then the next pass starts it over (shuffle: datasets' buffered shuffle seeded
    with the run's seed, reseeded per pass by set_epoch, as transformers does). A position is (pass, rows read in it):
    resuming starts the pass over and skips that many rows, which gives the same rows when the stream is the same for
    the same seed and pass (local files, generators, a hub dataset that did not change)."""

    def __init__(self, dataset, seed: int, shuffle: bool = True):
        self.dataset = dataset.shuffle(seed=seed, buffer_size=1000) if shuffle else dataset
        self.epoch, self.position, self.drawn = 0, 0, 0
        self.size: int | None = None  # rows in a pass, known once the first pass has ended
        self._rows: Iterator | None = None

    def take_rows(self, count: int) -> list[dict]:
        from reasonrl.data import prompt_problem

        rows = []
        while len(rows) < count:
            if self._rows is None:
                self.dataset.set_epoch(self.epoch)
                self._rows = itertools.islice(iter(self.dataset), self.position, None)
            row = next(self._rows, None)
            if row is None:  # the end of a pass
                if self.position == 0:
                    raise DataError("the training stream (an IterableDataset) gave no rows; it needs at least one")
                self.size = self.size or self.position
                self.epoch, self.position, self._rows = self.epoch + 1, 0, None
                continue
            problem = prompt_problem(row.get("prompt"))
            if problem:
                raise DataError(f"row {self.position} of the training stream (pass {self.epoch}): the prompt "
                                f"{problem}; fix that row")
            rows.append(row)
            self.position += 1
            self.drawn += 1
        return rows

    @property
    def draws(self) -> int:
        return self.drawn

    @property
    def epochs_done(self) -> float:
        return self.epoch + (self.position / self.size if self.size else 0.0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "drawn": self.drawn, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if "drawn" not in state:
            raise ConfigError("this checkpoint was saved by a run on a dataset, not a stream; resume it with the same "
                              "(map-style) training data")
        self.epoch, self.position, self.drawn, self.size = (state["epoch"], state["position"], state["drawn"],
                                                            state["size"])
        self._rows = None  # the next take_rows starts the pass over and skips to the position


def prompt_order(dataset, seed: int, shuffle: bool):
    """The prompt order of the training data: PromptStream for an IterableDataset, else PromptSampler."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        return PromptStream(dataset, seed, shuffle)
    return PromptSampler(len(dataset), seed, shuffle, dataset)


@dataclass
class Batch:
    """A scored round, ready for the optimizer: B = prompts x G rows."""

    rollout: Rollout
    advantages: torch.Tensor  # [B]
    loss_mask: torch.Tensor  # [B, C] completion mask, minus truncated rows if mask_truncated_completions
    old_logps: torch.Tensor | None  # [B, C] when the round is reused (off-policy), else None
    ref_logps: torch.Tensor | None  # [B, C] when beta > 0
    rewards: torch.Tensor | None = None  # [B] combined rewards (NaN = unscorable): what dynamic sampling filters on
    # [B, C] the sampler/trainer importance weights (core.sampler_importance_weights; a sequence's weight on each of
    # its columns) when another engine sampled (use_vllm with vllm_importance_sampling_correction), else None
    sampler_weights: torch.Tensor | None = None


@dataclass
class Window:
    """One optimizer step's share of a round: the row indices of its micro-batches."""

    index: int  # the step's number within the round (0 .. RoundProgress.num_windows - 1)
    micro_batches: list[torch.Tensor] = field(default_factory=list)  # each [per_device_train_batch_size] rows


@dataclass
class RoundProgress:
    """A round being optimized: what a checkpoint saved in its middle holds, so that resuming finishes it exactly."""

    batch: Batch
    metrics: dict  # the round's metrics, as its next optimizer step logs them
    orders: torch.Tensor  # [num_iterations, B] the micro-batch order of each pass, all drawn at the round start
    num_windows: int  # optimizer steps in the round (num_iterations x windows per pass)
    next_window: int = 0  # optimizer steps of the round already taken
    last_completions: list | None = None  # what log_completions prints

    @classmethod
    def start(cls, batch: Batch, metrics: dict, args, generator: torch.Generator, orders: torch.Tensor | None = None,
              last_completions: list | None = None) -> RoundProgress:
        """The round's micro-batch orders, one per pass, are all drawn now (nothing else draws from the generator
        between the passes, so the numbers are those the passes would draw): a checkpoint saved in the round's
        middle then holds a generator state past all of them, and the orders themselves."""
        num_rows = batch.advantages.size(0)
        if orders is None:
            orders = torch.stack([group_order(num_rows, args.num_generations, generator)
                                  for _ in range(args.num_iterations)])  # [num_iterations, B]
        micro_batches = math.ceil(num_rows / args.per_device_train_batch_size)
        num_windows = args.num_iterations * math.ceil(micro_batches / args.gradient_accumulation_steps)
        return cls(batch, metrics, orders, num_windows, last_completions=last_completions)

    @property
    def done(self) -> bool:
        return self.next_window >= self.num_windows

    def remaining_windows(self, micro_batch_size: int, accumulation: int) -> Iterator[Window]:
        """The round's optimizer steps not taken yet: each pass (iteration) over the round cuts its order into
        micro-batches of `micro_batch_size` rows, and every `accumulation` of them make one window."""
        num_rows = self.orders.size(1)
        for iteration, order in enumerate(self.orders):
            micro_batches = [order[i: i + micro_batch_size] for i in range(0, num_rows, micro_batch_size)]
            windows_per_pass = math.ceil(len(micro_batches) / accumulation)
            for start in range(0, len(micro_batches), accumulation):
                index = iteration * windows_per_pass + start // accumulation
                if index >= self.next_window:  # else taken before the checkpoint this run resumed from
                    yield Window(index, micro_batches[start: start + accumulation])

    def checkpoint_state(self) -> tuple[dict, dict] | None:
        """(tensors, values) of the round for a checkpoint, or None at its end (nothing to keep)."""
        if self.done:
            return None
        tensors, values = ckpt.split_dataclass(self.batch, "batch.")
        rollout_tensors, rollout_values = ckpt.split_dataclass(self.batch.rollout, "rollout.")
        tensors.update(rollout_tensors, orders=self.orders)
        values.update(rollout_values, metrics=self.metrics, num_windows=self.num_windows,
                      next_window=self.next_window, last_completions=self.last_completions)
        return tensors, values

    @classmethod
    def from_checkpoint(cls, path: str, device, args) -> RoundProgress | None:
        """The round a checkpoint saved in its middle (None if it was saved at a round's end), checked against the
        settings that cut it into optimizer steps."""
        stored = ckpt.load_round(path, device)
        if stored is None:
            return None
        tensors, values = stored
        orders = tensors["orders"]
        if orders.size(0) != args.num_iterations:
            raise ConfigError(f"{path} was saved in the middle of a round of num_iterations={orders.size(0)}; "
                              f"resume it with the same num_iterations (got {args.num_iterations})")
        rollout = ckpt.build_dataclass(Rollout, tensors, values, "rollout.")
        batch = ckpt.build_dataclass(Batch, tensors, values, "batch.", rollout=rollout)
        round_ = cls.start(batch, values["metrics"], args, generator=None, orders=orders)
        if round_.num_windows != values["num_windows"]:
            raise ConfigError(f"{path} was saved in the middle of a round of {values['num_windows']} optimizer "
                              f"steps but these settings make rounds of {round_.num_windows}; resume with the run's "
                              f"per_device_train_batch_size, gradient_accumulation_steps and steps_per_generation")
        round_.next_window, round_.last_completions = values["next_window"], values["last_completions"]
        return round_


def group_order(num_rows: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of the rows that keeps each group's rows together: groups shuffled, rows in place within them.

    Micro-batches cut from it hold whole groups (or slices of one), so their rows share a prompt that the training
    forward computes once (rollout.completion_logits(share_prompts=True)). Which rows meet in a micro-batch does not
    change an optimizer step's gradient when the step covers the round (the default), only the cost of computing it.
    """
    groups = torch.randperm(num_rows // group_size, generator=generator)  # [B / G]
    return (groups[:, None] * group_size + torch.arange(group_size)).flatten()  # [B]

