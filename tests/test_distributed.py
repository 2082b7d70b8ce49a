"""Data-parallel GRPO (distributed.py): 2 processes x batch b train exactly as 1 process x batch 2b.

Real launchers on CPU (gloo): `torchrun` and `accelerate launch` start two processes; the one-process references
run in this process through the same CLI. Rollouts are sampled with per-prompt seeds, so a prompt's completions are
the same whichever process draws it; the parameters must then agree within 1e-5 after 3 optimizer steps (the rest
is float rounding: micro-batches of b rows instead of 2b, and gradients summed in a different order).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from reasonrl.cli import main as cli_main

BIN = os.path.dirname(sys.executable)
TORCHRUN, ACCELERATE = os.path.join(BIN, "torchrun"), os.path.join(BIN, "accelerate")
TOLERANCE = 1e-5

REWARD_FILE = '''
def distinct_chars(completions, **kwargs):
    """Varies from sample to sample, so every group has a spread and every step a gradient."""
    return [float(len(set(c))) for c in completions]


def signal_on_odd_prompts(prompts, completions, **kwargs):
    """distinct_chars on "Write about 1:", 3, ...; 0.0 on the even ones: their groups have no learning signal."""
    return [float(len(set(c))) if int(p.split()[-1].rstrip(":")) % 2 else 0.0 for p, c in zip(prompts, completions)]
'''

# the launched processes run the real CLI; this wrapper also saves each rank's trainable weights at the end
WORKER_FILE = '''
import os
import sys

from reasonrl import trainer as trainer_module

original_train = trainer_module.GRPOTrainer.train


def train_and_dump(self, *args, **kwargs):
    result = original_train(self, *args, **kwargs)
    from safetensors.torch import save_file

    weights = {name: p.detach().contiguous() for name, p in self.model.named_parameters() if p.requires_grad}
    save_file(weights, os.path.join(self.args.output_dir, f"rank{self.dist.rank}.safetensors"))
    return result


trainer_module.GRPOTrainer.train = train_and_dump
from reasonrl.cli import main

sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def _launch(command: list[str], root) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=root, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory, char_tokenizer):
    return make_run_root(tmp_path_factory.mktemp("distributed"), char_tokenizer, WORKER_FILE)


def make_run_root(root, char_tokenizer, worker_file: str):
    """A tiny Qwen2 whose EOS is likely enough that completions have different lengths (so the token counts, and
    with them the loss normalisation, differ between the processes), 10 prompts (rounds cross an epoch), the
    rewards and the launched `worker_file`, all in the folder `root`."""
    from reasonrl.tiny import build_tiny_model

    model = build_tiny_model(char_tokenizer, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight[char_tokenizer.eos_token_id] *= 20  # tied: a large EOS logit, often
    model.save_pretrained(root / "model")
    char_tokenizer.save_pretrained(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Write about {i}:"}) + "\n" for i in range(10)))
    (root / "rewards.py").write_text(REWARD_FILE)
    (root / "worker.py").write_text(worker_file)
    return root


def _options(root, out: str, batch: int, **overrides) -> list[str]:
    settings = {
        "model_name_or_path": str(root / "model"), "dataset_name": str(root / "train.jsonl"),
        "reward_funcs": f"[{root / 'rewards.py'}:distinct_chars]", "use_peft": "true", "lora_r": 4,
        "lora_alpha": 8, "lora_dropout": 0.0, "num_generations": 4, "gradient_accumulation_steps": 2,
        "max_completion_length": 8, "learning_rate": 2e-3, "max_steps": 3, "save_steps": 2, "logging_steps": 1,
        "seed": 7, "per_device_train_batch_size": batch, "output_dir": str(root / out),
    }
    settings.update(overrides)
    return [f"{key}={value}" for key, value in settings.items()]


def _one_process(root, out: str, batch: int, *flags: str, **overrides) -> str:
    assert cli_main(["train", *_options(root, out, batch, **overrides), *flags]) == 0  # flags last: --resume [PATH]
    return str(root / out)


def _torchrun(root, out: str, batch: int, *flags: str, module: bool = False, **overrides) -> str:
    target = ["-m", "reasonrl"] if module else [str(root / "worker.py")]
    _launch([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
             *target, "train", *_options(root, out, batch, **overrides), *flags], root)
    return str(root / out)


def _accelerate(root, out: str, batch: int, **overrides) -> str:
    # --multi_gpu selects accelerate's torch.distributed launcher; with no GPU reasonrl runs gloo on CPU
    config = root / "accelerate.yaml"
    config.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU",
                                      "num_machines": 1, "num_processes": 2, "mixed_precision": "no"}))
    _launch([ACCELERATE, "launch", "--config_file", str(config), "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
             str(_free_port()), "-m", "reasonrl", "train", *_options(root, out, batch, **overrides)], root)
    return str(root / out)


def _adapter(run: str, step: int = 3) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(run, f"checkpoint-{step}", "adapter_model.safetensors"))


def _max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys() and first
    return max((first[name] - second[name]).abs().max().item() for name in first)


def _rows(run: str, name: str = "metrics.jsonl") -> list[dict]:
    with open(os.path.join(run, name)) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _assert_trained(adapter: dict) -> None:
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and min(tensor.abs().max().item() for tensor in lora_b) > 1e-3  # B starts at 0: it moved


def _assert_same_metrics(first: str, second: str) -> None:
    rows_1, rows_2 = _rows(first), _rows(second)
    assert [row["step"] for row in rows_1] == [row["step"] for row in rows_2] == [1, 2, 3]
    for row_1, row_2 in zip(rows_1, rows_2):
        for key in ("reward", "reward_std", "completions/mean_length", "rollout_tokens", "tokens", "grad_norm"):
            assert row_2[key] == pytest.approx(row_1[key], rel=1e-4, abs=1e-6), key
        # kl and entropy are means of per-micro-batch token means: micro-batches of 4 rows instead of 8 weigh the
        # tokens a little differently
        for key in ("kl", "entropy"):
            assert row_2[key] == pytest.approx(row_1[key], rel=5e-2, abs=1e-6), key
        assert row_2["loss"] == pytest.approx(row_1["loss"], rel=1e-3, abs=1e-6)


@pytest.fixture(scope="module")
def dapo_runs(root):
    """dapo with beta > 0 (the reference is the LoRA model with its adapter disabled) and gradient checkpointing."""
    overrides = {"loss_type": "dapo", "beta": 0.04, "gradient_checkpointing": "true"}
    return _one_process(root, "dapo-1", 8, **overrides), _torchrun(root, "dapo-2", 4, **overrides)


def test_torchrun_two_processes_train_as_one_with_twice_the_batch_dapo(dapo_runs):
    one, two = dapo_runs
    difference = _max_difference(_adapter(one), _adapter(two))
    print(f"dapo: max |param(1 x 8) - param(2 x 4)| = {difference:.3g}")
    assert difference < TOLERANCE
    _assert_trained(_adapter(two))
    # both ranks hold the same weights, bit for bit (DDP averages the gradients; the optimizers step alike)
    from safetensors.torch import load_file

    rank0, rank1 = (load_file(os.path.join(two, f"rank{rank}.safetensors")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    # the same completions (per-prompt seeds), of different lengths, and global metrics logged once (rank 0)
    texts = [(row["prompt"], row["completion"]) for row in _rows(one, "completions.jsonl")]
    assert texts == [(row["prompt"], row["completion"]) for row in _rows(two, "completions.jsonl")]
    assert len(texts) == 12  # 4 prompts x 3 rounds, each written once
    assert any(row["completions/min_length"] < row["completions/max_length"] for row in _rows(two))
    _assert_same_metrics(one, two)


def test_accelerate_launch_two_processes_train_as_one_with_twice_the_batch_grpo(root):
    # scale_rewards=batch: the advantages need the std of the whole round, gathered from both processes
    overrides = {"loss_type": "grpo", "scale_rewards": "batch", "gradient_checkpointing": "false"}
    one = _one_process(root, "grpo-1", 8, **overrides)
    two = _accelerate(root, "grpo-2", 4, **overrides)
    difference = _max_difference(_adapter(one), _adapter(two))
    print(f"grpo: max |param(1 x 8) - param(2 x 4)| = {difference:.3g}")
    assert difference < TOLERANCE
    _assert_trained(_adapter(two))
    _assert_same_metrics(one, two)


def test_a_two_process_checkpoint_resumes_with_one_process(root, dapo_runs):
    one, two = dapo_runs
    resumed = root / "dapo-2-then-1"
    resumed.mkdir()
    shutil.copytree(os.path.join(two, "checkpoint-2"), resumed / "checkpoint-2")
    assert json.loads((resumed / "checkpoint-2" / "trainer_state.json").read_text())["world_size"] == 2
    _one_process(root, "dapo-2-then-1", 8, "--resume", loss_type="dapo", beta=0.04, gradient_checkpointing="true")
    difference = _max_difference(_adapter(one), _adapter(str(resumed)))
    print(f"resume 2 -> 1 processes: max |param| difference = {difference:.3g}")
    assert difference < TOLERANCE


def test_bnpo_with_one_micro_batch_per_step_and_a_one_process_checkpoint_resumed_by_two(root):
    # bnpo is a token mean over the (global) micro-batch: exact across world sizes when a step is one micro-batch
    overrides = {"loss_type": "bnpo", "gradient_accumulation_steps": 1, "gradient_checkpointing": "false"}
    one = _one_process(root, "bnpo-1", 8, **overrides)
    resumed = root / "bnpo-1-then-2"
    resumed.mkdir()
    shutil.copytree(os.path.join(one, "checkpoint-2"), resumed / "checkpoint-2")
    _torchrun(root, "bnpo-1-then-2", 4, "--resume", module=True, **overrides)  # `torchrun -m reasonrl train`
    difference = _max_difference(_adapter(one), _adapter(str(resumed)))
    print(f"bnpo, resume 1 -> 2 processes: max |param| difference = {difference:.3g}")
    assert difference < TOLERANCE
    rows = _rows(str(resumed))
    assert [row["step"] for row in rows] == [3]  # rank 0 alone logged the resumed step
    assert rows[0]["completions/min_length"] < rows[0]["completions/max_length"]  # token counts differ by rank


def test_dynamic_sampling_under_torchrun_keeps_each_process_s_share_and_resumes_exactly(root):
    # the even prompts' groups are all alike: each process draws further prompts until it holds 2 odd ones
    overrides = {"dynamic_sampling": "true", "reward_funcs": f"[{root / 'rewards.py'}:signal_on_odd_prompts]",
                 "gradient_checkpointing": "false"}
    two = _torchrun(root, "dynamic-2", 4, **overrides)
    from safetensors.torch import load_file

    rank0, rank1 = (load_file(os.path.join(two, f"rank{rank}.safetensors")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    _assert_trained(_adapter(two))
    rows = _rows(two)
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:  # counts over both processes: generation batches of 4 prompts x G 4
        batches = row["dynamic_sampling/num_gen_batches"]
        assert row["completions_generated"] == batches * 16 and batches >= 2
        assert row["dynamic_sampling/extra_prompts"] == (batches - 1) * 4
        # a second batch was drawn because a process had fewer than 2 odd prompts; none had to fill up
        assert row["dynamic_sampling/groups_filled"] == 0
        assert 1 <= row["dynamic_sampling/groups_dropped"] <= batches * 4 - 4
    resumed = root / "dynamic-2-resumed"
    resumed.mkdir()
    shutil.copytree(os.path.join(two, "checkpoint-2"), resumed / "checkpoint-2")
    _torchrun(root, "dynamic-2-resumed", 4, "--resume", **overrides)
    difference = _max_difference(_adapter(two), _adapter(str(resumed)))
    print(f"dynamic sampling, 2 processes, resumed at step 2: max |param| difference = {difference:.3g}")
    assert difference == 0.0
    assert _rows(str(resumed))[-1]["dynamic_sampling/num_gen_batches"] == rows[-1]["dynamic_sampling/num_gen_batches"]


# ---------------------------------------------------------------- pieces, no processes launched


def test_config_batch_sizes_follow_the_world_size(monkeypatch):
    from reasonrl.config import ConfigError, GRPOConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4)
    assert config.world_size == 2
    assert config.generation_batch_size_resolved == 16  # 4 per process x 2 processes x 2 steps (TRL's convention)
    assert config.prompts_per_generation == 4 and config.prompts_per_process == 2
    assert GRPOConfig(per_device_train_batch_size=4, generation_batch_size=32,
                      num_generations=4).effective_steps_per_generation == 4
    with pytest.raises(ConfigError, match="split across processes"):
        GRPOConfig(per_device_train_batch_size=2, generation_batch_size=4, num_generations=4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                      num_generations=4).prompts_per_generation == 2


def test_shards_are_contiguous_and_prompt_seeds_depend_only_on_the_draw():
    from reasonrl.distributed import DistributedState, prompt_seeds, shard

    items = list(range(8))
    assert [items[shard(8, DistributedState(rank, 2))] for rank in (0, 1)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="evenly"):
        shard(6, DistributedState(0, 4))
    seeds = prompt_seeds(7, first_draw=10, count=4)
    assert seeds[2:] == prompt_seeds(7, first_draw=12, count=2)  # a draw's seed, whatever the batch around it
    assert len(set(seeds)) == 4 and prompt_seeds(8, 10, 4) != seeds
    assert all(0 <= seed < 2 ** 63 for seed in seeds)


def test_bnpo_divisors_turn_local_token_means_into_the_global_one():
    # two processes, one micro-batch each: per-token losses summing to S_r over n_r tokens
    from reasonrl.core import micro_batch_divisors

    sums, counts = torch.tensor([3.0, 10.0]), torch.tensor([2.0, 8.0])
    local_losses = sums / counts
    divisors = [micro_batch_divisors("bnpo", counts[rank:rank + 1], counts.sum().reshape(1), world_size=2)[0]
                for rank in (0, 1)]
    ddp_average = sum(loss / divisor for loss, divisor in zip(local_losses.tolist(), divisors)) / 2
    assert ddp_average == pytest.approx((sums.sum() / counts.sum()).item())  # 13 / 10
