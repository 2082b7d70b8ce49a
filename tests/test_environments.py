"""TRL 1.16's environment_factory (environments.py): one environment per rollout, reset's observation in the prompt,
its methods the rollout's tools, get_reward as an extra reward beside reward_funcs, a dict of environments picked by
the `environment` column, dataset-less training, and a hostile environment contained and counted.

The model's turns are scripted as in test_tools.py (`Script` replaces rollout.generate inside tools.py); the rest
(rendering, parsing, the calls, masks, rewards, the training step) runs for real."""

import itertools
import json
import math
import shutil
import time
import typing

import pytest
from datasets import Dataset
from test_tools import EOS, SUFFIX, Script, call_text, ids_of

import reasonrl.tools as tools_module
from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.environments import Environments, environment_reward, with_observation
from reasonrl.errors import ConfigError, RolloutError
from reasonrl.tiny import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(tools=True)


class Counter:
    """Counts the increments of its rollout; even-numbered instances get the observation ' go'."""

    made = itertools.count()
    resets: typing.ClassVar[list] = []

    def __init__(self):
        self.number = next(Counter.made)
        self.total = 0

    def reset(self, **kwargs):
        Counter.resets.append((self.number, kwargs))
        self.total = 0
        return " go" if self.number % 2 == 0 else None

    def increment(self, step: int) -> int:
        """Add to the counter.

        Args:
            step: how much to add
        """
        self.total += step
        return self.total

    def get_reward(self) -> float:
        return float(self.total)

    def _private(self):
        return "not a tool"


def call_when_told(j, user):
    """Sample j of a prompt 'a+b[ go]': with ' go', call increment(a+b); else answer 0."""
    if user.endswith(" go"):
        a, b = user.removesuffix(" go").split("+")
        return call_text("increment", step=int(a) + int(b)) + EOS
    return "0" + EOS


ROWS = [{"prompt": [{"role": "user", "content": f"{a}+{b}"}], "answer": str(a + b)} for a, b in ((2, 3), (4, 4))]


def _config(out, **settings):
    config = {"output_dir": str(out), "per_device_train_batch_size": 4, "num_generations": 2,
              "max_completion_length": 120, "max_steps": 1, "learning_rate": 1e-2, "beta": 0.0,
              "gradient_checkpointing": False, "logging_steps": 1000, "save_strategy": "no", "seed": 3,
              "loss_type": "grpo", "report_to": "none", "adapt_cpu_threads": False, "tool_timeout": 1.0}
    config.update(settings)
    return GRPOConfig(**config)


def _model(tok):
    return build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0)


