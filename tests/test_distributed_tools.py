"""A tool rollout under torchrun (2 processes, gloo): the same weights and metrics as one process with twice the
batch. The model's turns are scripted in both (a deterministic function of the context: the rows of a prompt call
`add` or guess, then answer the tool's result), so the interleaved sequences, their tool masks, log-probs, losses
and gradients are those of real multi-turn rows; only where they are computed differs."""

import json
import os
import subprocess
import sys

import pytest
from test_distributed import TORCHRUN, WORKER_FILE, _free_port, _launch, _max_difference, _rows

TOLERANCE = 1e-5

SCRIPT = '''
import json
import os
import sys

import torch

import reasonrl.tools as tools_module
from reasonrl import trainer as trainer_module
from reasonrl.tiny import build_char_tokenizer

TOK = build_char_tokenizer(tools=True)
EOS = "<|im_end|>"


def call_text(name, **arguments):
    return f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(arguments)}}}</tool_call>'


def scripted(model, prompt_ids, prompt_mask, *, num_generations, max_new_tokens, eos_token_id, pad_token_id,
             **sampling):
    rows = []
    for ids, mask in zip(prompt_ids, prompt_mask):
        context = TOK.decode(ids[mask.bool()].tolist())
        for j in range(num_generations):
            if "<|im_start|>tool\\n" in context:
                text = context.rsplit("<|im_start|>tool\\n", 1)[1].split(EOS)[0] + EOS
            else:
                a, b = context.rsplit("<|im_start|>user\\n", 1)[1].split(EOS)[0].split("+")
                text = [call_text("add", a=int(a), b=int(b)), "0", "1" + "9" * int(a), "7"][j % 4] + EOS
            rows.append(TOK(text, add_special_tokens=False)["input_ids"][:max_new_tokens])
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, torch.zeros(ids.shape), torch.tensor([r[-1] != eos_token_id for r in rows])


tools_module.generate = scripted
'''
# then test_distributed's worker: the real CLI, each rank's trainable weights saved at the end
SCRIPT += WORKER_FILE

TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b
'''

REWARDS = '''
def correct(completions, answer, **kwargs):
    return [float(c[-1]["content"] == a) + 0.1 * len(c[-1]["content"]) for c, a in zip(completions, answer)]
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from reasonrl.tiny import build_char_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("distributed_tools")
    tok = build_char_tokenizer(tools=True)
    build_tiny_model(tok, seed=0).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}"}], "answer": str(a + b)}
            for a, b in ((2, 3), (4, 4), (1, 6), (5, 2), (3, 3), (2, 7), (6, 1), (1, 1))]
    (root / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "script.py").write_text(SCRIPT)
    (root / "my_tools.py").write_text(TOOLS)
    (root / "rewards.py").write_text(REWARDS)
    return root


def _options(root, out: str, batch: int) -> list[str]:
    settings = {
        "model_name_or_path": str(root / "model"), "dataset_name": str(root / "train.jsonl"),
        "reward_funcs": f"[{root / 'rewards.py'}:correct]", "tools": f"[{root / 'my_tools.py'}:add]",
        "use_peft": "true", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "num_generations": 4,
        "gradient_accumulation_steps": 2, "max_completion_length": 160, "learning_rate": 2e-3, "max_steps": 3,
        "save_steps": 3, "logging_steps": 1, "seed": 7, "loss_type": "dapo", "beta": 0.04,
        "per_device_train_batch_size": batch, "output_dir": str(root / out), "report_to": "none",
    }
    return [f"{key}={value}" for key, value in settings.items()]


def test_torchrun_two_processes_train_a_tool_rollout_as_one_with_twice_the_batch(root):
    from safetensors.torch import load_file

    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(root / "script.py"), "train", *_options(root, "one", 8)],
                            capture_output=True, text=True, env=env, cwd=root, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    _launch([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
             str(root / "script.py"), "train", *_options(root, "two", 4)], root)
    one, two = str(root / "one"), str(root / "two")
    adapters = [load_file(os.path.join(run, "checkpoint-3", "adapter_model.safetensors")) for run in (one, two)]
    difference = _max_difference(*adapters)
    print(f"tools: max |param(1 x 8) - param(2 x 4)| = {difference:.3g}")
    assert difference < TOLERANCE
    assert max(t.abs().max().item() for name, t in adapters[1].items() if "lora_B" in name) > 1e-3  # it trained
    rank0, rank1 = (load_file(os.path.join(two, f"rank{rank}.safetensors")) for rank in (0, 1))
    assert all((rank0[name] == rank1[name]).all() for name in rank0)
    rows_1, rows_2 = _rows(one), _rows(two)
    assert [row["step"] for row in rows_1] == [row["step"] for row in rows_2] == [1, 2, 3]
    for row_1, row_2 in zip(rows_1, rows_2):
        # a quarter of the rows call the tool (two turns each), every call succeeds
        assert row_1["tools/call_frequency"] == row_2["tools/call_frequency"] == 0.25
        assert row_1["tools/mean_turns"] == row_2["tools/mean_turns"] == 1.25
        for key in ("reward", "reward_std", "completions/mean_length", "tokens", "grad_norm"):
            assert row_2[key] == pytest.approx(row_1[key], rel=1e-4, abs=1e-6), key
        assert row_2["loss"] == pytest.approx(row_1["loss"], rel=1e-3, abs=1e-6)
