"""DAPO's dynamic sampling: the filter on hand-built groups, the refill on hand-built generation batches, and a
training run that refills, resumed exactly (in process and after SIGKILL)."""

import json
import logging
import math
import shutil

import pytest
import torch
from test_resume import MULTI_STEP_ROUNDS, _kill_and_resume, _rows, _step
from test_resume import _trainer as resume_trainer

from reasonrl import GRPOConfig
from reasonrl.checkpoint import list_checkpoints
from reasonrl.config import ConfigError
from reasonrl.core import group_advantages
from reasonrl.core.filtering import groups_with_signal, select_groups
from reasonrl.dynamic_sampling import DynamicSampler, combine_metrics, concatenate
from reasonrl.rollout import Rollout
from reasonrl.rounds import Batch

NAN = math.nan


# ---------------------------------------------------------------- the filter (core)


def test_groups_whose_rewards_all_agree_have_no_signal():
    rewards = torch.tensor([
        1.0, 1.0, 1.0, 1.0,  # all right: no signal
        0.0, 1.0, 0.0, 0.0,  # one right: signal
        0.0, 0.0, 0.0, 0.0,  # all wrong: no signal
        NAN, 0.5, NAN, NAN,  # one scorable value: advantages all 0, no signal
        NAN, NAN, NAN, NAN,  # nothing scorable: no signal
        2.0, 2.0, NAN, 3.0,  # two scorable values that differ: signal
        1.2, 1.0 + 0.2, 0.2 * 1 + 1.0, 1.2,  # equal up to the rounding of weighted sums: no signal
        1.2, 1.2, 1.2, 1.2 + 1e-3,  # a small but real difference: signal
    ])
    assert groups_with_signal(rewards, 4).tolist() == [False, True, False, False, False, True, False, True]
    # the filter agrees with the advantages: a group without signal has every advantage 0
    advantages = group_advantages(rewards, 4).view(-1, 4)
    assert advantages[~groups_with_signal(rewards, 4)].abs().max() < 1e-3
    assert (advantages[groups_with_signal(rewards, 4)].abs().amax(1) > 0.5).all()


def test_groups_with_signal_checks_its_input():
    with pytest.raises(ValueError, match="groups of num_generations=4"):
        groups_with_signal(torch.zeros(6), 4)
    assert groups_with_signal(torch.tensor([0.0, 1.0]), 2).tolist() == [True]


def test_select_groups_keeps_signal_in_draw_order_then_fills_up():
    first, second = torch.tensor([False, True, False, True]), torch.tensor([True, False, True, True])
    kept, filler = select_groups([first, second], wanted=4)
    assert [k.tolist() for k in kept] == [[1, 3], [0, 2]] and filler == 0  # the surplus group 3 is not used
    kept, filler = select_groups([first], wanted=4)  # only 2 with signal: 2 without fill the round, in draw order
    assert [k.tolist() for k in kept] == [[0, 1, 2, 3]] and filler == 2
    kept, filler = select_groups([torch.tensor([False, False]), torch.tensor([False, True])], wanted=2)
    assert [k.tolist() for k in kept] == [[0], [1]] and filler == 1


# ---------------------------------------------------------------- the refill, on hand-built generation batches


def _batch(rewards, prompt_width, completion_width, tag):
    """A generation batch of G=2 with recognisable rows: completion_ids[row, 0] = 100 * tag + row."""
    rows = len(rewards)
    completion_ids = torch.zeros(rows, completion_width, dtype=torch.long)
    completion_ids[:, 0] = 100 * tag + torch.arange(rows)
    rollout = Rollout(torch.ones(rows, prompt_width, dtype=torch.long),
                      torch.ones(rows, prompt_width, dtype=torch.long),
                      completion_ids, torch.ones(rows, completion_width, dtype=torch.long), None,
                      torch.zeros(rows, dtype=torch.bool), [f"{tag}-{row}" for row in range(rows)])
    rewards = torch.tensor(rewards)
    return Batch(rollout, group_advantages(rewards, 2), torch.ones(rows, completion_width), None,
                 torch.full((rows, completion_width), -1.0), rewards)


