"""Per-token log-probabilities and entropies from logits, light on memory.

A full-vocabulary fp32 log-softmax of a [B, T, V] batch is the largest tensor of a GRPO step (49k vocab x 8 x 160
tokens = 250 MB). We only need one number per token, so rows are processed in chunks: log p(x) = logit(x) - logsumexp.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 512


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, chunk_rows: int = CHUNK_ROWS
) -> torch.Tensor:
    """log softmax(logits / temperature) at `token_ids`.  logits [B, T, V], token_ids [B, T] -> [B, T] (fp32).

    Differentiable. Each chunk of `chunk_rows` rows is upcast to fp32 on its own, so the peak extra memory is
    chunk_rows x V floats instead of B x T x V.
    """
    batch, length, vocab = logits.shape
    flat_logits = logits.reshape(-1, vocab)  # [B*T, V]
    flat_ids = token_ids.reshape(-1, 1)  # [B*T, 1]
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = flat_logits[start : start + chunk_rows].float()
        if temperature != 1.0:
            rows = rows / temperature
        chosen = rows.gather(-1, flat_ids[start : start + chunk_rows]).squeeze(-1)
        pieces.append(chosen - torch.logsumexp(rows, dim=-1))
    if not pieces:
        return logits.new_zeros(batch, length, dtype=torch.float32)
    return torch.cat(pieces).view(batch, length)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position.  logits [B, T, V] -> [B, T] (fp32)."""
    batch, length, vocab = logits.shape
    flat_logits = logits.reshape(-1, vocab)
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = flat_logits[start : start + chunk_rows].float()
        if temperature != 1.0:
            rows = rows / temperature
        log_probs = torch.log_softmax(rows, dim=-1)
        pieces.append(-(log_probs.exp() * log_probs).sum(-1))
    if not pieces:
        return logits.new_zeros(batch, length, dtype=torch.float32)
    return torch.cat(pieces).view(batch, length)
