"""What keeps a run alive, or stops it cleanly: skipped non-finite steps, and Ctrl-C / SIGTERM at a safe point.

- `StepGuard`: an optimizer step whose loss or gradient norm is not finite is skipped: its gradients are dropped and
  neither the optimizer nor the learning-rate schedule moves (as transformers' Trainer does when the optimizer step
  was skipped), so the weights stay those of the last good step. The step still counts towards max_steps.
  After MAX_CONSECUTIVE_SKIPS skips in a row the run is diverging: the trainer saves a checkpoint (of the last good
  weights) and raises `TrainingDiverged`.
- `StopSignals`: while `train()` runs, SIGTERM and Ctrl-C (SIGINT) only raise a flag; the loop checks it between
  optimizer steps, saves a checkpoint of the last completed step and raises `TrainingInterrupted`. While a round
  is being made (generation and rewards, which change no weight and may never end: a reward that hangs) the first
  signal interrupts at once instead (`immediately()`). A second signal of either kind always interrupts at once
  (KeyboardInterrupt; no new checkpoint, the last saved one stays). The previous handlers come back when training
  ends, and nothing is installed outside the main thread (signals only reach the main thread).
- `check_finite_weights`: weights that a step made NaN or infinite are never saved (`TrainingDiverged`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading

import torch

from reasonrl.errors import TrainingDiverged

logger = logging.getLogger("reasonrl")

MAX_CONSECUTIVE_SKIPS = 3


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint. A KeyboardInterrupt, so that code that
    handles Ctrl-C keeps working; `exit_code` is the shell's convention (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, checkpoint: str | None, signum: int):
        super().__init__(message)
        self.checkpoint, self.signum, self.exit_code = checkpoint, signum, 128 + signum


def interrupted(stop: StopSignals, step: int, path: str | None) -> TrainingInterrupted:
    """The error that stops a run after Ctrl-C or SIGTERM, once the last completed step (`step`) was saved to `path`
    (None: nothing to save before the first step). A rank that got no signal itself stops because another did
    (launchers forward SIGTERM to every rank)."""
    if path is None:
        message = "interrupted before the first optimizer step; nothing to save"
    else:
        message = (f"interrupted after step {step}; saved {path}; continue with `reasonrl train ... --resume` (or "
                   f"resume_from_checkpoint={path})")
    return TrainingInterrupted(message, path, stop.signum or 15)


def diverged(step: int, consecutive: int, path: str) -> TrainingDiverged:
    """The error that stops a run whose last `consecutive` steps up to `step` were all skipped (non-finite), once
    the last good weights were saved to `path`."""
    return TrainingDiverged(f"training diverged: steps {step - consecutive + 1}-{step} all had a non-finite loss or "
                            f"gradient norm and were skipped; the last good weights are saved in {path}; lower "
                            f"learning_rate or max_grad_norm (or check the rewards), then resume with --resume")


class StepGuard:
    """Decides whether an optimizer step may be applied; counts the skipped ones."""

    def __init__(self, skipped_steps: int = 0):
        self.skipped_steps = skipped_steps  # over the whole run (restored on resume)
        self.consecutive = 0

    def allows(self, step: int, loss: float, grad_norm: float) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.skipped_steps += 1
        self.consecutive += 1
        logger.warning("step %d: non-finite loss (%s) or gradient norm (%s); skipped the optimizer step (%d in a "
                       "row, %d skipped in all)", step, loss, grad_norm, self.consecutive, self.skipped_steps)
        return False

    @property
    def diverged(self) -> bool:
        return self.consecutive >= MAX_CONSECUTIVE_SKIPS


class StopSignals:
    """Context manager: SIGTERM and SIGINT set `signum` instead of killing the run (see the module docstring)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._immediate = False

    def __enter__(self) -> StopSignals:  # noqa: PYI034 - typing.Self needs Python 3.11 (we support 3.10)
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def immediately(self, enabled: bool = True):
        """Within this block a signal interrupts at once (KeyboardInterrupt), also the first one."""
        if enabled and self.signum is not None:
            raise KeyboardInterrupt  # a signal came just before the block
        previous, self._immediate = self._immediate, enabled
        try:
            yield
        finally:
            self._immediate = previous

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal: stop now, without waiting for the step to finish
        self.signum = signum
        if self._immediate:
            raise KeyboardInterrupt
        logger.warning("%s received: stopping after the current optimizer step (Ctrl-C or SIGTERM again to stop at "
                       "once)", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class LearningSignal:
    """Says so when a round cannot teach the model anything, instead of letting the loss sit at 0 in silence ("loss
    is 0, is it training?", trl#2703, #3452, #3857).

    GRPO learns from differences within a group: a completion's advantage is its reward minus its group's mean.
    When the G completions of every prompt got the same reward (or none could be scored), every advantage is 0, so
    are the loss and the policy gradient, and the round changes no weight (but for the KL term when beta > 0, and
    weight decay). The warning says which case it is and what to change: the prompts are all solved or all failed
    (every completion scored the same), the completions of each prompt are identical (sampling gives no variety),
    or the reward is too coarse to tell a prompt's completions apart. Warned about at the 1st, 10th, 100th, ...
    such round in a row, not every time.
    """

    def __init__(self):
        self.streak = 0

    def check(self, rewards, num_generations: int, step: int, texts: list[str] | None = None,
              beta: float = 0.0) -> str | None:
        """rewards: the round's combined rewards [B] (NaN = unscorable), grouped consecutively by prompt; texts:
        its completions, in the same order. The reason when the round has no learning signal, else None."""
        import torch

        grouped = rewards.view(-1, num_generations)  # [B/G, G]
        scorable = ~torch.isnan(grouped)
        if not scorable.any():
            reason = ("no completion could be scored: every reward function returned None (or failed) for all of "
                      "them; check that the rewards can read the dataset's columns and the completions' format")
        else:
            spread = torch.where(scorable, grouped, grouped.nanmean(1, keepdim=True).expand_as(grouped))
            if (spread.amax(1) - spread.amin(1) > 1e-6 * (1 + spread.abs().amax(1))).any():
                self.streak = 0
                return None
            reason = self._why_equal(grouped[scorable], num_generations, len(grouped), texts)
        moves = (f"the loss and the policy gradient are 0 and only the KL term (beta={beta:g}) moves the weights"
                 if beta else "the loss and the gradient are 0 and the weights do not change")
        message = f"{reason}: every advantage is 0, so {moves}"
        self.streak += 1
        if math.log10(self.streak).is_integer():
            logger.warning("no learning signal in the round of step %d (%d such round%s in a row): %s", step,
                           self.streak, "" if self.streak == 1 else "s", message)
        return message

    @staticmethod
    def _why_equal(values, num_generations: int, num_groups: int, texts: list[str] | None) -> str:
        """Why every group's scorable rewards agree, and what to change (values: the scorable rewards)."""
        lowest, highest = values.min().item(), values.max().item()
        if texts is not None and all(len(set(texts[i:i + num_generations])) == 1
                                     for i in range(0, len(texts), num_generations)):
            return (f"the {num_generations} completions of each of the {num_groups} prompts are identical, so their "
                    f"rewards agree; sampling gives no variety: raise temperature (and top_p, top_k, min_p), and "
                    f"check generation_kwargs (do_sample=false samples greedily)")
        if highest - lowest <= 1e-6 * (1 + abs(highest)):
            return (f"every completion of the round got the reward {lowest:.4g}, so the {num_generations} "
                    f"completions of each of the {num_groups} prompts agree; if that is the reward's lowest value the "
                    f"prompts are too hard for the model (easier prompts, a supervised warm start, or a partial-credit "
                    f"reward such as format or tag_count beside accuracy), if its highest they are already solved "
                    f"(harder prompts); dynamic_sampling=true replaces such groups with other prompts' (metric "
                    f"frac_reward_zero_std)")
        return (f"the {num_generations} completions of each of the {num_groups} prompts got the same reward (they "
                f"differ only between prompts, from {lowest:.4g} to {highest:.4g}); the reward is too coarse to tell "
                f"a prompt's completions apart, or each prompt is either always solved or never: try more "
                f"num_generations, a higher temperature, a partial-credit reward, or dynamic_sampling=true (metric "
                f"frac_reward_zero_std)")


def check_finite_weights(model, consequence: str) -> None:
    """TrainingDiverged when a trainable weight is NaN or infinite: such weights are never saved. Sharded weights
    (fsdp) are checked shard by shard and the verdict shared, so that every process raises or none: call it on
    every process then."""
    from torch.distributed.tensor import DTensor

    sharded, bad = False, None
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if isinstance(parameter, DTensor):
            sharded, parameter = True, parameter.to_local()
        if bad is None and not torch.isfinite(parameter).all():
            bad = name
    if sharded:
        import torch.distributed as dist

        names = [None] * dist.get_world_size()
        dist.all_gather_object(names, bad)
        bad = next((name for name in names if name is not None), None)
    if bad is not None:
        raise TrainingDiverged(f"the weights are not finite ({bad} holds NaN or inf; learning_rate too high?); "
                               f"{consequence}")
