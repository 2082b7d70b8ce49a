"""TRL 1.16's `environment_factory`: one environment per rollout, its methods the rollout's tools.

`environment_factory` is a callable returning an environment (a class, usually), or a dict {name: callable} whose
examples pick theirs by their `environment` column. As TRL:

- one instance of each factory is made at start-up to read its tools: the public functions of its class, but
  `reset` (required) and `get_reward` (optional), described to the model like `tools` (type hints, docstring);
  instances are pooled and reused round after round, the pool growing when a round needs more;
- each rollout (prompt x G) gets its own instance; `reset(**row)` is called with the example's columns (without
  `environment` in the dict form) before generation; a string it returns is appended to the last message of the
  prompt (the completion's prompt as the rewards see it), None leaves the prompt as it is;
- the model's tool calls run the rollout's own instance's methods (with the standalone `tools`);
- `get_reward()` (when the class defines it) is an extra reward function named after the class, weight 1, after
  `reward_funcs` (which then become optional); it scores the rollouts of that exact class, None for others;
- every reward function gets `environments=[...]`, the completions' instances;
- without a dataset (single factory) the prompts are `[{"role": "user", "content": ""}]` rows, one round's worth,
  cycled; `max_steps` must say how long to train.

Where it departs (containment, as for tools): a `reset` that raises, runs past `tool_timeout` or returns something
other than None or text leaves the prompt as it is and is counted (`environments/reset_failures`); a method that
raises, hangs or returns junk is a failing tool call (`tools/failure_frequency`); a `get_reward` that raises or
returns a non-number scores None for its rollout (counted in `environments/reward_failures`, the fraction of the
class's rollouts). A hanging `get_reward` times the whole environment reward out (`reward_timeout`), as any
reward.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable

import torch

from reasonrl.errors import RolloutError
from reasonrl.rollout import sample_rollout

PLACEHOLDER_PROMPT = [{"role": "user", "content": ""}]
"""The prompt of a dataset-less run's rows (TRL's): the environment's reset() observation becomes its text."""


