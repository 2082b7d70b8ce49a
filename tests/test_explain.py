"""`reasonrl explain` prints the seed's worked example with numbers computed by reasonrl.core."""

import pytest

from reasonrl.cli import main
from reasonrl.explain import explain


def test_seed_example_numbers():
    lines = []
    numbers = explain([1, 0, 0, 0, 0, 0, 0, 0], num_generations=4, print_fn=lines.append)
    assert numbers["means"] == [0.25, 0.0]
    assert numbers["stds"] == [0.5, 0.0]
    assert numbers["advantages"] == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], abs=1e-6)
    assert numbers["loss"] == 0.0 and numbers["kl"] == 0.0
    # gradient of the grpo loss wrt each one-token log-prob: -A_i / 8
    assert numbers["grad"] == pytest.approx([-1.5 / 8, 0.5 / 8, 0.5 / 8, 0.5 / 8, 0, 0, 0, 0], abs=1e-6)
    text = "\n".join(lines)
    assert "+1.5000, -0.5000, -0.5000, -0.5000" in text and "exactly 0" in text


def test_user_numbers_with_ratio_and_reference():
    # one group [1, 3]: mean 2, std sqrt(2); A = -+0.7071; ratio e^0.5 = 1.6487 clipped to 1.2 for A > 0
    numbers = explain([1, 3], num_generations=2, log_ratios=[0.0, 0.5], ref_gaps=[0.0, 0.0], beta=0.0,
                      print_fn=lambda *_: None)
    a = 1 / 2**0.5
    assert numbers["advantages"] == pytest.approx([-a, a], rel=1e-6)
    assert numbers["loss"] == pytest.approx((a * 1.0 - a * 1.2) / 2, rel=1e-5)


def test_cli_rejects_rewards_that_do_not_group(capsys):
    assert main(["explain", "--rewards", "1,0,0", "--num-generations", "2"]) == 2
    assert "do not split into groups" in capsys.readouterr().err
    assert main(["explain", "--rewards", "1,0", "--num-generations", "2", "--log-ratios", "0.1"]) == 2
    assert "needs 2 values" in capsys.readouterr().err


def test_cli_prints_the_walkthrough(capsys):
    assert main(["explain", "--rewards", "1,0,0,0", "--num-generations", "4"]) == 0
    out = capsys.readouterr().out
    for heading in ("Rewards", "Group statistics", "Advantages", "ratio", "Clipped surrogate", "KL", "Total loss"):
        assert heading in out
