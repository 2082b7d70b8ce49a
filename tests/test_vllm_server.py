"""vllm_mode="server": `reasonrl vllm-serve` (vllm_server.py) started as a subprocess on a free 127.0.0.1 port, and
the trainer's client (vllm_client.py). The tests that need a server are skipped where vllm is not importable (run
them with the vLLM virtualenv's python, docs/SCALING.md "vLLM rollouts"); the client's own errors are tested
everywhere.

One server (a random tied-embedding Llama, head size 32, fp32) serves the module; the killed-server test starts its
own. Each start costs 5-15 s of engine start-up, more on a busy machine, so health checks wait up to 10 minutes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import torch
from cli_helpers import assert_one_line_error, run_main

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.errors import ConfigError, VLLMServerError
from reasonrl.policy import sequence_logprobs
from reasonrl.rollout import generate
from reasonrl.tiny import build_char_tokenizer, build_tiny_model
from reasonrl.vllm_client import VLLMServerEngine
from reasonrl.vllm_engine import vllm_available

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (docs/SCALING.md, 'vLLM rollouts')")

LOGP_TOLERANCE = 1e-4  # fp32, as tests/test_vllm.py
START_TIMEOUT = 600.0  # seconds for a server to load; the machine's processes may be paused for minutes
MODEL_SHAPE = {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "num_key_value_heads": 1, "intermediate_size": 128}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`reasonrl vllm-serve` in a subprocess (its output in a log file); `stop()` kills it and waits."""

    def __init__(self, model_dir, log_path):
        self.port, self.log_path = free_port(), log_path
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
               "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reasonrl", "vllm-serve", "--model", str(model_dir), "--host", "127.0.0.1",
                 "--port", str(self.port), "--dtype", "float32", "--max-model-len", "256", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}): {self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=30).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise AssertionError(f"the server did not answer in {START_TIMEOUT} s: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


def started(model_dir, log_path) -> Server:
    server = Server(model_dir, log_path)
    try:
        server.wait_until_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("served")
    build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    if not vllm_available():
        pytest.skip("vllm is not installed")
    server = started(model_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    batch = tokenizer(["1+2=", "hello there", "abc"], padding=True, padding_side="left", return_tensors="pt")
    return batch.input_ids, batch.attention_mask  # [3, P]


def sampling(tokenizer, **overrides):
    return {"num_generations": 2, "max_new_tokens": 24, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, **overrides}


def client(model, url, **options) -> VLLMServerEngine:
    args = GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url=url, bf16=False,
                      max_completion_length=64, **options)
    return VLLMServerEngine.connect(model, args, longest_prompt=16)


def perturb(model, seed: int, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * scale)


@needs_vllm
def test_greedy_tokens_equal_the_lean_decoders_before_and_after_weight_pushes(server, tokenizer, prompts):
    # the policy is another random model than the one the server loaded: its weights reach the server by the push
    # that precedes the first generation, then by one after each update
    model = build_tiny_model(tokenizer, seed=3, **MODEL_SHAPE).eval()
    engine = client(model, server.url)
    assert engine.stale and engine.info["tie_word_embeddings"] and engine.info["dtype"] == "float32"
    outputs = []
    for update in range(3):
        if update:
            perturb(model, update)
            engine.policy_changed()
        lean_ids, lean_mask, lean_logps, lean_truncated = generate(model, *prompts, greedy=True,
                                                                   **sampling(tokenizer))
        ids, mask, logps, truncated = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
        assert not engine.stale
        assert torch.equal(ids * mask, lean_ids * lean_mask), f"after {update} weight updates"
        assert torch.equal(mask, lean_mask) and torch.equal(truncated, lean_truncated)
        assert ((logps - lean_logps).abs() * mask).max().item() < LOGP_TOLERANCE
        outputs.append(ids)
    assert not torch.equal(outputs[0], outputs[-1])  # the updates changed what the model says
    # without a push the server keeps the last weights it was sent
    perturb(model, 50)
    unchanged, _, _, _ = engine.generate(model, *prompts, greedy=True, **sampling(tokenizer))
    assert torch.equal(unchanged, outputs[-1])


@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_recomputation(server, tokenizer, prompts, temperature):
    model = build_tiny_model(tokenizer, seed=4, **MODEL_SHAPE).eval()
    engine = client(model, server.url)
    ids, mask, logps, _ = engine.generate(model, *prompts, temperature=temperature, seeds=[1, 2, 3],
                                          **sampling(tokenizer))
    prompt_ids, prompt_mask = (t.repeat_interleave(2, 0) for t in prompts)
    recomputed = sequence_logprobs(model, prompt_ids, prompt_mask, ids, mask, temperature=temperature)
    assert mask.sum() > 12
    assert ((recomputed - logps).abs() * mask).max().item() < LOGP_TOLERANCE
    assert (logps * (1 - mask)).abs().sum() == 0
    again, _, _, _ = engine.generate(model, *prompts, temperature=temperature, seeds=[1, 2, 3],
                                     **sampling(tokenizer))
    assert torch.equal(again, ids)  # a prompt's seed fixes its samples on the server too
    assert not torch.equal(ids[0], ids[1])


@needs_vllm
def test_a_server_that_cannot_be_the_policy_is_one_error_line(server, tokenizer):
    other = build_tiny_model(tokenizer, vocab_size=300, seed=0, **MODEL_SHAPE)
    with pytest.raises(ConfigError, match=r"serves .*whose vocabulary has 260 tokens, but the policy's has 300; start "
                                          r"the server with the policy's model"):
        client(other, server.url)
    model = build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE)
    args = GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url=server.url, bf16=False,
                      max_completion_length=100)
    with pytest.raises(ConfigError, match=r"has max_model_len 256, below the run's longest prompt \(200 tokens\) "
                                          r"\+ max_completion_length \(100\); restart it with --max-model-len 300 "
                                          r"or more"):
        VLLMServerEngine.connect(model, args, longest_prompt=200)


