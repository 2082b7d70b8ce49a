"""How reasonrl's GRPOTrainer step time grows with the completion length and with num_generations.

    python benchmarks/bench_scaling.py                      # seed workload, bf16, 1 warm-up + 3 timed steps each
    python benchmarks/bench_scaling.py --workload tiny --steps 1 --warmup 1 --lengths 8,16 --generations 2,4 \
        --plot /tmp/scaling_test.png                        # smoke test

Two sweeps over reasonrl alone (no TRL), on bench_vs_trl.py's workload, prompts, reward, LoRA adapter and
`<|never|>` EOS (so every completion is exactly max_completion_length tokens long):
  * sweep "length": max_completion_length in --lengths (default 32,96,256) at num_generations --fixed-generations (4);
  * sweep "G": num_generations in --generations (default 4,8,16) at max_completion_length --fixed-length (96).
Every optimizer step is one generation round for 2 prompts of 64 tokens: per_device_train_batch_size = G,
gradient_accumulation_steps = 2, so 2*G completions per step; beta 0, learning rate 2e-5. A configuration that is in
both sweeps runs once.

Each configuration is one subprocess: bench_vs_trl.py's own worker (`--worker tool=reasonrl ... batch=<JSON>`),
which trains W warm-up + N timed steps and reports per-step `step_time` and `rollout_time` (reasonrl's metrics:
rollout = generate + rewards + advantages), the time of each generate call, the completion tokens, and its peak RSS
(VmHWM). Training time per step = step - rollout (the 2 micro-batches' forward/backward and the optimizer step).

It prints one table (with each configuration's s/step and completion tokens as multiples of its sweep's first
configuration, measured in the same invocation), writes results.json to the scratch folder and a two-panel PNG
(--plot, default docs/perf_scaling.png).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_vs_trl as vs  # the workers, the workload and the prompts are bench_vs_trl's

PROMPTS_PER_STEP = 2
GRADIENT_ACCUMULATION = 2
LEARNING_RATE = vs.SEED_OPTIONS["learning_rate"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch_settings(generations: int, length: int) -> dict:
    """GRPOConfig batch fields of one configuration: 2 prompts x G completions, one generation round per step."""
    # per_device_train_batch_size = G: 2*G completions = 2 micro-batches of G
    return {"per_device_train_batch_size": generations * PROMPTS_PER_STEP // GRADIENT_ACCUMULATION,
            "gradient_accumulation_steps": GRADIENT_ACCUMULATION, "num_generations": generations,
            "max_completion_length": length, "learning_rate": LEARNING_RATE}


def summarize(result: dict) -> dict:
    """Median/min/max s/step, rollout / generate / training time per step, tokens per step, RSS of one worker."""
    steps = result["step_times"]  # [N] after warm-up
    rollouts = result["rollout_times"]  # [N]
    calls = result["generate_calls"]  # one per step (one generation round per step)
    lengths = [x for x in result.get("completion_mean_length", []) if x is not None]
    nan = float("nan")
    median = statistics.median(steps) if steps else nan
    tokens = sum(c["tokens"] for c in calls) / len(steps) if steps else nan
    return {
        "median": median, "min": min(steps, default=nan), "max": max(steps, default=nan),
        "rollout": statistics.median(rollouts) if rollouts else nan,
        "generate": statistics.median(c["seconds"] for c in calls) if calls else nan,
        "train": statistics.median(s - r for s, r in zip(steps, rollouts)) if rollouts else nan,
        "tokens": tokens, "s_per_1k_tokens": median / tokens * 1000 if tokens else nan,
        "length": statistics.mean(lengths) if lengths else nan,
        "rss_mb": result["peak_rss_kb"] / 1024, "wall": result["wall"],
    }


def configurations(lengths: list[int], generations: list[int], fixed_length: int, fixed_generations: int):
    """(sweep name, G, length) of both sweeps, in order; and the unique (G, length) pairs to run."""
    points = [("length", fixed_generations, n) for n in lengths] + [("G", g, fixed_length) for g in generations]
    unique = list(dict.fromkeys((g, n) for _, g, n in points))
    return points, unique


def print_table(points, runs: dict, opts, facts: dict) -> None:
    """One row per sweep point; x first = s/step and completion tokens over the sweep's first point."""
    print()
    print(f"reasonrl GRPOTrainer, workload {opts.workload} ({facts['params'] / 1e6:.1f}M params, LoRA r=8), "
          f"{opts.precision}, beta 0; {PROMPTS_PER_STEP} prompts x G completions per optimizer step (one generation "
          f"round); median over {opts.steps} timed steps after {opts.warmup} warm-up; {os.cpu_count()} CPUs")
    print("s/step: optimizer step wall time (median, min, max); rollout: generate + rewards + advantages; gen: the "
          "generate call alone; train: s/step - rollout; tok/step: completion tokens per step; s/1k tok: s/step per "
          "1000 completion tokens; x first: s/step and tok/step over the sweep's first row (same run); len: mean "
          "completion length; RSS: worker peak (VmHWM)")
    header = (f"{'sweep':6} {'G':>3} {'len':>5} {'s/step':>8} {'min':>7} {'max':>7} {'rollout':>8} {'gen':>7} "
              f"{'train':>7} {'tok/step':>8} {'s/1k tok':>8} {'x first':>13} {'len':>6} {'RSS MB':>7} {'wall s':>6}")
    print(header)
    print("-" * len(header))
    first: dict[str, dict] = {}
    for sweep, g, n in points:
        result = runs[(g, n)]
        prefix = f"{sweep:6} {g:>3} {n:>5}"
        if "error" in result:
            print(f"{prefix} FAILED ({result['error']}; log {result['log']})")
            continue
        s = result["summary"]
        base = first.setdefault(sweep, s)
        ratio = f"{s['median'] / base['median']:5.2f} / {s['tokens'] / base['tokens']:5.2f}"
        print(f"{prefix} {s['median']:8.3f} {s['min']:7.3f} {s['max']:7.3f} {s['rollout']:8.3f} {s['generate']:7.3f} "
              f"{s['train']:7.3f} {s['tokens']:8.0f} {s['s_per_1k_tokens']:8.3f} {ratio:>13} {s['length']:6.1f} "
              f"{s['rss_mb']:7.0f} {s['wall']:6.1f}")
        if s["length"] < n - 0.5:
            print(f"{'':16} note: mean completion length {s['length']:.1f} < {n} (the model sampled the EOS)")


