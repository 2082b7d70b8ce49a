"""Multi-turn rollouts with tool calls (tools.py): parsing, contained execution, the tool tokens appended and masked,
log-probs and losses over the interleaved sequence, a training run with tools, resume, and user errors.

To force tool calls the sampled tokens are scripted (`Script` replaces rollout.generate inside tools.py): a random
tiny model would almost never write one. Everything else (prompt rendering, parsing, execution, masks, the training
forward, losses, checkpoints) runs for real."""

import json
import math
import os
import shutil
import time

import pytest
import torch
from datasets import Dataset

import reasonrl.tools as tools_module
from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.checkpoint import list_checkpoints
from reasonrl.core import StepNormaliser
from reasonrl.errors import ReasonRLError, ToolError
from reasonrl.micro_step import logps_in_chunks
from reasonrl.policy import sequence_logprobs
from reasonrl.tiny import build_char_tokenizer, build_tiny_model
from reasonrl.tools import (
    MAX_TOOL_RESULT_CHARS,
    ToolCalling,
    load_tools,
    parse_turn,
    run_tool_call,
    tool_metrics,
    tool_suffix_ids,
)

EOS = "<|im_end|>"
SUFFIX = "\n<|im_start|>tool\n{}<|im_end|>\n<|im_start|>assistant\n"  # what the template puts after a call's EOS


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def broken(x: int) -> int:
    """Always fails.

    Args:
        x: anything
    """
    raise RuntimeError("the tool broke")


