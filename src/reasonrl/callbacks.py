"""transformers' callback protocol on reasonrl's loop: TRL's `GRPOTrainer(callbacks=[...])` and `add_callback`.

The objects are transformers' own (`TrainerCallback`, `TrainerState`, `TrainerControl`, `CallbackHandler`), so a
callback written for TRL's trainer reads the same fields and its return values act the same. The trainer fires, in
transformers' order:

  on_init_end                      at the end of GRPOTrainer(...)
  on_train_begin, on_epoch_begin   when train() starts (eval_on_start's evaluation comes right after)
  per optimizer step               on_step_begin, on_substep_end (after each micro-batch but the step's last),
                                   on_pre_optimizer_step, on_optimizer_step (not for a skipped non-finite step),
                                   on_step_end, then on_log (when control.should_log), on_prediction_step (after each
                                   eval batch) and on_evaluate (after an evaluation), on_save (after a checkpoint)
  on_epoch_end                     after the step that finishes a pass over the training prompts, then its
                                   evaluation and checkpoint (eval_strategy / save_strategy 'epoch')
  on_train_end                     when train() ends

transformers' DefaultFlowCallback comes first and sets control.should_log / should_evaluate / should_save /
should_training_stop from logging_steps, eval_strategy and eval_steps, save_strategy and save_steps, and max_steps;
the user's callbacks run after it and may change them (stopping early, forcing a save). The step counts it reads are
in TrainerState (logging_steps, eval_steps, save_steps: `set_intervals`).
"""

from __future__ import annotations

from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from reasonrl.errors import ConfigError

__all__ = ["Callbacks", "TrainerCallback", "TrainerControl", "TrainerState", "new_state", "set_intervals"]


def check_callback(callback) -> None:
    """ConfigError unless `callback` is a TrainerCallback object or class (what transformers' add_callback takes)."""
    if isinstance(callback, TrainerCallback) or (isinstance(callback, type) and issubclass(callback, TrainerCallback)):
        return
    kind = f"function {callback.__name__!r}" if callable(callback) and hasattr(callback, "__name__") else (
        f"a {type(callback).__name__}")
    raise ConfigError(f"callbacks must be transformers.TrainerCallback objects or classes (got {kind}); subclass "
                      f"TrainerCallback and put the code in one of its events, e.g. on_log(self, args, state, control, "
                      f"logs=None, **kwargs) for every logged row")


class Callbacks(CallbackHandler):
    """transformers' CallbackHandler holding DefaultFlowCallback, then the user's callbacks in the order given."""

    def __init__(self, callbacks, model, processing_class):
        callbacks = list(callbacks or [])
        for callback in callbacks:
            check_callback(callback)
        super().__init__([DefaultFlowCallback, *callbacks], model, processing_class, None, None)

    def add_callback(self, callback) -> None:
        check_callback(callback)
        super().add_callback(callback)


def new_state(dist) -> TrainerState:
    """A run's TrainerState; what reward functions get as `trainer_state` too (TRL passes its own)."""
    return TrainerState(is_world_process_zero=dist.is_main, is_local_process_zero=dist.local_rank == 0)


def set_intervals(state: TrainerState, args, total_steps: int) -> None:
    """The run's length and the step counts DefaultFlowCallback reads (fractions of total_steps resolved once)."""
    state.max_steps = total_steps
    state.num_train_epochs = args.num_train_epochs if args.max_steps <= 0 else 0
    state.train_batch_size = args.per_device_train_batch_size
    state.logging_steps = args.step_interval("logging_steps", total_steps)
    state.eval_steps = args.step_interval("eval_steps", total_steps)
    state.save_steps = args.step_interval("save_steps", total_steps)
