"""Rewards as TRL 1.16 takes them besides plain functions: reward models (a sequence-classification model, by
object or by folder), `async def` rewards run concurrently, and the log_metric / log_extra arguments.

Parity: TRL's own `GRPOTrainer._calculate_rewards` scores the same completions with the same reward model (plain
and conversational prompts) and collects the same log_metric / log_extra values.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import pytest
import torch
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.async_rewards import is_async_callable
from reasonrl.errors import RewardError, RewardSpecError
from reasonrl.reward_models import RewardModel, looks_like_reward_model
from reasonrl.scoring import score_round
from reasonrl.tiny import build_tiny_model

PROMPTS = ["2+2=", "2+2=", "say hi:", "say hi:"]
COMPLETIONS = ["4", "five", "hi", "hello there"]
CHAT_PROMPTS = [[{"role": "user", "content": p}] for p in PROMPTS]
CHAT_COMPLETIONS = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]


def build_reward_model(tokenizer, seed: int = 1):
    """A tiny random LlamaForSequenceClassification (num_labels=1) on the character tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


def one_by_one(model, tokenizer, texts):
    """Each text's first logit from its own unpadded forward: what any padding must not change."""
    with torch.no_grad():
        return [model(input_ids=torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]])).logits[0, 0].item()
                for t in texts]


def score(funcs, prompts=PROMPTS, completions=COMPLETIONS, timeout=None, columns=None):
    names = [getattr(f, "__name__", type(f).__name__) for f in funcs]
    return score_round(funcs, names, prompts, completions, [[1]] * len(completions), columns or {}, timeout)


# ------------------------------------------------------------------------------------------------ reward models


def test_reward_model_scores_prompt_plus_completion_at_its_last_token(char_tokenizer):
    model = build_reward_model(char_tokenizer)
    reward = RewardModel(model, char_tokenizer)
    values = reward(prompts=PROMPTS, completions=COMPLETIONS)
    expected = one_by_one(model, char_tokenizer, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])
    assert values == pytest.approx(expected, abs=1e-5)
    assert len({round(v, 6) for v in values}) == 4  # a real score per text, not the padding's
    assert model.config.pad_token_id == char_tokenizer.pad_token_id  # set so that the model finds the last token


def test_reward_model_renders_conversations_with_the_chat_template_and_its_kwargs(char_tokenizer):
    model = build_reward_model(char_tokenizer)
    values = RewardModel(model, char_tokenizer)(prompts=CHAT_PROMPTS, completions=CHAT_COMPLETIONS)
    texts = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n{c}<|im_end|>\n"
             for p, c in zip(PROMPTS, COMPLETIONS)]
    assert values == pytest.approx(one_by_one(model, char_tokenizer, texts), abs=1e-5)
    # chat_template_kwargs reach the template (one that reads a variable)
    from reasonrl.tiny import CHAT_TEMPLATE, build_char_tokenizer

    flagged = build_char_tokenizer()
    flagged.chat_template = CHAT_TEMPLATE + "{% if flag %}!{% endif %}"
    assert RewardModel(model, flagged, chat_template_kwargs={"flag": True}).texts(
        CHAT_PROMPTS[:1], CHAT_COMPLETIONS[:1]) == [texts[0] + "!"]
    assert RewardModel(model, flagged).texts(CHAT_PROMPTS[:1], CHAT_COMPLETIONS[:1]) == texts[:1]


def test_reward_model_matches_trl(char_tokenizer, tmp_path):
    """TRL's _calculate_rewards and reasonrl's RewardModel on the same rows: plain and conversational."""
    import trl

    model = build_reward_model(char_tokenizer)
    policy = build_tiny_model(char_tokenizer, seed=0)
    trainer = trl.GRPOTrainer(
        model=policy, reward_funcs=[model], reward_processing_classes=[char_tokenizer],
        args=trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], num_generations=2,
                            per_device_train_batch_size=4, max_completion_length=4),
        train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}), processing_class=char_tokenizer)
    ours = RewardModel(model, char_tokenizer)
    for prompts, completions in ((PROMPTS, COMPLETIONS), (CHAT_PROMPTS, CHAT_COMPLETIONS)):
        inputs = [{"prompt": p} for p in prompts]
        theirs = trainer._calculate_rewards(inputs, prompts, completions, [[1]] * 4)[:, 0].tolist()
        assert ours(prompts=prompts, completions=completions) == pytest.approx(theirs, abs=1e-6)