def length_dataset(folder):
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something short about {i}:"}) + "\n" for i in range(16)))
    return path


@needs_vllm
def test_grpo_in_server_mode_trains(server, tmp_path, tokenizer):
    """A short run of test_learning's length task (ideal 4 characters) sampled by the server: finite losses, the
    weights move, every round's vLLM log-probs match the trainer's (so each step's weights were pushed), the reward
    rises, and at the end the server's greedy tokens are the trained policy's."""
    from datasets import Dataset

    model = build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    dataset = Dataset.from_list([{"prompt": f"Say something short about {i}:"} for i in range(16)])
    args = GRPOConfig(output_dir=str(tmp_path), learning_rate=1e-2, max_steps=16, seed=0,
                      per_device_train_batch_size=32, num_generations=8, max_completion_length=24, beta=0.0,
                      gradient_checkpointing=False, bf16=False, reward_kwargs={"length": {"ideal_length": 4}},
                      logging_steps=10**6, save_steps=10**6, use_vllm=True, vllm_mode="server",
                      vllm_server_base_url=server.url, vllm_importance_sampling_mode="token_truncate")
    trainer = GRPOTrainer(model, "length", args=args, train_dataset=dataset, processing_class=tokenizer)
    assert isinstance(trainer.vllm, VLLMServerEngine) and trainer.rollouts.engine is trainer.vllm
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert len(rows) == 16 and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    for row in rows:  # the server sampled from the weights the trainer had: its log-probs are the trainer's
        assert row["sampling/sampling_logp_difference/max"] < LOGP_TOLERANCE
        assert abs(row["sampling/importance_sampling_ratio/mean"] - 1.0) < 1e-3
    moved = max((p.detach() - start[name]).abs().max().item() for name, p in trainer.model.named_parameters())
    assert moved > 1e-3
    rewards = [row["reward"] for row in rows]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last - first > 3.0, (first, last)
    prompt = tokenizer(["Say something short about 3:"], return_tensors="pt")
    options = sampling(tokenizer, greedy=True, num_generations=1)
    lean, lean_mask, _, _ = generate(trainer.model, prompt.input_ids, prompt.attention_mask, **options)
    ids, mask, _, _ = trainer.vllm.generate(trainer.model, prompt.input_ids, prompt.attention_mask, **options)
    assert torch.equal(ids * mask, lean * lean_mask)


