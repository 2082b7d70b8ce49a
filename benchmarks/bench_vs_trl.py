"""TRL's GRPOTrainer vs reasonrl's GRPOTrainer: the same GRPO workload, side by side, in one invocation.

    python benchmarks/bench_vs_trl.py --quick
    python benchmarks/bench_vs_trl.py --workloads seed,tiny --precisions fp32,bf16 --betas 0,0.04 --steps 5 --warmup 2

The parent process builds each workload's model once with random weights, saves it (save_pretrained) with its
tokenizer to a temporary folder, measures the machine's copy bandwidth and GEMM throughput, then runs every
(workload, precision, beta) once per tool, alternating TRL / reasonrl, each run in its own subprocess
(`--worker tool=... workload=... ...`). A worker trains W warm-up + N timed optimizer steps and prints one JSON line
(its last line on stdout) with per-step wall times, generation time and tokens, and its peak RSS. The parent prints
one table, the reasonrl/TRL ratios, and reasonrl's times as multiples of the bandwidth/compute floors.

What both tools get (everything else is each tool's own default):
  * the model folder path (each tool loads it itself), the same LoraConfig (r=8, alpha=32, dropout 0.05,
    all-linear), the same 64 prompts of exactly 64 characters (= 64 tokens with the character tokenizer, so no
    prompt padding), one cheap reward function;
  * per_device_train_batch_size 4, gradient_accumulation_steps 2, num_generations 4 (one generation round of 8
    completions per optimizer step), max_completion_length 96, learning_rate 2e-5, beta, bf16;
  * gradient checkpointing: OFF in both by default (TRL's default is ON; `--gradient-checkpointing` turns it on in
    both); use_bias_correction_kl=True in both (TRL's default; it only matters for beta > 0);
  * logging_steps=1 in both, no checkpoint saving inside the timed steps (TRL save_strategy="no"; reasonrl saves
    once after its loop, outside the timed steps).

Same length in both tools: the tokenizer's EOS is a fresh token "<|never|>" (id 260) that is also the model's
generation EOS. The tiny model's vocabulary has 260 entries, so it can never sample it; SmolLM's 49152-entry
vocabulary can, with probability ~1/49152 per token. Workers report the mean completion length so the table shows
that both really generated 96 tokens per completion.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT_CHARS = 64
NUM_PROMPTS = 64
NEVER_EOS = "<|never|>"
BATCH = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
             max_completion_length=96, learning_rate=2e-5)
COMPLETIONS_PER_STEP = BATCH["per_device_train_batch_size"] * BATCH["gradient_accumulation_steps"]
WORKLOADS = ("seed", "tiny")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "WANDB_MODE": "disabled"}


# ------------------------------------------------------------------------------------------------ shared pieces


def make_prompts() -> list[str]:
    """NUM_PROMPTS plain-text prompts of exactly PROMPT_CHARS ASCII characters (one token each)."""
    prompts = []
    for i in range(NUM_PROMPTS):
        text = f"Problem {i:02d}: add {i * 7 % 97} and {i * 13 % 89}, then explain the steps. Answer: "
        prompts.append((text + "." * PROMPT_CHARS)[:PROMPT_CHARS])
    return prompts


def digit_reward(completions, **kwargs):
    """A cheap reward with some spread inside each group: the fraction of digits in the completion."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def build_and_save(workload: str, folder: str) -> dict:
    """Build the workload's model (random weights) and tokenizer, save both to `folder`; return its facts."""
    import torch
    from transformers import AutoModelForCausalLM

    from reasonrl.tiny import build_char_tokenizer, build_tiny_model, smollm_135m_config

    tokenizer = build_char_tokenizer()
    base_vocab = len(tokenizer)  # 260
    if workload == "seed":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(smollm_135m_config(), dtype=torch.float32)
    elif workload == "tiny":
        model = build_tiny_model(tokenizer, arch="qwen2", hidden_size=64, seed=0, dtype=torch.float32)
    else:
        raise SystemExit(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    # an EOS the model (almost) never samples, so both tools generate the full max_completion_length
    tokenizer.add_special_tokens({"eos_token": NEVER_EOS})
    never_id = tokenizer.convert_tokens_to_ids(NEVER_EOS)
    model.config.eos_token_id = never_id
    model.generation_config.eos_token_id = never_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "vocab": model.config.vocab_size, "eos_id": never_id, "tokenizer_vocab": base_vocab,
            "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers}


def lora_config():
    """The adapter both tools train: r=8, alpha=32, dropout 0.05 (TRL ModelConfig's default), all linear layers."""
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


# ------------------------------------------------------------------------------------------------ workers


class GenerationTimer:
    """Wraps a generate function: wall time, completion tokens and decode steps of every call."""

    def __init__(self):
        self.calls: list[dict] = []

    def record(self, seconds: float, tokens: int, decode_steps: int) -> None:
        self.calls.append({"seconds": seconds, "tokens": tokens, "decode_steps": decode_steps})


def run_trl(cfg: dict, timer: GenerationTimer) -> dict:
    """Train with TRL's GRPOTrainer; per-step times from a TrainerCallback (on_step_begin -> on_step_end)."""
    import torch
    import transformers
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    # TRL's profiling_context("transformers.generate") only reports to wandb/mlflow/trackio, so time generate here.
    original_generate = transformers.GenerationMixin.generate

    def timed_generate(self, *args, **kwargs):
        prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        start = time.perf_counter()
        out = original_generate(self, *args, **kwargs)
        seconds = time.perf_counter() - start
        sequences = out if torch.is_tensor(out) else out.sequences
        new = sequences.shape[1] - prompt_len
        timer.record(seconds, int(sequences.shape[0] * new), int(new))  # rows x new columns (exact without EOS)
        return out

    transformers.GenerationMixin.generate = timed_generate

    steps: list[float] = []
    logs: dict[int, dict] = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                store.setdefault(state.global_step, dict(logs))

    store = logs
    gc = cfg["gradient_checkpointing"]
    args = GRPOConfig(
        output_dir=cfg["output_dir"], use_cpu=True, bf16=cfg["bf16"], report_to=[], seed=42,
        beta=cfg["beta"], use_bias_correction_kl=True, gradient_checkpointing=gc, activation_checkpointing=gc,
        max_steps=cfg["warmup"] + cfg["steps"], logging_steps=1, save_strategy="no", **BATCH)
    dataset = Dataset.from_dict({"prompt": make_prompts()})
    load_start = time.perf_counter()
    trainer = GRPOTrainer(model=cfg["model"], reward_funcs=digit_reward, args=args, train_dataset=dataset,
                          peft_config=lora_config(), callbacks=[StepTimer()])
    init_seconds = time.perf_counter() - load_start
    model_dtype = str(next(p for p in trainer.model.parameters() if not p.requires_grad).dtype)
    trainer.train()
    lengths = [logs[s].get("completions/mean_length") for s in sorted(logs)]
    return {"step_times": steps, "completion_mean_length": lengths, "init_seconds": init_seconds,
            "frozen_weight_dtype": model_dtype}


def run_reasonrl(cfg: dict, timer: GenerationTimer) -> dict:
    """Train with reasonrl's GRPOTrainer; per-step times from its metrics (step_time, rollout_time) and callback."""
    import torch  # noqa: F401

    import reasonrl.trainer as rt
    from datasets import Dataset
    from reasonrl.config import GRPOConfig

    original_generate = rt.generate

    def timed_generate(model, prompt_ids, *args, **kwargs):
        start = time.perf_counter()
        out = original_generate(model, prompt_ids, *args, **kwargs)
        completion_ids, completion_mask = out[0], out[1]
        timer.record(time.perf_counter() - start, int(completion_mask.sum()), int(completion_ids.shape[1]))
        return out

    rt.generate = timed_generate

    rows: list[dict] = []
    stamps: list[float] = []

    def on_step(trainer, row):
        stamps.append(time.perf_counter())
        rows.append({k: row.get(k) for k in ("step_time", "rollout_time", "rollout_tokens", "tokens_per_second",
                                              "completions/mean_length")})

    args = GRPOConfig(
        output_dir=cfg["output_dir"], bf16=cfg["bf16"], report_to="none", seed=42, beta=cfg["beta"],
        use_bias_correction_kl=True, gradient_checkpointing=cfg["gradient_checkpointing"],
        max_steps=cfg["warmup"] + cfg["steps"], logging_steps=1, save_steps=10**9, **cfg.get("batch", BATCH))
    dataset = Dataset.from_dict({"prompt": make_prompts()})
    load_start = time.perf_counter()
    trainer = rt.GRPOTrainer(cfg["model"], digit_reward, args=args, train_dataset=dataset, peft_config=lora_config())
    init_seconds = time.perf_counter() - load_start
    model_dtype = str(next(p for p in trainer.model.parameters() if not p.requires_grad).dtype)
    trainer.add_callback(on_step)
    train_start = time.perf_counter()
    trainer.train()
    # callback-to-callback wall time: a cross-check of step_time that also counts logging between steps
    edges = [train_start] + stamps
    return {"step_times": [r["step_time"] for r in rows], "rollout_times": [r["rollout_time"] for r in rows],
            "callback_intervals": [b - a for a, b in zip(edges, edges[1:])],
            "completion_mean_length": [r["completions/mean_length"] for r in rows], "init_seconds": init_seconds,
            "frozen_weight_dtype": model_dtype}


def worker(pairs: list[str]) -> None:
    """`--worker key=value ...`: run one tool, print one JSON line of results as the last line of stdout."""
    import torch

    cfg = dict(p.split("=", 1) for p in pairs)
    if "batch" in cfg:  # reasonrl only: batch settings other than BATCH (bench_scaling.py), as JSON
        cfg["batch"] = json.loads(cfg["batch"])
    cfg.update(beta=float(cfg["beta"]), bf16=cfg["precision"] == "bf16", steps=int(cfg["steps"]),
               warmup=int(cfg["warmup"]), gradient_checkpointing=cfg["gradient_checkpointing"] == "1")
    timer = GenerationTimer()
    runner = {"trl": run_trl, "reasonrl": run_reasonrl}[cfg["tool"]]
    result = runner(cfg, timer)
    warm = cfg["warmup"]
    result["warmup_step_times"] = result["step_times"][:warm]
    result["step_times"] = result["step_times"][warm:]
    for key in ("rollout_times", "callback_intervals", "completion_mean_length"):
        if key in result:
            result[key] = result[key][warm:]
    result["generate_calls"] = timer.calls[warm:]
    # VmHWM: this process's own peak RSS. ru_maxrss (RUSAGE_SELF, KB) is also kept, but Linux carries it over from
    # the parent across fork + exec, so it can show the parent's peak instead of the worker's.
    result["peak_rss_kb"] = peak_rss_kb()
    result["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["torch_threads"] = torch.get_num_threads()
    import transformers
    import trl

    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    sys.stdout.flush()
    print(json.dumps(result))


def peak_rss_kb() -> int:
    """Peak resident set size of this process in KB: VmHWM from /proc/self/status, else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------------------------------------ floors


def measure_machine(repeats: int = 5) -> dict:
    """Copy bandwidth (GB/s, read + write bytes of a 256 MiB fp32 copy) and GEMM throughput (GFLOP/s, fp32 and
    bf16 2048x2048 matmul); the best of `repeats`, since other processes share the machine."""
    import torch

    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    bandwidth = 2 * src.numel() * 4 / best / 1e9
    gemm = {}
    n = 2048
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        gemm[name] = 2 * n ** 3 / best / 1e9
    return {"copy_gb_s": bandwidth, "gemm_gflop_s": gemm, "threads": torch.get_num_threads()}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floors(params: int, precision: str, machine: dict, decode_steps: int) -> dict:
    """Lower bounds for one optimizer step of the workload on this machine.

    rollout: every decode step reads all weights once (weight bytes / bandwidth) and does 2 x params x rows FLOPs;
    the floor is the larger of the two, times the decode steps. train: 4 x params x tokens (LoRA: forward +
    backward through activations; no recompute, no reference forward) / GEMM throughput, tokens = 8 x (64 + 96).
    bf16 weight bytes are 2 per parameter (reasonrl loads frozen LoRA base weights in bf16 under bf16=True).
    """
    dtype_bytes = 2 if precision == "bf16" else 4
    gemm = machine["gemm_gflop_s"][precision] * 1e9
    per_decode = max(params * dtype_bytes / (machine["copy_gb_s"] * 1e9), 2 * params * COMPLETIONS_PER_STEP / gemm)
    rollout = per_decode * decode_steps
    train_tokens = COMPLETIONS_PER_STEP * (PROMPT_CHARS + BATCH["max_completion_length"])
    train = 4 * params * train_tokens / gemm
    return {"rollout": rollout, "train": train, "step": rollout + train}


# ------------------------------------------------------------------------------------------------ parent


def run_worker(tool: str, workload: str, precision: str, beta: float, model: str, opts, scratch: str,
               extra: dict | None = None) -> dict:
    """Run one worker subprocess; its JSON result, or {"error": ...} with the tail of its stderr. `extra`: more
    key=value pairs for the worker (bench_scaling.py passes batch=<JSON>)."""
    out_dir = tempfile.mkdtemp(prefix=f"{tool}-{workload}-{precision}-", dir=scratch)
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"tool={tool}", f"workload={workload}",
               f"precision={precision}", f"beta={beta}", f"steps={opts.steps}", f"warmup={opts.warmup}",
               f"model={model}", f"output_dir={out_dir}",
               f"gradient_checkpointing={int(opts.gradient_checkpointing)}"]
    command += [f"{key}={value}" for key, value in (extra or {}).items()]
    env = {**os.environ, **OFFLINE_ENV}
    log_path = os.path.join(out_dir, "worker.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        with open(log_path) as log:
            tail = log.read().strip().splitlines()[-15:]
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail, "log": log_path, "wall": wall}
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": "last stdout line is not JSON", "stderr_tail": lines[-5:], "log": log_path, "wall": wall}
    result["wall"] = wall
    return result


def summarize(result: dict) -> dict:
    """Median/min/max s/step, generation tokens/s, decode steps, completion length and peak RSS of one worker."""
    steps = result["step_times"]
    calls = result["generate_calls"]
    gen_seconds = sum(c["seconds"] for c in calls)
    gen_tokens = sum(c["tokens"] for c in calls)
    lengths = [x for x in result.get("completion_mean_length", []) if x is not None]
    return {
        "median": statistics.median(steps) if steps else float("nan"), "min": min(steps, default=float("nan")),
        "max": max(steps, default=float("nan")),
        "gen_s": gen_seconds / len(calls) if calls else float("nan"),
        "tok_s": gen_tokens / gen_seconds if gen_seconds else float("nan"),
        "decode_steps": sorted({c["decode_steps"] for c in calls}),
        "length": statistics.mean(lengths) if lengths else float("nan"),
        "rss_mb": result["peak_rss_kb"] / 1024,
        "weights": result.get("frozen_weight_dtype", "?").replace("torch.", "").replace("float", "fp")
                   .replace("bfp16", "bf16"),
    }


def print_report(rows: list[dict], machine: dict, facts: dict, opts) -> None:
    """The results table, the ratios and the floors."""
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch threads {machine['threads']}; copy bandwidth "
          f"{machine['copy_gb_s']:.1f} GB/s; GEMM fp32 {machine['gemm_gflop_s']['fp32']:.0f} GFLOP/s, bf16 "
          f"{machine['gemm_gflop_s']['bf16']:.0f} GFLOP/s (best of 5, 2048^3)")
    print(f"timed steps {opts.steps} after {opts.warmup} warm-up; gradient checkpointing "
          f"{'ON' if opts.gradient_checkpointing else 'OFF'} in both; use_bias_correction_kl=True in both")
    print("s/step: wall time of one optimizer step (generation + rewards + 2 micro-batches + optimizer), median/min/"
          "max over the timed steps; gen s: one generate call (8 completions); gen tok/s: completion tokens / generate "
          "time; decode: generated columns per call; len: mean completion length; RSS: worker peak (VmHWM); "
          "wall s: whole worker incl. imports and loading; base W: dtype of the frozen base weights")
    header = (f"{'workload':8} {'prec':4} {'beta':>5} {'tool':8} {'s/step med':>10} {'min':>7} {'max':>7} "
              f"{'gen s':>7} {'gen tok/s':>9} {'decode':>6} {'len':>5} {'RSS MB':>7} {'wall s':>6} {'base W':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        for tool in ("trl", "reasonrl"):
            result = row[tool]
            prefix = f"{row['workload']:8} {row['precision']:4} {row['beta']:>5g} {tool:8}"
            if "error" in result:
                print(f"{prefix} FAILED ({result['error']}; log {result['log']})")
                continue
            s = row[tool + "_summary"]
            print(f"{prefix} {s['median']:10.3f} {s['min']:7.3f} {s['max']:7.3f} {s['gen_s']:7.3f} "
                  f"{s['tok_s']:9.1f} {','.join(map(str, s['decode_steps'])):>6} {s['length']:5.1f} "
                  f"{s['rss_mb']:7.0f} {result['wall']:6.1f} {s['weights']:>6}")
        if "trl_summary" in row and "reasonrl_summary" in row:
            t, r = row["trl_summary"], row["reasonrl_summary"]
            print(f"{'':8} {'':4} {'':>5} {'ratio':8} {r['median'] / t['median']:10.2f} {'':7} {'':7} "
                  f"{r['gen_s'] / t['gen_s']:7.2f} {r['tok_s'] / t['tok_s']:9.2f} {'':>6} {'':5} "
                  f"{r['rss_mb'] / t['rss_mb']:7.2f}   (reasonrl / TRL)")
    print()
    print("floors (reasonrl's measured time as a multiple of the floor):")
    for row in rows:
        if "reasonrl_summary" not in row:
            continue
        s = row["reasonrl_summary"]
        f = row["floors"]
        params = facts[row["workload"]]["params"]
        print(f"  {row['workload']} {row['precision']} beta={row['beta']:g}: params {params / 1e6:.1f}M; rollout floor "
              f"{f['rollout']:.3f}s (generate {s['gen_s']:.3f}s = {s['gen_s'] / f['rollout']:.1f}x); train floor "
              f"{f['train']:.3f}s; step floor {f['step']:.3f}s (s/step {s['median']:.3f} = "
              f"{s['median'] / f['step']:.1f}x)")
    versions = next((row[t]["versions"] for row in rows for t in ("trl", "reasonrl") if "versions" in row[t]), {})
    print(f"versions: {versions}")


def main() -> None:
    """Parse flags; either be a worker, or build the models, run every combination and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up optimizer steps first (default 2)")
    parser.add_argument("--workloads", default="seed,tiny", help="comma list of: seed, tiny")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of: fp32, bf16")
    parser.add_argument("--betas", default="0,0.04", help="comma list of KL coefficients")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="turn gradient checkpointing on in both tools (TRL's default; off here by default)")
    parser.add_argument("--quick", action="store_true",
                        help="short run: --steps 2 --warmup 1 --betas 0 (precisions and workloads as given)")
    parser.add_argument("--scratch", default=None, help="folder for models and run outputs (default: a temp dir)")
    opts = parser.parse_args()
    if opts.worker:
        worker(opts.worker)
        return
    if opts.quick:
        opts.steps, opts.warmup, opts.betas = 2, 1, "0"
    os.environ.update(OFFLINE_ENV)
    workloads = [w.strip() for w in opts.workloads.split(",") if w.strip()]
    precisions = [p.strip() for p in opts.precisions.split(",") if p.strip()]
    betas = [float(b) for b in opts.betas.split(",") if b.strip()]
    scratch = opts.scratch or tempfile.mkdtemp(prefix="bench_vs_trl-")
    started = time.perf_counter()

    machine = measure_machine()
    facts, paths = {}, {}
    for workload in workloads:
        paths[workload] = os.path.join(scratch, f"model-{workload}")
        facts[workload] = build_and_save(workload, paths[workload])
        print(f"saved {workload}: {facts[workload]} -> {paths[workload]}", flush=True)

    rows = []
    for workload in workloads:
        for precision in precisions:
            for beta in betas:
                row = {"workload": workload, "precision": precision, "beta": beta}
                for tool in ("trl", "reasonrl"):  # alternate the tools, one subprocess each
                    print(f"running {tool} {workload} {precision} beta={beta:g} ...", flush=True)
                    row[tool] = run_worker(tool, workload, precision, beta, paths[workload], opts, scratch)
                    if "error" in row[tool]:
                        print(f"  {tool} FAILED: {row[tool]['error']}\n    " + "\n    ".join(row[tool]["stderr_tail"]),
                              flush=True)
                    else:
                        row[tool + "_summary"] = summarize(row[tool])
                decode = max((c["decode_steps"] for c in row["reasonrl"].get("generate_calls", [])),
                             default=BATCH["max_completion_length"])
                row["floors"] = floors(facts[workload]["params"], precision, machine, decode)
                rows.append(row)
    print_report(rows, machine, facts, opts)
    with open(os.path.join(scratch, "results.json"), "w") as handle:
        json.dump({"machine": machine, "facts": facts, "rows": rows}, handle, indent=1, default=str)
    print(f"raw results: {os.path.join(scratch, 'results.json')}; total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
