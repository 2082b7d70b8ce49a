"""`reasonrl demo --task calculator`: a tiny model learns, through GRPO, to use a calculator tool.

  1. warm start: the ~1M-parameter character-level Qwen2 with the tool chat template is fine-tuned on calculator
     exchanges (call, result, answer: calculator.trace), optionally mixed with direct answers with no call
     (`sft_tool_share`). What it must learn is to copy: the problem's numbers into the call, the tool's result
     into the answer. A model this small learns that late and suddenly (no exact answer for ~500 steps, then most
     of them within ~150 more), so the warm start stops once greedy validation accuracy reaches a modest target,
     leaving GRPO something to improve, as `reasonrl demo` does. When the jump comes depends on the model's
     initialisation, so the warm start has its own seed (`warm_start_seed`) and `seed` varies GRPO alone;
  2. eval on held-out problems (a seed the warm start never saw), multi-turn with the calculator: greedy accuracy
     and tool calls, and the same over samples at the training temperature;
  3. GRPO with `tools=[calculator]` and the calculator's accuracy as the only reward (nothing rewards the call
     itself); and the lr-0 control: the first `control_steps` steps of the same run (same prompts and sampling
     seeds) on a frozen copy of the warm start, whose evaluation is the warm start's;
  4. eval of both; the gain is GRPO minus the control.

It shares `reasonrl demo`'s plots and report conventions (demo.py); no network anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass

import torch

from reasonrl.demo import HELD_OUT_SEED, TRAIN_SEED, VALIDATION_SEED, _mean_reward, _no_signal_share


@dataclass
class ToolDemoSettings:
    """The tool demo's knobs. `seed` seeds GRPO and its control (prompt order and sampling) and the sampled
    evaluations (`reasonrl demo --task calculator --seed N`); `warm_start_seed` seeds the model's initialisation and
    the warm start's mix and order (`--warm-start-seed N`). They are apart because the step at which the tiny model
    learns to copy depends on its initialisation (measured: step 500, 625, and not by 1200 for warm-start seeds 0, 1,
    2), so that `--seed` measures what GRPO does from one warm start; the problems stay the same."""

    out: str = "demo_calculator_out"
    seed: int = 0
    warm_start_seed: int = 0
    threads: int = 2  # torch's CPU threads, fixed (another count rounds differently and changes the trajectory)
    digits: int = 3
    hidden_size: int = 128
    num_hidden_layers: int = 4
    train_rows: int = 4000
    # warm start: this share of the rows are calculator exchanges, the rest direct answers; it stops once greedy
    # validation accuracy (multi-turn, with the calculator) reaches sft_target_accuracy, or at sft_steps
    sft_tool_share: float = 1.0
    sft_steps: int = 1200
    sft_batch_size: int = 16
    sft_learning_rate: float = 2e-3
    sft_target_accuracy: float = 0.3
    sft_eval_every: int = 25
    validation: int = 50
    # GRPO (and the lr-0 control: the same settings with learning_rate 0)
    grpo_steps: int = 80
    prompts_per_step: int = 8
    num_generations: int = 8
    learning_rate: float = 1e-4  # 3e-4 lost most of the warm start's accuracy (25.5% -> 8% greedy in 60 steps)
    warmup_steps: int = 5
    # sampled copies of 6-digit results are mostly wrong at 1.0 (warm start ~3% against ~25% greedy): few groups
    # would have a right answer to learn from
    temperature: float = 0.7
    control: bool = True
    control_steps: int = 10
    # evaluation: greedy, and `samples` completions per prompt at `temperature`
    held_out: int = 200
    samples: int = 4


def run_tool_demo(settings: ToolDemoSettings | None = None) -> dict:
    settings = settings or ToolDemoSettings()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(settings.threads, os.cpu_count() or 1)))
    try:
        return _run(settings)
    finally:
        torch.set_num_threads(threads_before)


def warm_start_rows(train: list[dict], share: float, seed: int) -> list[dict]:
    """SFT rows: a `share` of `train` (drawn with the training `seed`, so each demo seed has its own mix) as
    calculator exchanges, the others as direct answers (calculator.trace of a row with use_tool False)."""
    from reasonrl.tasks import calculator

    chooser = random.Random(f"tool-demo-mix-{seed}")
    return [{"prompt": row["prompt"], "completion": calculator.trace({**row, "use_tool": chooser.random() < share})}
            for row in train]


def _numbers(report: dict) -> dict:
    """The evaluation's numbers: greedy accuracy and tool calls per completion; sampled accuracy (pass@1 at the
    training temperature) and sampled tool calls per completion."""
    return {"n": report["n"], "accuracy": report["accuracy"], "tool_calls": report["tools"]["call_frequency"],
            "tool_failures": report["tools"]["failure_frequency"],
            "sampled_accuracy": report["pass_at_k"]["1"],
            "sampled_tool_calls": report["tools_sampled"]["call_frequency"],
            "samples": report["n"] * report["samples_per_prompt"], "mean_length": report["mean_length"],
            "truncation_rate": report["truncation_rate"]}


def _run(settings: ToolDemoSettings) -> dict:
    from datasets import Dataset

    from reasonrl.config import GRPOConfig
    from reasonrl.evaluate import evaluate, format_report
    from reasonrl.plot import plot_run
    from reasonrl.sft import sft
    from reasonrl.tasks import get_task
    from reasonrl.tiny import build_char_tokenizer, build_reasoning_model
    from reasonrl.trainer import GRPOTrainer

    started = time.perf_counter()
    timings = {}
    os.makedirs(settings.out, exist_ok=True)
    torch.manual_seed(settings.seed)
    task = get_task("calculator", digits=settings.digits)
    train = task.generate(settings.train_rows, seed=TRAIN_SEED)
    validation = task.generate(settings.validation, seed=VALIDATION_SEED, exclude=train)
    held_out = task.generate(settings.held_out, seed=HELD_OUT_SEED, exclude=train + validation)
    tools = list(task.tools)
    max_new_tokens = task.max_trace_length() + 8

    def held_out_eval(model):
        return evaluate(model, tokenizer, held_out, task.reward, k=settings.samples, max_new_tokens=max_new_tokens,
                        temperature=settings.temperature, batch_size=100 * settings.samples, seed=settings.seed,
                        tools=tools, max_tool_calling_iterations=1)

    # 1. warm start
    print(f"[1/4] warm start: SFT on calculator exchanges ({settings.sft_tool_share:.0%}) and direct answers",
          flush=True)
    tokenizer = build_char_tokenizer(tools=True)
    model = build_reasoning_model(tokenizer, hidden_size=settings.hidden_size,
                                  num_hidden_layers=settings.num_hidden_layers, seed=settings.warm_start_seed)
    sft_rows = warm_start_rows(train, settings.sft_tool_share, settings.warm_start_seed)
    sft_curve = []

    def until_target(step, current):
        accuracy = evaluate(current, tokenizer, validation, task.reward, max_new_tokens=max_new_tokens,
                            batch_size=settings.validation, tools=tools, max_tool_calling_iterations=1)["accuracy"]
        current.train()
        sft_curve.append({"step": step, "validation_accuracy": accuracy})
        return accuracy >= settings.sft_target_accuracy

    t0 = time.perf_counter()
    sft_losses = sft(model, tokenizer, sft_rows, steps=settings.sft_steps, batch_size=settings.sft_batch_size,
                     learning_rate=settings.sft_learning_rate, seed=settings.warm_start_seed, tools=tools,
                     callback=until_target, callback_every=settings.sft_eval_every)
    timings["sft_seconds"] = time.perf_counter() - t0
    reached = bool(sft_curve) and sft_curve[-1]["validation_accuracy"] >= settings.sft_target_accuracy
    short_warning = None if reached else _short_warm_start_text(sft_curve, len(sft_losses), settings)
    if short_warning:
        print(f"warning: {short_warning}", flush=True)
    base_dir = os.path.join(settings.out, "base")
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    # 2. eval before
    print("[2/4] evaluating the warm start on held-out problems (with the calculator)", flush=True)
    t0 = time.perf_counter()
    before = held_out_eval(model)
    timings["eval_before_seconds"] = time.perf_counter() - t0
    print("before: " + format_report(before), flush=True)

    # 3. GRPO and its lr-0 control
    dataset = Dataset.from_list([{"prompt": row["prompt"], "answer": row["answer"]} for row in train])

    def run_grpo(folder: str, model, learning_rate: float, steps: int):
        completions_per_step = settings.prompts_per_step * settings.num_generations
        config = GRPOConfig(
            output_dir=os.path.join(settings.out, folder), learning_rate=learning_rate,
            per_device_train_batch_size=completions_per_step // 2, gradient_accumulation_steps=2,
            num_generations=settings.num_generations, max_completion_length=max_new_tokens, max_prompt_length=256,
            temperature=settings.temperature, beta=0.0, max_steps=steps,
            warmup_steps=settings.warmup_steps, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
            bf16=False, seed=settings.seed, lr_scheduler_type="constant_with_warmup", optim="adamw_torch",
            max_tool_calling_iterations=1, report_to="none",
            # a 1M-parameter model: per-call overhead, not activation memory, is what costs
            backward_chunk_rows=0, adapt_cpu_threads=False,
        )
        trainer = GRPOTrainer(model, [task.reward], args=config, train_dataset=dataset, processing_class=tokenizer,
                              tools=tools)
        t0 = time.perf_counter()
        trainer.train()
        return trainer, config, time.perf_counter() - t0

    control = control_after = None
    if settings.control:
        steps = min(settings.control_steps, settings.grpo_steps)
        print(f"[3/4] lr-0 control: {steps} GRPO steps on a frozen copy of the warm start", flush=True)
        frozen, _, timings["control_seconds"] = run_grpo("control", copy.deepcopy(model), 0.0, steps)
        control_after = held_out_eval(frozen.model)
        control = {"steps": steps, "log": _tool_log(frozen.log_history)}
        del frozen
    print(f"[3/4] GRPO: {settings.grpo_steps} steps of {settings.prompts_per_step} prompts x "
          f"{settings.num_generations} samples, tools=[calculator]", flush=True)
    trainer, config, timings["grpo_seconds"] = run_grpo("grpo", model, settings.learning_rate, settings.grpo_steps)
    final_dir = os.path.join(settings.out, "model")
    trainer.save_model(final_dir)

    # 4. eval after, report
    print("[4/4] evaluating the GRPO-trained model on the same held-out problems", flush=True)
    t0 = time.perf_counter()
    after = held_out_eval(trainer.model)
    timings["eval_after_seconds"] = time.perf_counter() - t0
    print("after:  " + format_report(after), flush=True)
    references = None
    if control:
        reward = sum(row["reward"] for row in control["log"]) / len(control["log"])
        references = {"reward": [(reward, f"lr-0 control ({control['steps']} steps)")]}
    plots = plot_run(os.path.join(settings.out, "grpo"), settings.out, references)
    timings["total_seconds"] = time.perf_counter() - started
    numbers = {"before": _numbers(before), "after": _numbers(after),
               "control": _numbers(control_after) if control_after else None}
    baseline = numbers["control"] or numbers["before"]
    report = {
        "task": "calculator", "difficulty": {"digits": settings.digits},
        "held_out": {"seed": HELD_OUT_SEED, "n": len(held_out)},
        **numbers,
        "gain_points": {key: round(100 * (numbers["after"][key] - baseline[key]), 1)
                        for key in ("accuracy", "sampled_accuracy", "tool_calls", "sampled_tool_calls")},
        "gain_against": "control" if numbers["control"] else "before",
        "sft": {"steps": len(sft_losses), "final_loss": sft_losses[-1], "validation_curve": sft_curve,
                "reached_target": reached, "warning": short_warning,
                "tool_rows": sum(len(row["completion"]) > 1 for row in sft_rows), "rows": len(sft_rows)},
        "grpo_log": _tool_log(trainer.log_history),
        "control_log": control["log"] if control else None,
        "completions_generated": trainer.sampler.draws * settings.num_generations,
        "no_signal_share": _no_signal_share(trainer.log_history),
        "reward_last_steps": _mean_reward(trainer.log_history, 5),
        "settings": asdict(settings), "grpo_config": config.to_dict(), "timings": timings,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.machine()},
        "plots": [os.path.basename(p) for p in plots],
        "examples_after": after["examples"],
    }
    with open(os.path.join(settings.out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(settings.out, "report.md"), "w") as handle:
        handle.write(_markdown(report))
    gain = report["gain_points"]
    print(f"\nheld-out sampled accuracy {100 * numbers['before']['sampled_accuracy']:.1f}% -> "
          f"{100 * numbers['after']['sampled_accuracy']:.1f}% (lr-0 control "
          f"{100 * baseline['sampled_accuracy']:.1f}%: {gain['sampled_accuracy']:+.1f} points), tool calls per "
          f"completion {numbers['before']['sampled_tool_calls']:.2f} -> {numbers['after']['sampled_tool_calls']:.2f}"
          f" in {timings['total_seconds']:.0f} s; see {settings.out}/report.md")
    return report


def _short_warm_start_text(curve: list[dict], steps: int, settings: ToolDemoSettings) -> str:
    """What a warm start that stopped below its target means for the GRPO after it."""
    accuracy = curve[-1]["validation_accuracy"] if curve else 0.0
    return (f"the warm start reached {accuracy:.0%} greedy validation accuracy in {steps} steps, below its target "
            f"{settings.sft_target_accuracy:.0%}: it has not yet learned to copy, and GRPO from such a warm start has "
            f"lost accuracy (the README's tool demo); another --warm-start-seed may learn sooner")


def _tool_log(rows: list[dict]) -> list[dict]:
    """Per step: reward and calls per completion (the training rows, not train()'s summary)."""
    return [{"step": row["step"], "reward": row["reward"], "tool_calls": row.get("tools/call_frequency")}
            for row in rows if "reward" in row and "train_runtime" not in row]


def _curves_text(report: dict) -> str:
    """The training reward and tool calls of GRPO's last steps beside the control's over its whole run."""
    def mean(rows, key):
        values = [row[key] for row in rows if row.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    last = report["grpo_log"][-5:]
    return (f"During training, GRPO's last {len(last)} steps averaged reward {mean(last, 'reward'):.3f} and "
            f"{mean(last, 'tool_calls'):.2f} tool calls per completion; the control's {len(report['control_log'])} "
            f"steps {mean(report['control_log'], 'reward'):.3f} and {mean(report['control_log'], 'tool_calls'):.2f}.")


def _markdown(report: dict) -> str:
    settings, timings = report["settings"], report["timings"]
    columns = [("before GRPO (warm start)", report["before"]), ("after GRPO", report["after"])]
    if report["control"]:
        columns.append(("lr-0 control", report["control"]))
    header = "| metric | " + " | ".join(name for name, _ in columns) + " | gain |"
    rows = []
    for label, key in (("greedy accuracy", "accuracy"), ("greedy tool calls per completion", "tool_calls"),
                       (f"sampled accuracy (T={settings['temperature']})", "sampled_accuracy"),
                       (f"sampled tool calls per completion (T={settings['temperature']})", "sampled_tool_calls")):
        rows.append(f"| {label} | " + " | ".join(f"{values[key]:.3f}" for _, values in columns)
                    + f" | {report['gain_points'][key]:+.1f} points |")
    examples = "\n".join(f"- `{e['prompt'][-1]['content']}` -> `{e['completion']}` "
                         f"({'correct' if e['correct'] else 'wrong'})" for e in report["examples_after"])
    control = (f"The lr-0 control ran GRPO's first {len(report['control_log'])} steps (same prompts and sampling "
               f"seeds) on a frozen copy of the warm start ({timings.get('control_seconds', 0):.0f} s); the gain "
               f"column is after GRPO minus the control. {_curves_text(report)}" if report["control"] else
               "No control was run: the gain is after minus before.")
    short = f"**Warning:** {report['sft']['warning']}.\n\n" if report["sft"]["warning"] else ""
    return f"""# reasonrl demo: GRPO teaches a tiny model to use a calculator

{short}
Held-out problems: {report['held_out']['n']} products of {settings['digits']}-digit numbers (seed
{report['held_out']['seed']}, never trained on), answered in multi-turn rollouts with the calculator tool (at most
one round of calls). Greedy: one completion per problem; sampled: {settings['samples']} per problem at the
training temperature.

{header}
|---|{"---|" * (len(columns) + 1)}
{chr(10).join(rows)}

{control}

## What ran

1. Warm start: a {settings['num_hidden_layers']}-layer, {settings['hidden_size']}-wide character-level Qwen2 (the tool
   chat template; warm-start seed {settings['warm_start_seed']}), fine-tuned for {report['sft']['steps']} steps
   (stopping at greedy validation accuracy >= {settings['sft_target_accuracy']} or {settings['sft_steps']} steps) on
   {report['sft']['rows']} rows, of which {report['sft']['tool_rows']} are calculator exchanges and the rest direct
   answers — {timings['sft_seconds']:.0f} s.
2. GRPO with tools=[calculator] (seed {settings['seed']}): {settings['grpo_steps']} steps x
   {settings['prompts_per_step']} prompts x {settings['num_generations']} samples, reward = calculator_accuracy
   only, lr {settings['learning_rate']} ({settings['warmup_steps']} warm-up steps), temperature
   {settings['temperature']} — {timings['grpo_seconds']:.0f} s; {report['completions_generated']} completions.
3. Evaluation before and after: {timings['eval_before_seconds']:.0f} s + {timings['eval_after_seconds']:.0f} s.

Total wall time {timings['total_seconds']:.0f} s on {report['machine']['threads']} threads
(torch {report['machine']['torch']}).

## Plots

![reward](reward.png) ![completion length](completion_length.png)

## Sample completions after GRPO (greedy)

{examples}

The full configuration is in report.json (`grpo_config`, `settings`); per-step rewards and tool calls in
`grpo_log` and `control_log`.
"""