def sleepy(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "awake"


class Junk:
    def __str__(self):
        raise ValueError("no text for this")


def junk(x: int) -> str:
    """Returns something that is not text.

    Args:
        x: anything
    """
    return Junk()


async def async_add(a: int, b: int) -> int:
    """Add asynchronously.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def call_text(name, **arguments):
    return f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(arguments)}}}</tool_call>'


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(tools=True)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ parsing and running


def test_parse_turn_reads_hermes_calls_and_leaves_malformed_ones_as_text(tok):
    text = "let me add" + call_text("add", a=2, b=3) + call_text("add", a=1, b=1) + EOS
    message = parse_turn(tok, ids_of(tok, text), [], [])
    assert message == {"role": "assistant", "content": "let me add", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}},
        {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 1}}}]}
    for bad in ('<tool_call>{"name": "add", "arguments": {"a": 2</tool_call>',  # not JSON
                '<tool_call>{"arguments": {}}</tool_call>',  # no name
                '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>',  # arguments not an object
                '<tool_call>[1]</tool_call>'):
        assert parse_turn(tok, ids_of(tok, "x" + bad + EOS), [], []) == {"role": "assistant", "content": "x" + bad}
    assert parse_turn(tok, ids_of(tok, "42" + EOS), [], []) == {"role": "assistant", "content": "42"}


def test_parse_turn_uses_the_tokenizers_response_template_when_it_has_one(tok):
    templated = build_char_tokenizer(tools=True)
    templated.response_template = {
        "defaults": {"role": "assistant"}, "start_anchor": "<|im_start|>assistant\n",
        "fields": {"tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True,
                                  "content": "json", "transform": {"type": "function", "function": "{content}"}},
                   "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"}}}
    prefix = ids_of(templated, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")
    schemas = ToolCalling([add], templated, max_iterations=None, timeout=None).schemas
    message = parse_turn(templated, ids_of(templated, call_text("add", a=2, b=3) + EOS), prefix, schemas)
    assert message["tool_calls"] == [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]
    assert message["content"] == ""


def test_a_tool_that_raises_hangs_returns_junk_or_is_unknown_is_contained():
    functions = {f.__name__: f for f in (add, broken, sleepy, junk, async_add)}

    def call(name, **arguments):
        return run_tool_call({"type": "function", "function": {"name": name, "arguments": arguments}}, functions, 0.3)

    assert (call("add", a=2, b=3).content, call("add", a=2, b=3).failed) == ("5", False)
    assert call("async_add", a=4, b=5).content == "9"
    result = call("broken", x=1)
    assert result.failed and result.content == "{'error': 'RuntimeError: the tool broke'}"
    start = time.perf_counter()
    result = call("sleepy", seconds=30)
    assert time.perf_counter() - start < 2.0
    assert result.failed and result.timed_out and result.content == "{'error': 'timed out after 0.3 s'}"
    result = call("junk", x=1)
    assert result.failed and "ValueError: no text for this" in result.content
    result = call("nope")
    assert result.failed and result.content == "{'error': 'Tool nope not found.'}"
    result = call("add", a=1)  # a missing argument: the tool raises TypeError
    assert result.failed and "TypeError" in result.content
    long = run_tool_call({"function": {"name": "echo", "arguments": {"n": 10_000}}},
                         {"echo": lambda n: "x" * n}, None)
    assert len(long.content) == MAX_TOOL_RESULT_CHARS + len("...[truncated]") and not long.failed


def test_tool_suffix_is_the_templates_tool_turn_and_next_assistant_header(tok):
    suffix = tool_suffix_ids(tok, [{"role": "tool", "name": "add", "content": "5"}])
    assert tok.decode(suffix) == SUFFIX.format("5")
    two = tool_suffix_ids(tok, [{"role": "tool", "name": "add", "content": "5"},
                                {"role": "tool", "name": "add", "content": "7"}])
    assert tok.decode(two) == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>tool\n7<|im_end|>\n<|im_start|>assistant\n"


def test_schemas_carry_signature_and_docstring_into_the_prompt(tok):
    calling = ToolCalling([add], tok, max_iterations=None, timeout=None)
    assert calling.schemas[0]["function"]["parameters"]["properties"]["a"] == {"type": "integer",
                                                                               "description": "the first number"}
    text = tok.apply_chat_template([{"role": "user", "content": "2+3"}], tools=calling.schemas, tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\ntools: add(a,b): Add two integers.<|im_end|>\n<|im_start|>user\n2+3"
                    "<|im_end|>\n<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------------ the multi-turn loop


class Script:
    """Replaces rollout.generate in tools.py: each row's next turn is chosen from its decoded context.

    First turn: `first(j, user_text)` for sample j of the group; after tool results: `after(tool_text, turn)`."""

    def __init__(self, tok, first, after=lambda result, turn: result + EOS):
        self.tok, self.first, self.after, self.calls = tok, first, after, []

    def __call__(self, model, prompt_ids, prompt_mask, *, num_generations, max_new_tokens, eos_token_id,
                 pad_token_id, seeds=None, generator=None, **sampling):
        self.calls.append((prompt_ids.size(0), num_generations, max_new_tokens, seeds))
        rows = []
        for ids, mask in zip(prompt_ids, prompt_mask):
            context = self.tok.decode(ids[mask.bool()].tolist())
            for j in range(num_generations):
                if "<|im_start|>tool\n" in context:
                    result = context.rsplit("<|im_start|>tool\n", 1)[1].split(EOS)[0]
                    text = self.after(result, context.count("<|im_start|>assistant\n"))
                else:
                    user = context.rsplit("<|im_start|>user\n", 1)[1].split(EOS)[0]
                    text = self.first(j, user)
                rows.append(ids_of(self.tok, text)[:max_new_tokens])
        width = max(len(r) for r in rows)
        completion_ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        completion_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        truncated = torch.tensor([r[-1] != eos_token_id for r in rows])
        return completion_ids, completion_mask, torch.zeros(completion_ids.shape), truncated


def add_or_guess(j, user):
    a, b = user.split("+")
    return call_text("add", a=int(a), b=int(b)) + EOS if j % 2 == 0 else "0" + EOS


def test_rows_that_call_get_the_result_appended_masked_and_a_next_turn(tok, monkeypatch):
    script = Script(tok, add_or_guess)
    monkeypatch.setattr(tools_module, "generate", script)
    calling = ToolCalling([add], tok, max_iterations=None, timeout=1.0)
    prompt_ids = torch.tensor([ids_of(tok, "<|im_start|>user\n2+3<|im_end|>\n<|im_start|>assistant\n")])
    out = calling.generate(None, prompt_ids, torch.ones_like(prompt_ids), num_generations=4, max_new_tokens=200,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seeds=[11])
    first, suffix, second = call_text("add", a=2, b=3) + EOS, SUFFIX.format("5"), "5" + EOS
    n1, ns, n2 = len(ids_of(tok, first)), len(ids_of(tok, suffix)), len(ids_of(tok, second))
    assert tok.decode(out.completion_ids[0][out.completion_mask[0].bool()].tolist()) == first + suffix + second
    assert out.tool_mask[0].tolist() == [1] * n1 + [0] * ns + [1] * n2  # width = the longest row
    assert out.completion_mask[0].tolist() == [1] * (n1 + ns + n2)
    assert out.tool_mask[1].tolist() == [1, 1] + [0] * (n1 + ns + n2 - 2)  # "0<|im_end|>", padding
    assert out.completion_mask[1].tolist() == [1, 1] + [0] * (n1 + ns + n2 - 2)
    assert out.completion_ids[1, 2:].eq(tok.pad_token_id).all()
    assert out.turns == [2, 1, 2, 1] and out.is_truncated.tolist() == [False] * 4
    assert (out.tool_calls, out.tool_failures, out.tool_timeouts) == (2, 0, 0)
    assert out.completions[0] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "name": "add", "content": "5"}, {"role": "assistant", "content": "5"}]
    assert out.completions[1] == [{"role": "assistant", "content": "0"}]
    # the second turn was sampled once per calling row, from prompt + turn + tool tokens, with its own seed
    assert [call[:2] for call in script.calls] == [(1, 4), (2, 1)]
    assert script.calls[1][2] == 200 - n1 - ns and len(set(script.calls[1][3])) == 2
    assert tool_metrics(out.counts()) == {"tools/call_frequency": 0.5, "tools/failure_frequency": 0.0,
                                          "tools/timeouts": 0, "tools/mean_turns": 1.5}


def test_iterations_stop_at_max_tool_calling_iterations_and_results_that_do_not_fit_are_dropped(tok, monkeypatch):
    always = Script(tok, lambda j, user: call_text("add", a=1, b=1) + EOS,
                    after=lambda result, turn: call_text("add", a=int(result), b=1) + EOS)
    monkeypatch.setattr(tools_module, "generate", always)
    prompt_ids = torch.tensor([ids_of(tok, "<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n")])
    kwargs = {"num_generations": 2, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "seeds": [0]}
    for limit, turns in ((0, 1), (1, 2), (3, 4)):
        calling = ToolCalling([add], tok, max_iterations=limit, timeout=None)
        out = calling.generate(None, prompt_ids, torch.ones_like(prompt_ids), max_new_tokens=1000, **kwargs)
        assert out.turns == [turns, turns] and out.tool_calls == 2 * (turns - 1)
        assert [m.get("content") for m in out.completions[0] if m["role"] == "tool"] == [
            str(2 + i) for i in range(turns - 1)]  # 1+1, then 2+1, 3+1
    # None: no limit but the length; a result that would not fit is dropped and the row ends on its call
    call_len = len(ids_of(tok, call_text("add", a=1, b=1) + EOS))
    suffix_len = len(ids_of(tok, SUFFIX.format("2")))
    calling = ToolCalling([add], tok, max_iterations=None, timeout=None)
    out = calling.generate(None, prompt_ids, torch.ones_like(prompt_ids), max_new_tokens=call_len + suffix_len,
                           **kwargs)
    assert out.turns == [1, 1] and out.tool_calls == 2  # run, then dropped: no room for a single token after it
    assert out.completions[0][-1]["role"] == "assistant" and len(out.completions[0]) == 1
    assert out.completion_mask.sum(-1).tolist() == [call_len] * 2 and out.tool_mask.sum(-1).tolist() == [call_len] * 2
    out = calling.generate(None, prompt_ids, torch.ones_like(prompt_ids), max_new_tokens=call_len + suffix_len + 3,
                           **kwargs)  # room for 3 tokens of the second turn: cut there, truncated
    assert out.turns == [2, 2] and out.is_truncated.tolist() == [True, True]
    assert out.tool_mask[0].tolist() == [1] * call_len + [0] * suffix_len + [1] * 3


# ------------------------------------------------------------------------------------------ log-probs and losses


def test_logprobs_over_an_interleaved_sequence_equal_a_plain_forward(tok):
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=3).eval()
    prompt = ids_of(tok, "<|im_start|>user\n2+3<|im_end|>\n<|im_start|>assistant\n")
    rows = [ids_of(tok, call_text("add", a=2, b=3) + EOS) + ids_of(tok, SUFFIX.format("5")) + ids_of(tok, "5" + EOS),
            ids_of(tok, "0" + EOS)]
    short = ids_of(tok, "<|im_start|>user\n9<|im_end|>\n<|im_start|>assistant\n")
    prompts = [prompt, short]  # left-padded to the longer one
    pw, cw = max(map(len, prompts)), max(map(len, rows))
    pad = tok.pad_token_id
    prompt_ids = torch.tensor([[pad] * (pw - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (pw - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([r + [pad] * (cw - len(r)) for r in rows])
    completion_mask = torch.tensor([[1] * len(r) + [0] * (cw - len(r)) for r in rows])
    with torch.no_grad():
        for share in (False, True):
            logps = sequence_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 0.7,
                                      share_prompts=share)
            for i, (p, r) in enumerate(zip(prompts, rows)):
                logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1:-1]  # unpadded, positions 0..
                plain = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
                assert torch.allclose(logps[i, :len(r)], plain, atol=1e-5)


def _scripted_trainer(tok, out, monkeypatch, *, loss_type="grpo", first=add_or_guess, tool_list=(add,), **settings):
    monkeypatch.setattr(tools_module, "generate", Script(tok, first))

    def correct(completions, answer, **kwargs):
        return [float(c[-1]["content"] == a) for c, a in zip(completions, answer)]

    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}"}], "answer": str(a + b)}
            for a, b in ((2, 3), (4, 4), (1, 6), (5, 2))]
    config = {"output_dir": str(out), "per_device_train_batch_size": 4, "num_generations": 4,
              "max_completion_length": 120, "max_steps": 2, "learning_rate": 1e-2, "beta": 0.0,
              "gradient_checkpointing": False, "logging_steps": 1000, "save_steps": 1, "optim": "adamw_torch",
              "seed": 3, "loss_type": loss_type, "report_to": "none",
              "adapt_cpu_threads": False}  # bitwise resume needs a fixed thread count (a loaded machine)
    config.update(settings)
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0)
    return GRPOTrainer(model, [correct], args=GRPOConfig(**config), train_dataset=Dataset.from_list(rows),
                       processing_class=tok, tools=list(tool_list))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo"])
def test_loss_over_a_tool_round_equals_a_hand_computation_without_the_tool_tokens(tok, tmp_path, monkeypatch,
                                                                                   loss_type):
    trainer = _scripted_trainer(tok, tmp_path / "run", monkeypatch, loss_type=loss_type)
    os.makedirs(tmp_path / "run")  # what train() does before a round
    rows_, rollout = trainer._rollout()
    scores, rewards = trainer._score(rows_, rollout)
    batch = trainer._advantages(rollout, rewards, scores.rewards_per_func)
    metrics = trainer._round_metrics(rows_, rollout, scores, rewards, batch)
    assert metrics["tools/call_frequency"] == 0.5 and metrics["tools/mean_turns"] == 1.5
    assert metrics["reward"] == 0.5  # the calling half answers right, the guessing half (0) wrong
    suffix_len = len(ids_of(tok, SUFFIX.format("5")))
    tool_tokens = (rollout.completion_mask - batch.loss_mask).sum(-1).tolist()
    assert tool_tokens == [suffix_len, 0, suffix_len, 0]  # prompt 0's rows (2+3 -> "5")
    # old log-probs away from the current ones, differently per token: the ratios (so the loss) depend on the mask
    torch.manual_seed(0)
    with torch.no_grad():
        current = logps_in_chunks(trainer.model, rollout, trainer.args, trainer._autocast)
    batch.old_logps = current + 0.3 * torch.randn_like(current) * rollout.completion_mask
    rows = torch.arange(4)
    trainer.model.train()
    tokens = batch.loss_mask[rows].sum().double().reshape(1)
    normaliser = StepNormaliser.of_window(loss_type, tokens, tokens, 1)
    loss, _ = trainer.micro_step(batch, rows, normaliser, 0)

    # by hand: each row's unpadded sequence through the model, tokens with tool_mask 0 left out
    eps = trainer.args.epsilon
    per_row, kept = [], []
    with torch.no_grad():
        for i in range(4):
            p = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
            c_len = int(rollout.completion_mask[i].sum())
            c = rollout.completion_ids[i, :c_len].tolist()
            logits = trainer.model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            keep = batch.loss_mask[i, :c_len].bool()
            ratio = torch.exp(logp - batch.old_logps[i, :c_len])[keep]
            a = batch.advantages[i]
            terms = -torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
            per_row.append(terms)
            kept.append(int(keep.sum()))
    if loss_type == "grpo":
        expected = sum(t.mean() for t in per_row) / 4
    else:  # dapo, bnpo: one token mean over the (micro-)batch
        expected = sum(t.sum() for t in per_row) / sum(kept)
    assert kept[0] == int(rollout.completion_mask[0].sum()) - suffix_len
    assert loss == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    # and garbage old log-probs on the tool tokens change nothing
    trainer.model.zero_grad()
    batch.old_logps = batch.old_logps + 5.0 * (rollout.completion_mask - batch.loss_mask)
    again, _ = trainer.micro_step(batch, rows, normaliser, 0)
    assert again == pytest.approx(loss, rel=1e-6, abs=1e-7)


# ------------------------------------------------------------------------------------------ training and resume


def _rows(path):
    with open(path) as handle:
        rows = [json.loads(line) for line in handle]
    timing = {"step_time", "rollout_time", "tokens_per_second", "cpu_threads"}
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def test_training_with_tools_logs_tool_metrics_and_resumes_exactly(tok, tmp_path, monkeypatch):
    trainer = _scripted_trainer(tok, tmp_path / "a", monkeypatch, max_steps=3, num_iterations=2,
                                per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer.train()
    rows = _rows(tmp_path / "a" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert math.isfinite(row["loss"]) and row["tools/call_frequency"] == 0.5
        assert row["tools/failure_frequency"] == 0.0 and row["tools/mean_turns"] == 1.5
    with open(tmp_path / "a" / "completions.jsonl") as handle:
        samples = [json.loads(line) for line in handle]
    assert any("<tool_call>" in s["completion"] and "\ntool\n" in s["completion"] for s in samples)
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # resume from checkpoint-1: the middle of the first round (num_iterations=2: a round is 2 steps)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in list_checkpoints(str(tmp_path / "b")):
        if not path.endswith("checkpoint-1"):
            shutil.rmtree(path)
    assert os.path.isfile(tmp_path / "b" / "checkpoint-1" / "round.json")
    resumed = _scripted_trainer(tok, tmp_path / "b", monkeypatch, max_steps=3, num_iterations=2,
                                per_device_train_batch_size=2, gradient_accumulation_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())
    assert _rows(tmp_path / "b" / "metrics.jsonl") == rows


def test_a_failing_or_hanging_tool_is_counted_and_training_goes_on(tok, tmp_path, monkeypatch):
    def first(j, user):
        return [call_text("broken", x=1), call_text("sleepy", seconds=60), call_text("junk", x=1),
                call_text("missing")][j] + EOS

    trainer = _scripted_trainer(tok, tmp_path / "run", monkeypatch, first=first, tool_list=(broken, sleepy, junk),
                                max_steps=1, tool_timeout=0.2, max_completion_length=240)
    start = time.perf_counter()
    trainer.train()
    row = _rows(tmp_path / "run" / "metrics.jsonl")[0]
    assert time.perf_counter() - start < 60
    assert row["tools/call_frequency"] == 1.0 and row["tools/failure_frequency"] == 1.0
    assert row["tools/timeouts"] == 1  # a round is one prompt x 4 samples; sample 1 calls sleepy
    assert math.isfinite(row["loss"]) and row["tools/mean_turns"] == 2.0


def test_training_with_the_real_decoder_and_tools_runs(tok, tmp_path):
    """No scripting: the random model's samples (lean decoder) are parsed; it writes no call, training goes on."""
    rows = [{"prompt": [{"role": "user", "content": f"{i}+1"}]} for i in range(4)]
    config = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                        max_completion_length=16, max_steps=1, gradient_checkpointing=False, report_to="none",
                        max_tool_calling_iterations=2)
    trainer = GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0),
                          [lambda completions, **kw: [float(len(c[-1]["content"])) for c in completions]],
                          args=config, train_dataset=Dataset.from_list(rows), processing_class=tok, tools=[add])
    trainer.train()
    row = _rows(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["tools/call_frequency"] == 0.0 and row["tools/mean_turns"] == 1.0 and math.isfinite(row["loss"])


# ------------------------------------------------------------------------------------------ user errors


def test_tools_that_cannot_work_are_one_line_errors(tok, tmp_path):
    assert issubclass(ToolError, ReasonRLError)
    with pytest.raises(ToolError, match="tool 42 is a int, not a function"):
        load_tools([42])
    with pytest.raises(ToolError, match="two tools are named 'add'"):
        load_tools([add, add])
    with pytest.raises(ToolError, match="could not be imported"):
        load_tools(["no_such_module_xyz:f"])

    def undocumented(a):
        return a

    with pytest.raises(ToolError, match="cannot be described to the model"):
        ToolCalling([undocumented], tok, max_iterations=None, timeout=None)
    with pytest.raises(ToolError, match="does not render tool calls"):
        ToolCalling([add], build_char_tokenizer(), max_iterations=None, timeout=None)  # plain ChatML
    spec = tmp_path / "my_tools.py"
    spec.write_text("def mul(a: int, b: int) -> int:\n    '''Multiply.\n\n    Args:\n        a: x\n        b: y\n"
                    "    '''\n    return a * b\n")
    (mul,) = load_tools([f"{spec}:mul"])
    assert mul(3, 4) == 12

    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0)
    config = GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=2, per_device_train_batch_size=2,
                        report_to="none")
    plain = Dataset.from_list([{"prompt": "2+3="}, {"prompt": "1+1="}])
    with pytest.raises(ToolError, match="tools need conversational prompts") as error:
        GRPOTrainer(model, [lambda completions, **kw: [0.0] * len(completions)], args=config, train_dataset=plain,
                    processing_class=tok, tools=[add])
    assert "\n" not in str(error.value)
    with pytest.raises(ToolError, match="not a function"):
        GRPOTrainer(model, [lambda completions, **kw: [0.0] * len(completions)], args=config,
                    train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2),
                    processing_class=tok, tools=[3.5])


