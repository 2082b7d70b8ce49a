"""Learning test: GRPO with the built-in length reward makes a tiny random model measurably better.

Set-up. A random 1-layer Qwen2 (hidden 32) over the 260-token character tokenizer rarely emits EOS, so ~90% of
its completions run to max_completion_length=24 tokens: about 21.5 characters once decoded (special tokens are
dropped and some byte pairs decode to one character). The reward is get_reward("length", ideal_length=4), i.e.
-|4 - characters|, so it starts near -17.5 and every character the completions shorten towards 4 is +1 reward.
The only way up is to emit EOS earlier, which the ~10% of completions that end by chance show the policy.

Two runs from the same seed, identical except for the learning rate:
  - trained: full fine-tuning, learning_rate=1e-2 (AdamW, linear decay, TRL's defaults otherwise; beta=0);
  - control: learning_rate=0, so the policy never changes and the reward curve is pure sampling noise.

Measurements with exactly this code (40 steps of 4 prompts x 8 completions; mean reward of steps 1-10 and of
steps 31-40; sigma is the control's per-step reward standard deviation, s.e. = sigma * sqrt(2/10)):

    seed   trained first10 -> last10 (gain)   control first10 -> last10 (gain)   sigma   s.e.
    0      -16.56 -> -3.03  (+13.53)            -17.50 -> -17.38  (+0.12)          0.68    0.31
    1      -15.20 -> -2.66  (+12.54)            -17.23 -> -17.43  (-0.20)          0.76    0.34
    2      -14.63 -> -2.67  (+11.96)            -17.35 -> -17.42  (-0.07)          0.77    0.34
    3      -15.83 -> -2.91  (+12.92)            -17.60 -> -17.42  (+0.18)          0.59    0.26
    seeds 0-31: trained gains +11.96 .. +15.11 (35-66 s.e.); control gains -0.70 .. +0.82 (within 3.0 s.e.)

The margin. With the policy frozen (control), each step's reward (a mean over 32 completions) varies with a
standard deviation sigma of about 0.5-0.8 across seeds, so the difference of two 10-step means has a standard
error of sigma * sqrt(2/10) = 0.22-0.36 reward units (= characters). We require a gain of at least MARGIN = 8
characters: about 45% of the way from the start (about -17.5) to the optimum (0), more than 20 standard errors
of that noise, and still a third below the smallest gain measured over 32 seeds (+11.96), so a slower but
working learner passes (with 30 steps, one seed in 24, whose first 9 rounds held almost no EOS, gained only
+8.8; 40 steps leave room for such a late start). The test also computes the standard error from its own
control run and asserts that the gain exceeds 10 of them while the control's own "gain" stays within 4 of them
(a Gaussian tail of 6e-5) and under MARGIN / 4 characters: the comparison is against this seed's measured
noise, not only against the table above.

torch is pinned to one thread for the runs: the tensors are tiny, and on a busy 2-core machine intra-op
threading made a 40-step run 6-20x slower (22-45 s instead of 2-4 s) without changing a single number.
"""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.tiny import build_char_tokenizer, build_tiny_model

pytestmark = pytest.mark.slow

SEED = 0
IDEAL_LENGTH = 4  # characters; a random completion has ~21.5
MAX_COMPLETION_LENGTH = 24  # tokens
STEPS = 40
WINDOW = 10  # first WINDOW steps vs last WINDOW steps
MARGIN = 8.0  # characters of length (= reward units) the trained run must gain; see the module docstring
LEARNING_RATE = 1e-2


def tiny_model(tokenizer, seed: int = SEED):
    return build_tiny_model(tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, intermediate_size=64, seed=seed)