def _metrics(reward, tokens):
    return {"reward": reward, "completions/min_length": tokens, "completions/max_length": tokens,
            "rollout_tokens": tokens, "rewards/acc/errors": 1, "prompts/truncated": tokens,
            "frac_reward_zero_std": reward}


def _config(**overrides):
    # 4 completions per round = 2 prompts x G 2
    return GRPOConfig(**{"num_generations": 2, "per_device_train_batch_size": 4, "dynamic_sampling": True,
                         **overrides})


def test_a_round_is_refilled_from_further_generation_batches():
    made = iter([
        (_batch([1.0, 1.0, 0.0, 1.0], 3, 5, tag=1), _metrics(0.75, 4)),  # group 0 dropped, group 1 kept
        (_batch([0.0, 0.0, 1.0, 0.0], 5, 2, tag=2), _metrics(0.25, 2)),  # group 0 dropped, group 1 kept
        (_batch([0.0, 1.0, 1.0, 0.0], 2, 2, tag=3), _metrics(0.5, 9)),  # never drawn: the round is full
    ])
    batch, metrics = DynamicSampler(_config(scale_rewards="batch"), pad_token_id=7)(lambda: next(made))
    assert batch.rollout.completion_ids[:, 0].tolist() == [102, 103, 202, 203]
    assert batch.rollout.texts == ["1-2", "1-3", "2-2", "2-3"]
    assert batch.rewards.tolist() == [0.0, 1.0, 1.0, 0.0]
    # advantages of the kept round: the batch std is that of [0, 1, 1, 0] (sqrt(1/3)), not of the generation batches
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(batch.advantages, torch.tensor([-expected, expected, expected, -expected]))
    # widths: prompts left-padded to 5, completions right-padded to 5, with the pad id and zero masks
    assert batch.rollout.prompt_ids.shape == (4, 5) and batch.rollout.prompt_mask[:2].tolist() == [[0, 0, 1, 1, 1]] * 2
    assert batch.rollout.prompt_ids[0, :2].tolist() == [7, 7]
    assert batch.rollout.completion_ids[2].tolist() == [202, 0, 7, 7, 7]
    assert batch.rollout.completion_mask[2].tolist() == [1, 1, 0, 0, 0]
    assert batch.loss_mask[3].tolist() == [1, 1, 0, 0, 0]
    assert batch.ref_logps[3].tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0] and batch.old_logps is None
    assert metrics["dynamic_sampling/num_gen_batches"] == 2 and metrics["dynamic_sampling/extra_prompts"] == 2
    assert metrics["dynamic_sampling/groups_dropped"] == 2 and metrics["dynamic_sampling/groups_filled"] == 0
    assert metrics["completions_generated"] == 8 and metrics["frac_groups_no_signal"] == 0.5
    assert metrics["reward"] == 0.5 and metrics["frac_reward_zero_std"] == 0.5  # over all 8 generated completions
    assert metrics["rollout_tokens"] == 6 and metrics["rewards/acc/errors"] == 2  # summed
    assert metrics["completions/min_length"] == 2 and metrics["completions/max_length"] == 4
    assert metrics["prompts/truncated"] == 2  # a running total: the last batch's


def test_at_max_num_gen_batches_the_round_is_filled_with_groups_without_signal(caplog):
    made = iter([(_batch([1.0, 1.0, 0.0, 0.0], 3, 3, tag=1), _metrics(0.5, 3)),
                 (_batch([0.0, 1.0, 1.0, 1.0], 3, 3, tag=2), _metrics(0.75, 3))])
    sampler = DynamicSampler(_config(max_num_gen_batches=2), pad_token_id=0)
    with caplog.at_level(logging.WARNING, logger="reasonrl"):
        batch, metrics = sampler(lambda: next(made))
    # the one group with a signal (2's group 0), then the first group without one (1's group 0): draw order
    assert batch.rollout.completion_ids[:, 0].tolist() == [100, 101, 200, 201]
    assert batch.advantages[:2].tolist() == [0.0, 0.0] and batch.advantages[2] < 0 < batch.advantages[3]
    assert metrics["dynamic_sampling/groups_filled"] == 1 and metrics["dynamic_sampling/groups_dropped"] == 3
    assert metrics["dynamic_sampling/num_gen_batches"] == 2
    assert "filled up with 1 groups" in caplog.text and "max_num_gen_batches" in caplog.text