def _metrics(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_one_environment_per_rollout_its_tools_observation_masks_and_reward(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(tools_module, "generate", Script(tok, call_when_told))
    Counter.made, Counter.resets = itertools.count(), []
    seen = {}

    def spy(completions, environments, prompts, **kwargs):
        seen.update(environments=environments, prompts=prompts)
        return [0.0] * len(completions)

    trainer = GRPOTrainer(_model(tok), [spy], args=_config(tmp_path / "run", reward_weights=[0.5]),
                          train_dataset=Dataset.from_list(ROWS), processing_class=tok, environment_factory=Counter)
    # TRL's: get_reward appended after reward_funcs, named after the class, weight 1; the probe seeds the pool
    assert trainer.reward_names == ["spy", "Counter"] and trainer.reward_weights.tolist() == [0.5, 1.0]
    assert [t.__name__ for t in trainer.environments.tools[None]] == ["increment"]  # not reset/get_reward/_private
    assert len(trainer.environments.pools[None]) == 1
    (tmp_path / "run").mkdir()
    rows, rollout = trainer._rollout()
    # 2 prompts x 2 rollouts, each its own environment (instances 0..3): 0 and 2 get ' go' and call the tool
    assert [number for number, _ in Counter.resets] == [0, 1, 2, 3]
    assert Counter.resets[0][1] == dict(ROWS[0])  # reset(**row): the example's columns
    assert [p[-1]["content"] for p in rollout.prompts] == ["2+3 go", "2+3", "4+4 go", "4+4"]
    assert ROWS[0]["prompt"][-1]["content"] == "2+3"  # the dataset's row is left as it was
    first, suffix_5, suffix_8 = call_text("increment", step=5) + EOS, SUFFIX.format("5"), SUFFIX.format("8")
    n1, n8 = len(ids_of(tok, call_text("increment", step=8) + EOS)), len(ids_of(tok, suffix_8))
    assert rollout.tool_mask[0, :rollout.completion_mask[0].sum()].tolist() == (
        [1] * len(ids_of(tok, first)) + [0] * len(ids_of(tok, suffix_5)) + [1] * len(ids_of(tok, "5" + EOS)))
    assert rollout.tool_mask[2, :rollout.completion_mask[2].sum()].tolist() == [1] * n1 + [0] * n8 + [1] * 2
    assert rollout.tool_mask[1].sum() == rollout.completion_mask[1].sum() == 2  # "0<eos>": no call
    scores, rewards = trainer._score(rows, rollout)
    assert seen["environments"] == trainer.environments.pools[None][:4]  # the instances themselves, in order
    assert [p[-1]["content"] for p in seen["prompts"]] == ["2+3 go", "2+3", "4+4 go", "4+4"]
    assert scores.rewards_per_func[:, 1].tolist() == [5.0, 0.0, 8.0, 0.0]  # each rollout's own counter
    assert rewards.tolist() == [5.0, 0.0, 8.0, 0.0]  # 0.5 * 0 + 1 * get_reward
    batch = trainer._advantages(rollout, rewards, scores.rewards_per_func)
    metrics = trainer._round_metrics(rows, rollout, scores, rewards, batch)
    assert metrics["tools/call_frequency"] == 0.5 and metrics["tools/failure_frequency"] == 0.0
    assert metrics["environments/reset_failures"] == 0 and metrics["environments/reward_failures"] == 0.0
    # the next round reuses the four instances (reset again), making none
    trainer._rollout()
    assert [number for number, _ in Counter.resets[4:]] == [0, 1, 2, 3] and len(trainer.environments.pools[None]) == 4
    # and a whole run with evaluation on the same rollouts
    shutil.rmtree(tmp_path / "run")
    trainer.train()
    result = trainer.evaluate(Dataset.from_list(ROWS))
    assert result["eval_rewards/Counter/mean"] == pytest.approx((5 + 0 + 8 + 0) / 4)
    assert result["eval_tools/call_frequency"] == 0.5


class Echo:
    def reset(self, **kwargs):
        return None

    def shout(self, text: str) -> str:
        """Shout.

        Args:
            text: what to shout
        """
        return text.upper()


def test_a_dict_of_environments_routes_each_example_and_exposes_only_its_tools(tok, tmp_path, monkeypatch):
    def first(j, user):  # each row calls both tools: only its own environment's runs
        return call_text("increment", step=2) + call_text("shout", text="hi") + EOS

    monkeypatch.setattr(tools_module, "generate", Script(tok, first, after=lambda result, turn: "ok" + EOS))
    rows = [{"prompt": [{"role": "user", "content": "x"}], "environment": name} for name in ("count", "echo")]
    seen = []

    def reward(completions, environments, **kwargs):
        seen.append([type(e).__name__ for e in environments])
        return [0.0] * len(completions)

    trainer = GRPOTrainer(_model(tok), [reward], args=_config(tmp_path / "run", max_tool_calling_iterations=1,
                                                       max_completion_length=400),
                          train_dataset=Dataset.from_list(rows), processing_class=tok,
                          environment_factory={"count": Counter, "echo": Echo})
    assert trainer.reward_names == ["reward", "Counter"]
    assert [t.__name__ for t in trainer.environments.tools["echo"]] == ["shout"]
    (tmp_path / "run").mkdir()
    batch_rows, rollout = trainer._rollout()
    tool_messages = [[m["content"] for m in messages if m["role"] == "tool"] for messages in rollout.messages]
    assert tool_messages[:2] == [["2", "{'error': 'Tool shout not found.'}"]] * 2  # count rows
    assert tool_messages[2:] == [["{'error': 'Tool increment not found.'}", "HI"]] * 2  # echo rows
    scores, _ = trainer._score(batch_rows, rollout)
    assert seen == [["Counter", "Counter", "Echo", "Echo"]]
    assert scores.rewards_per_func[:, 1].tolist()[:2] == [2.0, 2.0] and math.isnan(scores.rewards_per_func[2, 1])
    # Echo's schema only in echo prompts: the char template lists tools by name in the system turn
    echo_prompt = tok.decode(rollout.prompt_ids[2][rollout.prompt_mask[2].bool()].tolist())
    assert "shout" in echo_prompt and "increment" not in echo_prompt
    bad = Dataset.from_list([{"prompt": [{"role": "user", "content": "x"}], "environment": "nope"}] * 2)
    trainer = GRPOTrainer(_model(tok), [reward], args=_config(tmp_path / "bad"), train_dataset=bad,
                          processing_class=tok, environment_factory={"count": Counter})
    with pytest.raises(RolloutError, match="environment='nope'.*not among the environments"):
        trainer.train()


class Guess:
    """Owns the data: reset() makes the prompt."""

    def reset(self, **kwargs):
        self.kwargs = kwargs
        return "Guess the word."

    def get_reward(self) -> float:
        return 1.0


def test_dataset_less_training_with_max_steps_and_the_errors_around_it(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(tools_module, "generate", Script(tok, lambda j, user: ("yes" if j else user) + EOS))
    trainer = GRPOTrainer(_model(tok), None, args=_config(tmp_path / "run", max_steps=2), processing_class=tok,
                          environment_factory=Guess)
    assert trainer.reward_names == ["Guess"] and len(trainer.train_dataset) == 2  # one round's prompts
    assert trainer.train_dataset[0]["prompt"] == [{"role": "user", "content": ""}]
    (tmp_path / "run").mkdir()
    _, rollout = trainer._rollout()
    assert [p[-1]["content"] for p in rollout.prompts] == ["Guess the word."] * 4
    assert trainer.environments.pools[None][0].kwargs == {"prompt": [{"role": "user", "content": ""}]}
    shutil.rmtree(tmp_path / "run")
    trainer.train()
    assert [row["step"] for row in _metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    with pytest.raises(ConfigError, match="needs max_steps"):
        GRPOTrainer(_model(tok), None, args=_config(tmp_path / "a", max_steps=-1), processing_class=tok,
                    environment_factory=Guess)
    with pytest.raises(RolloutError, match="requires a `train_dataset`"):
        GRPOTrainer(_model(tok), None, args=_config(tmp_path / "b"), processing_class=tok,
                    environment_factory={"a": Guess, "b": Guess})
    with pytest.raises(ConfigError, match="No reward source provided"):
        GRPOTrainer(_model(tok), None, args=_config(tmp_path / "c"), processing_class=tok, environment_factory=Echo,
                    train_dataset=Dataset.from_list(ROWS))

    class NoReset:
        pass

    with pytest.raises(RolloutError, match="must define a callable `reset`"):
        GRPOTrainer(_model(tok), None, args=_config(tmp_path / "d"), processing_class=tok,
                    environment_factory=NoReset)


class Hostile:
    """Instance k of every 4: reset raises, hangs, returns junk, or works; its tool raises, hangs or returns junk;
    its get_reward raises or returns junk."""

    made = itertools.count()

    def __init__(self):
        self.number = next(Hostile.made) % 4

    def reset(self, **kwargs):
        if self.number == 0:
            raise RuntimeError("reset broke")
        if self.number == 1:
            time.sleep(30)
        if self.number == 2:
            return 42
        return "fine"

    def poke(self, x: int) -> str:
        """Poke.

        Args:
            x: anything
        """
        if self.number == 0:
            raise RuntimeError("poke broke")
        if self.number == 1:
            time.sleep(30)
        if self.number == 2:
            return Junk()
        return "ok"

    def get_reward(self):
        if self.number == 0:
            raise RuntimeError("no reward")
        return "junk" if self.number == 1 else 1.0


class Junk:
    def __str__(self):
        raise ValueError("no text")


def test_a_hostile_environment_is_contained_counted_and_training_goes_on(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(tools_module, "generate",
                        Script(tok, lambda j, user: call_text("poke", x=1) + EOS, after=lambda r, t: "done" + EOS))
    Hostile.made = itertools.count()
    rows = [{"prompt": [{"role": "user", "content": "x"}]}] * 2
    trainer = GRPOTrainer(_model(tok), [lambda completions, **kw: [0.0] * len(completions)],
                          args=_config(tmp_path / "run", tool_timeout=0.3, max_tool_calling_iterations=1),
                          train_dataset=Dataset.from_list(rows), processing_class=tok, environment_factory=Hostile)
    start = time.perf_counter()
    trainer.train()
    assert time.perf_counter() - start < 25
    row = _metrics(tmp_path / "run" / "metrics.jsonl")[0]
    # the probe was instance 0, so the round's four are numbers 0, 1, 2, 3: three resets fail (raise, hang, junk)
    assert row["environments/reset_failures"] == 3
    assert row["tools/call_frequency"] == 1.0 and row["tools/failure_frequency"] == 0.75 and row["tools/timeouts"] == 1
    assert row["environments/reward_failures"] == 0.5  # raised, junk: None for those rollouts
    assert row["rewards/Hostile/errors"] == 0 and math.isfinite(row["loss"])


def test_pieces(tok):
    assert with_observation([{"role": "user", "content": "a"}], " b") == [{"role": "user", "content": "a b"}]
    assert with_observation("plain", "!") == "plain!"
    assert with_observation([{"role": "user", "content": [{"type": "text", "text": "a"}]}], "b") == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    reward = environment_reward(Counter)
    counter = Counter()
    counter.total = 7
    assert reward.__name__ == "Counter" and reward(environments=[counter, Echo()]) == [7.0, None]
    with pytest.raises(RolloutError, match="environment_factory 3 is a int"):
        Environments.build(3, [], None, None)
    with pytest.raises(RolloutError, match="environment_factory 'no_such_module_xyz:Env' could not be imported"):
        Environments.build("no_such_module_xyz:Env", [], None, None)


def test_environment_factory_from_the_cli_and_yaml(tok, tmp_path, capsys):
    from cli_helpers import assert_one_line_error, run_main

    spec = tmp_path / "my_env.py"
    spec.write_text("class Guess:\n    def reset(self, **kwargs):\n        return 'Say yes.'\n\n"
                    "    def get_reward(self):\n        return 1.0\n")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path / 'y'}\nenvironment_factory:\n  guess: {spec}:Guess\n")
    assert GRPOConfig.from_yaml(yaml_file).environment_factory == {"guess": f"{spec}:Guess"}
    model_dir = tmp_path / "model"
    _model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    base = ["train", f"model_name_or_path={model_dir}", "num_generations=2", "per_device_train_batch_size=2",
            "max_steps=1", "max_completion_length=8", "report_to=none", "save_strategy=no"]
    code, err = run_main(capsys, [*base, f"output_dir={tmp_path / 'bad'}", "environment_factory=no_such_module_xyz:E"])
    assert_one_line_error(code, err, "train", ["environment_factory 'no_such_module_xyz:E' could not be imported"])
    code, err = run_main(capsys, [*base, f"output_dir={tmp_path / 'nosteps'}", f"environment_factory={spec}:Guess",
                                  "max_steps=-1"])
    assert_one_line_error(code, err, "train", ["needs max_steps"])
    # no dataset, no reward_funcs: the environment owns both
    code, err = run_main(capsys, [*base, f"output_dir={tmp_path / 'good'}", f"environment_factory={spec}:Guess"])
    assert code == 0, err
    row = _metrics(tmp_path / "good" / "metrics.jsonl")[0]
    assert row["step"] == 1 and row["rewards/Guess/mean"] == 1.0 and row["environments/reset_failures"] == 0