def test_a_reward_model_folder_or_hub_id_is_told_from_a_function_spec(tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert looks_like_reward_model(str(folder))
    assert looks_like_reward_model("OpenAssistant/reward-model-deberta-v3-large")
    for spec in ("length", "pkg.module.func", "pkg.module:func", "rewards.py:score", "dir/rewards.py:score",
                 str(tmp_path)):  # a folder without config.json is not a model
        assert not looks_like_reward_model(spec), spec


def test_a_causal_lm_or_a_missing_tokenizer_is_one_line(char_tokenizer):
    with pytest.raises(RewardSpecError, match="is a Qwen2ForCausalLM; a reward model must give one score per text"):
        RewardModel(build_tiny_model(char_tokenizer), char_tokenizer)
    with pytest.raises(RewardSpecError, match="without a tokenizer; pass reward_processing_classes"):
        RewardModel(build_reward_model(char_tokenizer), None)


def _trainer(tmp_path, tokenizer, reward_funcs, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=4, max_steps=1, learning_rate=1e-3, gradient_checkpointing=False,
                    logging_steps=1, save_steps=100, optim="adamw_torch", report_to="none")
    settings.update(overrides)
    dataset = Dataset.from_list([{"prompt": f"p{i}", "answer": str(i)} for i in range(6)])
    return GRPOTrainer(build_tiny_model(tokenizer, seed=0), reward_funcs, args=GRPOConfig(**settings),
                       train_dataset=dataset, processing_class=tokenizer, **overrides.pop("trainer_kwargs", {}))


def test_trainer_scores_a_round_with_a_reward_model_loaded_from_its_folder(tmp_path, char_tokenizer):
    # by folder, as YAML and the CLI give it: the model and its tokenizer are loaded from it (num_labels=1)
    model = build_reward_model(char_tokenizer)
    folder = tmp_path / "tiny-rm"
    model.save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    trainer = _trainer(tmp_path, char_tokenizer, [str(folder), lambda completions, **kw: [1.0] * len(completions)])
    assert trainer.reward_names[0] == "tiny-rm"  # TRL's name: the last part of the model id
    rows, rollout = trainer._rollout()
    scores, rewards = trainer._score(rows, rollout)
    prompts = [row["prompt"] for row in rows for _ in range(2)]
    expected = one_by_one(model, char_tokenizer, [p + t for p, t in zip(prompts, rollout.texts)])
    assert scores.rewards_per_func[:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    assert rewards.tolist() == pytest.approx([e + 1.0 for e in expected], abs=1e-5)


def test_trainer_takes_a_model_object_with_reward_processing_classes(tmp_path, char_tokenizer):
    model = build_reward_model(char_tokenizer)
    trainer = GRPOTrainer(build_tiny_model(char_tokenizer), [model, "length"],
                          args=GRPOConfig(output_dir=str(tmp_path / "r"), per_device_train_batch_size=4,
                                          num_generations=2, max_completion_length=4, max_steps=1),
                          train_dataset=[{"prompt": "p"}], processing_class=char_tokenizer,
                          reward_processing_classes=[char_tokenizer, None])
    assert trainer.reward_names == ["LlamaForSequenceClassification", "length_reward"]
    # TRL's public attribute: aligned with reward_funcs, the reward model's tokenizer, None for the function
    assert trainer.reward_processing_classes == [char_tokenizer, None]
    assert trainer.reward_processing_classes[0] is char_tokenizer
    with pytest.raises(RewardSpecError, match=r"reward processing classes \(1\) must match the number of reward "
                                              r"functions \(2\)"):
        GRPOTrainer(build_tiny_model(char_tokenizer), [model, "length"],
                    args=GRPOConfig(output_dir=str(tmp_path / "s")), train_dataset=[{"prompt": "p"}],
                    processing_class=char_tokenizer, reward_processing_classes=[char_tokenizer])


# ------------------------------------------------------------------------------------------------ async rewards


def test_async_callables_are_recognised_in_every_form():
    import functools

    async def judge(completions, **kwargs):
        return [0.0] * len(completions)

    class Judge:
        async def __call__(self, completions, **kwargs):
            return [0.0] * len(completions)

    assert is_async_callable(judge) and is_async_callable(functools.partial(judge, x=1)) and is_async_callable(Judge())
    assert not is_async_callable(lambda completions, **kw: []) and not is_async_callable(len)


def test_async_rewards_run_concurrently_on_one_persistent_loop():
    # `waits` can only finish if `releases` runs while it waits: run one after the other, it would time out
    event_box, loops = {}, []

    async def waits(completions, **kwargs):
        loops.append(asyncio.get_running_loop())
        event = event_box.setdefault("event", asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout=5)
        return [1.0] * len(completions)

    async def releases(completions, **kwargs):
        event_box.setdefault("event", asyncio.Event()).set()
        return [float(len(c)) for c in completions]

    def plain(completions, **kwargs):
        return [0.5] * len(completions)

    scores = score([waits, plain, releases], timeout=10)
    assert scores.failures == []
    assert scores.rewards_per_func.tolist() == [[1.0, 0.5, 1.0], [1.0, 0.5, 4.0], [1.0, 0.5, 2.0], [1.0, 0.5, 11.0]]
    event_box.clear()
    score([waits, releases], timeout=10)
    assert loops[0] is loops[1] and loops[0].is_running()  # one loop for the run, as TRL's daemon loop


def test_an_async_reward_that_raises_or_hangs_fails_alone():
    cancelled = threading.Event()

    async def raises(completions, **kwargs):
        raise KeyError("answer")

    async def hangs(completions, **kwargs):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fine(completions, **kwargs):
        return [2.0] * len(completions)

    start = time.monotonic()
    scores = score([raises, hangs, fine], timeout=0.3)
    assert time.monotonic() - start < 30
    assert scores.errors == {"raises": 4, "hangs": 4, "fine": 0}
    assert [f.kind for f in scores.failures] == ["KeyError", "timeout"]
    assert "timed out after 0.3 s (reward_timeout)" in str(scores.failures[1])
    assert math.isnan(scores.rewards_per_func[0, 0]) and math.isnan(scores.rewards_per_func[0, 1])
    assert scores.rewards_per_func[:, 2].tolist() == [2.0] * 4
    assert cancelled.wait(5)  # the hanging coroutine was cancelled, not left running


def test_an_async_reward_that_blocks_its_loop_times_out_and_the_next_round_gets_a_new_loop():
    loops = []

    async def blocks(completions, **kwargs):
        loops.append(asyncio.get_running_loop())
        if len(loops) == 1:
            time.sleep(2.0)  # noqa: ASYNC251 - the mistake under test: it blocks the loop, so cannot be cancelled
        return [1.0] * len(completions)

    scores = score([blocks], timeout=0.2)
    assert scores.errors == {"blocks": 4}
    assert "it blocked the event loop" in str(scores.failures[0])
    scores = score([blocks], timeout=5)
    assert scores.failures == [] and scores.rewards_per_func[:, 0].tolist() == [1.0] * 4
    assert loops[1] is not loops[0]


def test_async_reward_trains_and_its_mean_is_logged(tmp_path, char_tokenizer):
    async def length_async(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    trainer = _trainer(tmp_path, char_tokenizer, [length_async])
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    samples = [json.loads(line) for line in open(tmp_path / "run" / "completions.jsonl")]
    assert rows[0]["rewards/length_async/errors"] == 0
    assert [s["rewards"]["length_async"] for s in samples] == [float(len(s["completion"])) for s in samples]


# ------------------------------------------------------------------------------------------------ log_metric / extra


def logging_reward(completions, log_metric, log_extra, **kwargs):
    log_metric("judge/calls", 1)
    log_metric("judge/calls", 3)  # twice in a call: averaged with the rest
    log_extra("length", [len(c) for c in completions])
    return [0.0] * len(completions)


def test_log_metric_and_log_extra_are_collected_as_trl_collects_them(char_tokenizer, tmp_path):
    import trl

    scores = score([logging_reward])
    assert scores.logged_metrics == {"judge/calls": (4.0, 2)}
    assert scores.logged_columns == {"length": [1, 4, 2, 11]}
    # TRL: the same pending values after _calculate_rewards
    trainer = trl.GRPOTrainer(
        model=build_tiny_model(char_tokenizer), reward_funcs=[logging_reward],
        args=trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], num_generations=2,
                            per_device_train_batch_size=4, max_completion_length=4),
        train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}), processing_class=char_tokenizer)
    trainer._calculate_rewards([{"prompt": p} for p in PROMPTS], PROMPTS, COMPLETIONS, [[1]] * 4)
    assert dict(trainer._pending_metrics) == {"judge/calls": [1, 3]}  # TRL logs sum / count = 2.0, as we do
    assert dict(trainer._pending_extra_logs) == {"length": [1, 4, 2, 11]}


