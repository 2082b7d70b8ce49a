"""Peak memory per process with FSDP2 (fsdp=full_shard) against one plain process and DDP, and the stage that sets it.

    python benchmarks/bench_fsdp_memory.py --stages              # SmolLM-135M-shaped random model, 2 steps each
    python benchmarks/bench_fsdp_memory.py --lora                # LoRA instead of full fine-tuning
    python benchmarks/bench_fsdp_memory.py --model tiny --steps 1  # smoke test (a minute)

Each configuration is one `torchrun` launch (gloo on CPU) of the real CLI, `reasonrl train`, on a random model built
locally (--model smollm: tiny.smollm_135m_config, 135M parameters, tied embeddings; --model tiny: the test model)
with the character tokenizer: full fine-tuning (every weight trains, AdamW: weights + gradients + two moments = 16
bytes per parameter in fp32) or --lora, beta 0 (no reference copy), --steps optimizer steps of G=2 completions of
--length tokens per process. The table prints, per process, the peak resident set (VmHWM) in MiB, what the process
held at rest at its end (VmRSS), the ratio to the first run, its CPU seconds (user + system) and the stage that
first reached the peak.

Stages: the worker wraps the trainer's phases (load, shard, pre-flight check, rollout, log-probs, forward and
backward, optimizer step, checkpoint, ...); entering one resets the kernel's high-water mark (/proc/self/clear_refs)
and leaving it reads it, so each stage's peak is its own (--stages prints them all). Memory left allocated by a
stage counts in the next ones' too.

Configurations (--runs): plain (1 process, no launcher), fsdp-x1 (`torchrun --nproc_per_node 1`, one shard),
fsdp-x2, and ddp-x2 (every process holds everything). Wall times are not reported: two processes share the
machine's two cores, and other jobs may share them too.
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
import atexit, functools, json, os, resource, sys

# the peak resident set of each stage of the run: a stage starts by resetting the kernel's high-water mark
# (/proc/self/clear_refs: 5), and ends by reading it (VmHWM), so a stage's peak is its own
SEGMENTS = []  # [stage, peak MiB, resident MiB at its end], in order
active = ["start-up"]


def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS")}


def enter(stage):
    now = status()
    SEGMENTS.append([active[0], now["VmHWM"], now["VmRSS"]])
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:  # no reset: each stage then reports the peak so far
        pass
    previous, active[0] = active[0], stage
    return previous


def staged(stage, function):
    @functools.wraps(function)
    def inner(*args, **kwargs):
        previous = enter(stage)
        try:
            return function(*args, **kwargs)
        finally:
            enter(previous)
    return inner


def report():
    enter("end")
    with open(os.path.join(os.environ["BENCH_OUT"], f"memory-rank{os.environ.get('RANK', '0')}.json"), "w") as out:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        json.dump({"peak_mib": max(peak for _, peak, _ in SEGMENTS), "rss_mib": SEGMENTS[-1][2],
                   "cpu_seconds": usage.ru_utime + usage.ru_stime, "segments": SEGMENTS}, out)


atexit.register(report)
from reasonrl import distributed, fsdp, optim, preflight
from reasonrl import trainer as trainer_module

T = trainer_module.GRPOTrainer
for owner, name, stage in [
        (trainer_module, "load_policy", "load"), (trainer_module, "prepare_for_training", "prepare"),
        (trainer_module, "frozen_copy", "reference copy"), (distributed, "wrap", "shard"),
        (distributed, "shard_frozen", "shard reference"), (preflight, "check_worst_case_memory", "preflight"),
        (trainer_module, "optimizer_and_scheduler", "optimizer"), (T, "_rollout", "rollout"),
        (T, "_score", "score"), (T, "_advantages", "old/ref log-probs"),
        (T, "_accumulate_gradients", "forward+backward"), (T, "_save_checkpoint", "checkpoint"),
        (T, "evaluate", "evaluate"), (T, "_resume", "resume"), (T, "__init__", "init"), (T, "train", "train")]:
    setattr(owner, name, staged(stage, getattr(owner, name)))
make_optimizer = trainer_module.optimizer_and_scheduler


def optimizer_with_staged_step(*args, **kwargs):
    optimizer, scheduler = make_optimizer(*args, **kwargs)
    optimizer.step = staged("optimizer step", optimizer.step)
    return optimizer, scheduler


trainer_module.optimizer_and_scheduler = optimizer_with_staged_step
from reasonrl.cli import main

enter("command line")  # the CLI's own work around the trainer's (parsing, the final save)
code = main(sys.argv[1:])
enter("exit")
sys.exit(code)
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


CONFIGURATIONS = {"plain": (None, False), "fsdp-x1": (1, True), "fsdp-x2": (2, True), "ddp-x2": (2, False)}


def run(name: str, root: str, args) -> list[dict]:
    processes, fsdp = CONFIGURATIONS[name]
    out = os.path.join(root, f"{name}-{'lora' if args.lora else 'full'}-{os.getpid()}-{len(os.listdir(root))}")
    options = [f"model_name_or_path={root}/model", f"dataset_name={root}/train.jsonl", "reward_funcs=[length]",
               f"use_peft={str(args.lora).lower()}", f"beta={args.beta}", "num_generations=2",
               "per_device_train_batch_size=2", "gradient_accumulation_steps=1",
               f"max_completion_length={args.length}", f"max_steps={args.steps}", "save_strategy=no",
               "logging_steps=1", "learning_rate=1e-5", f"output_dir={out}", *args.option]
    if fsdp:
        options.append("fsdp=full_shard")
        if args.fsdp_config:
            options.append(f"fsdp_config={args.fsdp_config}")
    worker = os.path.join(root, "worker.py")
    if processes is None:
        command = [sys.executable, worker, "train", *options]
    else:
        command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), worker, "train", *options]
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", BENCH_OUT=out)
    env.update(variable.split("=", 1) for variable in args.env)
    os.makedirs(out, exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return [json.load(open(os.path.join(out, f"memory-rank{rank}.json"))) for rank in range(processes or 1)]


def stage_peaks(report: dict) -> dict[str, float]:
    """The highest peak of each stage over the run (a stage may run several times: one rollout per round)."""
    peaks: dict[str, float] = {}
    for stage, peak, _ in report["segments"]:
        peaks[stage] = max(peaks.get(stage, 0.0), peak)
    return peaks


def peak_stage(report: dict) -> str:
    """The stage that first reached the process's peak (after it, memory a stage kept counts in the next ones)."""
    return next(stage for stage, peak, _ in report["segments"] if peak >= report["peak_mib"] - 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm", "tiny"), default="smollm")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--length", type=int, default=16, help="max_completion_length")
    parser.add_argument("--lora", action="store_true", help="LoRA (use_peft=true) instead of full fine-tuning")
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient (full fine-tuning: > 0 makes a "
                        "frozen reference copy)")
    parser.add_argument("--runs", nargs="+", choices=tuple(CONFIGURATIONS), default=list(CONFIGURATIONS))
    parser.add_argument("--fsdp-config", default=None, help="fsdp_config for the fsdp runs, e.g. "
                        "'{rollout_weights: sharded}'")
    parser.add_argument("--option", action="append", default=[], help="another key=value for every run")
    parser.add_argument("--env", action="append", default=[], help="an environment variable KEY=VALUE for every "
                        "run (e.g. MALLOC_MMAP_THRESHOLD_=131072)")
    parser.add_argument("--stages", action="store_true", help="also print each stage's peak per process")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-fsdp-")
    build_model(args.model, os.path.join(root, "model"))
    with open(os.path.join(root, "train.jsonl"), "w") as handle:
        handle.writelines(json.dumps({"prompt": f"Count to {i}:"}) + "\n" for i in range(16))
    with open(os.path.join(root, "worker.py"), "w") as handle:
        handle.write(WORKER)
    rows = []
    for name in args.runs:
        rows.append((name, run(name, root, args)))
        print(f"{name}: done", flush=True)
    base = rows[0][1][0]["peak_mib"]
    print(f"\n{'run':<9} {'peak MiB per process':>24} {'at rest MiB':>14} {'peak / ' + rows[0][0]:>15} "
          f"{'CPU s':>11}  stage of the peak")
    for name, reports in rows:
        peaks = " / ".join(f"{report['peak_mib']:.0f}" for report in reports)
        rest = " / ".join(f"{report['rss_mib']:.0f}" for report in reports)
        ratio = max(report["peak_mib"] for report in reports) / base
        where = " / ".join(peak_stage(report) for report in reports)
        cpu = " / ".join(f"{report['cpu_seconds']:.0f}" for report in reports)
        print(f"{name:<9} {peaks:>24} {rest:>14} {ratio:>15.2f} {cpu:>11}  {where}")
    if args.stages:
        stages = list(dict.fromkeys(stage for _, reports in rows for report in reports
                                    for stage, _, _ in report["segments"]))
        print(f"\npeak MiB of each stage (per process){'':<4}" + "".join(f"{name:>16}" for name, _ in rows))
        for stage in stages:
            cells = [" / ".join(f"{stage_peaks(report).get(stage, 0):.0f}" for report in reports)
                     for _, reports in rows]
            print(f"{stage:<40}" + "".join(f"{cell:>16}" for cell in cells))


if __name__ == "__main__":
    main()
