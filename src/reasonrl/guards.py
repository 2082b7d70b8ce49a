"""What keeps a run alive, or stops it cleanly: skipped non-finite steps, and Ctrl-C / SIGTERM at a safe point.

- `StepGuard`: an optimizer step whose loss or gradient norm is not finite is skipped: its gradients are dropped and
  neither the optimizer nor the learning-rate schedule moves (as transformers' Trainer does when the optimizer step
  was skipped), so the weights stay those of the last good step. The step still counts towards max_steps.
  After MAX_CONSECUTIVE_SKIPS skips in a row the run is diverging: the trainer saves a checkpoint (of the last good
  weights) and raises `TrainingDiverged`.
- `StopSignals`: while `train()` runs, SIGTERM and Ctrl-C (SIGINT) only raise a flag; the loop checks it between
  optimizer steps, saves a checkpoint of the last completed step and raises `TrainingInterrupted`. A second Ctrl-C
  raises KeyboardInterrupt at once (no new checkpoint; the last saved one stays). The previous handlers come back
  when training ends, and nothing is installed outside the main thread (signals only reach the main thread).
"""

from __future__ import annotations

import logging
import math
import signal
import threading

logger = logging.getLogger("reasonrl")

MAX_CONSECUTIVE_SKIPS = 3


class TrainingDiverged(RuntimeError):
    """Several optimizer steps in a row had a non-finite loss or gradient norm (one line, for the user)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint. A KeyboardInterrupt, so that code that
    handles Ctrl-C keeps working; `exit_code` is the shell's convention (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, checkpoint: str | None, signum: int):
        super().__init__(message)
        self.checkpoint, self.signum, self.exit_code = checkpoint, signum, 128 + signum


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

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to finish
        if self.signum is None:
            self.signum = signum
            logger.warning("%s received: stopping after the current optimizer step (Ctrl-C again to stop at once)",
                           signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None
