"""GRPO training: the loop, top to bottom.

Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) with TRL's options. One round:

  1. rollout: sample G completions for each of a batch of prompts (rollout.generate: KV cache, stop at EOS; or
     vLLM with use_vllm, vllm_engine.py, whose weights follow each optimizer step);
  2. score every completion with the reward functions (TRL's signature) and combine them (scoring.py);
  3. advantages = reward relative to the prompt's group (core.group_advantages): no value network;
  4. optimizer steps: num_iterations passes over the round in shuffled micro-batches; each step accumulates the
     gradient of the PPO-clipped loss (core.grpo_loss, with a k3 KL penalty to the reference policy when beta > 0)
     over gradient_accumulation_steps micro-batches, clips it and steps the optimizer.

The levels of batching, largest first (rounds.py holds them):
  round        prompts x G completions generated and scored together: generation_batch_size (or steps_per_generation)
  iteration    one shuffled pass over a round; there are num_iterations (> 1 reuses the round, off-policy)
  window       the micro-batches of one optimizer step: gradient_accumulation_steps of them (rounds.Window)
  micro-batch  per_device_train_batch_size completions whose gradients one forward/backward adds (micro_step.py)
  chunk        the rows of a micro-batch that go through forward and backward together: backward_chunk_rows

Where it departs from TRL: positions are computed from the attention mask in the training forward as in generation
(TRL's training forward uses 0..L-1 even for left-padded prompts), and dapo's denominator is the exact token
count of the optimizer step's window (TRL uses the round's count divided evenly; the two agree when
steps_per_generation == gradient_accumulation_steps, the default).

When things go wrong: a reward call that raises or times out scores None for its values (scoring.py; too many in
a round stop the run before anything is saved); a step with a non-finite loss or gradient norm is skipped, and a
few in a row stop the run with a checkpoint; Ctrl-C or SIGTERM stops at the next step boundary with one (guards.py).

Under torchrun or accelerate launch the same loop runs data-parallel: each process takes a slice of the round's
prompts, rewards are gathered, gradients are averaged by DDP, and rank 0 writes (distributed.py, docs/SCALING.md).
With fsdp=full_shard the model is sharded instead (fsdp.py): the rollout and the no-gradient log-probs run on
gathered weights (distributed.full_weights), and a checkpoint is gathered whole to rank 0.

Around each optimizer step the loop fires transformers' callback events (callbacks.py); their TrainerControl decides
when to log, evaluate (eval_loop.py: sampled completions of the eval prompts, scored, no step) and save.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import time

import numpy as np
import torch

from reasonrl import checkpoint as ckpt
from reasonrl import config_checks, distributed, fsdp, preflight, rundir, runlog
from reasonrl.callbacks import Callbacks, TrainerControl, check_callback, new_state, set_intervals
from reasonrl.config import GRPOConfig
from reasonrl.core import (
    StepNormaliser,
    group_advantages,
    high_entropy_mask,
    normalized_sum_advantages,
    off_policy_mask,
    sampler_importance_weights,
    sampler_mismatch_metrics,
)
from reasonrl.cpu import ThreadGovernor, fix_mmap_threshold, release_freed_memory
from reasonrl.data import (
    PromptTokenizer,
    column_names,
    first_prompts,
    is_stream,
    load_eval_dataset,
    load_train_dataset,
)
from reasonrl.dynamic_sampling import DynamicSampler
from reasonrl.errors import CheckpointError, ConfigError, ReasonRLError, RewardSpecError, reason_of
from reasonrl.eval_loop import Evaluator, chosen_eval_sets, eval_sets
from reasonrl.guards import LearningSignal, StepGuard, StopSignals, check_finite_weights, diverged, interrupted
from reasonrl.micro_step import MicroStep, logps_in_chunks
from reasonrl.models import (
    Autocast,
    check_causal,
    check_lengths,
    frozen_copy,
    is_peft_model,
    load_policy,
    mix_into_reference,
    prepare_for_training,
    reference_policy,
)
from reasonrl.optim import check_optimizers, optimizer_and_scheduler
from reasonrl.policy import configure_forward
from reasonrl.rollout import Rollout, sampling_options
from reasonrl.rollout_hooks import rollout_sources
from reasonrl.rounds import Batch, RoundProgress, Window, prompt_order
from reasonrl.scoring import (
    ProcessExitGuard,
    RoundScores,
    build_rewards,
    check_failures,
    check_reward_columns,
    combine_rewards,
    log_failures_once,
    score_rollout,
)
from reasonrl.tracking import Trackers

logger = logging.getLogger("reasonrl")


class GRPOTrainer:
    """TRL's GRPOTrainer interface on reasonrl's loop.

    model: a hub id, a local path or a model object (a peft model too). reward_funcs: callables with TRL's
    signature (`async def` ones too), built-in names, "module:function" specs or reward models (a
    sequence-classification PreTrainedModel, a hub id or a folder; their tokenizers in reward_processing_classes),
    alone or in a list. train_dataset: a datasets.Dataset or IterableDataset (streamed; needs max_steps), a list of
    row dicts, a dict of columns or a DataFrame; eval_dataset the same, or a dict of named ones. callbacks:
    transformers TrainerCallback objects or classes. optimizers: (optimizer, scheduler), either None to build it
    from the config. tools, rollout_func, environment_factory: TRL's (tools.py, rollout_hooks.py, environments.py).
    """

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_processing_classes=None, callbacks=None,
                 optimizers=(None, None), peft_config=None, tools=None, rollout_func=None, environment_factory=None):
        self.args = args = GRPOConfig.coerce(args)
        # mistakes that need no model show before it loads: the output folder, the data, the reward columns
        rundir.check_output_dir(args.output_dir)
        if reward_funcs is None:  # TRL's order of arguments, where reward_funcs may be left out
            if environment_factory is not None or args.environment_factory is not None:
                reward_funcs = args.reward_funcs or []  # its environments' get_reward may be the rewards
            elif not args.reward_funcs:
                raise RewardSpecError("No reward source provided: pass reward_funcs= (functions, built-in reward "
                                      "names, module:function specs or reward models), or set the reward_funcs option")
            else:
                reward_funcs = args.reward_funcs
        config_checks.warn_about_loss_pairings(args, logger.warning)
        self._given_optimizers = check_optimizers(optimizers)
        for callback in callbacks or []:
            check_callback(callback)
        # torchrun / accelerate launch: a process group from the environment, this process's device (distributed.py)
        self.dist = distributed.setup(fsdp=args.fsdp_enabled)  # fsdp: the model sharded (fsdp.py), else DDP
        if self.dist.fsdp and self._given_optimizers[0] is not None:
            raise ConfigError("optimizers= holds the model's parameters as they were before fsdp shards them; leave "
                              "the optimizer to the config (optim, learning_rate, ...) or unset fsdp", "fsdp")
        self.device = self.dist.device
        if self.dist.fsdp and self.device.type == "cpu":  # FSDP's gathers, freed layer by layer, would grow the heap
            fix_mmap_threshold()
        self.bf16 = args.use_bf16()
        _seed_everything(args.seed)
        # functions, names and reward models (TRL's model ids and PreTrainedModels, with reward_processing_classes:
        # TRL's attribute, aligned with reward_funcs, a reward model's tokenizer or None)
        self.reward_funcs, self.reward_names, self.reward_weights, self.reward_processing_classes = build_rewards(
            reward_funcs, args, reward_processing_classes, self.device)
        # TRL's tools, rollout_func and environment_factory (rollout_hooks.py): environments may add their
        # get_reward to the rewards and make the prompts of a run without a dataset
        sources = rollout_sources(self, train_dataset, tools, rollout_func, environment_factory)
        self.rollout_func, self.environments = sources.rollout_func, sources.environments
        self.train_dataset = load_train_dataset(sources.train_dataset, args)
        check_reward_columns(self.reward_funcs, self.reward_names,
                             column_names(self.train_dataset) + sources.reward_columns)
        # the eval sets prepared (a stream read, prompts formatted); eval_dataset stays the object given, as TRL's
        self._eval_data = load_eval_dataset(eval_dataset, args, data_from_config=train_dataset is None)
        self.eval_dataset = self._eval_data if eval_dataset is None else eval_dataset
        for name, data in eval_sets(self._eval_data):
            check_reward_columns(self.reward_funcs, self.reward_names, data.column_names, f"eval set {name!r}")

        # the policy and its tokenizer
        model, self.tokenizer, self.model_name = load_policy(
            model, args, processing_class, bf16=self.bf16, wants_lora=peft_config is not None or args.use_peft)
        self.processing_class = self.tokenizer
        if args.system_prompt is not None and self.tokenizer.chat_template is None:
            raise ConfigError(f"system_prompt needs a chat template, and the tokenizer of {self.model_name} has none; "
                              f"put the instruction in prompt_template instead", "system_prompt")
        # every prompt rendered (chat template) and tokenized once: a template error or a prompt that, with a
        # completion, would not fit the model's positions shows now, not at the round that draws it
        # tools: rendered into every prompt, called during rollouts (tools.py); the rollouts' source, chosen once
        self.tool_calling, self.rollouts = sources.stage(self, first_prompts(self.train_dataset, 1))
        self.prompt_tokenizer = PromptTokenizer(self.tokenizer, args.max_prompt_length, self.rollouts.schemas,
                                                args.chat_template_kwargs)
        # tokens of the longest training prompt, as rendered (a stream's first rows stand for it; _rollout checks
        # each round's prompts); the eval prompts must fit the model's positions too
        self.longest_prompt = self.prompt_tokenizer.longest(
            first_prompts(self.train_dataset, 64 if is_stream(self.train_dataset) else None))
        eval_prompts = [prompt for _, data in eval_sets(self._eval_data) for prompt in data["prompt"]]
        longest_eval = self.prompt_tokenizer.longest(eval_prompts) if eval_prompts else 0
        self._longest_any_prompt = max(self.longest_prompt, longest_eval)
        check_lengths(model.config, args.max_completion_length, self._longest_any_prompt)
        model = prepare_for_training(model, args, peft_config, bf16=self.bf16)  # LoRA, dropout, frozen weights
        check_causal(model, self.tokenizer, bf16=self.bf16)
        # how every micro-batch's forward and backward run: decided here, once (the model's layer checkpointing set)
        self.plan = configure_forward(model, args, device_type=self.device.type, bf16=self.bf16,
                                      distributed=self.dist.enabled, sharded=self.dist.fsdp)
        self.model = model.to(self.device)
        # use_vllm: a vLLM engine samples the rounds and evaluations from the policy's weights (vllm_engine.py)
        self.vllm = self._build_vllm_engine() if args.use_vllm else None
        self.rollouts.engine = self.vllm
        self.reference_model = frozen_copy(self.model) if args.beta != 0.0 and not is_peft_model(self.model) else None
        self.reference_model = distributed.shard_frozen(self.reference_model, self.dist)  # sharded too under fsdp
        if args.sync_ref_model and self.reference_model is None:
            raise ConfigError("sync_ref_model=true with a LoRA model: its reference is the base model with the adapter "
                              "off, which cannot move; set sync_ref_model=false or train without LoRA",
                              "sync_ref_model")
        # the training forward/backward goes through DistributedDataParallel (gradients averaged over processes);
        # generation, old/reference log-probs, peft's disable_adapter and saving use the unwrapped self.model. Under
        # fsdp the two are one sharded model, whose whole weights the no-gradient phases gather (full_weights)
        self.train_model = distributed.wrap(self.model, self.dist, args.fsdp_reshard_after_forward)
        self._autocast = Autocast(self.model, self.bf16, self.device.type)  # what every forward of it runs in
        self.micro_step = MicroStep(self.train_model, args, self.plan, self.dist, self._autocast)

        # the prompt order: shuffled passes over a dataset, or a stream read round by round (rounds.py)
        self.sampler = prompt_order(self.train_dataset, args.seed, args.shuffle_dataset)
        self.generator = torch.Generator().manual_seed(args.seed)
        # transformers' TrainerState (reward functions get it as trainer_state) and the callbacks (callbacks.py)
        self.state, self.control = new_state(self.dist), TrainerControl()
        self.callback_handler = Callbacks(callbacks, self.model, self.processing_class)
        self.optimizer = self.lr_scheduler = None  # built (or taken from optimizers=) by train()
        self.evaluator = Evaluator(self.model, self.tokenizer, args, self.dist, self.reward_funcs, self.reward_names,
                                   self.reward_weights, self.rollouts, self._autocast, self.reference_model)
        self._logs_open = False  # train() writes metrics.jsonl and the trackers; evaluate() outside it does not
        self._epochs_ended = 0  # passes over the training prompts whose on_epoch_end has fired
        self.step_guard = StepGuard()
        self.learning_signal = LearningSignal()
        self._saved_step: int | None = None  # the step of the last checkpoint this run saved or resumed from
        self._round: RoundProgress | None = None  # the round being optimized (or resumed in its middle)
        self._last_completions: list | None = None  # the last round's samples, for log_completions
        self._last_table: list = []  # its every completion, for the trackers' tables (log_completions)
        # (function, exception type) whose traceback was logged, and "unscorable" once TRL's warning about a
        # completion no reward function scored was
        self._logged_reward_failures: set = set()
        self.make_round = DynamicSampler(args, self.tokenizer.pad_token_id, self.dist)  # DAPO refill (dynamic_sampling)
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    @property
    def log_history(self) -> list[dict]:
        """Every logged row: one per optimizer step (its metrics, as in metrics.jsonl) and one per evaluation."""
        return self.state.log_history

    @property
    def entropy_coef(self) -> float:
        """The entropy bonus's coefficient now (TRL's attribute): entropy_coef, or where adaptive control moved it."""
        return self.micro_step.entropy_coef.value

    # TRL adds a Mixture-of-Experts model's router load-balancing loss (router_aux_loss_coef) and sets this; reasonrl
    # trains MoE models on the GRPO loss alone (README, Differences from TRL)
    aux_loss_enabled = False

    @property
    def ref_model(self):
        """The frozen reference policy (TRL's name): a copy of the model when beta != 0, None for a peft model (its
        adapter is disabled instead) or when beta is 0."""
        return self.reference_model

    def get_high_entropy_mask(self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
        """TRL's method: the tokens of `mask` whose entropy is at least the `threshold` quantile of the masked
        entropies, bool [B, T] (core.high_entropy_mask keeps the top 1 - threshold of them)."""
        return high_entropy_mask(entropies, mask, 1.0 - threshold)

    @staticmethod
    def get_off_policy_mask(advantages: torch.Tensor, per_token_logps: torch.Tensor,
                            sampling_per_token_logps: torch.Tensor, mask: torch.Tensor,
                            off_policy_threshold: float) -> torch.Tensor:
        """TRL's static method: DeepSeek-V3.2's off-policy sequence mask [B, 1] (core.off_policy_mask)."""
        return off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold)

    def add_callback(self, callback) -> None:
        """A transformers TrainerCallback (object or class), called after those already there."""
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback):
        """Remove a callback (object, or the first of a class) and return it."""
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback) -> None:
        self.callback_handler.remove_callback(callback)

    def _build_vllm_engine(self):
        from reasonrl.vllm_engine import VLLMEngine

        if self.tool_calling is not None or self.rollout_func is not None or self.environments is not None:
            raise ConfigError("use_vllm=true with tools, a rollout_func or an environment_factory is not supported "
                              "yet (vLLM samples single-turn completions); set use_vllm=false", "use_vllm")
        args = self.args
        context = args.max_prompt_length + args.max_completion_length  # prompts are cut to max_prompt_length
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if args.vllm_mode == "server":  # a `reasonrl vllm-serve` process samples (vllm_client.py)
            from reasonrl.vllm_client import VLLMServerEngine

            # every process samples its own prompts; rank 0 alone pushes the weights (before DDP's first collective:
            # no push can come before every process has connected and read the server's weights version)
            return VLLMServerEngine.connect(self.model, args, longest_prompt=self._longest_any_prompt,
                                            pushes=self.dist.is_main)
        return VLLMEngine.build(self.model, args, bf16=self.bf16, max_model_len=min(context, positions or context))

    # ------------------------------------------------------------------ the loop

    def train(self, resume_from_checkpoint: str | bool | None = None):
        args = self.args
        train_start, first_row = time.perf_counter(), len(self.log_history)
        if not args.skip_memory_check:  # one micro-step at the longest prompt + max_completion_length (preflight.py)
            preflight.check_worst_case_memory(self.micro_step, self.model, self.train_model, args, self.longest_prompt,
                                              self.model.get_input_embeddings().num_embeddings, self.dist)
        resume = rundir.claim_for_run(args, self.dist, resume_from_checkpoint)  # the checkpoint to resume, or None
        # max_steps, or the optimizer steps of num_train_epochs passes over the dataset (a stream needs max_steps)
        total_steps = args.total_steps(self.sampler.size or 0)
        set_intervals(self.state, args, total_steps)  # and the logging, eval and save intervals the callbacks read
        optimizer, scheduler = optimizer_and_scheduler(self.model, args, total_steps, self._given_optimizers)
        self.optimizer = self.callback_handler.optimizer = optimizer
        self.lr_scheduler = self.callback_handler.lr_scheduler = scheduler
        if resume is not None:
            self._resume(resume, optimizer, scheduler)
        if self.dist.is_main:  # rank 0 owns the log files
            runlog.start_logs(args.output_dir, self.state.global_step)
        trainable = [p for p in self.model.parameters() if p.requires_grad]

        from tqdm.auto import tqdm

        # rank 0 alone reports (trackers, progress bar); the others train silently
        self.trackers = Trackers(args if self.dist.is_main else runlog.without_trackers(args))
        progress = tqdm(total=total_steps, initial=self.state.global_step, desc="GRPO", unit="step",
                        dynamic_ncols=True, disable=not self.dist.is_main)
        # Ctrl-C and SIGTERM only raise a flag, checked between optimizer steps (guards.StopSignals)
        # os._exit in a reward fails that reward call instead of ending the run silently (scoring.ProcessExitGuard)
        # (vLLM's CPU backend binds its threads once and makes torch.set_num_threads a no-op)
        governor = ThreadGovernor(enabled=args.adapt_cpu_threads and self.device.type == "cpu" and self.vllm is None)
        events, state = self.callback_handler, self.state
        with StopSignals() as stop, ProcessExitGuard(), contextlib.closing(self.trackers), progress, \
                contextlib.closing(governor), self._logs_opened():
            self.control = events.on_train_begin(args, state, self.control)
            self.control = events.on_epoch_begin(args, state, self.control)
            if args.eval_on_start and state.global_step == 0:  # not again on resume: the logs stay those of one run
                self.evaluate()
            while state.global_step < total_steps and not self.control.should_training_stop:
                self._stop_if_asked(stop, optimizer, scheduler)
                round_start = time.perf_counter()
                if self._round is None or self._round.done:  # else: the rest of the round a checkpoint held
                    threads = governor.update()  # cores other programs left free over the last round (cpu.py)
                    # a signal while the round is made stops at once, and a user error (a failing reward) stops too:
                    # the round is dropped and the last step is saved, as the round changed no weight
                    with self._round_may_be_dropped(stop, optimizer, scheduler):
                        def generation_batch():  # one batch of the round's prompts (dynamic sampling may draw more)
                            rows, rollout = self._rollout()  # 1. G completions of each of the round's prompts
                            scores, rewards = self._score(rows, rollout)  # 2. every reward function's, combined
                            # 3. advantages (+ old and reference log-probs)
                            batch = self._advantages(rollout, rewards, scores.rewards_per_func)
                            return batch, self._round_metrics(rows, rollout, scores, rewards, batch)

                        batch, round_metrics = self.make_round(generation_batch)  # DAPO's refill when it is on
                    round_metrics["cpu_threads"] = threads
                    round_metrics["rollout_time"] = time.perf_counter() - round_start
                    self._round = RoundProgress.start(batch, round_metrics, args, self.generator,
                                                      last_completions=self._last_completions)

                # 4. the round's optimizer steps (all of them, or those a mid-round checkpoint left)
                round_ = self._round
                for window in round_.remaining_windows(args.per_device_train_batch_size,
                                                       args.gradient_accumulation_steps):
                    self.control = events.on_step_begin(args, state, self.control)
                    self.model.train()
                    loss_metrics, tokens = self._accumulate_gradients(round_.batch, window)  # forward, backward
                    # max_grad_norm=0 disables clipping: the norm is still measured (clipping to inf scales by 1)
                    grad_norm = distributed.clip_grad_norm_(trainable, args.max_grad_norm or math.inf, self.dist)
                    # a non-finite loss or gradient norm skips the step: no optimizer or schedule move (guards.py)
                    if self.step_guard.allows(state.global_step + 1, loss_metrics["loss"], grad_norm):
                        self.control = events.on_pre_optimizer_step(args, state, self.control)
                        optimizer.step()
                        if self.vllm is not None:  # its next generation pushes the new weights first
                            self.vllm.policy_changed()
                        self.control = events.on_optimizer_step(args, state, self.control)
                        scheduler.step()
                        self._check_weights_after_step()
                    optimizer.zero_grad(set_to_none=True)
                    if self.device.type == "cpu":
                        release_freed_memory()  # the step's activations, so that the next phase's peak is its own
                    round_.next_window = window.index + 1
                    state.global_step += 1
                    if args.sync_ref_model and state.global_step % args.ref_model_sync_steps == 0:  # TR-DPO
                        mix_into_reference(self.reference_model, self.model, args.ref_model_mixup_alpha)
                    state.epoch = self.sampler.epochs_done

                    # log: the round's metrics (its rollout's on its first step only), the step's, and speed
                    metrics = {**round_.metrics, **loss_metrics, "grad_norm": grad_norm,
                               "learning_rate": scheduler.get_last_lr()[0], "tokens": tokens,
                               "skipped_steps": self.step_guard.skipped_steps,
                               "step_time": time.perf_counter() - round_start}
                    # tokens of this step's micro-batches (and the round's generated ones, on its first step) / s
                    metrics["tokens_per_second"] = (metrics["tokens"] + round_.metrics["rollout_tokens"]) / (
                        metrics["step_time"])
                    # the round's next steps log no rollout (and a checkpoint saved now resumes the round with these)
                    round_.metrics = {**round_.metrics, "rollout_time": 0.0, "rollout_tokens": 0}
                    # the callbacks' say (DefaultFlowCallback first: logging_steps, eval and save schedules, max_steps)
                    self.control = events.on_step_end(args, state, self.control)
                    self._log(metrics)
                    progress.update(1)
                    progress.set_postfix(reward=f"{metrics['reward']:.3f}", loss=f"{metrics['loss']:.4f}")

                    # maybe evaluate, maybe save (the step's, then the epoch's), maybe stop
                    self._evaluate_and_save_if_asked(optimizer, scheduler)
                    if round_.done and self._epoch_ended():
                        self.control = events.on_epoch_end(args, state, self.control)
                        self._evaluate_and_save_if_asked(optimizer, scheduler)
                        if not self.control.should_training_stop:
                            self.control = events.on_epoch_begin(args, state, self.control)
                    if self.step_guard.diverged:  # K non-finite steps in a row (guards.StepGuard)
                        self._stop_diverged(optimizer, scheduler)
                    self._stop_if_asked(stop, optimizer, scheduler)
                    round_start = time.perf_counter()
                    if self.control.should_training_stop:  # max_steps, or a callback's decision
                        break
            # transformers' closing row (train_loss, train_runtime, ...): in state.log_history, not in what train()
            # returns (the step and evaluation rows)
            summary = runlog.train_summary(self.log_history[first_row:], time.perf_counter() - train_start, args,
                                           state, self.dist.world_size)
            self.log_history.append(summary)
            self.control = events.on_log(args, state, self.control, logs=summary)
            self.control = events.on_train_end(args, state, self.control)
        return [row for row in self.log_history if "train_runtime" not in row]

    def _evaluate_and_save_if_asked(self, optimizer, scheduler) -> None:
        """What the callbacks asked for at this step (transformers' order: evaluate, then save)."""
        if self.control.should_evaluate:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint(optimizer, scheduler)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _epoch_ended(self) -> bool:
        """Whether the round just finished completed a pass over the training prompts (its prompts were drawn at
        its start; a round that wraps into the next pass ends the one before)."""
        passes = math.floor(self.sampler.epochs_done)
        if passes <= self._epochs_ended:
            return False
        self._epochs_ended = passes
        return True

    @contextlib.contextmanager
    def _logs_opened(self):
        self._logs_open = True
        try:
            yield
        finally:
            self._logs_open = False

    # ------------------------------------------------------------------ 1-3: a scored round

    @torch.no_grad()
    def _rollout(self) -> tuple[list[dict], Rollout]:
        """1. The round's prompts (this process's rows of the dataset) and G sampled completions of each."""
        args, g = self.args, self.args.num_generations
        # every process draws the round's global prompt list and keeps its contiguous slice of whole prompts
        first_draw = self.sampler.draws
        all_rows = self.sampler.take_rows(args.prompts_per_generation)
        mine = distributed.shard(len(all_rows), self.dist)
        seeds = distributed.prompt_seeds(args.seed, first_draw, len(all_rows))[mine]  # a prompt samples alike anywhere
        # the whole round is tokenized on every process: the padding width (and truncation count) one process has
        prompt_ids, prompt_mask = self.prompt_tokenizer([row["prompt"] for row in all_rows], device=self.device)
        if is_stream(self.train_dataset):  # a dataset's prompts were all checked at start-up
            check_lengths(self.model.config, args.max_completion_length, prompt_ids.size(1))
        rows, prompt_ids, prompt_mask = all_rows[mine], prompt_ids[mine], prompt_mask[mine]  # [N, P]

        self.model.eval()
        sampling = {"num_generations": g, "max_new_tokens": args.max_completion_length,
                    "eos_token_id": self.tokenizer.eos_token_id, "pad_token_id": self.tokenizer.pad_token_id,
                    **sampling_options(args), "generator": self.generator, "seeds": seeds}  # + generation_kwargs
        # sampled (multi-turn with tools or environments), or the rollout_func's; under fsdp on gathered weights, as
        # each process decodes until its own completions end
        with distributed.full_weights(self.dist, self.model), self._autocast():
            rollout = self.rollouts(self.model, rows, prompt_ids, prompt_mask, **sampling)
        if self.device.type == "cpu":
            release_freed_memory()  # the decoder's weights and caches: back to the OS before training allocates
        return rows, rollout

    @torch.no_grad()
    def _score(self, rows: list[dict], rollout: Rollout) -> tuple[RoundScores, torch.Tensor]:
        """2. Every reward function on every completion, with TRL's calling convention (prompts and dataset columns
        repeated G times): the scores of the whole round over all processes (rank order = draw order), and each
        completion's reward [B_all], their weighted sum."""
        # a call that raises or times out gives NaN values (None semantics); too many of them stop the run
        scores = score_rollout(self.reward_funcs, self.reward_names, rows, rollout, self.args.num_generations,
                               self.state, timeout=self.args.reward_timeout, warned=self._logged_reward_failures)
        log_failures_once(scores, self._logged_reward_failures)
        # from here on the failure fraction, the advantages (also scale_rewards=batch) and the metrics are those of
        # one process with the whole round
        scores = distributed.gather_scores(scores, self.dist)
        check_failures(scores, self.args.max_reward_error_fraction)
        return scores, combine_rewards(scores.rewards_per_func, self.reward_weights, self.reward_names)

    @torch.no_grad()
    def _advantages(self, rollout: Rollout, rewards: torch.Tensor, rewards_per_func: torch.Tensor) -> Batch:
        """3. Each completion's advantage over its group, and what the loss compares the policy with: the log-probs
        at sampling time when the round is reused (else the step's own, detached), the reference's when beta > 0."""
        args = self.args
        mine = distributed.shard(rewards.size(0), self.dist)  # this process's rows
        if args.multi_objective_aggregation == "normalize_then_sum":
            advantages = normalized_sum_advantages(rewards_per_func, self.reward_weights, args.num_generations)[mine]
        else:  # sum_then_normalize: the weighted sum's group statistics
            advantages = group_advantages(rewards, args.num_generations, scale=args.scale_rewards)[mine]  # [B]
        if self.dist.is_main:  # warns when every group's rewards agree (nothing to learn from this round)
            self.learning_signal.check(rewards, args.num_generations, self.state.global_step + 1,
                                       rollout.texts if not self.dist.enabled else None, args.beta)
        loss_mask = rollout.completion_mask
        if rollout.tool_mask is not None:  # tool results are context, not the model's actions: out of the loss
            loss_mask = loss_mask * rollout.tool_mask
        if args.mask_truncated_completions:
            loss_mask = loss_mask * (~rollout.is_truncated).long()[:, None]
        reuses_round = args.num_iterations > 1 or args.effective_steps_per_generation > args.gradient_accumulation_steps
        # vLLM's samples: the trainer's own log-probs of them always, to weigh each token by pi_trainer / pi_vllm
        corrects_sampler = self.vllm is not None and args.vllm_importance_sampling_correction
        old_logps = None
        if reuses_round or corrects_sampler:
            with distributed.full_weights(self.dist, self.model):
                old_logps = logps_in_chunks(self.model, rollout, args, self._autocast, self.plan.share_prompts)
        sampler_weights = None
        if corrects_sampler:
            sampler_weights = sampler_importance_weights(
                old_logps, rollout.sampling_logps, rollout.completion_mask, args.vllm_importance_sampling_mode,
                args.vllm_importance_sampling_clip_min, args.vllm_importance_sampling_clip_max)
            sampler_weights = sampler_weights.expand_as(old_logps).contiguous()  # [B, C]
        ref_logps = None
        if args.beta != 0.0:
            with distributed.full_weights(self.dist, self.model if self.reference_model is None
                                          else self.reference_model), \
                    reference_policy(self.model, self.reference_model) as reference:
                ref_logps = logps_in_chunks(reference, rollout, args, self._autocast, self.plan.share_prompts)
        return Batch(rollout, advantages.to(self.device), loss_mask, old_logps, ref_logps, rewards[mine],
                     sampler_weights)

    @torch.no_grad()
    def _round_metrics(self, rows: list[dict], rollout: Rollout, scores: RoundScores, rewards: torch.Tensor,
                       batch: Batch) -> dict:
        """The round's rewards, lengths and truncation over all processes; its samples go to completions.jsonl."""
        metrics, self._last_completions, table = runlog.record_round(
            rows, rollout, scores, rewards, batch.advantages, self.reward_names, self.args, self.dist,
            self.prompt_tokenizer.truncated, self.state.global_step + 1)
        self._last_table = table if table is not None else self._last_table
        if batch.sampler_weights is not None:  # TRL's sampling/ metrics: how far vLLM's log-probs are from ours
            weights = batch.sampler_weights
            if self.args.vllm_importance_sampling_mode.startswith("sequence"):
                weights = weights[:, :1]  # one weight per completion
            metrics.update(sampler_mismatch_metrics(batch.old_logps, batch.rollout.sampling_logps,
                                                    batch.rollout.completion_mask, weights))
        return metrics

    # ------------------------------------------------------------------ 4: one optimizer step's gradients

    def _accumulate_gradients(self, batch: Batch, window: Window) -> tuple[dict, int]:
        """Forward and backward of each of the step's micro-batches, their gradients summed in .grad; the step's
        loss and metrics (means over micro-batches and processes), and the tokens it processed."""
        micro_batches = window.micro_batches
        # loss-token counts of the step's micro-batches, here and summed over processes: [len(micro_batches)]
        local_tokens = torch.stack([batch.loss_mask[rows].sum() for rows in micro_batches]).double()
        global_tokens = distributed.all_reduce_sum(local_tokens.to(self.device, copy=True), self.dist).cpu()
        normaliser = StepNormaliser.of_window(self.args.loss_type, local_tokens, global_tokens, self.dist.world_size)
        processed = sum(int(batch.rollout.prompt_mask[rows].sum() + batch.rollout.completion_mask[rows].sum())
                        for rows in micro_batches)
        loss_sum, metric_sums = 0.0, {}
        for index, rows in enumerate(micro_batches):
            # DDP all-reduces gradients only on the step's last backward (FSDP reduce-scatters each one)
            with distributed.gradient_sync(self.train_model, last=index == len(micro_batches) - 1):
                loss_value, metrics = self.micro_step(batch, rows, normaliser, index)
            if index < len(micro_batches) - 1:  # transformers' event between the micro-batches of a step
                self.control = self.callback_handler.on_substep_end(self.args, self.state, self.control)
            loss_sum += loss_value
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + value
        self.micro_step.entropy_coef.end_step(self.dist)  # the adaptive coefficient moves once per optimizer step
        means = {"loss": loss_sum, **{key: value / len(micro_batches) for key, value in metric_sums.items()}}
        if self.micro_step.entropy_coef.enabled:
            means["entropy_coef"] = self.micro_step.entropy_coef.value
        # the step's loss and metrics over all processes: means (the loss is the averaged objective), tokens summed;
        # every process then takes the same skip decision
        means = distributed.mean_over_processes({**means, "tokens": processed}, self.dist)
        tokens = round(means.pop("tokens") * self.dist.world_size)
        return means, tokens

    def _check_weights_after_step(self) -> None:
        # a finite step can still give non-finite weights (a huge learning rate): stop before any save
        last = "none was saved yet" if self._saved_step is None else f"checkpoint-{self._saved_step}"
        check_finite_weights(self.model, f"step {self.state.global_step + 1} made them so; nothing was saved from "
                              f"them (the last checkpoint is {last}); lower learning_rate")

    # ------------------------------------------------------------------ pieces

    def _log(self, metrics: dict, evaluation: bool = False) -> None:
        """A row of metrics (a step's, or an evaluation's) into log_history and, during train(), metrics.jsonl and
        the trackers; a step's goes to the callbacks' on_log and the console when control.should_log says so (an
        evaluation's always does, as transformers logs every evaluation)."""
        row = {"step": self.state.global_step, "epoch": round(self.state.epoch, 4), **metrics}
        shown = evaluation or self.control.should_log
        if shown:  # callbacks may add metrics to the row before it is written
            self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs=row)
        self.log_history.append(row)
        if not self.dist.is_main:  # the row's metrics are global already (all-reduced); rank 0 writes them
            return
        if self._logs_open:
            runlog.append_jsonl(os.path.join(self.args.output_dir, "metrics.jsonl"), [row])
            if evaluation:
                self.trackers.log_evaluation(row, self.state.global_step)
            else:  # on logging steps the trackers get the means over the steps since the last (as TRL's)
                self.trackers.log(row, self.state.global_step, due=shown)
        if evaluation:
            runlog.print_evaluation(row)
        elif shown:
            runlog.print_progress(row, self._last_completions if self.args.log_completions else None,
                                  self.args.num_completions_to_print)
            if self.args.log_completions:
                self.trackers.log_completions(self._last_table, self.state.global_step)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """TRL's evaluate(): num_generations_eval completions of every eval prompt, sampled as in training and scored
        by the reward functions; no optimizer step (eval_loop.py). Returns TRL's metrics prefixed
        `metric_key_prefix`_ (eval_reward, eval_rewards/<fn>/mean, eval_loss, ...), reasonrl's eval_accuracy and
        eval_pass_at_<k> where they can be computed, and epoch; each named set of a dict of eval sets gets its
        name in the prefix (eval_<name>_reward). `eval_dataset` overrides the trainer's (one set, a dict of them,
        or the name of one of the trainer's); ignore_keys is accepted for transformers' signature and unused."""
        def check(name, data):  # as the trainer's own eval sets were at init
            check_reward_columns(self.reward_funcs, self.reward_names, data.column_names, f"eval set {name!r}")
            check_lengths(self.model.config, self.args.max_completion_length,
                          self.prompt_tokenizer.longest(data["prompt"]))

        def after_batch():
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)

        metrics = {}
        for prefix, data in chosen_eval_sets(eval_dataset, self._eval_data, self.args, metric_key_prefix, check):
            with distributed.full_weights(self.dist, self.model, self.reference_model):  # each decodes its own
                result = self.evaluator([dict(row) for row in data], self.state, prefix, after_batch)
            result["epoch"] = self.state.epoch
            self._log(result, evaluation=True)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=result)
            metrics.update(result)
        if self.device.type == "cpu":
            release_freed_memory()
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, optimizer, scheduler) -> str:
        check_finite_weights(self.model, f"the checkpoint of step {self.state.global_step} was not saved")
        state = {"global_step": self.state.global_step, "max_steps": self.state.max_steps,
                 "epoch": self.state.epoch, "sampler": self.sampler.state_dict(),
                 "truncated_prompts": self.prompt_tokenizer.truncated,
                 "log_history": runlog.last_rows(self.log_history),  # the last step's row, the last evaluation's
                 "model_name": self.model_name, "skipped_steps": self.step_guard.skipped_steps,
                 "consecutive_skips": self.step_guard.consecutive, "world_size": self.dist.world_size,
                 "epochs_ended": self._epochs_ended, "entropy_coef": self.micro_step.entropy_coef.state_dict()}
        # rank 0 saves (the weights, optimizer and generator are the same on every rank; the sampler is global); a
        # multi-process round in progress is not saved: it lives in shards, and resuming starts at the next round
        path = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        # fsdp: the weights and optimizer state gathered whole to rank 0 (every rank takes part), saved as one process
        # saves them, so the checkpoint loads in plain transformers and resumes at any world size
        model_state, optimizer_state = fsdp.full_state(self.model, optimizer) if self.dist.fsdp else (None, None)
        if self.dist.is_main:
            round_state = None if self.dist.enabled or self._round is None else self._round.checkpoint_state()
            path = ckpt.save_checkpoint(self.args.output_dir, self.state.global_step, model=self.model,
                                        tokenizer=self.tokenizer, optimizer=optimizer, scheduler=scheduler,
                                        trainer_state=state, config_yaml=self.args.to_yaml(),
                                        generator=self.generator, save_total_limit=self.args.save_total_limit,
                                        round_state=round_state, model_state=model_state,
                                        optimizer_state=optimizer_state)
        distributed.barrier(self.dist)  # no rank moves on (or resumes) before the checkpoint exists
        self._saved_step = self.state.global_step
        return path

    def _resume(self, path: str, optimizer, scheduler) -> None:
        """Continue from the checkpoint folder `path` (rundir.resolve_resume checked its files)."""
        ckpt.load_weights(self.model, path)
        if self.vllm is not None:
            self.vllm.policy_changed()
        optimizer_state, scheduler_state, rng, state = ckpt.load_training_state(path)
        try:
            if self.dist.fsdp:  # every process keeps its shards of the whole state
                fsdp.load_optimizer_state(self.model, optimizer, optimizer_state)
            else:
                optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"{path} was saved with another optimizer or schedule ({reason_of(error, 120)}); "
                                  f"resume with the run's optim and lr_scheduler_type") from None
        ckpt.restore_rng_state(rng, self.generator)
        self.sampler.load_state_dict(state["sampler"])
        self.state.global_step, self.state.epoch = state["global_step"], state["epoch"]
        self._epochs_ended = state.get("epochs_ended", math.floor(self.state.epoch))
        self.prompt_tokenizer.truncated = state.get("truncated_prompts", 0)
        self.step_guard = StepGuard(state.get("skipped_steps", 0))
        self.step_guard.consecutive = state.get("consecutive_skips", 0)
        if "entropy_coef" in state:
            self.micro_step.entropy_coef.load_state_dict(state["entropy_coef"])
        self._round = RoundProgress.from_checkpoint(path, self.device, self.args)
        if self._round is not None:
            self._last_completions = self._round.last_completions
        if self._round is not None and self.dist.enabled:
            # a one-process round holds every prompt's rows, and nothing says how to shard its micro-batch orders
            logger.warning("%s was saved in the middle of a round by one process; %d processes resume at the next "
                           "round (the rest of that round is not trained on)", path, self.dist.world_size)
            self._round = None
        self._saved_step = self.state.global_step

    @contextlib.contextmanager
    def _round_may_be_dropped(self, stop: StopSignals, optimizer, scheduler):
        """Making a round changes no weight, only positions (prompts drawn, the sampling generator). A signal there
        (one process) stops at once instead of waiting for a generation or a reward that may never end, and a user
        error (a reward breaking its contract or failing too often) stops too. Either way the positions go back to
        the round's start and the last completed step is checkpointed, so that --resume redoes the round exactly."""
        start = (self.sampler.state_dict(), ckpt.rng_state(self.generator), self.prompt_tokenizer.truncated)
        try:
            with stop.immediately(not self.dist.enabled):
                yield
        except (KeyboardInterrupt, ReasonRLError) as error:
            self.sampler.load_state_dict(start[0])
            ckpt.restore_rng_state(start[1], self.generator)
            self.prompt_tokenizer.truncated = start[2]
            if isinstance(error, KeyboardInterrupt):
                if self.dist.enabled:  # a second signal: the other processes are mid-round; no collective save
                    raise
                stop.signum = stop.signum or signal.SIGINT
                self._stop_if_asked(stop, optimizer, scheduler)  # saves the last step and raises
            if self.state.global_step == 0:
                raise
            path = self._checkpoint_once(optimizer, scheduler)
            raise type(error)(f"{error}; the last step's checkpoint is {path}") from None

    def _stop_if_asked(self, stop: StopSignals, optimizer, scheduler) -> None:
        """At a safe point (no step half-applied): after Ctrl-C or SIGTERM, save the last completed step and stop."""
        if distributed.any_process(stop.requested, self.dist):  # all ranks stop at the same step, or none
            step = self.state.global_step
            raise interrupted(stop, step, self._checkpoint_once(optimizer, scheduler) if step else None)

    def _checkpoint_once(self, optimizer, scheduler) -> str:
        """The checkpoint of the current step, saved now unless this run already saved (or resumed from) it."""
        if self._saved_step == self.state.global_step:
            return os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        return self._save_checkpoint(optimizer, scheduler)

    def _stop_diverged(self, optimizer, scheduler) -> None:
        """Save a checkpoint (its weights are the last good step's: the skipped steps applied nothing) and stop."""
        path = self._checkpoint_once(optimizer, scheduler)
        raise diverged(self.state.global_step, self.step_guard.consecutive, path)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None, **kwargs):
        """TRL's push_to_hub(): save the model (or adapter) and tokenizer to output_dir with a model card, and upload
        output_dir, without its checkpoints, to the Hub repository hub_model_id (default: output_dir's name under
        your account), created if missing (private: hub_private_repo). Returns huggingface_hub's CommitInfo (a
        Future with blocking=False); None on processes other than rank 0."""
        from reasonrl.export import push_run_folder

        self.control = self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.save_model()
        if not self.dist.is_main:
            return None
        last = {key: value for row in runlog.last_rows(self.log_history) for key, value in row.items()}
        return push_run_folder(self.args, self.model_name, self.state.global_step, last, private=private, token=token,
                               commit_message=commit_message, revision=revision, blocking=blocking,
                               tags=kwargs.get("tags"))

    def save_model(self, output_dir: str | None = None) -> None:
        """save_pretrained (safetensors) of the model or adapter, and the tokenizer. A folder holding a model that
        no save_model of this run's folder wrote is refused (rundir.check_model_save)."""
        output_dir = output_dir or self.args.output_dir
        model_state = None
        if self.dist.fsdp or self.dist.is_main:  # under fsdp every process checks and gathers its shards
            check_finite_weights(self.model, f"not saved to {output_dir}")
        if self.dist.fsdp:
            model_state = fsdp.full_state(self.model, None)[0]
        if self.dist.is_main:
            rundir.check_model_save(output_dir)
            self.model.save_pretrained(output_dir, safe_serialization=True,
                                       **({} if model_state is None else {"state_dict": model_state}))
            self.tokenizer.save_pretrained(output_dir)
            rundir.record_model_save(output_dir)
        distributed.barrier(self.dist)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: GRPOConfig, **components):
    """Train from a config alone (model, dataset and rewards named in it); returns the trainer."""
    trainer = GRPOTrainer(components.pop("model", cfg.model_name_or_path),
                          components.pop("reward_funcs", cfg.reward_funcs), args=cfg, **components)
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    return trainer