def test_cli_tools_option_with_a_bad_spec_is_a_one_line_error(tok, tmp_path, capsys):
    from cli_helpers import assert_one_line_error, run_main

    model_dir = tmp_path / "model"
    build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "2+3"}]}) + "\n")
    code, err = run_main(capsys, ["train", f"model_name_or_path={model_dir}", f"dataset_name={data}",
                                  "reward_funcs=[length]", f"output_dir={tmp_path / 'run'}", "num_generations=2",
                                  "per_device_train_batch_size=2", "tools=[no_such_module_xyz:calc]"])
    assert_one_line_error(code, err, "train", ["tool 'no_such_module_xyz:calc' could not be imported"])
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ------------------------------------------------------------------------------------------ built-in tools, the task


def test_calculator_task_rows_tool_and_reward():
    from reasonrl.tasks import calculator as task

    train = task.generate(50, seed=0)
    held_out = task.generate(50, seed=1, exclude=train)
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in held_out}
    assert train == task.generate(50, seed=0)
    row = train[0]
    a, b = map(int, row["expression"].split("*"))
    assert row["answer"] == str(a * b) and 100 <= a <= 999 and 100 <= b <= 999
    assert task.calculator("12*(3+4)") == "84" and task.calculator("7/0").startswith("error:")
    assert task.calculator("__import__('os')").startswith("error:")
    assert task.reward(completions=[task.trace(row), [{"role": "assistant", "content": "1"}], row["answer"]],
                       answer=[row["answer"]] * 3) == [1.0, 0.0, 1.0]
    assert task.used_calculator(completions=[task.trace(row), [{"role": "assistant", "content": "1"}]]) == [1.0, 0.0]
    (loaded,) = load_tools(["reasonrl.tasks.calculator:calculator"])
    assert loaded is task.calculator


