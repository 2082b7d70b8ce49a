"""TRL 1.16's rollout_func (rollout_hooks.py): its call, the keys it must return, its extra fields passed to the
rewards, env_mask as the loss's tool mask, a rollout_func built on reasonrl's sampler training exactly as none, and
the one-line errors (Python, YAML/CLI)."""

import json
import math

import pytest
import torch
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.core import StepNormaliser
from reasonrl.errors import ReasonRLError, RolloutError
from reasonrl.micro_step import logps_in_chunks
from reasonrl.rollout_hooks import generate_completions, load_rollout_func, rollout_from_func
from reasonrl.tiny import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_rollout_func_output_becomes_a_rollout_with_hand_checked_tensors(tok):
    pad, eos = tok.pad_token_id, tok.eos_token_id
    seen = []

    def rollout_func(prompts, trainer):
        seen.append((list(prompts), trainer))
        return {"prompt_ids": [[5, 6, 7], [5, 6, 7], [8]], "completion_ids": [[10, eos], [11, 12, 13], [14]],
                "logprobs": [[-0.5, -0.25], [-1.0, -1.0, -2.0], [-3.0]], "env_mask": [[1, 1], [1, 0, 1], [1]],
                "score": [1.0, 2.0, 3.0], "tag": "same"}

    rollout = rollout_from_func(rollout_func, "the trainer", ["a", "a", "b"], tok, torch.device("cpu"))
    assert seen == [(["a", "a", "b"], "the trainer")]
    assert rollout.prompt_ids.tolist() == [[5, 6, 7], [5, 6, 7], [pad, pad, 8]]  # left-padded
    assert rollout.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert rollout.completion_ids.tolist() == [[10, eos, pad], [11, 12, 13], [14, pad, pad]]
    assert rollout.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert rollout.tool_mask.tolist() == [[1, 1, 0], [1, 0, 1], [1, 0, 0]]  # env_mask, 0 on padding
    assert rollout.sampling_logps.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -1.0, -2.0], [-3.0, 0.0, 0.0]]
    assert rollout.is_truncated.tolist() == [False, True, True]  # last token EOS (or padding): not truncated
    assert rollout.reward_columns == {"score": [1.0, 2.0, 3.0], "tag": ["same"] * 3}  # env_mask is not a column
    # tensors are taken too; without env_mask there is no tool mask
    out = rollout_from_func(lambda p, t: {"prompt_ids": torch.tensor([[1, 2]]), "completion_ids": torch.tensor([[3]]),
                                          "logprobs": torch.tensor([[-1.0]])}, None, ["x"], tok, torch.device("cpu"))
    assert out.tool_mask is None and out.reward_columns is None and out.completion_ids.tolist() == [[3]]


@pytest.mark.parametrize(("output", "message"), [
    ({"prompt_ids": [[1]], "completion_ids": [[2]]}, r"rollout_func must return keys \['logprobs'\]"),
    ({"completion_ids": [[2]]}, r"rollout_func must return keys \['logprobs', 'prompt_ids'\]"),
    ([1, 2], "returned a list; it must return a dict"),
    ({"prompt_ids": [[1], [1]], "completion_ids": [[2]], "logprobs": [[0.0]]}, "returned 2 'prompt_ids' rows for 1"),
    ({"prompt_ids": [[1]], "completion_ids": [[2, 3]], "logprobs": [[0.0]]}, r"logprobs\[0\] has 1 values for 2"),
    ({"prompt_ids": [[1]], "completion_ids": [[]], "logprobs": [[]]}, r"completion_ids\[0\] is empty"),
    ({"prompt_ids": [[1]], "completion_ids": [["a"]], "logprobs": [[0.0]]}, "'completion_ids' must be a list"),
    ({"prompt_ids": [[1]], "completion_ids": [[2]], "logprobs": [[0.0]], "env_mask": [[2]]}, "env_mask"),
    ({"prompt_ids": [[1]], "completion_ids": [[2]], "logprobs": [[0.0]], "x": [1, 2]}, "'x' has 2 values for 1"),
])
def test_a_rollout_func_breaking_its_contract_is_a_one_line_error(tok, output, message):
    with pytest.raises(RolloutError, match=message) as error:
        rollout_from_func(lambda prompts, trainer: output, None, ["p"], tok, torch.device("cpu"))
    assert isinstance(error.value, ValueError) and isinstance(error.value, ReasonRLError)  # TRL raises ValueError
    assert "\n" not in str(error.value)


