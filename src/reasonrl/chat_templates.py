"""Chat templates a tokenizer can be given (`chat_template_path`, `reasonrl sft/eval --chat-template`).

Tool-calling rollouts need a template that renders tool schemas, tool calls and tool results; many small models'
templates render none of them (SmolLM2-Instruct's is plain ChatML). `chatml-tools` is ChatML, as those models were
trained on, extended the way Hermes and Qwen2.5 do it: the tools' JSON schemas in the system turn, a call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the form reasonrl.tools parses), a result as a `tool`
turn. A conversation without tools renders as plain ChatML. A model has not seen this format before, so teach it
first (`reasonrl sft` on tool traces) before reinforcing it.

`chat_template_path` takes one of these names, a Jinja file (.jinja/.j2), or a tokenizer (folder or hub id) whose
chat template to take, as TRL's SFTConfig.chat_template_path.
"""

from __future__ import annotations

import os

from reasonrl.errors import ModelLoadError

CHATML_TOOLS = (
    "{%- set ns = namespace(system=none) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\n' }}{% if ns.system %}{{ ns.system + '\n\n' }}{% endif %}"
    "{{ 'You may call these tools:\n' }}"
    "{%- for tool in tools -%}{{ (tool['function'] if 'function' in tool else tool) | tojson }}{{ '\n' }}"
    "{%- endfor -%}"
    "{{ 'Call one with <tool_call>{\"name\": NAME, \"arguments\": {ARGUMENTS}}</tool_call>.<|im_end|>\n' }}"
    "{%- elif ns.system is not none -%}{{ '<|im_start|>system\n' + ns.system + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and message['role'] == 'system') -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}"
    "{%- for call in (message['tool_calls'] or []) if message['tool_calls'] is defined -%}"
    "{%- set f = call['function'] if 'function' in call else call -%}"
    "{{ '<tool_call>{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}"
    "{{ (f['arguments'] if f['arguments'] is string else f['arguments'] | tojson) + '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

BUILT_IN = {"chatml-tools": CHATML_TOOLS}


def read_chat_template(spec: str, *, trust_remote_code: bool = False) -> str:
    """The template text `spec` names: a built-in name, a .jinja/.j2 file, or a tokenizer (folder or hub id)."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    if spec.endswith((".jinja", ".j2")):
        if not os.path.isfile(spec):
            raise ModelLoadError(f"chat template file {spec!r} not found; give a .jinja file, a tokenizer folder "
                                 f"or one of {sorted(BUILT_IN)}")
        with open(spec, encoding="utf-8") as handle:
            text = handle.read()
    else:
        from reasonrl.models import load_tokenizer

        text = load_tokenizer(spec, trust_remote_code=trust_remote_code).chat_template
        if not text:
            raise ModelLoadError(f"the tokenizer {spec!r} has no chat template; give a .jinja file or one of "
                                 f"{sorted(BUILT_IN)}")
    _check_jinja(spec, text)
    return text


def set_chat_template(tokenizer, spec: str | None, *, trust_remote_code: bool = False):
    """`tokenizer` with the chat template `spec` names (unchanged when spec is None); it is saved with the
    tokenizer, so checkpoints and `reasonrl sft --out` keep it."""
    if spec:
        tokenizer.chat_template = read_chat_template(spec, trust_remote_code=trust_remote_code)
    return tokenizer


def _check_jinja(spec: str, text: str) -> None:
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment().from_string(text)
    except TemplateSyntaxError as error:
        raise ModelLoadError(f"chat template {spec!r} is not valid Jinja (line {error.lineno}: {error.message}); "
                             f"fix the template") from None