def test_python_tool_runs_in_the_sandbox():
    (python,) = load_tools(["reasonrl.tools:python"])
    assert python("print(6 * 7)") == "42\n"
    assert "ZeroDivisionError" in python("1/0")
    assert "[timed_out" in python("while True: pass")


def test_later_turns_sampled_by_the_real_decoder_have_the_log_probs_the_training_forward_gives(tok, monkeypatch):
    """Turn 1 is scripted (a call); turn 2 is sampled by rollout.generate (lean decoder) from prompt + call + tool
    tokens. Its sampling log-probs must equal the training forward's over the whole interleaved row: same context,
    same positions."""
    from reasonrl.rollout import generate as real_generate

    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=5).eval()
    scripted = Script(tok, lambda j, user: call_text("add", a=2, b=3) + EOS)
    recorded = []

    def hybrid(model_, prompt_ids, prompt_mask, **kwargs):
        if not recorded and kwargs["num_generations"] > 1:  # the first turn
            recorded.append(None)
            return scripted(model_, prompt_ids, prompt_mask, **kwargs)
        out = real_generate(model_, prompt_ids, prompt_mask, **kwargs)
        recorded.append((prompt_ids, prompt_mask, out))
        return out

    monkeypatch.setattr(tools_module, "generate", hybrid)
    calling = ToolCalling([add], tok, max_iterations=1, timeout=None)
    prompts = [ids_of(tok, "<|im_start|>user\n2+3<|im_end|>\n<|im_start|>assistant\n"), ids_of(tok, "<|im_start|>"
               "user\nadd 2 and 3 please<|im_end|>\n<|im_start|>assistant\n")]  # two lengths: left padding
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = calling.generate(model, prompt_ids, prompt_mask, num_generations=2, max_new_tokens=160,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seeds=[1, 2],
                           temperature=0.9)
    assert out.turns == [2, 2, 2, 2] and out.tool_calls == 4
    assert len(recorded) == 2  # the scripted first turn, one real second turn for the 4 calling rows
    _, _, (new_ids, new_mask, sampling_logps, _) = recorded[1]
    head = len(ids_of(tok, call_text("add", a=2, b=3) + EOS + SUFFIX.format("5")))
    with torch.no_grad():
        logps = sequence_logprobs(model, prompt_ids.repeat_interleave(2, 0), prompt_mask.repeat_interleave(2, 0),
                                  out.completion_ids, out.completion_mask, 0.9)
    for row in range(4):
        n = int(new_mask[row].sum())
        assert out.completion_ids[row, head:head + n].tolist() == new_ids[row, :n].tolist()
        assert out.tool_mask[row, head:head + n].tolist() == [1] * n
        assert torch.allclose(logps[row, head:head + n], sampling_logps[row, :n], atol=1e-4)
    # the samples of one prompt differ (their own seeds), and differ from the other prompt's
    assert new_ids[0].tolist() != new_ids[1].tolist()


