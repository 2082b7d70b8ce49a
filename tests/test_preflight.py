"""The pre-flight memory check (preflight.py): one micro-step at the worst case before training, which fails fast
with one line naming what to lower, and changes nothing that training reads (checked bitwise)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.errors import OutOfMemory
from reasonrl.micro_step import MicroStep
from reasonrl.preflight import is_out_of_memory, optimizer_state_standin, worst_case_prompt_rows
from reasonrl.tiny import build_tiny_model

PROMPTS = ["a", "bb", "c" * 9, "dddd"]  # the longest is 9 tokens (one per character)


def _trainer(tmp_path, tokenizer, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=12, max_steps=3, learning_rate=1e-2, gradient_checkpointing=False,
                    logging_steps=100, save_steps=100, optim="adamw_torch", seed=5, adapt_cpu_threads=False)
    settings.update(overrides)
    return GRPOTrainer(build_tiny_model(tokenizer, seed=0), [lambda completions, **kw: [len(c) for c in completions]],
                       args=GRPOConfig(**settings), train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                       processing_class=tokenizer)


class Recorder:
    """Wraps the trainer's MicroStep: records each call's (rows, prompt width, completion width, is the check's);
    raises `error` on the check's call (its rollout is made up: no texts)."""

    def __init__(self, micro_step: MicroStep, error: BaseException | None = None):
        self.micro_step, self.error, self.calls = micro_step, error, []
        self.plan = micro_step.plan

    def __getattr__(self, name):  # the rest of MicroStep (its entropy coefficient) is the wrapped one's
        return getattr(self.micro_step, name)

    def __call__(self, batch, rows, normaliser, index):
        worst = not batch.rollout.texts
        self.calls.append((len(rows), batch.rollout.prompt_ids.size(1), batch.rollout.completion_ids.size(1), worst))
        if worst and self.error is not None:
            raise self.error
        return self.micro_step(batch, rows, normaliser, index)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora-dropout"])
def test_the_check_changes_nothing_training_reads(tmp_path, char_tokenizer, peft):
    # with LoRA dropout the micro-step draws random numbers: they are put back
    extra = dict(use_peft=True, lora_dropout=0.3, lora_r=4) if peft else {}
    results = []
    for skip in (True, False):
        trainer = _trainer(tmp_path / str(skip), char_tokenizer, skip_memory_check=skip, **extra)
        trainer.train()
        metrics = [json.loads(line) for line in open(tmp_path / str(skip) / "run" / "metrics.jsonl")]
        optimizer_state = torch.load(tmp_path / str(skip) / "run" / "checkpoint-3" / "optimizer.pt")
        results.append(([p.detach().clone() for p in trainer.model.parameters()],
                        [(row["loss"], row["grad_norm"], row["reward"]) for row in metrics], optimizer_state,
                        torch.get_rng_state()))
    (weights_a, metrics_a, optim_a, rng_a), (weights_b, metrics_b, optim_b, rng_b) = results
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
    assert metrics_a == metrics_b and any(loss != 0 for loss, _, _ in metrics_a)
    moments_a = [state["exp_avg"] for state in optim_a["state"].values()]
    moments_b = [state["exp_avg"] for state in optim_b["state"].values()]
    assert len(moments_a) == len(moments_b) > 0 and all(torch.equal(a, b) for a, b in zip(moments_a, moments_b))
    assert torch.equal(rng_a, rng_b)


def test_the_check_runs_one_micro_step_at_the_worst_case_and_leaves_no_gradient(tmp_path, char_tokenizer, caplog):
    trainer = _trainer(tmp_path, char_tokenizer, max_steps=1)
    trainer.micro_step = recorder = Recorder(trainer.micro_step)
    with caplog.at_level(logging.INFO, logger="reasonrl"):
        trainer.train()
    # first the check: 4 rows of the longest prompt (9 tokens) + 12 completion tokens; then the step's micro-batch
    assert recorder.calls[0] == (4, 9, 12, True)
    assert len(recorder.calls) == 2 and not recorder.calls[1][3]
    assert "pre-flight memory check: one micro-step of 4 x (9 + 12) tokens fits" in caplog.text
    trainer = _trainer(tmp_path / "b", char_tokenizer, max_steps=1)
    from reasonrl.preflight import check_worst_case_memory

    seconds = check_worst_case_memory(trainer.micro_step, trainer.model, trainer.train_model, trainer.args, 9,
                                      len(char_tokenizer), trainer.dist)
    assert 0 < seconds < 60
    assert all(p.grad is None for p in trainer.model.parameters())


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
], ids=["MemoryError", "cpu-allocator", "cuda"])
def test_running_out_of_memory_is_one_line_before_anything_is_written(tmp_path, char_tokenizer, error):
    trainer = _trainer(tmp_path, char_tokenizer)
    trainer.micro_step = Recorder(trainer.micro_step, error)
    with pytest.raises(OutOfMemory) as raised:
        trainer.train()
    message = str(raised.value)
    assert message.startswith("the pre-flight memory check ran out of memory on one micro-batch at the worst case "
                              "(4 completions of 9 prompt + 12 completion tokens: ")
    assert message.endswith("so the run would fail on its longest round; lower per_device_train_batch_size (4), "
                            "max_completion_length (12), backward_chunk_rows (e.g. 1) or max_prompt_length (512), or "
                            "set gradient_checkpointing=true or use_peft=true (LoRA) (skip_memory_check=true tries "
                            "anyway)")
    assert not os.path.exists(tmp_path / "run")  # the folder is not claimed: the same command can be rerun
    assert trainer.state.global_step == 0 and all(p.grad is None for p in trainer.model.parameters())
    # with smaller settings the same output_dir trains
    _trainer(tmp_path, char_tokenizer, max_steps=1, max_completion_length=6).train()