def load_environment_factory(value):
    """A callable or a dict {name: callable}; strings (YAML, CLI) are specs 'module:Class' / 'file.py:Class'."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, dict):
        return {str(name): _factory(item, f"environment_factory[{name!r}]") for name, item in value.items()}
    return _factory(value, "environment_factory")


def _factory(value, what: str):
    from reasonrl.tools import load_spec

    if isinstance(value, str):
        value = load_spec(value, what, RolloutError)
    if not callable(value):
        raise RolloutError(f"{what} {value!r:.60} is a {type(value).__name__}, not a class or function that returns "
                           f"an environment")
    return value


def environment_methods(instance) -> tuple[list[Callable], bool, bool]:
    """(tool methods bound to `instance`, has reset, has get_reward): as TRL, the functions of its class."""
    methods, has_reset, has_reward = [], False, False
    for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction):
        if name == "reset":
            has_reset = True
        elif name == "get_reward":
            has_reward = True
        elif not name.startswith("_"):
            methods.append(getattr(instance, name))
    return methods, has_reset, has_reward


class Environments:
    """The run's environments: their factories, pools, tools and rewards (built once, `Environments.build`)."""

    def __init__(self, factories: dict, tools: list[Callable], tokenizer, args):
        self.multi = None not in factories
        self.factories, self.tokenizer, self.args = factories, tokenizer, args
        self.standalone = list(tools)
        self.pools: dict = {}
        self.tools: dict = {}  # environment name -> its tools (standalone ones first), as the probe instance has them
        self.reward_types: list[type] = []  # classes owning their reward, in order
        for name in factories:
            instance = self._make(name)
            methods, has_reset, has_reward = environment_methods(instance)
            if not has_reset:
                raise RolloutError("Each environment instance returned by `environment_factory` must define a "
                                   f"callable `reset` ({type(instance).__name__} has none)")
            self.tools[name] = list(tools) + methods
            self.pools[name] = [instance]
            if has_reward and type(instance) not in self.reward_types:
                self.reward_types.append(type(instance))
        self.prompt_tokenizers: dict = {}
        self.reset_failures = 0

    @classmethod
    def build(cls, factory, tools: list[Callable], args, trainer) -> Environments | None:
        """None without a factory; else the environments, their get_reward appended to the trainer's rewards
        (reward_funcs, reward_names, reward_weights: weight 1 each, as TRL)."""
        factory = load_environment_factory(factory)
        if factory is None:
            return None
        environments = cls(factory if isinstance(factory, dict) else {None: factory}, tools, None, args)
        for reward in environments.reward_functions():
            trainer.reward_funcs.append(reward)
            trainer.reward_names.append(reward.__name__)
            trainer.reward_weights = torch.cat([trainer.reward_weights, torch.ones(1)])
            if getattr(trainer, "reward_processing_classes", None) is not None:
                trainer.reward_processing_classes.append(None)  # TRL's attribute stays aligned with the rewards
        return environments

    def dataset(self, train_dataset):
        """The training data: `train_dataset`, or (none given and no dataset_name) TRL's placeholder rows, one
        round's prompts, for environments that make their prompt in reset()."""
        from reasonrl.errors import ConfigError

        if train_dataset is not None or self.args.dataset_name:
            return train_dataset
        if self.multi:
            raise RolloutError("A `dict` `environment_factory` (multiple environments) requires a `train_dataset` "
                               "with an `environment` column to route each example to its environment. Provide a "
                               "dataset, or pass a single environment factory.")
        if self.args.max_steps <= 0:
            raise ConfigError("training without a train_dataset (the environment makes the prompt in reset()) "
                              "needs max_steps to say how long to train; set max_steps (e.g. max_steps=100)",
                              "max_steps")
        return [{"prompt": PLACEHOLDER_PROMPT} for _ in range(max(1, self.args.prompts_per_generation))]

    def _make(self, name):
        try:
            return self.factories[name]()
        except Exception as error:  # noqa: BLE001 - the user's constructor: a one-line error at start-up
            from reasonrl.errors import reason_of

            raise RolloutError(f"environment_factory{'' if name is None else f'[{name!r}]'} raised "
                               f"{type(error).__name__}: {reason_of(error, 150)}") from None

    def union_tools(self) -> list[Callable]:
        """One function per tool name over every environment (the first one's): the schemas for parsing turns."""
        seen, union = set(), []
        for tools in self.tools.values():
            for tool in tools:
                if tool.__name__ not in seen:
                    seen.add(tool.__name__)
                    union.append(tool)
        return union

    def reward_functions(self) -> list[Callable]:
        """get_reward of each class that has it, as reward functions named after the class (TRL's)."""
        return [environment_reward(env_type) for env_type in self.reward_types]

    def check_rows(self, names: list) -> None:
        if self.multi:
            unknown = sorted({repr(n) for n in names if n not in self.factories})
            if unknown:
                raise RolloutError(f"Example has `environment={unknown[0]}`, which is not among the environments "
                                   f"passed to `environment_factory`. Expected one of: {list(self.factories)}.")

    def rollout(self, model, rows: list[dict], tool_calling, *, num_generations: int, seeds=None, **sampling):
        """Reset one environment per completion (row i's G of them in a row), render each completion's prompt with
        its observation and its environment's tools, and sample one completion of each (seeds per completion, so a
        prompt's G samples differ), the tool calls going to the completion's own environment."""
        from reasonrl.tools import _turn_seed

        g = num_generations
        names = [row.get("environment") if self.multi else None for row in rows]
        self.check_rows(names)
        cursor: dict = {}
        environments, prompts, row_tools = [], [], []
        failures = 0
        for row, name in zip(rows, names):
            kwargs = {k: v for k, v in row.items() if k != "environment"} if self.multi else dict(row)
            for _ in range(g):
                pool, index = self.pools[name], cursor.get(name, 0)
                if index == len(pool):
                    pool.append(self._make(name))
                cursor[name] = index + 1
                environment = pool[index]
                observation, failed = self._reset(environment, kwargs)
                failures += failed
                prompt = row.get("prompt", PLACEHOLDER_PROMPT)
                if observation is not None:
                    prompt = with_observation(prompt, observation)
                environments.append(environment)
                prompts.append(prompt)
                methods, _, _ = environment_methods(environment)
                row_tools.append({tool.__name__: tool for tool in [*self.standalone, *methods]})
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = self._tokenize(prompts, [n for n in names for _ in range(g)], device)
        row_seeds = None if seeds is None else [_turn_seed(seeds[i // g], i % g, 0) for i in range(len(prompts))]
        rollout = sample_rollout(model, self.tokenizer, prompt_ids, prompt_mask, tool_calling,
                                 row_tools=row_tools if tool_calling else None, num_generations=1, seeds=row_seeds,
                                 **sampling)
        rollout.prompts = prompts
        rollout.reward_columns = {"environments": environments}
        self.reset_failures += failures
        counts = torch.zeros(6, dtype=torch.float64, device=device)
        if rollout.tool_counts is not None:
            counts[:5] = rollout.tool_counts
        else:
            counts[3:5] = len(prompts)  # one turn per completion
        counts[5] = failures
        rollout.tool_counts = counts
        return rollout

    def _reset(self, environment, kwargs: dict):
        """(observation or None, 1 if reset failed): contained like a tool call (timeout, errors, junk)."""
        from reasonrl.tools import call_with_timeout

        try:
            observation = call_with_timeout(environment.reset, kwargs, self.args.tool_timeout, "environment-reset")
        except (Exception, SystemExit):  # noqa: BLE001 - raised or timed out: the prompt stays as it is, counted
            return None, 1
        if observation is None or isinstance(observation, str):
            return observation, 0
        if isinstance(observation, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                                 and isinstance(p.get("text"), str) for p in observation):
            return "".join(p["text"] for p in observation), 0
        return None, 1

    def _tokenize(self, prompts: list, names: list, device):
        """Each prompt rendered with its environment's tools, left-padded together."""
        from reasonrl.data import PromptTokenizer
        from reasonrl.tools import tool_schemas

        rows = []
        for prompt, name in zip(prompts, names):
            if name not in self.prompt_tokenizers:
                self.prompt_tokenizers[name] = PromptTokenizer(self.tokenizer, self.args.max_prompt_length,
                                                               tool_schemas(self.tools[name]) or None,
                                                               self.args.chat_template_kwargs)
            ids, mask = self.prompt_tokenizers[name]([prompt])
            rows.append(ids[0][mask[0].bool()].tolist())
        width, pad = max(map(len, rows)), self.tokenizer.pad_token_id
        prompt_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        prompt_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        return prompt_ids, prompt_mask

    def schemas(self, name=None) -> list[dict] | None:
        from reasonrl.tools import tool_schemas

        return tool_schemas(self.tools[name]) or None


def with_observation(prompt, observation: str):
    """The prompt with `observation` appended to its last message's text (TRL's; a plain-text prompt: to it)."""
    if isinstance(prompt, str):
        return prompt + observation
    last = prompt[-1]
    content = last.get("content")
    if isinstance(content, list):
        content = content + [{"type": "text", "text": observation}]
    else:
        content = (content or "") + observation
    return [*prompt[:-1], {**last, "content": content}]


def environment_reward(env_type: type) -> Callable:
    """A reward function scoring with `get_reward()` the rollouts whose environment is exactly `env_type` (None for
    the others); a get_reward that raises or returns a non-number gives None for its rollout, counted."""
    def reward(environments=None, log_metric=None, **kwargs):
        values, failed, mine = [], 0, 0
        for environment in environments or []:
            if type(environment) is not env_type:
                values.append(None)
                continue
            mine += 1
            try:
                value = environment.get_reward()
                if inspect.isawaitable(value):
                    value = asyncio.run(_awaited(value))
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError("not finite")
            except Exception:  # noqa: BLE001 - the environment's failure scores its rollout None, counted
                failed += 1
                value = None
            values.append(value)
        if log_metric is not None and mine:
            log_metric("environments/reward_failures", failed / mine)
        return values

    reward.__name__ = reward.__qualname__ = env_type.__name__
    return reward


async def _awaited(awaitable):
    return await awaitable
