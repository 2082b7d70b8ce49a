"""Supervised fine-tuning on prompt/completion pairs: the warm start before RL.

The loss is the mean cross-entropy of the completion tokens (and the EOS that ends them); prompt tokens are
context only. Works on any causal LM, fully or with LoRA.

A completion may be a whole tool-calling exchange, TRL's completion messages: assistant turns (with `tool_calls`)
and the `tool` messages answering them. Such a row is rendered with the chat template (with the tools' schemas),
and only the assistant turns carry loss, each through the EOS that closes it: tool results and the template's
role headers are context. That is what a multi-turn rollout (tools.py) samples: its turns end at EOS, and what
the template writes after an EOS (a newline, the tool turn, the next assistant header) is appended as tool tokens.
The turns are found by rendering prefixes of the conversation, so any prefix-preserving template works.
"""

from __future__ import annotations

import math
import random

import torch

from reasonrl.data import render_prompt
from reasonrl.errors import DataError, ToolError, reason_of


def needs_template(completion) -> bool:
    """A completion trained through the chat template: several messages, a tool call or a tool message. (A plain
    string or one assistant message is trained as its text + EOS, as before tools.)"""
    if isinstance(completion, str) or not isinstance(completion, list):
        return False
    return len(completion) > 1 or any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool")
                                      for m in completion)


def tokenize_rows(tokenizer, rows: list[dict], max_length: int | None = None,
                  tools=None) -> list[tuple[list[int], list[int]]]:
    """[(token ids, labels)] for each row: labels are the ids where the loss is, -100 on context.

    `tools`: the tools (functions, specs or JSON schemas) whose schemas the chat template renders into
    conversational prompts; a row's own `tools` (a column, as in TRL's datasets) replaces them for that row."""
    default_schemas = _schemas(tools)
    checked = False
    examples = []
    for index, row in enumerate(rows):
        schemas = _schemas(row["tools"]) if row.get("tools") is not None else default_schemas
        if needs_template(row["completion"]):
            if not checked:
                check_tool_template(tokenizer)
                checked = True
            ids, labels = _conversation_labels(tokenizer, row, schemas, index)
        else:
            ids, labels = _pair_labels(tokenizer, row, schemas)
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        examples.append((ids, labels))
    return examples


def tokenize_pairs(tokenizer, rows: list[dict], max_length: int | None = None) -> list[tuple[list[int], int]]:
    """[(token ids of prompt + completion + EOS, number of prompt tokens)] for each row (for a tool conversation:
    the number of tokens before the first trained one)."""
    pairs = []
    for ids, labels in tokenize_rows(tokenizer, rows, max_length):
        pairs.append((ids, next((i for i, label in enumerate(labels) if label != -100), len(ids))))
    return pairs


