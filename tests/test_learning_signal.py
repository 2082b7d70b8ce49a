"""The "no learning signal" warning (guards.LearningSignal): when every group's rewards agree it says why nothing is
learned and what to change, once at the 1st, 10th, 100th such round in a row."""

from __future__ import annotations

import logging
import math

import torch

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.guards import LearningSignal
from reasonrl.tiny import build_tiny_model


def test_a_round_with_a_spread_in_any_group_has_a_signal_and_ends_the_streak():
    signal = LearningSignal()
    assert signal.check(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2, step=1) is not None
    assert signal.streak == 1
    assert signal.check(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2, step=2) is None  # the second group differs
    assert signal.streak == 0
    # NaN (unscorable) values are left out: a group of 1.0 and NaN has no spread, one of 1.0, NaN, 0.0 has
    assert signal.check(torch.tensor([1.0, math.nan, 1.0, 1.0]), 2, step=3) is not None
    assert signal.check(torch.tensor([1.0, math.nan, 0.0, 1.0, 1.0, 1.0]), 3, step=4) is None


def test_every_completion_scored_the_same_says_too_hard_or_solved():
    message = LearningSignal().check(torch.zeros(8), 4, step=1, texts=["a", "b", "c", "d"] * 2)
    assert message == (
        "every completion of the round got the reward 0, so the 4 completions of each of the 2 prompts agree; if "
        "that is the reward's lowest value the prompts are too hard for the model (easier prompts, a supervised warm "
        "start, or a partial-credit reward such as format or tag_count beside accuracy), if its highest they are "
        "already solved (harder prompts); dynamic_sampling=true replaces such groups with other prompts' (metric "
        "frac_reward_zero_std): every advantage is 0, so the loss and the gradient are 0 and the weights do not "
        "change")


def test_rewards_that_differ_only_between_prompts_say_the_reward_is_too_coarse():
    message = LearningSignal().check(torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5]), 2, step=1, beta=0.04)
    assert message.startswith("the 2 completions of each of the 3 prompts got the same reward (they differ only "
                              "between prompts, from 0 to 1); the reward is too coarse")
    assert message.endswith("every advantage is 0, so the loss and the policy gradient are 0 and only the KL term "
                            "(beta=0.04) moves the weights")


def test_identical_completions_say_sampling_gives_no_variety():
    message = LearningSignal().check(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2, step=1, texts=["x", "x", "y", "y"])
    assert message.startswith("the 2 completions of each of the 2 prompts are identical, so their rewards agree; "
                              "sampling gives no variety: raise temperature")


def test_nothing_scorable_says_so():
    message = LearningSignal().check(torch.full((4,), math.nan), 2, step=1)
    assert message.startswith("no completion could be scored: every reward function returned None")


def test_warned_at_the_1st_10th_and_100th_round_in_a_row(caplog):
    signal = LearningSignal()
    with caplog.at_level(logging.WARNING, logger="reasonrl"):
        for step in range(1, 101):
            signal.check(torch.zeros(4), 2, step=step)
    steps = [record.getMessage().split("(")[0] for record in caplog.records]
    assert steps == ["no learning signal in the round of step 1 ", "no learning signal in the round of step 10 ",
                     "no learning signal in the round of step 100 "]
    assert "(100 such rounds in a row)" in caplog.records[-1].getMessage()


def test_the_trainer_warns_on_a_constant_reward(tmp_path, char_tokenizer, caplog):
    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, max_steps=1, optim="adamw_torch", logging_steps=1)
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer), [lambda completions, **kw: [1.0] * len(completions)],
                          args=args, train_dataset=[{"prompt": "a"}, {"prompt": "b"}], processing_class=char_tokenizer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with caplog.at_level(logging.WARNING, logger="reasonrl"):
        rows = trainer.train()
    assert ("no learning signal in the round of step 1 (1 such round in a row): every completion of the round got "
            "the reward 1, so the 2 completions of each of the 2 prompts agree") in caplog.text
    assert rows[0]["loss"] == 0 and rows[0]["frac_reward_zero_std"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # as the warning says