# ------------------------------------------------------------------------------------------ tools in `reasonrl eval`


def test_reasonrl_eval_with_tools_runs_the_multi_turn_rollout_of_training(tok, tmp_path, capsys, monkeypatch):
    """The model's turns are scripted (a calculator call, then the result as the answer); without --tools the call
    is never answered and every answer is wrong; with them the report counts the calls and turns."""
    from cli_helpers import assert_one_line_error, run_main

    from reasonrl.evaluate import evaluate
    from reasonrl.tasks import calculator as task

    def first(j, user):
        expression = user.removeprefix("What is ").split("?")[0]
        return call_text("calculator", expression=expression) + EOS

    monkeypatch.setattr(tools_module, "generate", Script(tok, first))
    rows = task.generate(6, seed=4)
    model_dir = tmp_path / "model"
    build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "calc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = ["eval", str(model_dir), "--data", str(data), "--reward", "reasonrl.tasks.calculator:reward",
            "--max-new-tokens", "200"]
    code, _ = run_main(capsys, [*base, "--tools", "reasonrl.tasks.calculator:calculator", "--k", "2", "--json",
                                str(tmp_path / "with.json")])
    assert code == 0
    report = json.loads((tmp_path / "with.json").read_text())
    assert report["accuracy"] == 1.0 and report["pass_at_k"] == {"1": 1.0, "2": 1.0}
    assert report["tools"] == {"call_frequency": 1.0, "failure_frequency": 0.0, "timeouts": 0, "mean_turns": 2.0}
    assert report["tools_sampled"] == report["tools"]  # the k=2 sampled completions: the same scripted exchange
    call_tokens = [len(ids_of(tok, first(0, r["prompt"][0]["content"]))) for r in rows]
    answer_tokens = [len(ids_of(tok, r["answer"] + EOS)) for r in rows]
    assert report["mean_length"] == pytest.approx(sum(call_tokens + answer_tokens) / 6)  # the model's tokens only
    # the tools are what made it right: without them nothing answers the call (the plain sampler's rollout)
    monkeypatch.setattr("reasonrl.rollout.generate", Script(tok, first))
    code, _ = run_main(capsys, [*base, "--json", str(tmp_path / "without.json")])
    assert code == 0 and json.loads((tmp_path / "without.json").read_text())["accuracy"] == 0.0
    # the Python path is the same
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0)
    direct = evaluate(model, tok, rows, task.reward, max_new_tokens=200, tools=[task.calculator])
    assert direct["accuracy"] == 1.0 and direct["tools"]["mean_turns"] == 2.0
    code, err = run_main(capsys, [*base, "--tools", "no_such_module_xyz:calc"])
    assert_one_line_error(code, err, "eval", ["tool 'no_such_module_xyz:calc' could not be imported"])
    code, err = run_main(capsys, [*base, "--tool-timeout", "3"])
    assert_one_line_error(code, err, "eval", ["add --tools"])


