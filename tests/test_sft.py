"""SFT on multi-turn tool traces (sft.py): which tokens carry loss, that they are the tokens a tool rollout samples,
that plain rows are unchanged, a tiny model taught to call the calculator, and the errors of rows a template cannot
render. (SFT on plain pairs is also tested in test_evaluate.py.)"""

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from test_tools import EOS, Script, add, call_text, ids_of

import reasonrl.tools as tools_module
from reasonrl.errors import DataError, ToolError
from reasonrl.sft import sft, tokenize_pairs, tokenize_rows
from reasonrl.tasks import calculator, get_task
from reasonrl.tiny import build_char_tokenizer, build_tiny_model
from reasonrl.tools import ToolCalling, tool_schemas

ADD_CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 3, "b": 4}}}
EXCHANGE = [{"role": "assistant", "content": "", "tool_calls": [ADD_CALL]},
            {"role": "tool", "name": "add", "content": "7"},
            {"role": "assistant", "content": "7"}]
PROMPT = [{"role": "user", "content": "3+4"}]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(tools=True)


def spans(tok, ids, labels):
    """The decoded runs of trained tokens, and the lengths of the context runs between them."""
    trained, context, run, gap = [], [], [], 0
    for token, label in zip(ids, labels):
        if label == -100:
            if run:
                trained.append(tok.decode(run))
                run = []
            gap += 1
        else:
            assert label == token
            if gap:
                context.append(gap)
                gap = 0
            run.append(token)
    if run:
        trained.append(tok.decode(run))
    return trained, context


def test_loss_is_on_the_assistant_turns_and_their_eos_only(tok):
    (ids, labels), = tokenize_rows(tok, [{"prompt": PROMPT, "completion": EXCHANGE}], tools=[add])
    system = "<|im_start|>system\ntools: add(a,b): Add two integers.<|im_end|>\n"
    prompt = system + "<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n"
    call = '<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>'
    between = "\n<|im_start|>tool\n7<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids) == prompt + call + EOS + between + "7" + EOS  # nothing after the last turn's EOS
    trained, context = spans(tok, ids, labels)
    assert trained == [call + EOS, "7" + EOS]
    # by hand: the prompt is 36 characters of system line + 3 special tokens ... counted per token below;
    # between the turns: "\n", <|im_start|>, "tool\n" (5), "7", <|im_end|>, "\n", <|im_start|>, "assistant\n" (10)
    assert context[1] == 1 + 1 + 5 + 1 + 1 + 1 + 1 + 10
    # the prompt: <|im_start|> "system\n" (7) "tools: add(a,b): Add two integers." (34) <|im_end|> "\n"
    #             <|im_start|> "user\n" (5) "3+4" (3) <|im_end|> "\n" <|im_start|> "assistant\n" (10)
    assert context[0] == 1 + 7 + 34 + 1 + 1 + 1 + 5 + 3 + 1 + 1 + 1 + 10
    assert len(ids) == context[0] + (len(call) + 1) + context[1] + 2  # the call's characters + EOS, "7" + EOS
    assert labels[-2:] == [ids_of(tok, "7")[0], tok.eos_token_id]
    # the old view: the first trained token
    assert tokenize_pairs(tok, [{"prompt": PROMPT, "completion": EXCHANGE, "tools": [add]}])[0] == (ids, context[0])


def test_sft_tokens_are_what_a_tool_rollout_samples_and_its_tool_mask(tok, monkeypatch):
    """The same exchange produced by tools.ToolCalling (scripted turns): the prompt + completion ids are SFT's
    ids, and the rollout's tool_mask (1 on the model's tokens) is exactly where SFT puts loss."""
    monkeypatch.setattr(tools_module, "generate", Script(tok, lambda j, user: call_text("add", a=3, b=4) + EOS))
    calling = ToolCalling([add], tok, max_iterations=None, timeout=1.0)
    from reasonrl.data import render_prompt

    prompt_ids = torch.tensor([ids_of(tok, render_prompt(PROMPT, tok, calling.schemas))])
    out = calling.generate(None, prompt_ids, torch.ones_like(prompt_ids), num_generations=1, max_new_tokens=300,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seeds=[0])
    assert out.completions[0] == EXCHANGE
    (ids, labels), = tokenize_rows(tok, [{"prompt": PROMPT, "completion": out.completions[0]}],
                                   tools=tool_schemas([add]))  # schemas work as well as functions
    n = prompt_ids.size(1)
    assert ids == prompt_ids[0].tolist() + out.completion_ids[0].tolist()
    assert [int(label != -100) for label in labels] == [0] * n + out.tool_mask[0].tolist()