def test_without_dynamic_sampling_the_round_is_the_generation_batch():
    batch = _batch([1.0, 1.0, 0.0, 1.0], 3, 3, tag=1)
    made, metrics = DynamicSampler(_config(dynamic_sampling=False), pad_token_id=0)(lambda: (batch, {"reward": 0.75}))
    # 2 prompts x G 2; the group (1, 1) has no signal: frac_groups_no_signal is 1/2
    assert made is batch and metrics == {"reward": 0.75, "completions_generated": 4, "frac_groups_no_signal": 0.5}


def test_concatenate_and_combine_of_one_batch_change_nothing():
    batch = _batch([1.0, 0.0], 2, 2, tag=1)
    assert concatenate([batch], pad_token_id=0) is batch
    assert combine_metrics([{"reward": 0.5, "prompts/truncated": 3}]) == {"reward": 0.5, "prompts/truncated": 3}


def test_options_are_checked():
    with pytest.raises(ConfigError, match="max_num_gen_batches must be >= 1"):
        GRPOConfig(max_num_gen_batches=0)


def test_each_process_keeps_its_share_and_all_draw_until_every_one_has_it(monkeypatch):
    """Rank 0 of 2 processes; the other process's counts and kept rewards are scripted answers of the gathers."""
    import reasonrl.distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = _config(scale_rewards="batch", max_num_gen_batches=3)  # 2 prompts x G 2 per process, 4 in the round
    assert config.prompts_per_generation == 4
    other = [2, 3, torch.tensor([0.0, 1.0, 1.0, 0.0])]  # rank 1: 2 groups with a signal, then 3; its kept rewards
    gathered = []

    def gather(value, state):
        gathered.append(value)
        return [value, other.pop(0)]

    monkeypatch.setattr(reasonrl.distributed, "gather_objects", gather)
    made = iter([
        (_batch([1.0, 0.0, 1.0, 1.0], 3, 3, tag=1), _metrics(0.75, 3)),  # 1 group with a signal: rank 1 has 2
        (_batch([0.0, 1.0, 0.0, 0.0], 3, 3, tag=2), _metrics(0.25, 3)),  # 2: both processes have their share
        (_batch([0.0, 1.0, 1.0, 0.0], 3, 3, tag=3), _metrics(0.5, 3)),  # never drawn
    ])
    state = reasonrl.distributed.DistributedState(rank=0, world_size=2)
    batch, metrics = DynamicSampler(config, pad_token_id=0, dist_state=state)(lambda: next(made))
    assert gathered[:2] == [1, 2] and not other  # one count gather per generation batch, then the kept rewards
    assert batch.rollout.completion_ids[:, 0].tolist() == [100, 101, 200, 201]  # this process's share: 2 groups
    # advantages with the batch std of all 8 kept rewards [1, 0, 0, 1, 0, 1, 1, 0]: sqrt(2/7); this process's half
    expected = 0.5 / (math.sqrt(2 / 7) + 1e-4)
    assert torch.allclose(batch.advantages, torch.tensor([expected, -expected, -expected, expected]))
    # global counts: 2 batches x 2 processes x 2 groups generated, 5 of them with a signal
    assert metrics["completions_generated"] == 16 and metrics["frac_groups_no_signal"] == 3 / 8
    assert metrics["dynamic_sampling/num_gen_batches"] == 2 and metrics["dynamic_sampling/extra_prompts"] == 4
    assert metrics["dynamic_sampling/groups_dropped"] == 3 and metrics["dynamic_sampling/groups_filled"] == 0


