"""GRPO training: the loop, top to bottom.

Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) with TRL's options. One round:

  1. sample G completions for each of a batch of prompts (rollout.generate: KV cache, stop at EOS);
  2. score every completion with the reward functions (TRL's signature) and combine them;
  3. advantages = reward relative to the prompt's group (core.group_advantages): no value network;
  4. num_iterations passes over the round in shuffled micro-batches of per_device_train_batch_size completions;
     every gradient_accumulation_steps micro-batches the PPO-clipped loss (core.grpo_loss), with a k3 KL penalty
     to the reference policy when beta > 0, takes one optimizer step with gradient clipping.

Where it departs from TRL: positions are computed from the attention mask in the training forward as in generation
(TRL's training forward uses 0..L-1 even for left-padded prompts), and dapo's denominator is the exact token
count of the optimizer step's window (TRL uses the round's count divided evenly; the two agree when
steps_per_generation == gradient_accumulation_steps, the default).

When things go wrong: a reward call that raises or times out scores None for its values (scoring.py; too many in
a round stop the run before anything is saved); a step with a non-finite loss or gradient norm is skipped, and a
few in a row stop the run with a checkpoint; Ctrl-C or SIGTERM stops at the next step boundary with one (guards.py).

Under torchrun or accelerate launch the same loop runs data-parallel: each process takes a slice of the round's
prompts, rewards are gathered, gradients are averaged by DDP, and rank 0 writes (distributed.py, docs/SCALING.md).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import signal
import time

import numpy as np
import torch

from reasonrl import checkpoint as ckpt
from reasonrl import distributed, rundir
from reasonrl.config import GRPOConfig
from reasonrl.cpu import ThreadGovernor, release_freed_memory
from reasonrl.core import (
    MICRO_BATCH_TOKENS,
    WINDOW_TOKENS,
    chunk_weight,
    group_advantages,
    grpo_loss,
    high_entropy_mask,
    masked_mean,
    nanstd,
    normalised_by,
    sequence_metrics,
)
from reasonrl.data import (
    PromptTokenizer,
    as_dataset,
    check_prompts,
    ensure_prompt_column,
    is_conversational,
    load_dataset_any,
)
from reasonrl.dynamic_sampling import DynamicSampler
from reasonrl.errors import CheckpointError, ConfigError, DataError, ModelLoadError, ReasonRLError, reason_of
from reasonrl.guards import LearningSignal, StepGuard, StopSignals, TrainingDiverged, TrainingInterrupted
from reasonrl.models import (
    DTYPES,
    add_lora,
    cast_frozen_weights,
    check_lengths,
    check_policy,
    frozen_copy,
    is_peft_model,
    load_model,
    load_model_config,
    load_tokenizer,
    lora_inputs_not_cast,
    lora_layers,
    prepare_tokenizer,
    reference_policy,
    use_lean_lora_dropout,
)
from reasonrl.optim import make_optimizer, make_scheduler
from reasonrl.policy import (
    PromptPrefix,
    disable_layer_checkpointing,
    enable_layer_checkpointing,
    plan_forward,
    sequence_logprobs,
)
from reasonrl.rollout import Rollout, generate
from reasonrl.rounds import Batch, PromptSampler, RoundProgress, TrainerState, group_order, is_every
from reasonrl.scoring import (
    ProcessExitGuard,
    check_failures,
    check_reward_columns,
    combine_rewards,
    log_failures_once,
    score_round,
)
from reasonrl.tracking import Trackers

logger = logging.getLogger("reasonrl")


class GRPOTrainer:
    """TRL's GRPOTrainer interface on reasonrl's loop.

    model: a hub id, a local path or a model object (a peft model too). reward_funcs: callables with TRL's
    signature, built-in names or "module:function" specs, alone or in a list.
    """

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        from reasonrl.rewards import get_reward, reward_name

        self.args = args = _as_config(args)
        # mistakes that need no model show before it loads: the output folder, the data, the reward columns
        rundir.check_output_dir(args.output_dir)
        # torchrun / accelerate launch: a process group from the environment, this process's device (distributed.py)
        self.dist = distributed.setup()
        self.device = self.dist.device
        self.bf16 = args.use_bf16()
        _seed_everything(args.seed)

        # rewards
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        reward_kwargs = args.reward_kwargs or {}
        self.reward_funcs = [get_reward(f, **reward_kwargs.get(f, {})) if isinstance(f, str) else f for f in funcs]
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        args.check_reward_weights(len(self.reward_funcs))
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

        # data
        if train_dataset is None:
            if not args.dataset_name:
                raise DataError("no training data: pass train_dataset= or set dataset_name to a hub id or a file")
            if os.path.isfile(args.dataset_name):
                rundir.ensure_not_run_file(args.dataset_name, args.output_dir, "dataset_name")
            train_dataset = load_dataset_any(args.dataset_name, config=args.dataset_config,
                                             split=args.dataset_train_split)
        self.train_dataset = ensure_prompt_column(as_dataset(train_dataset), args.prompt_column)
        if args.remove_unused_columns:
            self.train_dataset = self.train_dataset.select_columns(["prompt"])
        check_prompts(self.train_dataset)
        check_reward_columns(self.reward_funcs, self.reward_names, self.train_dataset.column_names)

        # the policy and its tokenizer
        if isinstance(model, str):
            check_lengths(load_model_config(model, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file),
                          args.max_completion_length)
            wants_lora = peft_config is not None or args.use_peft
            # frozen base weights can live in bf16 when only the LoRA adapter (kept fp32 by peft) trains
            dtype = torch.bfloat16 if (self.bf16 and wants_lora) else DTYPES.get(args.dtype, "auto")
            self.model_name = model
            model = load_model(model, dtype=dtype, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file,
                               **(args.model_init_kwargs or {}))
            processing_class = processing_class or load_tokenizer(
                self.model_name, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file)
        else:
            if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
                raise ModelLoadError(f"model must be a hub id, a local folder or a transformers model object (got "
                                     f"{type(model).__name__})")
            self.model_name = getattr(model.config, "_name_or_path", None) or type(model).__name__
            if processing_class is None:
                processing_class = load_tokenizer(self.model_name, trust_remote_code=args.trust_remote_code)
        self.processing_class = self.tokenizer = prepare_tokenizer(processing_class)
        check_policy(model, self.tokenizer)
        # every prompt rendered (chat template) and tokenized once: a template error or a prompt that, with a
        # completion, would not fit the model's positions shows now, not at the round that draws it
        self.prompt_tokenizer = PromptTokenizer(self.tokenizer, args.max_prompt_length)
        check_lengths(model.config, args.max_completion_length,
                      self.prompt_tokenizer.longest(self.train_dataset["prompt"]))
        if peft_config is None and args.use_peft and not is_peft_model(model):
            from reasonrl.models import lora_config_from

            peft_config = lora_config_from(args)
        if peft_config is not None:
            model = add_lora(model, peft_config)  # with the lean LoRA dropout
        else:
            use_lean_lora_dropout(model)  # a peft model given ready-made (a no-op for a plain model)
        if args.disable_dropout:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        if self.bf16 and is_peft_model(model) and args.cast_frozen_weights_to_bf16:
            cast_frozen_weights(model, torch.bfloat16)  # as if loaded by name in bf16: half the memory
        # entropy masking needs a micro-batch's entropies before its loss: one forward and backward per micro-batch
        self.entropy_masking = args.top_entropy_quantile < 1.0
        if self.entropy_masking and args.backward_chunk_rows:
            logger.warning("top_entropy_quantile=%g < 1: each micro-batch goes through forward and backward whole "
                           "(backward_chunk_rows=%d is not used), as the entropy threshold is over all its rows; "
                           "lower per_device_train_batch_size if memory is short", args.top_entropy_quantile,
                           args.backward_chunk_rows)
        # how every micro-batch's forward and backward run: decided here, once (policy.plan_forward)
        self.plan = plan_forward(gradient_checkpointing=args.gradient_checkpointing,
                                 backward_chunk_rows=args.backward_chunk_rows, device_type=self.device.type,
                                 bf16=self.bf16, distributed=self.dist.enabled, whole_micro_batch=self.entropy_masking)
        if self.plan.checkpoint_layers:
            enable_layer_checkpointing(model)
        else:
            disable_layer_checkpointing(model)  # a model object may come with it on: the row chunks bound memory
        self.model = model.to(self.device)
        self.reference_model = frozen_copy(self.model) if args.beta != 0.0 and not is_peft_model(self.model) else None
        # the training forward/backward goes through DistributedDataParallel (gradients averaged over processes);
        # generation, old/reference log-probs, peft's disable_adapter and saving use the unwrapped self.model
        self.train_model = distributed.wrap(self.model, self.dist)
        # peft's LoRA layers, found once: _autocast switches their input casting off and on at every forward
        self._lora_layers = lora_layers(self.model)
        self._sequence_metrics = sequence_metrics(args.importance_sampling_level)  # combined over chunks by rows

        self.eval_dataset = eval_dataset
        self.sampler = PromptSampler(len(self.train_dataset), args.seed, args.shuffle_dataset)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.state = TrainerState()
        self.log_history: list[dict] = []
        self.callbacks: list = []
        self.step_guard = StepGuard()
        self.learning_signal = LearningSignal()
        self._saved_step: int | None = None  # the step of the last checkpoint this run saved or resumed from
        self._round: RoundProgress | None = None  # the round being optimized (or resumed in its middle)
        self._logged_reward_failures: set = set()  # (function, exception type) whose traceback was logged
        self.make_round = DynamicSampler(args, self.tokenizer.pad_token_id)  # DAPO's refill when dynamic_sampling

    def add_callback(self, callback) -> None:
        """`callback(trainer, row)` runs after every optimizer step, before the row is logged; it may add metrics
        to `row` (the demo adds held-out accuracy this way)."""
        self.callbacks.append(callback)

    # ------------------------------------------------------------------ the loop

    def train(self, resume_from_checkpoint: str | bool | None = None):
        args = self.args
        # the one reading of the resume option; the folder is checked and made this run's (rundir.py): an earlier
        # run there is only replaced with overwrite_output_dir, later checkpoints of a resumed one are set aside
        resume = rundir.resolve_resume(args.output_dir, resume_from_checkpoint, args.to_dict())
        rundir.check_start(args.output_dir, resume=resume, overwrite=args.overwrite_output_dir)  # on every process
        distributed.barrier(self.dist)  # before rank 0 changes the folder
        if self.dist.is_main:
            rundir.claim(args.output_dir, resume=resume, overwrite=args.overwrite_output_dir)
        distributed.barrier(self.dist)
        steps_per_round = args.num_iterations * args.effective_steps_per_generation // args.gradient_accumulation_steps
        rounds_per_epoch = math.ceil(len(self.train_dataset) / args.prompts_per_generation)
        total_steps = args.max_steps if args.max_steps > 0 else math.ceil(
            args.num_train_epochs * rounds_per_epoch) * steps_per_round
        self.state.max_steps = total_steps
        optimizer = make_optimizer(self.model, args)
        scheduler = make_scheduler(optimizer, args, total_steps)
        if resume is not None:
            self._resume(resume, optimizer, scheduler)
        self._start_logs()

        from tqdm.auto import tqdm

        # rank 0 alone reports (trackers, progress bar); the others train silently
        self.trackers = Trackers(args if self.dist.is_main else _without_trackers(args))
        progress = tqdm(total=total_steps, initial=self.state.global_step, desc="GRPO", unit="step",
                        dynamic_ncols=True, disable=not self.dist.is_main)
        # Ctrl-C and SIGTERM only raise a flag, checked between optimizer steps (guards.StopSignals)
        # os._exit in a reward fails that reward call instead of ending the run silently (scoring.ProcessExitGuard)
        governor = ThreadGovernor(enabled=args.adapt_cpu_threads and self.device.type == "cpu")
        with StopSignals() as stop, ProcessExitGuard(), contextlib.closing(self.trackers), progress, \
                contextlib.closing(governor):
            while self.state.global_step < total_steps:
                self._stop_if_asked(stop, optimizer, scheduler)
                round_start = time.perf_counter()
                if self._round is None or self._round.done:  # else: the rest of the round a checkpoint held
                    # a signal while the round is made stops at once, and a user error (a failing reward) stops too:
                    # the round is dropped and the last step is saved, as the round changed no weight
                    threads = governor.update()  # cores other programs left free over the last round (cpu.py)
                    with self._round_may_be_dropped(stop, optimizer, scheduler):
                        batch, round_metrics = self.make_round(self._make_round)  # 1-3: generate, score, advantages
                    round_metrics["cpu_threads"] = threads
                    round_metrics["rollout_time"] = time.perf_counter() - round_start
                    self._round = self._new_round(batch, round_metrics)
                batch, round_metrics = self._round.batch, self._round.metrics
                for step_metrics in self._optimize(batch, optimizer, scheduler):  # 4: the optimizer steps
                    self.state.global_step += 1
                    self.state.epoch = self.sampler.epochs_done
                    metrics = {**round_metrics, **step_metrics, "step_time": time.perf_counter() - round_start}
                    # tokens of this step's micro-batches (and the round's generated ones, on its first step) / s
                    metrics["tokens_per_second"] = (step_metrics["tokens"] + round_metrics["rollout_tokens"]) / (
                        metrics["step_time"])
                    # the round's next steps log no rollout (and a checkpoint saved now resumes the round with these)
                    self._round.metrics = round_metrics = {**round_metrics, "rollout_time": 0.0, "rollout_tokens": 0}
                    self._log(metrics)
                    progress.update(1)
                    progress.set_postfix(reward=f"{metrics['reward']:.3f}", loss=f"{metrics['loss']:.4f}")
                    if is_every(self.state.global_step, args.save_steps, total_steps):
                        self._save_checkpoint(optimizer, scheduler)
                    if self.step_guard.diverged:  # K non-finite steps in a row (guards.StepGuard)
                        self._stop_diverged(optimizer, scheduler)
                    self._stop_if_asked(stop, optimizer, scheduler)
                    round_start = time.perf_counter()
                    if self.state.global_step >= total_steps:
                        break
        if not is_every(self.state.global_step, args.save_steps, total_steps):
            self._save_checkpoint(optimizer, scheduler)
        return self.log_history

    def _new_round(self, batch: Batch, metrics: dict, orders: torch.Tensor | None = None) -> RoundProgress:
        """The round's micro-batch orders, one per pass, are all drawn now (nothing else draws from the generator
        between the passes, so the numbers are those the passes would draw): a checkpoint saved in the round's middle
        then holds a generator state past all of them, and the orders themselves."""
        args = self.args
        num_rows = batch.advantages.size(0)
        if orders is None:
            orders = torch.stack([group_order(num_rows, args.num_generations, self.generator)
                                  for _ in range(args.num_iterations)])  # [num_iterations, B]
        micro_batches = math.ceil(num_rows / args.per_device_train_batch_size)
        num_windows = args.num_iterations * math.ceil(micro_batches / args.gradient_accumulation_steps)
        return RoundProgress(batch, metrics, orders, num_windows,
                             last_completions=getattr(self, "_last_completions", None))

    # ------------------------------------------------------------------ 1-3: a scored round

    @torch.no_grad()
    def _make_round(self) -> tuple[Batch, dict]:
        args, g = self.args, self.args.num_generations
        # every process draws the round's global prompt list and keeps its contiguous slice of whole prompts
        first_draw = self.sampler.draws
        indices = self.sampler.take(args.prompts_per_generation)
        mine = distributed.shard(len(indices), self.dist)
        seeds = distributed.prompt_seeds(args.seed, first_draw, len(indices))[mine]  # a prompt samples alike anywhere
        all_rows = [self.train_dataset[i] for i in indices]
        # the whole round is tokenized on every process: the padding width (and truncation count) one process has
        prompt_ids, prompt_mask = self.prompt_tokenizer([row["prompt"] for row in all_rows], device=self.device)
        rows, prompt_ids, prompt_mask = all_rows[mine], prompt_ids[mine], prompt_mask[mine]  # [N, P]
        prompts = [row["prompt"] for row in rows]

        self.model.eval()
        with self._autocast():
            completion_ids, completion_mask, _, is_truncated = generate(
                self.model, prompt_ids, prompt_mask, num_generations=g, max_new_tokens=args.max_completion_length,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                repetition_penalty=args.repetition_penalty, generator=self.generator, seeds=seeds)
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(g, 0), prompt_mask.repeat_interleave(g, 0)  # [B, P]
        ids_list = [ids[mask.bool()].tolist() for ids, mask in zip(completion_ids, completion_mask)]
        texts = self.tokenizer.batch_decode(ids_list, skip_special_tokens=True)
        rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, None, is_truncated, texts)

        # rewards, with TRL's calling convention: prompts and dataset columns repeated G times
        repeated_prompts = [p for p in prompts for _ in range(g)]
        completions = ([[{"role": "assistant", "content": t}] for t in texts] if is_conversational(prompts[0])
                       else texts)
        columns = {key: [row[key] for row in rows for _ in range(g)] for key in rows[0] if key != "prompt"}
        columns["trainer_state"] = self.state
        # a call that raises or times out gives NaN values (None semantics); too many of them stop the run
        scores = score_round(self.reward_funcs, self.reward_names, repeated_prompts, completions, ids_list, columns,
                             timeout=args.reward_timeout)
        log_failures_once(scores, self._logged_reward_failures)
        # from here on the round's scores over all processes (rank order = draw order): the failure fraction, the
        # advantages (also scale_rewards=batch) and the metrics are those of one process with the whole round
        scores = distributed.gather_scores(scores, self.dist)
        check_failures(scores, args.max_reward_error_fraction)
        rewards_per_func = scores.rewards_per_func  # [B_all, F]
        rewards = combine_rewards(rewards_per_func, self.reward_weights, self.reward_names)  # [B_all]
        mine = distributed.shard(rewards.size(0), self.dist)  # this process's rows
        advantages = group_advantages(rewards, g, scale=args.scale_rewards)[mine].to(self.device)  # [B]
        if self.dist.is_main:  # warns when every group's rewards agree (nothing to learn from this round)
            self.learning_signal.check(rewards, g, self.state.global_step + 1)

        loss_mask = completion_mask
        if args.mask_truncated_completions:
            loss_mask = completion_mask * (~is_truncated).long()[:, None]
        reuses_round = args.num_iterations > 1 or args.effective_steps_per_generation > args.gradient_accumulation_steps
        old_logps = self._logps_in_chunks(self.model, rollout) if reuses_round else None
        ref_logps = None
        if args.beta != 0.0:
            with reference_policy(self.model, self.reference_model) as reference:
                ref_logps = self._logps_in_chunks(reference, rollout)

        lengths = distributed.all_gather_rows(completion_mask.sum(-1).float(), self.dist)  # [B_all]
        is_truncated_all = distributed.all_gather_rows(is_truncated.float(), self.dist)  # [B_all]
        # as TRL: the std that scaled the advantages (the batch's under scale_rewards="batch")
        group_std = nanstd(rewards) if args.scale_rewards == "batch" else nanstd(rewards.view(-1, g), dim=1)
        metrics = {
            "reward": torch.nanmean(rewards).item(),
            "reward_std": nanstd(rewards).item(),
            "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std)).float().mean().item(),
            "completions/mean_length": lengths.mean().item(),
            "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": is_truncated_all.mean().item(),
            "prompts/truncated": self.prompt_tokenizer.truncated,
            "rollout_tokens": int(lengths.sum()),
        }
        for i, name in enumerate(self.reward_names):
            metrics[f"rewards/{name}/mean"] = torch.nanmean(rewards_per_func[:, i]).item()
            metrics[f"rewards/{name}/std"] = nanstd(rewards_per_func[:, i]).item()
            metrics[f"rewards/{name}/errors"] = scores.errors[name]
        self._record_completions(repeated_prompts, texts, rewards_per_func[mine], advantages)
        return Batch(rollout, advantages, loss_mask, old_logps, ref_logps, rewards[mine]), metrics

    def _logps_in_chunks(self, model, rollout: Rollout) -> torch.Tensor:
        was_training = model.training
        model.eval()
        size = self.args.per_device_train_batch_size
        pieces = []
        for start in range(0, rollout.completion_ids.size(0), size):
            rows = slice(start, start + size)
            with self._autocast():
                logps = self._forward(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                                      rollout.completion_ids[rows], rollout.completion_mask[rows])
            pieces.append(logps.float())
        model.train(was_training)
        return torch.cat(pieces)

    def _forward(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """Log-probs [b, C] of the completion tokens at the sampling temperature (rows with the same prompt compute
        it once: policy.sequence_logprobs(share_prompts=True))."""
        return sequence_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                 self.args.temperature, share_prompts=True)

    # ------------------------------------------------------------------ 4: optimizer steps on a round

    def _optimize(self, batch: Batch, optimizer, scheduler):
        """Yield the metrics of each optimizer step taken on this round."""
        args = self.args
        size, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        num_rows = batch.advantages.size(0)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        round_ = self._round  # its orders, and how many of its windows are done (> 0 when resumed mid-round)
        for iteration in range(args.num_iterations):
            order = round_.orders[iteration]
            micro_batches = [order[i: i + size] for i in range(0, num_rows, size)]
            window_starts = range(0, len(micro_batches), accumulation)
            for window_start in window_starts:
                window_index = iteration * len(window_starts) + window_start // accumulation
                if window_index < round_.next_window:
                    continue  # taken before the checkpoint this run resumed from
                window = micro_batches[window_start: window_start + accumulation]
                # loss-token counts of the window's micro-batches, summed over processes: [len(window)]
                local_tokens = torch.stack([batch.loss_mask[rows].sum() for rows in window]).double()
                global_tokens = distributed.all_reduce_sum(local_tokens.to(self.device, copy=True), self.dist).cpu()
                # dapo's denominator: the window's global token count / world size, as DDP then averages over ranks
                window_tokens = (global_tokens.sum() / self.dist.world_size).float()
                divisors = self._loss_divisors(local_tokens, global_tokens)
                processed = sum(int(batch.rollout.prompt_mask[rows].sum() + batch.rollout.completion_mask[rows].sum())
                                for rows in window)
                loss_sum, metric_sums = 0.0, {}
                for index, rows in enumerate(window):
                    # DDP all-reduces gradients only on the window's last backward
                    syncs = index == len(window) - 1 or not self.dist.enabled
                    with contextlib.nullcontext() if syncs else self.train_model.no_sync():
                        loss_value, metrics = self._micro_step(batch, rows, window_tokens, divisors[index])
                    loss_sum += loss_value
                    for key, value in metrics.items():
                        metric_sums[key] = metric_sums.get(key, 0.0) + value
                sums = {"loss": loss_sum, **{key: value / len(window) for key, value in metric_sums.items()}}
                # the step's loss and metrics over all processes: means (the loss is the averaged objective), tokens
                # summed; every process then takes the same skip decision
                sums = distributed.mean_over_processes({**sums, "tokens": processed}, self.dist)
                processed = round(sums.pop("tokens") * self.dist.world_size)
                loss_sum = sums["loss"]
                # max_grad_norm=0 disables clipping: the norm is still measured (clipping to inf scales by 1)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm or math.inf)
                # a non-finite loss or gradient norm skips the step: no optimizer or schedule move (guards.py)
                if self.step_guard.allows(self.state.global_step + 1, loss_sum, grad_norm.item()):
                    optimizer.step()
                    scheduler.step()
                    # a finite step can still give non-finite weights (a huge learning rate): stop before any save
                    last = "none was saved yet" if self._saved_step is None else f"checkpoint-{self._saved_step}"
                    _check_finite_weights(self.model, f"step {self.state.global_step + 1} made them so; nothing was "
                                          f"saved from them (the last checkpoint is {last}); lower learning_rate")
                optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cpu":
                    release_freed_memory()  # the step's activations, so that the next phase's peak is its own
                round_.next_window = window_index + 1
                yield {**sums, "grad_norm": grad_norm.item(), "learning_rate": scheduler.get_last_lr()[0],
                       "tokens": processed, "skipped_steps": self.step_guard.skipped_steps}

    def _loss_divisors(self, local_tokens: torch.Tensor, global_tokens: torch.Tensor) -> list[float]:
        """What each micro-batch's loss (not one normalised by the window's tokens: dapo, cispo, vespo) is divided
        by, so that DDP's mean over W processes of the gradients equals one process's gradient on the global
        micro-batches (each process's b rows together).

        Loss types normalised by rows (grpo, sapo, luspo, dr_grpo's rows * max_completion_length): loss / window
        size, averaged over equal-sized shards, is already the global value. bnpo averages over the micro-batch's
        tokens: W processes' local averages are reweighted to the token mean of their union, loss_r * W * n_r / N
        (n_r local, N global tokens).
        """
        window_size = local_tokens.numel()
        if normalised_by(self.args.loss_type) != MICRO_BATCH_TOKENS or not self.dist.enabled:
            return [float(window_size)] * window_size
        world = self.dist.world_size
        return [window_size * float(total) / (world * float(local)) if local > 0 else float(window_size)
                for local, total in zip(local_tokens.tolist(), global_tokens.tolist())]

    def _micro_step(self, batch: Batch, rows: torch.Tensor, window_tokens: torch.Tensor, window_size: float):
        """Forward and backward of one micro-batch; returns its scaled loss and its metrics.

        Its prompts run once (policy.PromptPrefix). As self.plan says (policy.plan_forward), its completions go
        through forward and backward a few rows at a time, each chunk's loss weighted by its share of the
        micro-batch's normaliser (core.chunk_weight), so the gradient is the micro-batch's; or all at once (DDP,
        entropy masking), the prompts' cache then staying in the graph.
        """
        args, rollout = self.args, batch.rollout
        completion_mask = rollout.completion_mask[rows]
        # trim padding columns this micro-batch does not need
        width = int(completion_mask.sum(-1).max().clamp(min=1))
        columns = slice(0, width)
        prompt_mask = rollout.prompt_mask[rows]
        prompt_start = int((prompt_mask.sum(0) > 0).nonzero()[0])
        prompt_ids, prompt_mask = rollout.prompt_ids[rows][:, prompt_start:], prompt_mask[:, prompt_start:]
        completion_ids, completion_mask = rollout.completion_ids[rows][:, columns], completion_mask[:, columns]
        mask = batch.loss_mask[rows][:, columns]
        old_logps = None if batch.old_logps is None else batch.old_logps[rows][:, columns]
        ref_logps = None if batch.ref_logps is None else batch.ref_logps[rows][:, columns]
        # dapo, cispo and vespo are already normalised by the window's token count; the others average over it
        window_scale = 1.0 if normalised_by(args.loss_type) == WINDOW_TOKENS else 1.0 / window_size
        num_rows = len(rows)
        chunk_rows = self.plan.rows_per_chunk(num_rows, width)
        prefix = None
        if self.plan.chunked:
            with self._autocast():
                prefix = PromptPrefix(self.train_model, prompt_ids, prompt_mask)

        loss_total, values = 0.0, {}
        for start in range(0, num_rows, chunk_rows):
            chunk = slice(start, start + chunk_rows)
            with self._autocast():  # log-probs [n, C] and, for the metric, entropies [n, C]
                if prefix is not None:
                    logps, entropy = prefix.completion_logprobs(chunk, completion_ids[chunk], completion_mask[chunk],
                                                                args.temperature, with_entropy=True)
                else:
                    logps, entropy = sequence_logprobs(self.train_model, prompt_ids, prompt_mask, completion_ids,
                                                       completion_mask, args.temperature, with_entropy=True,
                                                       share_prompts=True)
            entropy_mask = None
            if self.entropy_masking:  # over the micro-batch's loss tokens on every process, as TRL
                pool = distributed.all_gather_varlen(entropy[mask[chunk].bool()].float(), self.dist)
                entropy_mask = high_entropy_mask(entropy, mask[chunk], args.top_entropy_quantile, pool)
            loss, metrics = grpo_loss(
                logps.float(), None if old_logps is None else old_logps[chunk],
                None if ref_logps is None else ref_logps[chunk], batch.advantages[rows][chunk], mask[chunk],
                loss_type=args.loss_type, epsilon=args.epsilon, epsilon_high=args.epsilon_high, beta=args.beta,
                importance_sampling_level=args.importance_sampling_level,
                max_completion_length=args.max_completion_length, delta=args.delta, num_items=window_tokens,
                use_bias_correction_kl=args.use_bias_correction_kl, sapo_temperature_pos=args.sapo_temperature_pos,
                sapo_temperature_neg=args.sapo_temperature_neg, vespo_k_pos=args.vespo_k_pos,
                vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
                vespo_lambda_neg=args.vespo_lambda_neg, entropy_mask=entropy_mask)
            scaled = loss * chunk_weight(args.loss_type, mask[chunk], mask, window_tokens) * window_scale
            scaled.backward()
            loss_total += scaled.item()
            metrics["entropy"] = masked_mean(entropy, completion_mask[chunk])
            # token-weighted (row-weighted for means over sequences), so that the chunks' metrics add up to the
            # micro-batch's means
            loss_share = mask[chunk].sum().item() / max(1, mask.sum().item())
            entropy_share = completion_mask[chunk].sum().item() / max(1, completion_mask.sum().item())
            shares = {"entropy": entropy_share}
            shares.update(dict.fromkeys(self._sequence_metrics, logps.size(0) / num_rows))
            for key, value in metrics.items():
                values[key] = values.get(key, 0.0) + shares.get(key, loss_share) * value.item()
            del logps, entropy, loss, scaled
        if prefix is not None:
            prefix.backward()
        return loss_total, values  # the window's loss is the sum of its micro-batches' scaled losses

    # ------------------------------------------------------------------ pieces

    def _autocast(self):
        """bf16: autocast, and peft's LoRA layers keep their bf16 input instead of casting it to their fp32 weights'
        dtype (autocast casts it back to bf16 for the matmul: two copies per layer that change nothing but, with
        dropout, a rare double rounding)."""
        if not self.bf16:
            return contextlib.nullcontext()
        context = contextlib.ExitStack()
        context.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        context.enter_context(lora_inputs_not_cast(self._lora_layers))
        return context

    def _log(self, metrics: dict) -> None:
        args = self.args
        row = {"step": self.state.global_step, "epoch": round(self.state.epoch, 4), **metrics}
        for callback in self.callbacks:
            callback(self, row)
        self.log_history.append(row)
        if not self.dist.is_main:  # the row's metrics are global already (all-reduced); rank 0 writes them
            return
        with open(os.path.join(args.output_dir, "metrics.jsonl"), "a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.trackers.log(row, self.state.global_step)
        if is_every(self.state.global_step, args.logging_steps, self.state.max_steps):
            from tqdm.auto import tqdm

            keys = ["reward", "reward_std", "loss", "kl", "entropy", "completions/mean_length", "grad_norm"]
            tqdm.write(f"step {row['step']}: " + "  ".join(f"{k}={row[k]:.4g}" for k in keys if k in row))
            if args.log_completions and self._last_completions:
                for sample in self._last_completions[: args.num_completions_to_print or 2]:
                    tqdm.write(f"  prompt: {str(sample['prompt'])[-200:]!r}\n  completion: {sample['completion']!r}"
                               f"\n  rewards: {sample['rewards']}")

    def _start_logs(self) -> None:
        """A new run starts new logs; a resumed one keeps the rows up to its checkpoint's step, so that the steps
        it redoes are not logged twice."""
        if not self.dist.is_main:  # rank 0 owns the log files
            return
        for name in ("metrics.jsonl", "completions.jsonl"):
            path = os.path.join(self.args.output_dir, name)
            if not os.path.isfile(path):
                continue
            kept = []
            if self.state.global_step > 0:
                with open(path) as handle:
                    kept = [line for line in handle if _step_of(line) <= self.state.global_step]
            with open(path, "w") as handle:
                handle.writelines(kept)

    def _record_completions(self, prompts, texts, rewards_per_func, advantages) -> None:
        samples = []
        for i in range(0, len(texts), self.args.num_generations):  # the first completion of each prompt
            rewards = {name: (None if math.isnan(v) else v)
                       for name, v in zip(self.reward_names, rewards_per_func[i].tolist())}
            samples.append({"step": self.state.global_step + 1, "prompt": prompts[i], "completion": texts[i],
                            "rewards": rewards, "advantage": advantages[i].item()})
        # every process's samples, in rank (= draw) order; rank 0 writes them
        samples = [sample for part in distributed.gather_objects(samples, self.dist) for sample in part]
        self._last_completions = samples
        if not self.dist.is_main:
            return
        with open(os.path.join(self.args.output_dir, "completions.jsonl"), "a") as handle:
            handle.writelines(json.dumps(sample, default=str) + "\n" for sample in samples)

    def _save_checkpoint(self, optimizer, scheduler) -> str:
        _check_finite_weights(self.model, f"the checkpoint of step {self.state.global_step} was not saved")
        state = {"global_step": self.state.global_step, "max_steps": self.state.max_steps,
                 "epoch": self.state.epoch, "sampler": self.sampler.state_dict(),
                 "truncated_prompts": self.prompt_tokenizer.truncated, "log_history": self.log_history[-1:],
                 "model_name": self.model_name, "skipped_steps": self.step_guard.skipped_steps,
                 "consecutive_skips": self.step_guard.consecutive, "world_size": self.dist.world_size}
        # rank 0 saves (the weights, optimizer and generator are the same on every rank; the sampler is global); a
        # multi-process round in progress is not saved: it lives in shards, and resuming starts at the next round
        path = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        if self.dist.is_main:
            path = ckpt.save_checkpoint(self.args.output_dir, self.state.global_step, model=self.model,
                                        tokenizer=self.tokenizer, optimizer=optimizer, scheduler=scheduler,
                                        trainer_state=state, config_yaml=self.args.to_yaml(),
                                        generator=self.generator, save_total_limit=self.args.save_total_limit,
                                        round_state=None if self.dist.enabled else self._round_state())
        distributed.barrier(self.dist)  # no rank moves on (or resumes) before the checkpoint exists
        self._saved_step = self.state.global_step
        return path

    def _resume(self, path: str, optimizer, scheduler) -> None:
        """Continue from the checkpoint folder `path` (rundir.resolve_resume checked its files)."""
        ckpt.load_weights(self.model, path)
        optimizer_state, scheduler_state, rng, state = ckpt.load_training_state(path)
        try:
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"{path} was saved with another optimizer or schedule ({reason_of(error, 120)}); "
                                  f"resume with the run's optim and lr_scheduler_type") from None
        ckpt.restore_rng_state(rng, self.generator)
        self.sampler.load_state_dict(state["sampler"])
        self.state.global_step, self.state.epoch = state["global_step"], state["epoch"]
        self.prompt_tokenizer.truncated = state.get("truncated_prompts", 0)
        self.step_guard = StepGuard(state.get("skipped_steps", 0))
        self.step_guard.consecutive = state.get("consecutive_skips", 0)
        self._round = self._load_round(path)
        if self._round is not None and self.dist.enabled:
            # a one-process round holds every prompt's rows, and nothing says how to shard its micro-batch orders
            logger.warning("%s was saved in the middle of a round by one process; %d processes resume at the next "
                           "round (the rest of that round is not trained on)", path, self.dist.world_size)
            self._round = None
        self._saved_step = self.state.global_step

    def _round_state(self) -> tuple[dict, dict] | None:
        """(tensors, values) of the round in progress for a checkpoint, or None at a round's end (nothing to keep)."""
        round_ = self._round
        if round_ is None or round_.done:
            return None
        tensors, values = ckpt.split_dataclass(round_.batch, "batch.")
        rollout_tensors, rollout_values = ckpt.split_dataclass(round_.batch.rollout, "rollout.")
        tensors.update(rollout_tensors, orders=round_.orders)
        values.update(rollout_values, metrics=round_.metrics, num_windows=round_.num_windows,
                      next_window=round_.next_window, last_completions=round_.last_completions)
        return tensors, values

    def _load_round(self, path: str) -> RoundProgress | None:
        stored = ckpt.load_round(path, self.device)
        if stored is None:
            return None
        tensors, values = stored
        orders = tensors["orders"]
        if orders.size(0) != self.args.num_iterations:
            raise ConfigError(f"{path} was saved in the middle of a round of num_iterations={orders.size(0)}; "
                              f"resume it with the same num_iterations (got {self.args.num_iterations})")
        rollout = ckpt.build_dataclass(Rollout, tensors, values, "rollout.")
        batch = ckpt.build_dataclass(Batch, tensors, values, "batch.", rollout=rollout)
        round_ = self._new_round(batch, values["metrics"], orders=orders)
        if round_.num_windows != values["num_windows"]:
            raise ConfigError(f"{path} was saved in the middle of a round of {values['num_windows']} optimizer steps "
                              f"but these settings make rounds of {round_.num_windows}; resume with the run's "
                              f"per_device_train_batch_size, gradient_accumulation_steps and steps_per_generation")
        round_.next_window, round_.last_completions = values["next_window"], values["last_completions"]
        self._last_completions = round_.last_completions
        return round_

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
        if not distributed.any_process(stop.requested, self.dist):  # all ranks stop at the same step, or none
            return
        step = self.state.global_step
        if step == 0:
            message, path = "interrupted before the first optimizer step; nothing to save", None
        else:
            path = self._checkpoint_once(optimizer, scheduler)
            message = (f"interrupted after step {step}; saved {path}; continue with "
                       f"`reasonrl train ... --resume` (or resume_from_checkpoint={path})")
        # a rank that got no signal itself stops because another did (launchers forward SIGTERM to every rank)
        raise TrainingInterrupted(message, path, stop.signum or 15)

    def _checkpoint_once(self, optimizer, scheduler) -> str:
        """The checkpoint of the current step, saved now unless this run already saved (or resumed from) it."""
        if self._saved_step == self.state.global_step:
            return os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        return self._save_checkpoint(optimizer, scheduler)

    def _stop_diverged(self, optimizer, scheduler) -> None:
        """Save a checkpoint (its weights are the last good step's: the skipped steps applied nothing) and stop."""
        path = self._checkpoint_once(optimizer, scheduler)
        step = self.state.global_step
        raise TrainingDiverged(f"training diverged: steps {step - self.step_guard.consecutive + 1}-{step} all had a "
                               f"non-finite loss or gradient norm and were skipped; the last good weights are saved "
                               f"in {path}; lower learning_rate or max_grad_norm (or check the rewards), then "
                               f"resume with --resume")

    def save_model(self, output_dir: str | None = None) -> None:
        """save_pretrained (safetensors) of the model or adapter, and the tokenizer. A folder holding a model that
        no save_model of this run's folder wrote is refused (rundir.check_model_save)."""
        output_dir = output_dir or self.args.output_dir
        if self.dist.is_main:
            rundir.check_model_save(output_dir)
            _check_finite_weights(self.model, f"not saved to {output_dir}")
            self.model.save_pretrained(output_dir, safe_serialization=True)
            self.tokenizer.save_pretrained(output_dir)
            rundir.record_model_save(output_dir)
        distributed.barrier(self.dist)


def _step_of(line: str) -> float:
    """A log line's step; infinity (dropped on resume) for a blank line or one a killed run left half-written."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def _without_trackers(args: GRPOConfig) -> GRPOConfig:
    """A copy of the config that reports nowhere (ranks other than 0); no re-validation."""
    quiet = copy.copy(args)
    quiet.report_to = "none"
    return quiet


def _check_finite_weights(model, consequence: str) -> None:
    """TrainingDiverged when a trainable weight is NaN or infinite: such weights are never saved."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not torch.isfinite(parameter).all():
            raise TrainingDiverged(f"the weights are not finite ({name} holds NaN or inf; learning_rate too high?); "
                                   f"{consequence}")


def _as_config(args) -> GRPOConfig:
    """The trainer's `args`: a GRPOConfig, a dict of its fields, or None (the defaults)."""
    if args is None:
        return GRPOConfig()
    if isinstance(args, dict):
        return GRPOConfig.from_dict(args)
    if not isinstance(args, GRPOConfig):
        raise ConfigError(f"args must be a reasonrl GRPOConfig or a dict of its options (got "
                          f"{type(args).__module__}.{type(args).__name__}); use `from reasonrl import GRPOConfig`")
    return args


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