def test_reasonrl_eval_of_a_task_with_tools_uses_them_unless_told_none(tok, tmp_path, capsys, monkeypatch):
    """`reasonrl eval --task calculator` runs the calculator (the task's own tool) as sft does; `--tools none`
    evaluates the same scripted model with no tools, whose calls then go unanswered."""
    from cli_helpers import assert_one_line_error, run_main

    def first(j, user):
        return call_text("calculator", expression=user.removeprefix("What is ").split("?")[0]) + EOS

    monkeypatch.setattr(tools_module, "generate", Script(tok, first))
    monkeypatch.setattr("reasonrl.rollout.generate", Script(tok, first))
    model_dir = tmp_path / "model"
    build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    base = ["eval", str(model_dir), "--task", "calculator", "--n", "5", "--seed", "4", "--max-new-tokens", "200"]
    code, _ = run_main(capsys, [*base, "--max-tool-calling-iterations", "1", "--json", str(tmp_path / "own.json")])
    assert code == 0
    report = json.loads((tmp_path / "own.json").read_text())
    assert report["n"] == 5 and report["accuracy"] == 1.0
    assert report["tools"] == {"call_frequency": 1.0, "failure_frequency": 0.0, "timeouts": 0, "mean_turns": 2.0}
    code, _ = run_main(capsys, [*base, "--tools", "None", "--json", str(tmp_path / "none.json")])
    assert code == 0
    report = json.loads((tmp_path / "none.json").read_text())
    assert report["accuracy"] == 0.0 and "tools" not in report
    code, err = run_main(capsys, [*base, "--tools", "none", "--tool-timeout", "3"])
    assert_one_line_error(code, err, "eval", ["this evaluation has none; add --tools"])


