"""Where a round's completions come from: reasonrl's sampler, with tools, with environments, or TRL 1.16's
`rollout_func`. `RolloutStage` is chosen once at start-up; the trainer's rollout and the evaluation call it alike.

TRL's `rollout_func(prompts, trainer) -> dict`: `prompts` are the process's prompts of the round, each repeated
num_generations times in a row (TRL's sampler repeats them; the function returns one completion per entry), as the
dataset holds them (conversations are not templated: that is the function's job). The dict must hold
`prompt_ids`, `completion_ids` and `logprobs` (lists of token lists and of floats, one per entry), else TRL's
"rollout_func must return keys [...]" error. Every other key is passed to the reward functions as a column (a list:
one value per completion; anything else: the same value for each), except `env_mask`: a 0/1 list per completion
marking the tokens the model wrote (1) and those the environment inserted (0), which, as TRL's, is the loss's
tool_mask. The completions are taken as returned (their whole length is the completion; a last token that is not
EOS or padding marks it truncated). The log-probs are kept but, as in TRL without vLLM, not used by the loss.

With `tools` as well, as TRL: the rollout_func's completions are the first turns, and the tool loop runs on them
(tools.ToolCalling.continue_turns): a first turn that calls a tool and ends gets the results appended and the model
(reasonrl's sampler) writes the next turn, up to max_tool_calling_iterations; an env_mask stays the first turns'
mask. A rollout_func with environment_factory is refused.

`generate_completions(trainer, prompts)` is what a rollout_func can call to sample with reasonrl's own sampler (the
lean decoder where it fits), as the trainer would: a rollout_func that returns it unchanged trains exactly as no
rollout_func does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reasonrl.errors import RolloutError
from reasonrl.rollout import Rollout, generate, sample_rollout

REQUIRED_KEYS = ("prompt_ids", "completion_ids", "logprobs")
"""What TRL 1.16's rollout_func must return."""


def load_rollout_func(value) -> Callable | None:
    """A callable, or one named by a spec 'module:function' / 'path/to/file.py:function' (YAML, CLI)."""
    from reasonrl.tools import load_spec

    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = load_spec(value, "rollout_func", RolloutError)
    if not callable(value):
        raise RolloutError(f"rollout_func {value!r:.60} is a {type(value).__name__}, not a function; pass a function "
                           f"(prompts, trainer) -> dict, or a spec module:function")
    return value


@dataclass
class RolloutSources:
    """What a trainer's rollouts are made from, read at start-up before the model loads (`rollout_sources`)."""

    rollout_func: Callable | None
    environments: object | None  # environments.Environments
    tools: list[Callable]  # every tool a prompt may list (an environment's methods included)
    standalone: list[Callable]  # the tools that are no environment's methods
    train_dataset: object  # the trainer's, or the environments' placeholder rows
    reward_columns: list[str]  # what every reward gets besides the dataset's columns

    def stage(self, trainer, prompts: list) -> tuple[object, RolloutStage]:
        """(tools.ToolCalling or None, the RolloutStage) once the tokenizer is loaded; `prompts` the first
        training prompts (tools need conversations)."""
        from reasonrl.tools import ToolCalling

        tool_calling = ToolCalling.build(self.tools, trainer.tokenizer, prompts, trainer.args, self.standalone)
        return tool_calling, RolloutStage(trainer.tokenizer, tool_calling, self.rollout_func, self.environments,
                                          trainer)


def rollout_sources(trainer, train_dataset, tools, rollout_func, environment_factory) -> RolloutSources:
    """The trainer's arguments (else the options of the same names) loaded: the rollout_func, the tools, the
    environments (their get_reward appended to trainer.reward_funcs, their placeholder rows standing in for a
    missing dataset). ConfigError when no reward is left at all."""
    from reasonrl.environments import Environments
    from reasonrl.errors import ConfigError
    from reasonrl.tools import load_tools

    args = trainer.args
    rollout_func = load_rollout_func(args.rollout_func if rollout_func is None else rollout_func)
    standalone = all_tools = load_tools(args.tools if tools is None else tools)
    environments = Environments.build(args.environment_factory if environment_factory is None
                                      else environment_factory, standalone, args, trainer)
    if environments is not None:
        train_dataset = environments.dataset(train_dataset)
        all_tools = environments.union_tools()
    if not trainer.reward_funcs:
        raise ConfigError("no reward functions. No reward source provided: pass reward_funcs (e.g. "
                          "reward_funcs=[length]), or an environment_factory whose environment defines a "
                          "get_reward method", "reward_funcs")
    return RolloutSources(rollout_func, environments, all_tools, standalone, train_dataset,
                          ["environments"] if environments is not None else [])