def _config(out, **settings):
    config = {"output_dir": str(out), "per_device_train_batch_size": 4, "num_generations": 2,
              "max_completion_length": 12, "max_steps": 2, "learning_rate": 1e-2, "beta": 0.0,
              "gradient_checkpointing": False, "logging_steps": 1000, "save_strategy": "no", "seed": 3,
              "report_to": "none", "adapt_cpu_threads": False}
    config.update(settings)
    return GRPOConfig(**config)


ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in ((2, 3), (4, 4), (1, 6), (5, 2))]


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def _metrics(path):
    with open(path) as handle:
        rows = [json.loads(line) for line in handle]
    timing = {"step_time", "rollout_time", "tokens_per_second", "cpu_threads"}
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def test_a_rollout_func_sampling_with_reasonrls_sampler_trains_exactly_as_none(tok, tmp_path):
    calls = []

    def rollout_func(prompts, trainer):
        calls.append(list(prompts))
        return generate_completions(trainer, prompts)  # the lean decoder where it fits, the round's seeds

    runs = {}
    for name, func in (("plain", None), ("hooked", rollout_func)):
        model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0)
        trainer = GRPOTrainer(model, [length_reward], args=_config(tmp_path / name),
                              train_dataset=Dataset.from_list(ROWS), processing_class=tok, rollout_func=func)
        trainer.train()
        runs[name] = (trainer.model.state_dict(), _metrics(tmp_path / name / "metrics.jsonl"))
    # TRL's call: the round's prompts (2 of them, per_device_train_batch_size 4 / G 2), each G times in a row
    assert len(calls) == 2 and all(len(c) == 4 and c[0] == c[1] and c[2] == c[3] and c[1] != c[2] for c in calls)
    assert runs["plain"][1] == runs["hooked"][1]
    assert all(torch.equal(runs["plain"][0][k], v) for k, v in runs["hooked"][0].items())


def test_env_mask_is_out_of_the_loss_and_extra_fields_reach_the_rewards(tok, tmp_path):
    """Each completion: 'ab' (model), '[env]' (environment, env_mask 0), 'c<eos>' (model). The loss of the round's
    micro-batch equals a hand computation over the model's tokens only; the rewards get the extra fields."""
    eos = tok.eos_token_id
    model_a, env, model_b = ids_of(tok, "ab"), ids_of(tok, "[env]"), ids_of(tok, "c") + [eos]

    def rollout_func(prompts, trainer):
        prompt_ids = [ids_of(tok, p) for p in prompts]
        completions = [model_a + env + model_b if i % 2 == 0 else model_a + [eos] for i in range(len(prompts))]
        masks = [[1] * len(model_a) + [0] * len(env) + [1] * len(model_b) if i % 2 == 0 else [1] * 3
                 for i in range(len(prompts))]
        return {"prompt_ids": prompt_ids, "completion_ids": completions,
                "logprobs": [[0.0] * len(c) for c in completions], "env_mask": masks,
                "bonus": [float(i) for i in range(len(prompts))], "scale": 10.0}

    seen = {}

    def reward(completions, bonus, scale, answer, **kwargs):
        seen.update(bonus=bonus, scale=scale, answer=answer, completions=completions)
        return [b * s for b, s in zip(bonus, scale)]

    trainer = GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0), [reward],
                          args=_config(tmp_path / "run", loss_type="grpo"), train_dataset=Dataset.from_list(ROWS),
                          processing_class=tok, rollout_func=rollout_func)
    (tmp_path / "run").mkdir()
    rows, rollout = trainer._rollout()
    scores, rewards = trainer._score(rows, rollout)
    assert seen["bonus"] == [0.0, 1.0, 2.0, 3.0] and seen["scale"] == [10.0] * 4
    assert seen["answer"] == [r["answer"] for r in rows for _ in range(2)]  # dataset columns still repeated
    assert rewards.tolist() == [0.0, 10.0, 20.0, 30.0]
    assert seen["completions"][0] == tok.decode(model_a + env + model_b, skip_special_tokens=True)
    batch = trainer._advantages(rollout, rewards, scores.rewards_per_func)
    n = len(model_a) + len(env) + len(model_b)
    assert batch.loss_mask[0].tolist() == [1] * len(model_a) + [0] * len(env) + [1] * len(model_b)
    assert batch.loss_mask[1].tolist() == [1] * 3 + [0] * (n - 3)
    metrics = trainer._round_metrics(rows, rollout, scores, rewards, batch)
    assert metrics["completions/mean_length"] == (len(model_a) + len(model_b) + 3) / 2  # env tokens not counted
    with torch.no_grad():
        current = logps_in_chunks(trainer.model, rollout, trainer.args, trainer._autocast)
    torch.manual_seed(0)
    batch.old_logps = current + 0.3 * torch.randn_like(current) * rollout.completion_mask
    rows_index = torch.arange(4)
    trainer.model.train()
    tokens = batch.loss_mask.sum().double().reshape(1)
    loss, step_metrics = trainer.micro_step(batch, rows_index, StepNormaliser.of_window("grpo", tokens, tokens, 1), 0)
    eps, expected, entropies = trainer.args.epsilon, 0.0, []
    with torch.no_grad():
        for i in range(4):
            p = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
            length = int(rollout.completion_mask[i].sum())
            c = rollout.completion_ids[i, :length].tolist()
            logits = trainer.model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            keep = batch.loss_mask[i, :length].bool()
            ratio = torch.exp(logp - batch.old_logps[i, :length])[keep]
            a = batch.advantages[i]
            expected += (-torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)).mean().item() / 4
            probs = torch.softmax(logits, -1)
            entropies.append(-(probs * torch.log_softmax(logits, -1)).sum(-1)[keep])
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the entropy metric is over the model's tokens only (as TRL), not the environment's
    assert step_metrics["entropy"] == pytest.approx(torch.cat(entropies).mean().item(), rel=1e-4)