def test_logged_metrics_and_columns_reach_metrics_and_completions(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, [logging_reward])
    trainer.train()
    row = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert row["judge/calls"] == 2.0
    samples = [json.loads(line) for line in open(tmp_path / "run" / "completions.jsonl")]
    assert len(samples) == 2 and all(s["extra"] == {"length": len(s["completion"])} for s in samples)


def test_what_a_failed_call_logged_is_dropped_and_a_bad_log_fails_the_call():
    def logs_then_raises(completions, log_metric, **kwargs):
        log_metric("partial", 1.0)
        raise RuntimeError("judge down")

    def bad_extra(completions, log_extra, **kwargs):
        log_extra("x", [1])  # one value for 4 completions
        return [0.0] * len(completions)

    scores = score([logs_then_raises, bad_extra, logging_reward])
    assert scores.logged_metrics == {"judge/calls": (4.0, 2)}
    assert [str(f) for f in scores.failures] == [
        "reward function 'logs_then_raises' raised RuntimeError: judge down",
        ("reward function 'bad_extra' raised ValueError: log_extra('x', ...) needs one value per completion (4), "
         "got [1]")]


def test_a_logged_metric_may_not_replace_one_of_the_runs_own(tmp_path, char_tokenizer):
    def clobbers(completions, log_metric, **kwargs):
        log_metric("reward", 5.0)
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"log_metric\('reward', \.\.\.\), which is the name of one of the run's"):
        _trainer(tmp_path, char_tokenizer, [clobbers]).train()