class RolloutStage:
    """One round's (or eval batch's) completions: `stage(model, rows, prompt_ids, prompt_mask, **sampling)`.

    rows: the N dataset rows; prompt_ids [N, P] their rendered prompts; sampling: rollout.generate's keywords
    (num_generations, seeds, ...). Returns a Rollout of N*G rows grouped by prompt."""

    def __init__(self, tokenizer, tool_calling=None, rollout_func=None, environments=None, trainer=None):
        if rollout_func is not None and environments is not None:
            raise RolloutError("rollout_func with environment_factory is not supported: the rollout_func makes the "
                               "completions; call the environment inside it and return env_mask, or pass its "
                               "methods as tools")
        self.tokenizer, self.tool_calling = tokenizer, tool_calling
        self.rollout_func, self.environments, self.trainer = rollout_func, environments, trainer
        self.model, self.sampling = None, {}  # of the call in progress, for generate_completions
        self.engine = None  # vLLM sampling instead of reasonrl's decoder (use_vllm): VLLMEngine or VLLMServerEngine
        if environments is not None:
            environments.tokenizer = tokenizer

    @property
    def schemas(self) -> list[dict] | None:
        """The tool schemas every prompt is rendered with (environments render their own)."""
        return self.tool_calling.schemas if self.tool_calling else None

    def __call__(self, model, rows: list[dict], prompt_ids, prompt_mask, **sampling) -> Rollout:
        if self.rollout_func is not None:
            g = sampling["num_generations"]
            self.model, self.sampling = model, sampling
            try:
                prompts = copy.deepcopy([row["prompt"] for row in rows for _ in range(g)])
                rollout = rollout_from_func(self.rollout_func, self.trainer, prompts, self.tokenizer,
                                            prompt_ids.device)
                if self.tool_calling is not None:
                    rollout = tool_turns_after(self.tool_calling, model, rollout, self.tokenizer, sampling)
                return rollout
            finally:
                self.model, self.sampling = None, {}
        if self.environments is not None:
            return self.environments.rollout(model, rows, self.tool_calling, **sampling)
        return sample_rollout(model, self.tokenizer, prompt_ids, prompt_mask, self.tool_calling, engine=self.engine,
                              **sampling)


def rollout_from_func(rollout_func, trainer, prompts: list, tokenizer, device) -> Rollout:
    """A Rollout of what `rollout_func(prompts, trainer)` returned (one completion per entry of `prompts`)."""
    output = rollout_func(prompts, trainer)
    if not isinstance(output, dict):
        raise RolloutError(f"rollout_func returned a {type(output).__name__}; it must return a dict with "
                           f"{', '.join(REQUIRED_KEYS)} (one list per completion)")
    missing = sorted(set(REQUIRED_KEYS) - output.keys())
    if missing:
        raise RolloutError(f"rollout_func must return keys {missing} in its output dict (it returned "
                           f"{sorted(output)})")
    count = len(prompts)
    prompt_rows = _rows(output, "prompt_ids", count, int)
    completion_rows = _rows(output, "completion_ids", count, int)
    logprob_rows = _rows(output, "logprobs", count, float)
    extra = {key: value for key, value in output.items() if key not in REQUIRED_KEYS}
    env_mask = _rows(extra, "env_mask", count, int) if "env_mask" in extra else None
    extra.pop("env_mask", None)
    for i, (prompt, completion, logps) in enumerate(zip(prompt_rows, completion_rows, logprob_rows)):
        if not prompt or not completion:
            raise RolloutError(f"rollout_func's {'prompt_ids' if not prompt else 'completion_ids'}[{i}] is empty; "
                               f"every entry needs its prompt's tokens and at least one completion token")
        if len(logps) != len(completion):
            raise RolloutError(f"rollout_func's logprobs[{i}] has {len(logps)} values for {len(completion)} "
                               f"completion tokens; give one log-prob per completion token")
        if env_mask is not None and (len(env_mask[i]) != len(completion) or set(env_mask[i]) - {0, 1}):
            raise RolloutError(f"rollout_func's env_mask[{i}] must be 0s and 1s, one per completion token "
                               f"({len(completion)}), got {env_mask[i]!r:.60}")
    columns = {}
    for key, value in extra.items():
        if isinstance(value, list):
            if len(value) != count:
                raise RolloutError(f"rollout_func's '{key}' has {len(value)} values for {count} completions; a "
                                   f"list field needs one value per completion (or return a single value)")
            columns[key] = value
        else:
            columns[key] = [value] * count

    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    stops = ({eos} if isinstance(eos, int) else set(eos or [])) | {pad}
    prompt_width, width = max(map(len, prompt_rows)), max(map(len, completion_rows))
    rollout = Rollout(
        prompt_ids=torch.tensor([[pad] * (prompt_width - len(p)) + p for p in prompt_rows], device=device),
        prompt_mask=torch.tensor([[0] * (prompt_width - len(p)) + [1] * len(p) for p in prompt_rows], device=device),
        completion_ids=torch.tensor([c + [pad] * (width - len(c)) for c in completion_rows], device=device),
        completion_mask=torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completion_rows], device=device),
        sampling_logps=torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logprob_rows], device=device),
        is_truncated=torch.tensor([c[-1] not in stops for c in completion_rows], device=device),
        texts=tokenizer.batch_decode(completion_rows, skip_special_tokens=True))
    if env_mask is not None:  # 0 on the tokens the environment inserted: context, out of the loss (as tools')
        rollout.tool_mask = torch.tensor([m + [0] * (width - len(m)) for m in env_mask], device=device)
    rollout.reward_columns = columns or None
    return rollout