def run_options(model_dir, dataset, out, url, batch: int) -> list[str]:
    """A 3-step LoRA run sampled by the server at `url` (each round's pushes merge the adapter)."""
    return [f"model_name_or_path={model_dir}", f"dataset_name={dataset}", "reward_funcs=[length]",
            "reward_kwargs={length: {ideal_length: 4}}", "use_peft=true", "lora_r=4", "lora_alpha=8",
            "lora_dropout=0.0", "num_generations=4", "max_completion_length=8", "learning_rate=5e-3", "max_steps=3",
            "save_steps=3", "logging_steps=1", "seed=7", f"per_device_train_batch_size={batch}", "bf16=false",
            "gradient_checkpointing=false", "use_vllm=true", "vllm_mode=server", f"vllm_server_base_url={url}",
            "vllm_importance_sampling_mode=token_truncate", f"output_dir={out}"]


@needs_vllm
def test_torchrun_two_processes_share_one_server_and_train_as_one(server, model_dir, tmp_path, capsys):
    """Each process sends its own prompts to /generate, rank 0 alone pushes the weights and the others wait for
    them: 2 processes x batch 4 train as 1 process x batch 8 (per-prompt seeds: the same samples), within 1e-5."""
    from safetensors.torch import load_file

    dataset = length_dataset(tmp_path)
    code, err = run_main(capsys, ["train", *run_options(model_dir, dataset, tmp_path / "one", server.url, 8)])
    assert code == 0, err[-3000:]
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                             str(free_port()), "-m", "reasonrl", "train",
                             *run_options(model_dir, dataset, tmp_path / "two", server.url, 4)],
                            capture_output=True, text=True, env=env, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    one, two = (load_file(tmp_path / run / "checkpoint-3" / "adapter_model.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys() and one
    difference = max((one[name] - two[name]).abs().max().item() for name in one)
    print(f"server mode: max |param(1 x 8) - param(2 x 4)| = {difference:.3g}")
    assert difference < 1e-5
    assert max(tensor.abs().max().item() for name, tensor in two.items() if "lora_B" in name) > 1e-3  # it trained
    for run in ("one", "two"):  # every round (both processes' prompts) sampled from the weights being trained
        rows = [json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")]
        assert [row["step"] for row in rows] == [1, 2, 3]
        assert all(row["sampling/sampling_logp_difference/max"] < LOGP_TOLERANCE for row in rows)


@needs_vllm
def test_a_killed_server_stops_the_run_with_one_error_line_and_its_checkpoint_resumes(model_dir, tmp_path, capsys):
    """The server is killed (SIGKILL) once checkpoint-2 exists: the run ends with one `error:` line naming the
    server's URL and what to do, exit code 2, and a checkpoint of its last step that resumes (here without vLLM)."""
    server = started(model_dir, tmp_path / "server.log")
    out = tmp_path / "run"
    try:
        def kill_after_checkpoint():
            deadline = time.monotonic() + START_TIMEOUT
            while not (out / "checkpoint-2" / "trainer_state.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            server.process.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_after_checkpoint, daemon=True)
        killer.start()
        code, err = run_main(capsys, [
            "train", f"model_name_or_path={model_dir}", f"dataset_name={length_dataset(tmp_path)}",
            "reward_funcs=[length]", "max_steps=40", "max_completion_length=8", "gradient_checkpointing=false",
            "num_generations=4", "per_device_train_batch_size=8", "optim=adamw_torch", "max_prompt_length=64",
            "save_steps=2", "bf16=false", "use_vllm=true", "vllm_mode=server", f"vllm_server_base_url={server.url}",
            f"output_dir={out}"])
        killer.join(timeout=60)
    finally:
        server.stop()
    message = assert_one_line_error(code, err, "train", [f"the vLLM server at {server.url} stopped answering",
                                                         "restart it", "--resume", "the last step's checkpoint is"])
    checkpoints = sorted((path for path in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    last = checkpoints[-1]
    assert str(last) in message and 2 <= int(last.name.split("-")[1]) < 40
    step = int(last.name.split("-")[1])
    code, err = run_main(capsys, [
        "train", "--resume", "latest", f"model_name_or_path={model_dir}",
        f"dataset_name={tmp_path / 'train.jsonl'}", "reward_funcs=[length]", f"max_steps={step + 1}",
        "max_completion_length=8", "gradient_checkpointing=false", "num_generations=4",
        "per_device_train_batch_size=8", "optim=adamw_torch", "max_prompt_length=64", "save_steps=2", "bf16=false",
        f"output_dir={out}"])
    assert code == 0, err[-3000:]
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps[-1] == step + 1


def test_no_server_at_start_is_one_error_line_after_the_timeout(tokenizer):
    model = build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE)
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(VLLMServerError, match=rf"^no vLLM server answered at {url} within vllm_server_timeout=2 s "
                                              r"\(ConnectionError\); start one with `reasonrl vllm-serve"):
        client(model, url, vllm_server_timeout=2)
    assert 2.0 <= time.monotonic() - began < 30


def test_no_server_at_start_from_the_cli(tmp_path, capsys, tokenizer):
    folder = tmp_path / "model"
    build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    port = free_port()
    code, err = run_main(capsys, [
        "train", f"model_name_or_path={folder}", f"dataset_name={length_dataset(tmp_path)}", "reward_funcs=[length]",
        "max_steps=1", "max_completion_length=4", "num_generations=2", "per_device_train_batch_size=2",
        "bf16=false", "use_vllm=true", "vllm_mode=server", "vllm_server_host=127.0.0.1",
        f"vllm_server_port={port}", "vllm_server_timeout=1", f"output_dir={tmp_path / 'out'}"])
    url = f"http://127.0.0.1:{port}"
    assert_one_line_error(code, err, "train", [f"no vLLM server answered at {url} within vllm_server_timeout=1 s"])


@pytest.mark.parametrize("argv, phrases", [
    (["--model", "{tmp}/nowhere"], ["--model {tmp}/nowhere: no such folder; give a local model folder"]),
    (["--model", "{tmp}"], ["--model {tmp}: not a model folder (it needs config.json and *.safetensors weights)"]),
    (["--model", "{model}", "--port", "0"], ["--port 0 is not a TCP port; give one in 1-65535"]),
    (["--model", "{model}", "--port", "{busy}"], ["cannot listen on 127.0.0.1:{busy}", "pick another --port"]),
    (["--model", "{model}", "--max-model-len", "0"], ["--max-model-len 0 must be >= 1"]),
])
def test_vllm_serve_mistakes_are_one_error_line(tmp_path, capsys, tokenizer, argv, phrases):
    folder = tmp_path / "model"
    build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE).save_pretrained(folder)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fill = {"{tmp}": str(tmp_path), "{model}": str(folder), "{busy}": str(busy.getsockname()[1])}

        def filled(text):
            for key, value in fill.items():
                text = text.replace(key, value)
            return text

        code, err = run_main(capsys, ["vllm-serve", *map(filled, argv)])
    assert_one_line_error(code, err, "vllm-serve", [filled(phrase) for phrase in phrases])


def test_vllm_serve_without_vllm_says_how_to_install_it(tmp_path, capsys, tokenizer, monkeypatch):
    folder = tmp_path / "model"
    build_tiny_model(tokenizer, seed=0, **MODEL_SHAPE).save_pretrained(folder)
    monkeypatch.setattr("reasonrl.vllm_engine.vllm_available", lambda: False)
    code, err = run_main(capsys, ["vllm-serve", "--model", folder, "--port", free_port()])
    message = "vllm-serve needs vLLM, which is not installed in this environment; pip install 'reasonrl[vllm]'"
    assert_one_line_error(code, err, "vllm-serve", [message])