def _pair_labels(tokenizer, row: dict, schemas) -> tuple[list[int], list[int]]:
    prompt_text = render_prompt(row["prompt"], tokenizer, schemas)
    conversational = not isinstance(row["prompt"], str)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=not conversational)["input_ids"]
    completion = row["completion"]
    if not isinstance(completion, str):  # conversational completion: [{"role": "assistant", "content": ...}]
        completion = "".join(message["content"] for message in completion)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def _conversation_labels(tokenizer, row: dict, schemas, index: int) -> tuple[list[int], list[int]]:
    """The row's prompt + completion messages rendered by the chat template, and labels on its assistant turns.

    An assistant message i is trained from the end of render(messages[:i], add_generation_prompt=True) (its
    header is context) to the last EOS of render(messages[:i+1]) (what follows the EOS is the template's, as
    tool_suffix_ids cuts it). Tokens after the last assistant turn are dropped: a rollout ends at that EOS."""
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        raise DataError(f"row {index}: a completion of several messages or tool calls needs a conversational prompt "
                        f"(a list of {{role, content}} messages), got the text {prompt!r:.60}")
    for message in completion:
        if not isinstance(message, dict) or message.get("role") not in ("assistant", "tool"):
            raise DataError(f"row {index}: a completion's messages must be assistant or tool messages, got "
                            f"{message!r:.80}")
    messages = list(prompt) + list(completion)

    def tokens(part: list[dict], generation_prompt: bool) -> list[int]:
        try:
            text = tokenizer.apply_chat_template(part, tools=schemas or None, tokenize=False,
                                                 add_generation_prompt=generation_prompt)
        except Exception as error:  # noqa: BLE001 - jinja's TemplateError and whatever the template raises
            raise DataError(f"row {index}: the chat template fails on its conversation ({reason_of(error, 150)}); "
                            f"check the row's messages") from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full = tokens(messages, False)
    labels = [-100] * len(full)
    end = 0
    for i in range(len(prompt), len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        head, turn = tokens(messages[:i], True), tokens(messages[: i + 1], False)
        if full[: len(head)] != head or full[: len(turn)] != turn:
            raise ToolError("the chat template renders a conversation's earlier messages differently once later "
                            "messages follow; training on multi-turn completions needs a prefix-preserving template")
        eos = [k for k in range(len(head), len(turn)) if turn[k] == tokenizer.eos_token_id]
        end = eos[-1] + 1 if eos else len(turn)
        labels[len(head): end] = full[len(head): end]
    if not end:
        raise DataError(f"row {index}: the completion has no assistant message to train on")
    return full[:end], labels[:end]


def _schemas(tools) -> list[dict] | None:
    """JSON schemas of `tools`: functions and specs described by tools.tool_schemas, schemas (dicts) as they are."""
    if not tools:
        return None
    from reasonrl.tools import load_tools, tool_schemas

    tools = [tools] if callable(tools) or isinstance(tools, (str, dict)) else list(tools)
    functions = load_tools([tool for tool in tools if not isinstance(tool, dict)])
    described = iter(tool_schemas(functions))
    return [tool if isinstance(tool, dict) else next(described) for tool in tools]


def check_tool_template(tokenizer) -> None:
    from reasonrl.tools import check_tool_template as check

    try:
        check(tokenizer)
    except ToolError as error:
        raise ToolError(f"the SFT rows hold tool calls, but {error}") from None


def _collate(examples, pad_id: int, device):
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (ids, row_labels) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor(row_labels)
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def sft(model, tokenizer, rows: list[dict], *, steps: int | None = None, epochs: float = 1.0, batch_size: int = 32,
        learning_rate: float = 1e-3, warmup_ratio: float = 0.05, weight_decay: float = 0.0,
        max_length: int | None = None, seed: int = 0, progress: bool = True, callback=None,
        callback_every: int = 0, tools=None) -> list[float]:
    """Train `model` in place on rows {prompt, completion}; returns the loss of every step.

    A completion may be TRL's messages of a tool-calling exchange (see the module's docstring); `tools` (functions,
    'module:function' specs or JSON schemas) are rendered into conversational prompts, as training with
    `tools=` renders them (a row's `tools` column replaces them for that row).

    `steps` (if given) overrides `epochs`. AdamW with linear warmup and cosine decay. `callback(step, model)` runs
    every `callback_every` steps (e.g. to evaluate); training stops early when it returns True.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    pairs = tokenize_rows(tokenizer, rows, max_length, tools)
    if not pairs:
        raise ValueError("no training rows for sft")
    total = steps if steps is not None else max(1, math.ceil(epochs * len(pairs) / batch_size))
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total), total)
    shuffler = random.Random(seed)
    order: list[int] = []
    losses = []
    model.train()
    bar = tqdm(range(total), desc="SFT", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if len(order) < batch_size:
            fresh = list(range(len(pairs)))
            shuffler.shuffle(fresh)
            order += fresh
        batch, order = [pairs[i] for i in order[:batch_size]], order[batch_size:]
        input_ids, attention_mask, labels = _collate(batch, tokenizer.pad_token_id, device)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            stop = callback(step + 1, model)
            model.train()
            if stop:  # the callback decides when the warm start is good enough
                break
    model.eval()
    return losses