def test_other_errors_are_not_taken_for_running_out_of_memory(tmp_path, char_tokenizer):
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    trainer = _trainer(tmp_path, char_tokenizer)
    trainer.micro_step = Recorder(trainer.micro_step, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        trainer.train()


def test_the_message_names_what_the_plan_can_still_lower(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, use_peft=True, backward_chunk_rows=1, gradient_checkpointing=True)
    trainer.micro_step = Recorder(trainer.micro_step, MemoryError())
    with pytest.raises(OutOfMemory, match=r"; lower per_device_train_batch_size \(4\), max_completion_length \(12\) "
                                          r"or max_prompt_length \(512\) \(skip_memory_check=true tries anyway\)$"):
        trainer.train()


def test_skip_memory_check_skips_it(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, max_steps=1, skip_memory_check=True)
    trainer.micro_step = recorder = Recorder(trainer.micro_step, MemoryError())
    trainer.train()
    assert [call[3] for call in recorder.calls] == [False]


def test_optimizer_state_standin_is_the_size_of_the_optimizers_state():
    params = [torch.zeros(3, 5), torch.zeros(7)]

    def numel(optim):
        return sum(t.numel() * t.element_size() for t in optimizer_state_standin(params, optim))

    assert numel("adamw_torch") == numel("adamw_torch_fused") == 2 * 22 * 4
    assert numel("adamw_8bit") == 2 * 22 and numel("paged_adamw_8bit") == 0 and numel("sgd") == 0
    assert numel("adafactor") == (3 + 5 + 7) * 4
    # AdamW's real state after one step: two fp32 moments per parameter (and a scalar step)
    weights = [torch.nn.Parameter(torch.zeros(3, 5)), torch.nn.Parameter(torch.zeros(7))]
    optimizer = torch.optim.AdamW(weights)
    for w in weights:
        w.grad = torch.ones_like(w)
    optimizer.step()
    real = sum(t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step")
    assert real == numel("adamw_torch")


@pytest.mark.parametrize("rows, group_size, expected", [
    (4, 4, [0, 0, 0, 0]),  # a micro-batch is one group: one prompt, computed once
    (4, 3, [0, 0, 0, 1]),  # offsets 0, 4, 8 of groups of 3: every one straddles two groups
    (2, 1, [0, 1]),  # G=1: a prompt per row
    (8, 4, [0, 0, 0, 0, 1, 1, 1, 1]),
    (3, 8, [0, 0, 1]),  # rows 6-8 of 0..23 cross a group boundary
    (5, 2, [0, 0, 1, 1, 2]),
])
def test_the_worst_case_micro_batch_shares_prompts_as_a_rounds_does(rows, group_size, expected):
    assert worst_case_prompt_rows(rows, group_size).tolist() == expected
