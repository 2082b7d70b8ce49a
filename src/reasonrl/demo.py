"""`reasonrl demo`: the offline reasoning demo. A tiny model gets measurably better at arithmetic through GRPO.

  1. warm start: a ~1M-parameter character-level Qwen2 is built and fine-tuned on digit-by-digit reasoning traces
     (`<think>3+4+0=7,...</think><answer>347</answer>`) until its greedy accuracy on a *validation* set reaches a
     modest target, leaving room for RL to improve it;
  2. eval: greedy accuracy, pass@k, format rate and length on held-out problems (a seed training never used);
  3. GRPO with reasonrl's trainer, rewarding a correct answer (the task's verifier) and the tag format;
  4. eval again on the same held-out problems, then report.md / report.json and PNG plots.

No network anywhere: the model, tokenizer and problems are all made here.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

TRAIN_SEED, VALIDATION_SEED, HELD_OUT_SEED = 1, 3, 2


@dataclass
class DemoSettings:
    """The demo's knobs; the defaults finish in about 4-5 minutes on 2 idle CPU cores. `seed` seeds the model's
    initialisation, the warm start and GRPO's sampling (`reasonrl demo --seed N`); the problems stay the same."""

    out: str = "demo_out"
    task: str = "arithmetic"
    digits: int = 3
    ops: str = "+"
    seed: int = 0
    # torch's CPU threads for the whole demo, fixed (not adapted to the machine's load, and not one per core on a
    # big machine): a different thread count rounds sums differently and so changes the trajectory
    threads: int = 2
    # the model: about 1M parameters
    hidden_size: int = 128
    num_hidden_layers: int = 4
    # warm start: stop once validation accuracy reaches the target (or at sft_max_steps)
    sft_batch_size: int = 32
    sft_learning_rate: float = 1e-3
    sft_max_steps: int = 600
    sft_target_accuracy: float = 0.4
    sft_eval_every: int = 10
    # GRPO
    grpo_steps: int = 160
    prompts_per_step: int = 16
    num_generations: int = 8
    learning_rate: float = 1e-4
    # a linear warm-up: the first full-size Adam step at once cost a warm start half its accuracy on some seeds
    warmup_steps: int = 10
    beta: float = 0.02
    # At temperature 1 the warm-started 1M model samples a right answer only a few % of the time (every one of
    # ~60 characters must be right), too rarely to learn from; at 0.5 about half its samples are right.
    temperature: float = 0.5
    scale_rewards: str = "none"
    # DAPO dynamic sampling (GRPOConfig.dynamic_sampling): rounds refilled with groups whose rewards differ
    dynamic_sampling: bool = False
    max_num_gen_batches: int = 4
    eval_every: int = 25
    # the lr-0 control: this many steps of the same GRPO run on a frozen copy of the warm start (0: none)
    control_steps: int = 5
    # evaluation
    held_out: int = 1000  # large, so that the report's numbers are tight (binomial s.e. ~1.4 points)
    validation: int = 200
    k: int = 4


def _problems(settings: DemoSettings):
    from reasonrl.tasks import get_task

    task = get_task(settings.task)
    difficulty = {"digits": settings.digits, "ops": settings.ops}
    train = task.generate(20000, seed=TRAIN_SEED, **difficulty)
    validation = task.generate(settings.validation, seed=VALIDATION_SEED, exclude=train, **difficulty)
    held_out = task.generate(settings.held_out, seed=HELD_OUT_SEED, exclude=train + validation, **difficulty)
    return task, difficulty, train, validation, held_out


def run_demo(settings: DemoSettings | None = None) -> dict:
    settings = settings or DemoSettings()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(settings.threads, os.cpu_count() or 1)))
    try:
        return _run(settings)
    finally:
        torch.set_num_threads(threads_before)


