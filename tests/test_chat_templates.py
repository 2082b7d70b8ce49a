"""chat_templates.py and chat_template_path: the built-in ChatML-with-tools template renders a tool exchange exactly,
plain conversations as plain ChatML; a template given by name, file or tokenizer reaches the trainer, `reasonrl sft`
(saved with the model) and `reasonrl eval`; every wrong spec is one error line."""

import pytest
from cli_helpers import assert_one_line_error, run_main
from datasets import Dataset

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.chat_templates import CHATML_TOOLS, read_chat_template, set_chat_template
from reasonrl.errors import ModelLoadError, ToolError
from reasonrl.tasks import calculator
from reasonrl.tiny import CHAT_TEMPLATE, build_char_tokenizer, build_tiny_model
from reasonrl.tools import check_tool_template, tool_schemas

SCHEMA_LINE = ('{"name": "calculator", "description": "Compute an arithmetic expression (whole numbers, + - * /, '
               'parentheses).", "parameters": {"type": "object", "properties": {"expression": {"type": "string", '
               '"description": "the expression, e.g. 4821*377"}}, "required": ["expression"]}, '
               '"return": {"type": "string"}}')


@pytest.fixture
def tok():
    return build_char_tokenizer()  # plain ChatML: renders no tools


def test_a_tool_exchange_renders_exactly(tok):
    set_chat_template(tok, "chatml-tools")
    row = {"prompt": [{"role": "user", "content": "What is 12*34? Use the calculator."}], "answer": "408",
           "expression": "12*34"}
    messages = [{"role": "system", "content": "Be brief."}, *row["prompt"], *calculator.trace(row)]
    text = tok.apply_chat_template(messages, tools=tool_schemas([calculator.calculator]), tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.\n\nYou may call these tools:\n" + SCHEMA_LINE + "\n"
        'Call one with <tool_call>{"name": NAME, "arguments": {ARGUMENTS}}</tool_call>.<|im_end|>\n'
        "<|im_start|>user\nWhat is 12*34? Use the calculator.<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}'
        "</tool_call><|im_end|>\n"
        "<|im_start|>tool\n408<|im_end|>\n"
        "<|im_start|>assistant\n408<|im_end|>\n")
    check_tool_template(tok)  # renders calls and results, prefix-preserving


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}],
])
def test_without_tools_it_is_plain_chatml(tok, messages):
    plain = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.chat_template == CHAT_TEMPLATE
    set_chat_template(tok, "chatml-tools")
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == plain


def test_file_and_tokenizer_specs(tok, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert read_chat_template(str(path)) == path.read_text()
    other = build_char_tokenizer(tools=True)
    other.save_pretrained(tmp_path / "tk")
    assert read_chat_template(str(tmp_path / "tk")) == other.chat_template
    assert set_chat_template(tok, None).chat_template == CHAT_TEMPLATE  # None: unchanged


@pytest.mark.parametrize("spec, phrase", [
    ("missing.jinja", "not found"),
    ("BAD", r"is not valid Jinja \(line 1"),
    ("NOTEMPLATE", "has no chat template"),
])
def test_wrong_specs_are_one_line_errors(tmp_path, spec, phrase):
    if spec == "BAD":
        spec = str(tmp_path / "bad.jinja")
        (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m }")
    elif spec == "NOTEMPLATE":
        plain = build_char_tokenizer()
        plain.chat_template = None
        plain.save_pretrained(tmp_path / "tk")
        spec = str(tmp_path / "tk")
    with pytest.raises(ModelLoadError, match=phrase) as error:
        read_chat_template(spec)
    assert "\n" not in str(error.value)


def test_the_trainer_takes_chat_template_path(tok, tmp_path):
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in calculator.generate(4, 0, digits=2)]
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0)

    def config(**extra):
        return GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=2, per_device_train_batch_size=2,
                          max_completion_length=16, report_to="none", **extra)

    with pytest.raises(ToolError, match="does not render tool calls"):
        GRPOTrainer(model, [calculator.reward], args=config(), train_dataset=Dataset.from_list(rows),
                    processing_class=build_char_tokenizer(), tools=[calculator.calculator])
    trainer = GRPOTrainer(model, [calculator.reward], args=config(chat_template_path="chatml-tools"),
                          train_dataset=Dataset.from_list(rows), processing_class=build_char_tokenizer(),
                          tools=[calculator.calculator])
    assert trainer.processing_class.chat_template == CHATML_TOOLS
    assert "You may call these tools" in trainer.processing_class.apply_chat_template(
        rows[0]["prompt"], tools=tool_schemas([calculator.calculator]), tokenize=False)


def test_cli_sft_saves_the_template_and_eval_refuses_a_bad_one(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": [{"role": "user", "content": "2+2"}], "completion": "4", "answer": "4"}\n' * 4)
    code, err = run_main(capsys, ["sft", "--data", data, "--out", tmp_path / "m", "--steps", "1", "--batch-size",
                                  "2", "--chat-template", "chatml-tools"])
    assert code == 0, err[-2000:]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "m").chat_template == CHATML_TOOLS
    code, err = run_main(capsys, ["eval", tmp_path / "m", "--data", data, "--n", "2", "--chat-template",
                                  tmp_path / "nope.jinja"])
    assert_one_line_error(code, err, "eval", ["nope.jinja", "not found"])