def plot(points, runs: dict, opts, facts: dict, path: str) -> None:
    """Two panels (s/step vs completion length, s/step vs G): stacked rollout + training bars (medians), the
    median s/step with its min-max range, and the s/step that cost proportional to completion tokens would give."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("length", "max_completion_length (tokens per completion)",
               f"vs completion length (G = {opts.fixed_generations})"),
              ("G", "num_generations G (completions per prompt)",
               f"vs num_generations (completion length {opts.fixed_length})")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    for ax, (sweep, xlabel, title) in zip(axes, panels):
        rows = [(g, n, runs[(g, n)]["summary"]) for name, g, n in points
                if name == sweep and "summary" in runs[(g, n)]]
        ax.set_title(f"s/step {title}\n{PROMPTS_PER_STEP} prompts x G completions per step")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per optimizer step")
        if not rows:
            ax.text(0.5, 0.5, "no successful runs", ha="center", va="center", transform=ax.transAxes)
            continue
        xs = list(range(len(rows)))
        rollout = [s["rollout"] for _, _, s in rows]
        train = [s["train"] for _, _, s in rows]
        ax.bar(xs, rollout, width=0.6, color="tab:orange", label="rollout (generate + rewards), median")
        ax.bar(xs, train, width=0.6, bottom=rollout, color="tab:blue", label="training (step - rollout), median")
        medians = [s["median"] for _, _, s in rows]
        ax.errorbar(xs, medians, yerr=[[m - s["min"] for m, (_, _, s) in zip(medians, rows)],
                                       [s["max"] - m for m, (_, _, s) in zip(medians, rows)]],
                    fmt="o", color="black", capsize=5, label="s/step: median, min-max")
        base_s, base_tokens = rows[0][2]["median"], rows[0][2]["tokens"]
        ax.plot(xs, [base_s * s["tokens"] / base_tokens for _, _, s in rows], "--", color="gray", marker="x",
                label="proportional to completion tokens (from the first bar)")
        for x, (_, _, s) in zip(xs, rows):
            ax.annotate(f"{s['median']:.2f} s\n{s['s_per_1k_tokens']:.2f} s/1k tok", (x, s["max"]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        labels = [f"{n if sweep == 'length' else g}\n({s['tokens']:.0f} tok/step)" for g, n, s in rows]
        ax.set_xticks(xs, labels)
        top = max(max(s["max"] for _, _, s in rows), max(base_s * s["tokens"] / base_tokens for _, _, s in rows))
        ax.set_ylim(0, top * 1.25)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"reasonrl GRPOTrainer step time: {opts.workload} workload ({facts['params'] / 1e6:.1f}M params, "
                 f"LoRA r=8), {opts.precision}, beta 0, CPU ({os.cpu_count()} cores); "
                 f"median of {opts.steps} timed step(s) "
                 f"after {opts.warmup} warm-up", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    """Parse flags, build and save the model once, run every configuration in its own worker, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up optimizer steps first (default 1)")
    parser.add_argument("--workload", default="seed", choices=vs.WORKLOADS, help="seed (default) or tiny (smoke test)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="default bf16")
    parser.add_argument("--lengths", default="32,96,256", help="sweep 1: max_completion_length values")
    parser.add_argument("--generations", default="4,8,16", help="sweep 2: num_generations values")
    parser.add_argument("--fixed-length", type=int, default=96, help="completion length of sweep 2 (default 96)")
    parser.add_argument("--fixed-generations", type=int, default=4, help="num_generations of sweep 1 (default 4)")
    parser.add_argument("--plot", default=os.path.join(REPO, "docs", "perf_scaling.png"),
                        help="PNG to write (default docs/perf_scaling.png)")
    parser.add_argument("--scratch", default=None, help="folder for the model and run outputs (default: a temp dir)")
    opts = parser.parse_args()
    lengths, generations = int_list(opts.lengths), int_list(opts.generations)
    for g in generations + [opts.fixed_generations]:
        if g < 2:
            parser.error(f"num_generations {g}: GRPO needs G >= 2 completions per prompt (group advantages)")
    os.environ.update(vs.OFFLINE_ENV)
    scratch = opts.scratch or tempfile.mkdtemp(prefix="bench_scaling-")
    started = time.perf_counter()

    model = os.path.join(scratch, f"model-{opts.workload}")
    facts = vs.build_and_save(opts.workload, model)
    print(f"saved {opts.workload}: {facts} -> {model}", flush=True)

    points, unique = configurations(lengths, generations, opts.fixed_length, opts.fixed_generations)
    runs: dict[tuple[int, int], dict] = {}
    for g, n in unique:
        batch = batch_settings(g, n)
        print(f"running reasonrl G={g} max_completion_length={n} ({g * PROMPTS_PER_STEP} completions/step) ...",
              flush=True)
        result = vs.run_worker("reasonrl", opts.workload, opts.precision, 0.0, model, opts, scratch,
                               extra={"batch": json.dumps(batch, separators=(",", ":"))}, setting="gc-off")
        result["batch"] = batch
        if "error" in result:
            print("  FAILED: " + result["error"] + "\n    " + "\n    ".join(result["stderr_tail"]), flush=True)
        else:
            result["summary"] = summarize(result)
        runs[(g, n)] = result

    print_table(points, runs, opts, facts)
    results_path = os.path.join(scratch, "results.json")
    with open(results_path, "w") as handle:
        json.dump({"options": vars(opts), "facts": facts,
                   "points": [{"sweep": sweep, "num_generations": g, "max_completion_length": n, **runs[(g, n)]}
                              for sweep, g, n in points]}, handle, indent=1, default=str)
    plot(points, runs, opts, facts, opts.plot)
    print(f"plot: {opts.plot}; raw results: {results_path}; total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