def _run(settings: DemoSettings) -> dict:
    from datasets import Dataset

    from reasonrl.callbacks import TrainerCallback
    from reasonrl.config import GRPOConfig
    from reasonrl.evaluate import evaluate, format_report
    from reasonrl.plot import plot_run
    from reasonrl.sft import sft
    from reasonrl.tiny import build_char_tokenizer, build_reasoning_model
    from reasonrl.trainer import GRPOTrainer

    started = time.perf_counter()
    timings = {}
    os.makedirs(settings.out, exist_ok=True)
    torch.manual_seed(settings.seed)
    task, difficulty, train, validation, held_out = _problems(settings)
    max_new_tokens = task.max_trace_length(**difficulty) + 8

    def held_out_eval(model, k=1):
        return evaluate(model, tokenizer, held_out, task.reward, k=k, max_new_tokens=max_new_tokens,
                        temperature=settings.temperature, batch_size=500, seed=settings.seed)

    # 1. warm start
    print(f"[1/4] warm start: supervised fine-tuning on {task.name} reasoning traces", flush=True)
    tokenizer = build_char_tokenizer()
    model = build_reasoning_model(tokenizer, hidden_size=settings.hidden_size,
                                  num_hidden_layers=settings.num_hidden_layers, seed=settings.seed)
    sft_rows = [{"prompt": row["prompt"], "completion": task.trace(row)} for row in train]
    sft_curve = []

    def until_target(step, current):
        # accuracy climbs steeply once the model "gets" the carries: look every 2 steps from then on
        recent = sft_curve[-1]["validation_accuracy"] if sft_curve else 0.0
        if step % settings.sft_eval_every and recent < 0.03:
            return False
        accuracy = evaluate(current, tokenizer, validation, task.reward, max_new_tokens=max_new_tokens,
                            batch_size=500)["accuracy"]
        sft_curve.append({"step": step, "validation_accuracy": accuracy})
        return accuracy >= settings.sft_target_accuracy

    t0 = time.perf_counter()
    sft_losses = sft(model, tokenizer, sft_rows, steps=settings.sft_max_steps, batch_size=settings.sft_batch_size,
                     learning_rate=settings.sft_learning_rate, seed=settings.seed, callback=until_target,
                     callback_every=2)
    timings["sft_seconds"] = time.perf_counter() - t0
    base_dir = os.path.join(settings.out, "base")
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    # 2. eval before
    print("[2/4] evaluating the warm-started model on held-out problems", flush=True)
    t0 = time.perf_counter()
    before = held_out_eval(model, k=settings.k)
    timings["eval_before_seconds"] = time.perf_counter() - t0
    print("before: " + format_report(before), flush=True)

    # 3. GRPO
    grpo_dir = os.path.join(settings.out, "grpo")
    dataset = Dataset.from_list([{"prompt": row["prompt"], "answer": row["answer"]} for row in train])

    def grpo_config(output_dir, **overrides):
        completions_per_step = settings.prompts_per_step * settings.num_generations
        options = dict(
            output_dir=output_dir, learning_rate=settings.learning_rate,
            per_device_train_batch_size=completions_per_step // 2, gradient_accumulation_steps=2,
            num_generations=settings.num_generations, max_completion_length=max_new_tokens, max_prompt_length=64,
            temperature=settings.temperature, beta=settings.beta, max_steps=settings.grpo_steps,
            warmup_steps=settings.warmup_steps,
            reward_weights=[1.0, 0.2], logging_steps=25, save_steps=settings.grpo_steps,
            gradient_checkpointing=False, bf16=False, seed=settings.seed, lr_scheduler_type="cosine",
            optim="adamw_torch", scale_rewards=settings.scale_rewards, dynamic_sampling=settings.dynamic_sampling,
            max_num_gen_batches=settings.max_num_gen_batches,
            # a 1M-parameter model: per-call overhead, not activation memory, is what costs; one backward per
            # micro-batch
            backward_chunk_rows=0, adapt_cpu_threads=False,
        )
        return GRPOConfig(**{**options, **overrides})

    control = None
    if settings.control_steps:
        # the lr-0 control: the same rollouts and rewards from a frozen copy of the warm start, so that the
        # reward plot shows what GRPO's reward would be without learning
        t0 = time.perf_counter()
        frozen = GRPOTrainer(copy.deepcopy(model), [task.reward, "format"], train_dataset=dataset,
                             processing_class=tokenizer,
                             args=grpo_config(os.path.join(settings.out, "control"), learning_rate=0.0,
                                              max_steps=settings.control_steps, save_strategy="no",
                                              logging_steps=settings.control_steps, dynamic_sampling=False))
        rewards = [row["reward"] for row in frozen.train() if "reward" in row]
        control = {"steps": len(rewards), "reward": sum(rewards) / len(rewards),
                   "completions": len(rewards) * settings.prompts_per_step * settings.num_generations}
        timings["control_seconds"] = time.perf_counter() - t0
        del frozen

    print(f"[3/4] GRPO: {settings.grpo_steps} steps of {settings.prompts_per_step} prompts x "
          f"{settings.num_generations} samples", flush=True)
    config = grpo_config(grpo_dir)
    trainer = GRPOTrainer(model, [task.reward, "format"], args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    validation_curve = [{"step": 0, "accuracy": sft_curve[-1]["validation_accuracy"]}] if sft_curve else []

    class ValidationAccuracy(TrainerCallback):
        """Greedy accuracy on the validation problems at steps 1, every eval_every and the last, logged in that
        step's row (it asks for the row to be logged, and adds the accuracy to it in on_log)."""

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step % settings.eval_every == 0 or step in (1, settings.grpo_steps):
                self.accuracy = evaluate(trainer.model, tokenizer, validation, task.reward,
                                         max_new_tokens=max_new_tokens, batch_size=500)["accuracy"]
                # completions generated so far: every drawn prompt was sampled G times (extra draws included)
                validation_curve.append({"step": step, "accuracy": self.accuracy,
                                         "completions": trainer.sampler.draws * settings.num_generations})
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if validation_curve and validation_curve[-1]["step"] == state.global_step and "loss" in logs:
                logs["eval/accuracy"] = validation_curve[-1]["accuracy"]

    trainer.add_callback(ValidationAccuracy())
    t0 = time.perf_counter()
    trainer.train()
    timings["grpo_seconds"] = time.perf_counter() - t0
    final_dir = os.path.join(settings.out, "model")
    trainer.save_model(final_dir)

    # 4. eval after, report
    print("[4/4] evaluating the GRPO-trained model on the same held-out problems", flush=True)
    t0 = time.perf_counter()
    after = held_out_eval(trainer.model, k=settings.k)
    timings["eval_after_seconds"] = time.perf_counter() - t0
    print("after:  " + format_report(after), flush=True)
    references = {"reward": [(control["reward"], f"lr-0 control (frozen warm start, {control['steps']} steps)")]
                  } if control else None
    plots = plot_run(grpo_dir, settings.out, references)
    timings["total_seconds"] = time.perf_counter() - started
    report = {
        "task": task.name, "difficulty": difficulty,
        "held_out": {"seed": HELD_OUT_SEED, "n": len(held_out)},
        "before": _numbers(before), "after": _numbers(after),
        "gain_points": round(100 * (after["accuracy"] - before["accuracy"]), 1),
        "sft": {"steps": len(sft_losses), "final_loss": sft_losses[-1], "validation_curve": sft_curve},
        "grpo_validation_curve": validation_curve,
        "completions_generated": trainer.sampler.draws * settings.num_generations,
        "no_signal_share": _no_signal_share(trainer.log_history),
        "control": control,
        "reward_last_steps": _mean_reward(trainer.log_history, settings.control_steps or 5),
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
    print(f"\nheld-out greedy accuracy {100 * before['accuracy']:.1f}% -> {100 * after['accuracy']:.1f}% "
          f"({report['gain_points']:+.1f} points) in {timings['total_seconds']:.0f} s; see {settings.out}/report.md")
    return report


def _no_signal_share(rows: list[dict], parts: int = 5) -> list[dict]:
    """The share of generated groups whose G rewards all agreed (no learning signal), averaged over `parts` equal
    stretches of training: [{"steps": "1-30", "share": 0.41}, ...]."""
    values = [(row["step"], row["frac_groups_no_signal"]) for row in rows
              if "frac_groups_no_signal" in row and "train_runtime" not in row]  # not train()'s summary row
    stretches = []
    size = max(1, -(-len(values) // parts))
    for start in range(0, len(values), size):
        chunk = values[start: start + size]
        stretches.append({"steps": f"{chunk[0][0]}-{chunk[-1][0]}",
                          "share": round(sum(value for _, value in chunk) / len(chunk), 3)})
    return stretches


def _mean_reward(rows: list[dict], last: int) -> float | None:
    """The mean reward of the last `last` steps (to set beside the lr-0 control's)."""
    rewards = [row["reward"] for row in rows if "reward" in row and "train_runtime" not in row][-last:]  # no summary
    return sum(rewards) / len(rewards) if rewards else None


def _numbers(report: dict) -> dict:
    keys = ("n", "accuracy", "pass_at_k", "format_rate", "mean_length", "truncation_rate")
    return {key: report[key] for key in keys}


def _control_text(report: dict) -> str:
    control, last = report["control"], report["reward_last_steps"]
    if not control or last is None:
        return ""
    steps = report["settings"]["control_steps"]
    return (f"The training reward (accuracy + 0.2 x format) of the last {steps} GRPO steps "
            f"averaged {last:.3f}; the lr-0 control (the same run on a frozen copy of the warm start, "
            f"{control['steps']} steps, {control['completions']} completions) averaged {control['reward']:.3f}: the "
            f"dashed line on the reward plot.\n")


def _markdown(report: dict) -> str:
    before, after = report["before"], report["after"]
    rows = []
    for label, key in (("greedy accuracy", "accuracy"), ("format rate", "format_rate"),
                       ("mean completion length (tokens)", "mean_length"), ("truncation rate", "truncation_rate")):
        rows.append(f"| {label} | {before[key]:.3f} | {after[key]:.3f} |")
    for k in before["pass_at_k"]:
        if k in ("1", str(len(before["pass_at_k"]))):
            rows.append(f"| pass@{k} (T={report['settings']['temperature']}) | {before['pass_at_k'][k]:.3f} | "
                        f"{after['pass_at_k'][k]:.3f} |")
    timings = report["timings"]
    examples = "\n".join(f"- `{e['prompt']}` -> `{e['completion']}` ({'correct' if e['correct'] else 'wrong'})"
                         for e in report["examples_after"])
    settings = report["settings"]
    dynamic = (f", DAPO dynamic sampling (up to {settings['max_num_gen_batches']} generation batches a step)"
               if settings["dynamic_sampling"] else "")
    return f"""# reasonrl demo: GRPO on {report['task']} ({report['difficulty']})

Held-out problems: {report['held_out']['n']} from seed {report['held_out']['seed']}, which neither the warm start nor
GRPO trained on. Greedy accuracy went from **{100 * before['accuracy']:.1f}%** to **{100 * after['accuracy']:.1f}%**
(**{report['gain_points']:+.1f} points**).

| metric | before GRPO (warm start) | after GRPO |
|---|---|---|
{chr(10).join(rows)}

Reproduce either number with `reasonrl eval demo_out/base --task {report['task']} --seed {report['held_out']['seed']}
--n {report['held_out']['n']}` (and `demo_out/model`); other seeds give fresh held-out problems.

## What ran

1. Warm start: a {settings['num_hidden_layers']}-layer, {settings['hidden_size']}-wide character-level Qwen2,
   fine-tuned on reasoning traces for {report['sft']['steps']} steps (stopped at validation accuracy
   >= {settings['sft_target_accuracy']}) — {timings['sft_seconds']:.0f} s.
2. GRPO: {settings['grpo_steps']} steps x {settings['prompts_per_step']} prompts x {settings['num_generations']}
   samples, rewards = task accuracy (weight 1) + format (weight 0.2), lr {settings['learning_rate']}
   ({settings['warmup_steps']} warm-up steps, then cosine), beta {settings['beta']},
   temperature {settings['temperature']}{dynamic} — {timings['grpo_seconds']:.0f} s;
   {report['completions_generated']} completions generated in all.
3. Evaluation before and after: {timings['eval_before_seconds']:.0f} s + {timings['eval_after_seconds']:.0f} s.

Total wall time {timings['total_seconds']:.0f} s on {report['machine']['threads']} threads
(torch {report['machine']['torch']}).

{_control_text(report)}
## Plots

![reward](reward.png) ![accuracy](accuracy.png)
![KL](kl.png) ![completion length](completion_length.png)
![groups with no learning signal](no_signal.png)

## Groups with no learning signal

The share of generated groups whose {settings['num_generations']} rewards all agreed (all right or all wrong): their
advantages are 0, so they teach nothing. It grows as the model gets problems reliably right.

| steps | {" | ".join(part["steps"] for part in report["no_signal_share"])} |
|---|{"---|" * len(report["no_signal_share"])}
| share | {" | ".join(f'{part["share"]:.2f}' for part in report["no_signal_share"])} |

## Sample completions after GRPO

{examples}

The full configuration is in report.json (`grpo_config`, `settings`).
"""