def test_rollout_func_from_yaml_and_cli_names_an_importable_function(tok, tmp_path, capsys):
    from cli_helpers import assert_one_line_error, run_main

    spec = tmp_path / "my_rollout.py"
    spec.write_text("from reasonrl.rollout_hooks import generate_completions\n\n"
                    "def sample(prompts, trainer):\n    return generate_completions(trainer, prompts)\n\n"
                    "NOT_CALLABLE = 3\n")
    assert load_rollout_func(f"{spec}:sample").__name__ == "sample"
    with pytest.raises(RolloutError, match="rollout_func .* is a int, not a function"):
        load_rollout_func(f"{spec}:NOT_CALLABLE")
    with pytest.raises(RolloutError, match="rollout_func 'no_such_module_xyz:f' could not be imported"):
        load_rollout_func("no_such_module_xyz:f")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path / 'y'}\nrollout_func: {spec}:sample\n")
    assert GRPOConfig.from_yaml(yaml_file).rollout_func == f"{spec}:sample"

    model_dir = tmp_path / "model"
    build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    base = ["train", f"model_name_or_path={model_dir}", f"dataset_name={data}", "reward_funcs=[length]",
            "num_generations=2", "per_device_train_batch_size=2", "max_steps=1", "max_completion_length=8",
            "report_to=none", "save_strategy=no"]
    code, err = run_main(capsys, [*base, f"output_dir={tmp_path / 'bad'}", "rollout_func=no_such_module_xyz:f"])
    assert_one_line_error(code, err, "train", ["rollout_func 'no_such_module_xyz:f' could not be imported"])
    code, err = run_main(capsys, [*base, f"output_dir={tmp_path / 'good'}", f"rollout_func={spec}:sample"])
    assert code == 0, err
    row = _metrics(tmp_path / "good" / "metrics.jsonl")[0]
    assert row["step"] == 1 and math.isfinite(row["loss"])


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def test_with_tools_the_tool_loop_runs_on_the_rollout_funcs_first_turns(tmp_path, monkeypatch):
    """TRL's order: the rollout_func writes first turns; a turn that calls a tool gets the result appended and the
    model (here a scripted sampler) writes the next turn. Hand-checked ids, tool mask (the rollout_func's env_mask
    kept for its first turn), sampling log-probs, messages, tool counts, and what the reward gets."""
    import reasonrl.tools as tools_module
    from reasonrl.tools import tool_suffix_ids

    tok = build_char_tokenizer(tools=True)
    eos = tok.eos_token_id
    call = ids_of(tok, '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>') + [eos]
    env, answer, direct = ids_of(tok, "[e]"), ids_of(tok, "5") + [eos], ids_of(tok, "7") + [eos]
    first = [call, direct, env + call, direct]  # rows 0, 2 call the tool; row 2 starts with 3 environment tokens
    first_mask = [[1] * len(call), [1] * len(direct), [0] * len(env) + [1] * len(call), [1] * len(direct)]

    def rollout_func(prompts, trainer):
        ids = trainer.prompt_tokenizer(prompts, device="cpu")
        prompt_ids = [row[m.bool()].tolist() for row, m in zip(*ids)]
        return {"prompt_ids": prompt_ids, "completion_ids": first, "env_mask": first_mask,
                "logprobs": [[-0.5] * len(c) for c in first]}

    contexts = []

    def scripted(model, prompt_ids, prompt_mask, *, num_generations, max_new_tokens, eos_token_id, pad_token_id,
                 seeds=None, generator=None, **sampling):
        contexts.extend(row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask))
        n = prompt_ids.size(0)
        return (torch.tensor([answer] * n), torch.ones(n, len(answer), dtype=torch.long),
                torch.full((n, len(answer)), -0.25), torch.zeros(n, dtype=torch.bool))

    monkeypatch.setattr(tools_module, "generate", scripted)
    seen = {}

    def reward(completions, **kwargs):
        seen["completions"] = completions
        return [float(c[-1]["content"] == "5") for c in completions]

    rows = [{"prompt": [{"role": "user", "content": "2+3"}]}, {"prompt": [{"role": "user", "content": "1+4"}]}]
    trainer = GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0), [reward],
                          args=_config(tmp_path / "run", max_completion_length=200),
                          train_dataset=Dataset.from_list(rows), processing_class=tok, rollout_func=rollout_func,
                          tools=[add])
    (tmp_path / "run").mkdir()
    rows_out, rollout = trainer._rollout()
    suffix = tool_suffix_ids(tok, [{"role": "tool", "name": "add", "content": "5"}])
    expected = [call + suffix + answer, direct, env + call + suffix + answer, direct]
    expected_mask = [[1] * len(call) + [0] * len(suffix) + [1] * len(answer), [1] * len(direct),
                     [0] * len(env) + [1] * len(call) + [0] * len(suffix) + [1] * len(answer), [1] * len(direct)]
    expected_logps = [[-0.5] * len(call) + [0.0] * len(suffix) + [-0.25] * len(answer), [-0.5] * len(direct),
                      [-0.5] * (len(env) + len(call)) + [0.0] * len(suffix) + [-0.25] * len(answer),
                      [-0.5] * len(direct)]
    for i in range(4):
        n = len(expected[i])
        assert rollout.completion_ids[i, :n].tolist() == expected[i]
        assert rollout.completion_mask[i].sum() == n
        assert rollout.tool_mask[i, :n].tolist() == expected_mask[i] and rollout.tool_mask[i, n:].sum() == 0
        assert rollout.sampling_logps[i, :n].tolist() == expected_logps[i]
    assert len(contexts) == 2  # only the two calling rows got a second turn, from prompt + call + tool result
    prompt0 = rollout.prompt_ids[0][rollout.prompt_mask[0].bool()].tolist()
    assert contexts[0] == prompt0 + call + suffix
    call_message = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}
    assert rollout.messages[0] == [call_message, {"role": "tool", "name": "add", "content": "5"},
                                   {"role": "assistant", "content": "5"}]
    assert rollout.messages[1] == [{"role": "assistant", "content": "7"}]
    assert rollout.tool_counts.tolist() == [2, 0, 0, 6, 4]  # calls, failures, timeouts, turns, rows
    _, rewards = trainer._score(rows_out, rollout)
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert seen["completions"][2] == rollout.messages[2]
    assert not rollout.is_truncated.any()
    trainer.train()  # the same rounds through the loss and the optimizer
    logged = _metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["tools/call_frequency"] for row in logged] == [0.5, 0.5]
    assert all(math.isfinite(row["loss"]) for row in logged)


def test_a_rollout_func_with_an_environment_factory_is_refused(tmp_path):
    tok = build_char_tokenizer(tools=True)

    class Env:
        def reset(self, **kwargs):
            return None

        def poke(self, x: int) -> int:
            """Poke.

            Args:
                x: anything
            """
            return x

    with pytest.raises(RolloutError, match="rollout_func with environment_factory is not supported"):
        GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0), [length_reward],
                    args=_config(tmp_path / "run", max_steps=1), processing_class=tok,
                    rollout_func=lambda prompts, trainer: {}, environment_factory=Env)