def test_a_process_short_at_max_num_gen_batches_fills_up_and_the_fill_is_counted_over_processes(monkeypatch):
    import reasonrl.distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    other = [0, torch.tensor([1.0, 1.0, 0.0, 0.0])]  # rank 1 found no group with a signal: it fills up with 2

    monkeypatch.setattr(reasonrl.distributed, "gather_objects", lambda value, state: [value, other.pop(0)])
    state = reasonrl.distributed.DistributedState(rank=0, world_size=2)
    sampler = DynamicSampler(_config(max_num_gen_batches=1), pad_token_id=0, dist_state=state)
    batch, metrics = sampler(lambda: (_batch([1.0, 0.0, 0.0, 1.0], 3, 3, tag=1), _metrics(0.5, 3)))
    assert batch.rollout.completion_ids[:, 0].tolist() == [100, 101, 102, 103]  # this process had its 2
    assert metrics["dynamic_sampling/groups_filled"] == 2 and metrics["dynamic_sampling/groups_dropped"] == 2
    assert metrics["dynamic_sampling/num_gen_batches"] == 1 and sampler.short_rounds == 1


# ---------------------------------------------------------------- training with it, resumed exactly


def _trainer(out, char_tokenizer, **overrides):
    """test_resume's tiny LoRA trainer (rounds of 2 prompts x G 2 over a 6-prompt dataset, 2 optimizer steps each)
    with dynamic sampling; the reward (distinct characters) often ties within a pair of completions of 3
    characters. adapt_cpu_threads off: threads follow the load, and cpu_threads is logged."""
    settings = {"max_completion_length": 3, "max_steps": 8, "dynamic_sampling": True, "max_num_gen_batches": 4,
                "adapt_cpu_threads": False}
    return resume_trainer(out, char_tokenizer, **{**settings, **overrides})


def _json_lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def _resume_copy(source, target, step, char_tokenizer):
    """A copy of the run folder as it was when checkpoint-`step` was the latest, resumed to the end."""
    shutil.copytree(source, target)
    for path in list_checkpoints(str(target)):
        if _step(path) > step:
            shutil.rmtree(path)
    trainer = _trainer(target, char_tokenizer)
    trainer.train(resume_from_checkpoint=True)
    return trainer


def test_training_refills_rounds_and_resumes_from_every_checkpoint_exactly(tmp_path, char_tokenizer):
    reference = _trainer(tmp_path / "a", char_tokenizer)
    reference.train()
    rows = _json_lines(tmp_path / "a" / "metrics.jsonl")
    first_steps = rows[::2]  # a round's metrics are logged with each of its 2 steps
    batches = [row["dynamic_sampling/num_gen_batches"] for row in first_steps]
    assert max(batches) > 1, batches  # extra prompts were drawn in some round
    assert sum(row["dynamic_sampling/groups_dropped"] for row in first_steps) > 0
    # the sampler's position counts every extra draw: 2 prompts per generation batch
    assert reference.sampler.draws == 2 * sum(batches)
    for row in first_steps:
        assert row["dynamic_sampling/extra_prompts"] == 2 * (row["dynamic_sampling/num_gen_batches"] - 1)
        assert row["completions_generated"] == 4 * row["dynamic_sampling/num_gen_batches"]
    final = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    expected_rows = _rows(tmp_path / "a" / "metrics.jsonl")
    assert len(list_checkpoints(str(tmp_path / "a"))) == 8
    for step in (1, 2, 5):  # mid-round (1, 5) and at a round's end (2), after rounds that drew extra prompts
        resumed = _resume_copy(tmp_path / "a", tmp_path / f"resumed-{step}", step, char_tokenizer)
        assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items()), step
        assert _rows(tmp_path / f"resumed-{step}" / "metrics.jsonl") == expected_rows, step
        assert resumed.sampler.state_dict() == reference.sampler.state_dict()


def test_killed_at_random_moments_resumes_bitwise_equal_with_dynamic_sampling(tmp_path):
    # threads fixed: the governor follows the machine's load, and another thread count rounds differently
    settings = dict(MULTI_STEP_ROUNDS, max_completion_length=3, dynamic_sampling=True, max_num_gen_batches=3,
                    adapt_cpu_threads=False)
    kills, _ = _kill_and_resume(tmp_path, settings, num_random_kills=2, seed=4)
    assert len(kills) == 3
    rows = _json_lines(tmp_path / "reference" / "metrics.jsonl")
    assert max(row["dynamic_sampling/num_gen_batches"] for row in rows) > 1  # it did refill