def tool_turns_after(tool_calling, model, rollout: Rollout, tokenizer, sampling: dict) -> Rollout:
    """`rollout` (a rollout_func's) with the tool loop run on its completions as first turns (TRL's order)."""
    def rows(values, mask):
        return [v[m.bool()].tolist() for v, m in zip(values, mask)]

    mask = rollout.completion_mask
    turns = tool_calling.continue_turns(
        model, rows(rollout.prompt_ids, rollout.prompt_mask), rows(rollout.completion_ids, mask),
        device=rollout.completion_ids.device, first_logps=rows(rollout.sampling_logps, mask),
        first_mask=None if rollout.tool_mask is None else rows(rollout.tool_mask, mask), **sampling)
    ids = rows(turns.completion_ids, turns.completion_mask)
    result = Rollout(rollout.prompt_ids, rollout.prompt_mask, turns.completion_ids, turns.completion_mask,
                     turns.sampling_logps, turns.is_truncated, tokenizer.batch_decode(ids, skip_special_tokens=True),
                     tool_mask=turns.tool_mask, messages=turns.completions)
    result.tool_counts = turns.counts(rollout.completion_ids.device)
    result.reward_columns = rollout.reward_columns
    return result


def _rows(output: dict, key: str, count: int, kind) -> list[list]:
    """output[key] as `count` lists of `kind` (tensors and numpy arrays are taken too)."""
    value = output[key]
    if hasattr(value, "tolist"):
        value = value.tolist()
    try:
        rows = [[kind(x) for x in (row.tolist() if hasattr(row, "tolist") else row)] for row in value]
    except (TypeError, ValueError):
        raise RolloutError(f"rollout_func's '{key}' must be a list with one list of "
                           f"{'token ids' if kind is int else 'numbers'} per completion, got {value!r:.60}") from None
    if len(rows) != count:
        raise RolloutError(f"rollout_func returned {len(rows)} '{key}' rows for {count} prompts; it gets each prompt "
                           f"num_generations times in a row (TRL's call) and returns one completion per entry")
    return rows


@torch.no_grad()
def generate_completions(trainer, prompts: list) -> dict:
    """For a rollout_func: reasonrl's own sampling of `prompts` (as the rollout_func got them: each prompt
    num_generations times in a row) with the round's settings and seeds, as TRL's rollout dict {prompt_ids,
    completion_ids, logprobs}. Called outside a round it samples with the trainer's generator."""
    stage = trainer.rollouts
    sampling = dict(stage.sampling) or _default_sampling(trainer)
    model = stage.model or trainer.model
    g = sampling["num_generations"]
    if len(prompts) % g or any(prompts[i] != prompts[i - i % g] for i in range(len(prompts))):
        raise RolloutError(f"generate_completions takes the prompts as the rollout_func got them: each one "
                           f"num_generations={g} times in a row ({len(prompts)} given)")
    if sampling.get("seeds") is not None and len(sampling["seeds"]) != len(prompts) // g:
        sampling["seeds"] = None
    prompt_ids, prompt_mask = trainer.prompt_tokenizer(prompts[::g], device=trainer.device)
    with trainer._autocast():
        ids, mask, logps, _ = generate(model, prompt_ids, prompt_mask, **sampling)
    prompts_out = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask) for _ in range(g)]
    return {"prompt_ids": prompts_out,
            "completion_ids": [row[m.bool()].tolist() for row, m in zip(ids, mask)],
            "logprobs": [row[m.bool()].tolist() for row, m in zip(logps, mask)]}


def _default_sampling(trainer) -> dict:
    from reasonrl.rollout import sampling_options

    args = trainer.args
    return {"num_generations": args.num_generations, "max_new_tokens": args.max_completion_length,
            "eos_token_id": trainer.tokenizer.eos_token_id, "pad_token_id": trainer.tokenizer.pad_token_id,
            **sampling_options(args), "generator": trainer.generator}