def test_reasonrl_eval_tool_isolation_process_kills_a_hanging_tool(tok, tmp_path, capsys, monkeypatch):
    """--tool-isolation process: a call past --tool-timeout is killed (its late side effect never happens) and
    counted as a timeout; the same call in a thread is abandoned and its side effect still happens."""
    from cli_helpers import assert_one_line_error, run_main

    monkeypatch.setattr(tools_module, "generate", Script(
        tok, lambda j, user: call_text("slow_writer", path=str(tmp_path / user.split()[-1])) + EOS))
    model_dir = tmp_path / "model"
    build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"write {name}"}], "answer": "x"})
                            + "\n" for name in ("a", "b")))
    base = ["eval", str(model_dir), "--data", str(data), "--reward", "reasonrl.tasks.calculator:reward",
            "--max-new-tokens", "200", "--max-tool-calling-iterations", "1", "--tool-timeout", "0.3"]
    tools = ["--tools", "test_tools:slow_writer"]  # this module's slow_writer, below
    code, _ = run_main(capsys, [*base, *tools, "--tool-isolation", "process", "--json", str(tmp_path / "p.json")])
    assert code == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["tools"]["timeouts"] == 2 and report["tools"]["failure_frequency"] == 1.0
    time.sleep(2.0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # killed before writing
    code, _ = run_main(capsys, [*base, *tools, "--json", str(tmp_path / "t.json")])  # a thread: abandoned, runs on
    assert code == 0 and json.loads((tmp_path / "t.json").read_text())["tools"]["timeouts"] == 2
    deadline = time.time() + 30
    while not ((tmp_path / "a").exists() and (tmp_path / "b").exists()) and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "a").read_text() == "still ran" and (tmp_path / "b").read_text() == "still ran"
    code, err = run_main(capsys, [*base[:8], "--tool-isolation", "process"])  # without --tools
    assert_one_line_error(code, err, "eval", ["--tool-isolation", "add --tools"])


