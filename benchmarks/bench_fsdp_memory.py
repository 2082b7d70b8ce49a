"""Peak memory per process of full fine-tuning with FSDP2 (fsdp=full_shard) against one plain process and DDP.

    python benchmarks/bench_fsdp_memory.py                       # SmolLM-135M-shaped random model, 2 steps each
    python benchmarks/bench_fsdp_memory.py --model tiny --steps 1  # smoke test (seconds)

Each configuration is one `torchrun` launch (gloo on CPU) of the real CLI, `reasonrl train`, on a random model built
locally (--model smollm: tiny.smollm_135m_config, 135M parameters, tied embeddings; --model tiny: the test model)
with the character tokenizer: full fine-tuning (every weight trains, AdamW: weights + gradients + two moments = 16
bytes per parameter in fp32), beta 0 (no reference copy), --steps optimizer steps of G=2 completions of
--length tokens per process. Every process reports its peak resident set size (VmHWM) when it ends; the table
prints them in MiB, with what the process held at rest after training (VmRSS) and the ratio to the plain run.

Configurations: plain (1 process, no launcher), fsdp x1 (`torchrun --nproc_per_node 1`, one shard), fsdp x2, and
ddp x2 (every process holds everything). Times are not reported: two processes share the machine's two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

WORKER = '''
import atexit, json, os, sys


def report():  # the process's peak and current resident set, when it ends
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    mib = {key: int(status[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS")}
    with open(os.path.join(os.environ["BENCH_OUT"], f"memory-rank{os.environ.get('RANK', '0')}.json"), "w") as out:
        json.dump({"peak_mib": mib["VmHWM"], "rss_mib": mib["VmRSS"]}, out)


atexit.register(report)
from reasonrl.cli import main

sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(kind: str, folder: str) -> None:
    from transformers import AutoModelForCausalLM

    from reasonrl.tiny import build_char_tokenizer, build_tiny_model, smollm_135m_config

    tokenizer = build_char_tokenizer()
    if kind == "tiny":
        model = build_tiny_model(tokenizer, seed=0)
    else:
        import torch

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(smollm_135m_config())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)


def run(name: str, processes: int | None, fsdp: bool, root: str, args) -> list[dict]:
    out = os.path.join(root, name)
    options = [f"model_name_or_path={root}/model", f"dataset_name={root}/train.jsonl", "reward_funcs=[length]",
               "use_peft=false", "beta=0", "num_generations=2", "per_device_train_batch_size=2",
               "gradient_accumulation_steps=1", f"max_completion_length={args.length}", f"max_steps={args.steps}",
               "save_strategy=no", "logging_steps=1", "learning_rate=1e-5", f"output_dir={out}"]
    if fsdp:
        options.append("fsdp=full_shard")
    worker = os.path.join(root, "worker.py")
    if processes is None:
        command = [sys.executable, worker, "train", *options]
    else:
        command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), worker, "train", *options]
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", BENCH_OUT=out)
    os.makedirs(out, exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return [json.load(open(os.path.join(out, f"memory-rank{rank}.json"))) for rank in range(processes or 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm", "tiny"), default="smollm")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--length", type=int, default=16, help="max_completion_length")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-fsdp-")
    build_model(args.model, os.path.join(root, "model"))
    with open(os.path.join(root, "train.jsonl"), "w") as handle:
        handle.writelines(json.dumps({"prompt": f"Count to {i}:"}) + "\n" for i in range(16))
    with open(os.path.join(root, "worker.py"), "w") as handle:
        handle.write(WORKER)
    rows = []
    for name, processes, fsdp in (("plain", None, False), ("fsdp x1", 1, True), ("fsdp x2", 2, True),
                                  ("ddp x2", 2, False)):
        reports = run(name.replace(" ", "-"), processes, fsdp, root, args)
        rows.append((name, reports))
        print(f"{name}: done", flush=True)
    base = rows[0][1][0]["peak_mib"]
    print(f"\n{'run':<9} {'peak MiB per process':>24} {'at rest MiB':>14} {'peak / plain':>13}")
    for name, reports in rows:
        peaks = " / ".join(f"{report['peak_mib']:.0f}" for report in reports)
        rest = " / ".join(f"{report['rss_mib']:.0f}" for report in reports)
        ratio = max(report["peak_mib"] for report in reports) / base
        print(f"{name:<9} {peaks:>24} {rest:>14} {ratio:>13.2f}")


if __name__ == "__main__":
    main()
