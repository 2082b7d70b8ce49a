"""FSDP2 sharding (fsdp=full_shard, fsdp.py): 2 sharded processes x batch b train as 1 plain process x batch 2b.

As tests/test_distributed.py: real `torchrun` launches on CPU (gloo) against one-process runs of the same CLI in
this process, a tiny Qwen2 with tied embeddings, 3 optimizer steps. The trained weights and the logged loss and
gradient norm must agree within 1e-5 (float rounding: micro-batches of b rows, gradients reduced in another
order); a checkpoint saved by sharded processes holds full tensors that plain transformers loads, and resuming it
with the same processes is bitwise exact, with other world sizes within the same tolerance.
"""

import json
import os
import shutil
import subprocess

import pytest
import torch
from test_distributed import TOLERANCE, TORCHRUN, _env, _free_port, _max_difference, _one_process, make_run_root

from reasonrl.cli import main as cli_main

# the launched processes run the real CLI; this wrapper also saves the weights each rank holds at the end, gathered
# whole (a collective: every rank gathers every parameter in the same order)
WORKER_FILE = '''
import os
import sys

from reasonrl import trainer as trainer_module

original_train = trainer_module.GRPOTrainer.train


def train_and_dump(self, *args, **kwargs):
    result = original_train(self, *args, **kwargs)
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    weights = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().contiguous()
               for name, p in self.model.named_parameters() if p.requires_grad}
    shards = sum(isinstance(p, DTensor) for p in self.model.parameters())
    save_file(weights, os.path.join(self.args.output_dir, f"rank{self.dist.rank}.safetensors"),
              metadata={"dtensors": str(shards)})
    return result


trainer_module.GRPOTrainer.train = train_and_dump
from reasonrl.cli import main

sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory, char_tokenizer):
    """test_distributed's tiny run folder (EOS likely, 10 prompts, a reward varying within every group), with this
    file's worker."""
    return make_run_root(tmp_path_factory.mktemp("fsdp"), char_tokenizer, WORKER_FILE)


LORA = {"use_peft": "true", "loss_type": "dapo", "beta": 0.04, "gradient_checkpointing": "true"}
# full fine-tuning: every weight trains, the reference is a frozen copy (sharded too)
FULL = {"use_peft": "false", "loss_type": "grpo", "beta": 0.04, "learning_rate": 1e-3}


def _torchrun(root, out: str, batch: int, *flags: str, processes: int = 2, **overrides) -> str:
    command = [TORCHRUN, "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port",
               str(_free_port()), str(root / "worker.py"), "train", *_options(root, out, batch, **overrides), *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=root, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return str(root / out)


def _options(root, out: str, batch: int, **overrides) -> list[str]:
    from test_distributed import _options as distributed_options

    return distributed_options(root, out, batch, **overrides)


def _weights(run: str, step: int = 3) -> dict:
    from safetensors.torch import load_file

    folder = os.path.join(run, f"checkpoint-{step}")
    name = "adapter_model.safetensors" if os.path.isfile(os.path.join(folder, "adapter_model.safetensors")) \
        else "model.safetensors"
    return load_file(os.path.join(folder, name))


def _rows(run: str) -> list[dict]:
    with open(os.path.join(run, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _assert_same_steps(one: str, two: str) -> None:
    rows_1, rows_2 = _rows(one), _rows(two)
    assert [row["step"] for row in rows_1] == [row["step"] for row in rows_2] == [1, 2, 3]
    for row_1, row_2 in zip(rows_1, rows_2):
        for key in ("reward", "rollout_tokens", "tokens"):
            assert row_2[key] == row_1[key], key  # the same completions: per-prompt seeds
        # the loss and the gradient norm (over every process's gradient shards) are those of one process
        assert row_2["grad_norm"] == pytest.approx(row_1["grad_norm"], rel=1e-5, abs=1e-6)
        assert row_2["loss"] == pytest.approx(row_1["loss"], rel=1e-5, abs=1e-6)


def _assert_ranks_agree(run: str) -> None:
    """Both ranks gathered the same whole weights, bit for bit, from real shards (DTensors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    rank0, rank1 = (load_file(os.path.join(run, f"rank{rank}.safetensors")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    with safe_open(os.path.join(run, "rank0.safetensors"), "pt") as handle:
        assert int(handle.metadata()["dtensors"]) > 0


@pytest.fixture(scope="module")
def lora_runs(root):
    return _one_process(root, "lora-1", 8, **LORA), _torchrun(root, "lora-2", 4, fsdp="full_shard", **LORA)


@pytest.fixture(scope="module")
def full_runs(root):
    return _one_process(root, "full-1", 8, **FULL), _torchrun(root, "full-2", 4, fsdp="full_shard", **FULL)


def test_lora_two_sharded_processes_train_as_one_with_twice_the_batch(lora_runs):
    one, two = lora_runs
    difference = _max_difference(_weights(one), _weights(two))
    print(f"fsdp lora dapo: max |param(1 x 8) - param(fsdp 2 x 4)| = {difference:.3g}")
    assert difference < TOLERANCE
    assert min(t.abs().max().item() for name, t in _weights(two).items() if "lora_B" in name) > 1e-3  # it trained
    _assert_same_steps(one, two)
    _assert_ranks_agree(two)


def test_full_fine_tuning_sharded_matches_one_process_and_loads_in_transformers(full_runs):
    from transformers import AutoModelForCausalLM

    one, two = full_runs
    _assert_same_steps(one, two)
    _assert_ranks_agree(two)
    assert _weights(one).keys() == _weights(two).keys()  # a tied output layer saved once, as one process saves it
    models = [AutoModelForCausalLM.from_pretrained(os.path.join(run, "checkpoint-3")) for run in (one, two)]
    params = [dict(model.named_parameters()) for model in models]
    difference = _max_difference(*params)
    print(f"fsdp full fine-tuning: max |param(1 x 8) - param(fsdp 2 x 4)| = {difference:.3g}")
    assert difference < TOLERANCE
    start = AutoModelForCausalLM.from_pretrained(os.path.join(os.path.dirname(one), "model"))
    assert _max_difference(params[1], dict(start.named_parameters())) > 1e-4  # every weight trained
    # the logits of plain transformers agree too
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        logits = [model(input_ids=ids).logits for model in models]
    assert torch.allclose(*logits, atol=1e-4)


def _resume_copy(root, run: str, name: str, step: int = 2) -> str:
    resumed = root / name
    resumed.mkdir()
    shutil.copytree(os.path.join(run, f"checkpoint-{step}"), resumed / f"checkpoint-{step}")
    return name


def test_a_sharded_checkpoint_resumes_bitwise_and_at_other_world_sizes(root, full_runs):
    one, two = full_runs
    # the same 2 sharded processes: bit for bit the uninterrupted run (weights and Adam moments re-sharded exactly)
    again = _torchrun(root, _resume_copy(root, two, "full-2-again"), 4, "--resume", fsdp="full_shard", **FULL)
    final, resumed = _weights(two), _weights(again)
    assert final.keys() == resumed.keys() and all(torch.equal(final[name], resumed[name]) for name in final)
    assert _rows(again)[-1]["loss"] == _rows(two)[-1]["loss"]
    # one plain process (full weights and optimizer state, as it saves them)
    plain = _one_process(root, _resume_copy(root, two, "full-2-then-1"), 8, "--resume", **FULL)
    difference = _max_difference(_weights(one), _weights(plain))
    print(f"fsdp 2 -> 1 plain process: max |param| difference = {difference:.3g}")
    assert difference < TOLERANCE


def test_a_sharded_lora_checkpoint_resumes_in_one_shard(root, lora_runs):
    one, two = lora_runs
    name = _resume_copy(root, two, "lora-2-then-1-shard")
    resumed = _torchrun(root, name, 8, "--resume", processes=1, fsdp="full_shard", **LORA)  # torchrun, 1 process
    difference = _max_difference(_weights(one), _weights(resumed))
    print(f"fsdp lora 2 processes -> 1 shard: max |param| difference = {difference:.3g}")
    assert difference < TOLERANCE
    assert [row["step"] for row in _rows(resumed)] == [3]


# ---------------------------------------------------------------- mistakes, no processes launched


def test_fsdp_without_a_launcher_is_one_error_line(root, capsys):
    code = cli_main(["train", *_options(root, "no-launcher", 8, fsdp="full_shard", **LORA)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("reasonrl train: error: ") and "torchrun" in err[0], err
    assert not os.path.exists(root / "no-launcher" / "metrics.jsonl")


def test_an_accelerate_fsdp_config_without_fsdp_is_one_error_line(root, capsys, monkeypatch):
    """accelerate's FSDP settings are not reasonrl's: a run would otherwise be DDP, silently."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    code = cli_main(["train", *_options(root, "accelerate-fsdp", 8, **LORA)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "set fsdp=full_shard" in err[0], err


@pytest.mark.parametrize("option, message", [
    ("fsdp=offload", "fsdp='offload': offload is not supported"),
    ("fsdp=hybrid_shard", "set fsdp=full_shard"),
    ("fsdp_config={reshard_after_forward: false}", "fsdp_config is set but fsdp is not"),
    ("fsdp_config={cpu_offload: true}", "fsdp_config has 'cpu_offload'"),
    ("fsdp_config={fsdp_version: 1}", "must be 2"),
    ("fsdp_config={activation_checkpointing: true}", "gradient_checkpointing=true"),
    ("cast_lm_head_to_fp32=true", "cast_lm_head_to_fp32=true with fsdp"),
    ("dynamic_sampling=true", "dynamic_sampling with fsdp"),
])
def test_unsupported_fsdp_settings_are_one_error_line(root, capsys, option, message):
    fsdp = [] if option.startswith("fsdp") else ["fsdp=full_shard"]
    if option.startswith("fsdp_config") and "reshard" not in option:
        fsdp = ["fsdp=full_shard"]
    code = cli_main(["train", *_options(root, "refused", 8), *fsdp, option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("reasonrl train: error: ") and message in err[0], err


def test_fsdp_values_as_transformers_spells_them():
    from reasonrl.config import GRPOConfig

    assert GRPOConfig(fsdp=True).fsdp == GRPOConfig(fsdp="true").fsdp == "full_shard"  # transformers' newer form
    assert GRPOConfig(fsdp="full_shard auto_wrap").fsdp_enabled
    assert GRPOConfig(fsdp="").fsdp is None and not GRPOConfig(fsdp=None).fsdp_enabled
    assert GRPOConfig(fsdp="full_shard").fsdp_reshard_after_forward
    assert not GRPOConfig(fsdp="full_shard",
                          fsdp_config={"fsdp_reshard_after_forward": "false"}).fsdp_reshard_after_forward


def test_a_given_optimizer_is_refused_under_fsdp(root, monkeypatch):
    """An optimizer built before the trainer shards the model holds parameters FSDP replaces."""
    from reasonrl import distributed
    from reasonrl.config import ConfigError, GRPOConfig
    from reasonrl.trainer import GRPOTrainer

    monkeypatch.setenv("RANK", "0")  # as `torchrun --nproc_per_node 1` starts it
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    args = GRPOConfig(output_dir=str(root / "given-optimizer"), fsdp="full_shard", num_generations=4,
                      per_device_train_batch_size=4, max_completion_length=8)
    try:
        with pytest.raises(ConfigError, match="optimizers= holds the model's parameters"):
            GRPOTrainer(str(root / "model"), lambda completions, **kw: [0.0] * len(completions), args=args,
                        train_dataset=[{"prompt": "a"}], optimizers=(optimizer, None))
    finally:
        distributed.cleanup()


@pytest.fixture
def one_process_group():
    """A gloo process group of one process (a file store), as `torchrun --nproc_per_node 1` would start."""
    import tempfile

    import torch.distributed as dist

    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_sync_ref_model_mixes_a_sharded_reference_shard_by_shard(one_process_group, char_tokenizer):
    from reasonrl import fsdp
    from reasonrl.models import frozen_copy, mix_into_reference
    from reasonrl.tiny import build_tiny_model

    plain_policy, sharded_policy = build_tiny_model(char_tokenizer, seed=1), build_tiny_model(char_tokenizer, seed=1)
    plain_reference = frozen_copy(build_tiny_model(char_tokenizer, seed=2))
    sharded_reference = fsdp.shard(frozen_copy(build_tiny_model(char_tokenizer, seed=2)))
    fsdp.shard(sharded_policy)
    mix_into_reference(plain_reference, plain_policy, 0.25)
    mix_into_reference(sharded_reference, sharded_policy, 0.25)
    with fsdp.full_weights(sharded_reference):  # plain tensors while gathered
        gathered = {name: p.detach().clone() for name, p in sharded_reference.named_parameters()}
    expected = dict(plain_reference.named_parameters())
    assert gathered.keys() == expected.keys()
    assert all(torch.equal(gathered[name], expected[name]) for name in expected)
    mixed, policy = expected["model.embed_tokens.weight"], plain_policy.model.embed_tokens.weight
    before = build_tiny_model(char_tokenizer, seed=2).model.embed_tokens.weight
    assert 0 < (mixed - policy).abs().max() < (before - policy).abs().max()  # it moved towards the policy


def test_sharded_gradient_norm_and_clipping_equal_one_process(one_process_group):
    """fsdp.clip_grad_norm_ on DTensor gradients of a 1-process mesh: the same norm and clipped gradients as
    torch.nn.utils.clip_grad_norm_ on plain ones (the 2-process case is the launcher tests' grad_norm)."""
    from torch.distributed.fsdp import fully_shard

    from reasonrl import fsdp

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
    sharded = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
    sharded.load_state_dict(plain.state_dict())
    fully_shard(sharded)
    inputs = torch.randn(5, 4)
    for model in (plain, sharded):
        (model(inputs) ** 2).sum().backward()
    norm = torch.nn.utils.clip_grad_norm_(list(plain.parameters()), 0.5).item()
    assert fsdp.clip_grad_norm_(list(sharded.parameters()), 0.5) == pytest.approx(norm, rel=1e-6)
    assert norm > 0.5  # it clipped
    for p, q in zip(plain.parameters(), sharded.parameters()):
        assert torch.allclose(p.grad, q.grad.full_tensor(), atol=1e-7)