def train_with_length_reward(output_dir: Path, learning_rate: float, seed: int = SEED) -> tuple:
    """Train a fresh tiny model for STEPS steps: (metrics.jsonl rows, trainer log history, output_dir)."""
    from datasets import Dataset

    tokenizer = build_char_tokenizer()
    model = tiny_model(tokenizer, seed)
    dataset = Dataset.from_list([{"prompt": f"Say something short about {i}:"} for i in range(16)])
    args = GRPOConfig(
        output_dir=str(output_dir), learning_rate=learning_rate, max_steps=STEPS, seed=seed,
        # one optimizer step per round of 4 prompts x 8 completions
        per_device_train_batch_size=32, gradient_accumulation_steps=1, num_generations=8,
        max_completion_length=MAX_COMPLETION_LENGTH, beta=0.0, gradient_checkpointing=False, bf16=False,
        reward_kwargs={"length": {"ideal_length": IDEAL_LENGTH}}, logging_steps=10**6, save_steps=10**6,
    )
    trainer = GRPOTrainer(model, "length", args=args, train_dataset=dataset, processing_class=tokenizer)
    history = trainer.train()
    with open(output_dir / "metrics.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    return rows, history, output_dir


def first_last(rows: list[dict], key: str = "reward") -> tuple[float, float]:
    values = [row[key] for row in rows]
    return statistics.mean(values[:WINDOW]), statistics.mean(values[-WINDOW:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = train_with_length_reward(tmp_path_factory.mktemp("trained"), LEARNING_RATE)
        control = train_with_length_reward(tmp_path_factory.mktemp("control"), 0.0)
    finally:
        torch.set_num_threads(threads)
    return trained, control


def control_standard_error(control_rows: list[dict]) -> float:
    """Standard error of (mean of last WINDOW - mean of first WINDOW) per-step rewards when nothing learns."""
    sigma = statistics.stdev(row["reward"] for row in control_rows)  # a fixed policy: every step is noise
    return sigma * math.sqrt(2 / WINDOW)


def test_metrics_file_holds_one_reward_per_step(runs):
    for rows, history, _ in runs:
        assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
        assert [row["reward"] for row in rows] == [row["reward"] for row in history]
        # the logged reward is the length reward's mean (a single reward function of weight 1)
        assert all(row["reward"] == pytest.approx(row["rewards/length_reward/mean"]) for row in rows)
        assert all(row["reward"] <= 0.0 for row in rows)


def test_control_with_zero_learning_rate_does_not_improve(runs):
    (trained, _, _), (control, _, _) = runs
    # same seed: both runs sample the very same first round from the very same initial model
    assert control[0]["reward"] == trained[0]["reward"]
    assert control[0]["completions/mean_length"] == trained[0]["completions/mean_length"]
    first, last = first_last(control)
    standard_error = control_standard_error(control)
    assert abs(last - first) < 4 * standard_error, (first, last, standard_error)
    assert abs(last - first) < MARGIN / 4, (first, last)  # in characters: the control's length does not move


def test_control_policy_is_frozen_and_trained_policy_moved(runs):
    from safetensors.torch import load_file

    initial = tiny_model(build_char_tokenizer()).state_dict()
    (_, _, trained_dir), (_, _, control_dir) = runs
    control = load_file(control_dir / f"checkpoint-{STEPS}" / "model.safetensors")
    trained = load_file(trained_dir / f"checkpoint-{STEPS}" / "model.safetensors")
    assert control.keys() == trained.keys() and control.keys() <= initial.keys()
    assert all(torch.equal(control[name], initial[name]) for name in control)  # learning_rate=0: none moved
    assert all(not torch.equal(trained[name], initial[name]) for name in trained)  # full fine-tuning: all did


def test_length_reward_improves_by_margin_over_noise(runs):
    (trained, _, _), (control, _, _) = runs
    first, last = first_last(trained)
    gain = last - first
    standard_error = control_standard_error(control)
    summary = f"first {WINDOW} steps {first:.2f}, last {WINDOW} steps {last:.2f}, s.e. {standard_error:.2f}"
    assert gain >= MARGIN, summary
    assert gain >= 10 * standard_error, summary
    # the gain is learning, not drift: the trained run ends far above the control run of the same seed
    assert last - first_last(control)[1] >= MARGIN, summary
    # and it comes from shorter completions: the mean length (tokens, incl. EOS) moved towards the ideal
    length_first, length_last = first_last(trained, "completions/mean_length")
    assert length_last <= length_first - MARGIN, (length_first, length_last)