def test_plain_and_single_message_rows_are_prompt_then_text_then_eos(tok):
    chat = [{"role": "user", "content": "2+2"}]
    rows = [{"prompt": "2+2=", "completion": "4"},
            {"prompt": chat, "completion": [{"role": "assistant", "content": "<answer>4</answer>"}]}]
    (plain_ids, plain_labels), (chat_ids, chat_labels) = tokenize_rows(tok, rows)
    assert plain_ids == ids_of(tok, "2+2=4") + [tok.eos_token_id] and plain_labels == [-100] * 4 + plain_ids[4:]
    head = ids_of(tok, "<|im_start|>user\n2+2<|im_end|>\n<|im_start|>assistant\n")
    assert chat_ids == head + ids_of(tok, "<answer>4</answer>") + [tok.eos_token_id]
    assert chat_labels == [-100] * len(head) + chat_ids[len(head):]
    # with tools the prompt carries their schemas, as training with tools= renders it
    (with_tools, _), = tokenize_rows(tok, rows[1:], tools=[add])
    assert tok.decode(with_tools).startswith("<|im_start|>system\ntools: add(a,b)")
    assert tokenize_pairs(tok, rows) == [(plain_ids, 4), (chat_ids, len(head))]


def test_rows_a_template_cannot_render_are_one_clear_error(tok):
    plain = build_char_tokenizer()  # ChatML without tool calls: it drops them
    with pytest.raises(ToolError, match="the SFT rows hold tool calls, but the chat template does not render tool "
                                        "calls"):
        tokenize_rows(plain, [{"prompt": PROMPT, "completion": EXCHANGE}])
    with pytest.raises(DataError, match="needs a conversational prompt"):
        tokenize_rows(tok, [{"prompt": "3+4", "completion": EXCHANGE}])
    with pytest.raises(DataError, match="assistant or tool messages"):
        tokenize_rows(tok, [{"prompt": PROMPT, "completion": [*EXCHANGE, {"role": "user", "content": "x"}]}])


def test_cli_sft_with_tool_traces_and_a_template_without_tools_is_one_line_error(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "traces.jsonl"
    data.write_text(json.dumps({"prompt": PROMPT, "completion": EXCHANGE}) + "\n")
    code, err = run_main(capsys, ["sft", "--data", data, "--model", tiny_model_dir, "--out", tmp_path / "out",
                                  "--steps", "1"])
    assert_one_line_error(code, err, "sft", ["tool calls", "does not render tool calls",
                                             "use a model whose template supports tools"])
    assert not (tmp_path / "out").exists()


def test_cli_sft_task_calculator_trains_on_its_traces_with_its_tool(tmp_path, capsys, monkeypatch):
    import reasonrl.sft

    seen = {}
    real = reasonrl.sft.sft

    def recording(model, tokenizer, rows, **kwargs):
        seen.update(rows=rows, tools=kwargs["tools"], template=tokenizer.chat_template)
        return real(model, tokenizer, rows, **kwargs)

    monkeypatch.setattr(reasonrl.sft, "sft", recording)
    code, _ = run_main(capsys, ["sft", "--task", "calculator", "--n", "4", "--steps", "1", "--batch-size", "2",
                                "--out", tmp_path / "out"])
    assert code == 0
    task = get_task("calculator")
    assert seen["tools"] == [calculator.calculator] and task.tools == (calculator.calculator,)
    assert seen["rows"] == [{"prompt": row["prompt"], "completion": calculator.trace(row)}
                            for row in calculator.generate(4, seed=1)]
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert "tool_calls" in seen["template"] and "tool_calls" in (saved.get("chat_template") or (
        tmp_path / "out" / "chat_template.jinja").read_text())


def test_calculator_is_a_registered_tool_task_whose_longest_trace_fits_its_max_trace_length(tok):
    task = get_task("calculator")
    row = {"prompt": [{"role": "user", "content": "What is 999*999? Use the calculator."}], "answer": "998001",
           "expression": "999*999"}
    (ids, labels), = tokenize_rows(tok, [{"prompt": row["prompt"], "completion": task.trace(row)}], tools=task.tools)
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert len(ids) - first <= task.max_trace_length() < 2 * (len(ids) - first)  # the completion, tool turn included
    assert task.verify(" 998001 ", row) == 1.0 and task.verify("998000", row) == 0.0
    assert task.reward is calculator.reward and task.columns == ("answer",)
    two = get_task("calculator", digits=2).generate(3, seed=0)
    assert all(len(factor) == 2 for r in two for factor in r["expression"].split("*"))


@pytest.mark.slow
def test_a_tiny_model_sft_on_calculator_traces_calls_the_calculator_in_a_real_rollout():
    from reasonrl.evaluate import evaluate

    torch.set_num_threads(1)
    tok = build_char_tokenizer(tools=True)
    train = calculator.generate(400, seed=0)
    rows = [{"prompt": row["prompt"], "completion": calculator.trace(row)} for row in train]
    model = build_tiny_model(tok, seed=0)
    losses = sft(model, tok, rows, steps=100, batch_size=16, learning_rate=3e-3, tools=[calculator.calculator],
                 progress=False)
    assert losses[-1] < 0.15 * losses[0]
    held_out = calculator.generate(20, seed=1, exclude=train)
    report = evaluate(model, tok, held_out, calculator.reward, max_new_tokens=160, tools=[calculator.calculator],
                      max_tool_calling_iterations=1)
    # every greedy first turn is a call the rollout parses and runs (the tool answers; a second turn follows)
    assert report["tools"]["call_frequency"] == 1.0 and report["tools"]["failure_frequency"] == 0.0
    assert report["tools"]["mean_turns"] == 2.0
    assert all(example["completion"].startswith('<tool_call>{"name": "calculator", "arguments": {"expression": "')
               for example in report["examples"])
