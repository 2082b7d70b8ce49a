"""Supervised fine-tuning on prompt/completion pairs: the warm start before RL.

The loss is the mean cross-entropy of the completion tokens (and the EOS that ends them); prompt tokens are
context only. Works on any causal LM, fully or with LoRA.
"""

from __future__ import annotations

import math
import random

import torch

from reasonrl.data import render_prompt


def tokenize_pairs(tokenizer, rows: list[dict], max_length: int | None = None) -> list[tuple[list[int], int]]:
    """[(token ids of prompt + completion + EOS, number of prompt tokens)] for each row."""
    pairs = []
    for row in rows:
        prompt_text = render_prompt(row["prompt"], tokenizer)
        conversational = not isinstance(row["prompt"], str)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=not conversational)["input_ids"]
        completion = row["completion"]
        if not isinstance(completion, str):  # conversational completion: [{"role": "assistant", "content": ...}]
            completion = "".join(message["content"] for message in completion)
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt_ids + completion_ids
        if max_length is not None:
            ids = ids[:max_length]
        pairs.append((ids, len(prompt_ids)))
    return pairs


def _collate(pairs, pad_id: int, device):
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(pairs), width, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, prompt_length: len(ids)] = torch.tensor(ids[prompt_length:])
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def sft(model, tokenizer, rows: list[dict], *, steps: int | None = None, epochs: float = 1.0, batch_size: int = 32,
        learning_rate: float = 1e-3, warmup_ratio: float = 0.05, weight_decay: float = 0.0,
        max_length: int | None = None, seed: int = 0, progress: bool = True, callback=None,
        callback_every: int = 0) -> list[float]:
    """Train `model` in place on rows {prompt, completion}; returns the loss of every step.

    `steps` (if given) overrides `epochs`. AdamW with linear warmup and cosine decay. `callback(step, model)` runs
    every `callback_every` steps (e.g. to evaluate); training stops early when it returns True.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    pairs = tokenize_pairs(tokenizer, rows, max_length)
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