# ------------------------------------------------------------------------------------------ tool_isolation='process'


def slow_writer(path: str) -> str:
    """Sleeps, then writes a file.

    Args:
        path: the file
    """
    time.sleep(1.5)
    with open(path, "w") as handle:
        handle.write("still ran")
    return "written"


def exits(code: int) -> str:
    """Ends its process.

    Args:
        code: exit code
    """
    os._exit(code)


def test_a_process_isolated_tool_is_killed_at_its_timeout_where_a_thread_keeps_running(tmp_path):
    tools = {"slow_writer": slow_writer, "add": add, "broken": broken, "junk": junk, "exits": exits}
    isolated = frozenset(tools.values())

    def call(name, **arguments):
        return {"type": "function", "function": {"name": name, "arguments": arguments}}

    assert run_tool_call(call("add", a=2, b=3), tools, 5.0, isolated).content == "5"
    failed = run_tool_call(call("broken", x=1), tools, 5.0, isolated)
    assert failed.failed and failed.content == str({"error": "RuntimeError: the tool broke"})
    junk_result = run_tool_call(call("junk", x=1), tools, 5.0, isolated)
    assert junk_result.content == str({"error": "ValueError: no text for this"})
    ended = run_tool_call(call("exits", code=3), tools, 5.0, isolated)
    assert ended.failed and "exit code 3" in ended.content
    killed, abandoned = tmp_path / "killed", tmp_path / "abandoned"
    start = time.perf_counter()
    result = run_tool_call(call("slow_writer", path=str(killed)), tools, 0.3, isolated)
    assert result.timed_out and time.perf_counter() - start < 1.2
    assert run_tool_call(call("slow_writer", path=str(abandoned)), tools, 0.3).timed_out  # a thread
    time.sleep(2.5)
    assert abandoned.exists() and not killed.exists()  # the thread finished its work; the process was killed


def test_training_with_process_isolated_tools(tok, tmp_path, monkeypatch):
    trainer = _scripted_trainer(tok, tmp_path / "run", monkeypatch, max_steps=1, tool_isolation="process")
    assert trainer.tool_calling.isolated == frozenset({add})
    trainer.train()  # under ProcessExitGuard: the child still ends with the real os._exit
    row = _rows(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["tools/call_frequency"] == 0.5 and row["tools/failure_frequency"] == 0.0
    with pytest.raises(ReasonRLError, match="tool_isolation='fork' is not supported"):
        GRPOConfig(output_dir=str(tmp_path / "x"), tool_isolation="fork")
