"""Per-token log-probabilities and entropies from logits, light on memory and on passes over the vocabulary.

A full-vocabulary fp32 log-softmax of a [B, T, V] batch is the largest tensor of a GRPO step (49k vocab x 8 x 160
tokens = 250 MB). We only need one or two numbers per token, so `token_logprobs` works on chunks of rows and has
its own backward: log p(x) = logit(x) / T - logsumexp(logits / T), and its gradient with respect to the logits is
(onehot(x) - softmax(logits / T)) / T, computed from the logits and the saved logsumexp in one pass. Through
autograd the same maths costs a float copy, a log-softmax, a gather, their backwards (a zero fill, a scatter and
several passes) and, for the entropy metric, a second log-softmax: about three times the passes over [rows, V].
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 512
CHUNK_ELEMENTS = 1 << 23  # token_logprobs' default chunk: 8M logits (32 MB in fp32), e.g. 170 positions of a 49k vocab


def _chunks(logits: torch.Tensor, chunk_rows: int):
    """(batch rows, columns) slices of [B, T, V] logits covering at most about chunk_rows positions each: whole
    batch rows at a time when T <= chunk_rows, else pieces of one row. Indexing with them gives views (no copy),
    also of a strided tensor such as the model's logits[:, :-1]."""
    batch, length, _ = logits.shape
    if length <= chunk_rows:
        step = max(1, chunk_rows // max(1, length))
        for start in range(0, batch, step):
            yield slice(start, start + step), slice(None)
        return
    for row in range(batch):
        for start in range(0, length, chunk_rows):
            yield slice(row, row + 1), slice(start, start + chunk_rows)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, token_ids, temperature: float, chunk_rows: int, with_entropy: bool):
        batch, length, _ = logits.shape
        logps = torch.empty(batch, length, dtype=torch.float32, device=logits.device)
        logsumexp = torch.empty_like(logps)
        entropy = torch.empty_like(logps) if with_entropy else None
        for rows, columns in _chunks(logits, chunk_rows):
            scaled = logits[rows, columns].float()  # [n, c, V]: a copy for bf16, a view for fp32 (not modified below)
            if temperature != 1.0:
                scaled = scaled / temperature
            peak = scaled.amax(-1, keepdim=True)
            exp = (scaled - peak).exp_()  # [n, c, V]
            total = exp.sum(-1)
            lse = peak.squeeze(-1) + total.log()
            logsumexp[rows, columns] = lse
            logps[rows, columns] = scaled.gather(-1, token_ids[rows, columns, None]).squeeze(-1) - lse
            if with_entropy:  # H = logsumexp - sum_j p_j x_j
                entropy[rows, columns] = lse - (exp.mul_(scaled)).sum(-1) / total
        ctx.save_for_backward(logits, token_ids, logsumexp, entropy)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        ctx.set_materialize_grads(False)  # a gradient that does not reach an output stays None: nothing to add
        return (logps, entropy) if with_entropy else logps

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy=None):
        logits, token_ids, logsumexp, entropy = ctx.saved_tensors
        temperature = ctx.temperature
        if grad_logps is None and grad_entropy is None:
            return None, None, None, None, None
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for rows, columns in _chunks(logits, ctx.chunk_rows):
            scaled = logits[rows, columns].float()
            if temperature != 1.0:
                scaled = scaled / temperature
            log_probs = scaled - logsumexp[rows, columns, None]  # [n, c, V] (scaled may be a view of the logits)
            piece = log_probs.exp()  # softmax p
            if grad_entropy is not None:  # dH/dx_j = -p_j (log p_j + H), H the entropy (the entropy bonus)
                weight_h = grad_entropy[rows, columns, None].float() / temperature  # [n, c, 1]
                piece_h = (log_probs + entropy[rows, columns, None]).mul_(piece).mul_(-weight_h)
            if grad_logps is not None:  # d logp / d logits = (onehot - softmax) / T, times the incoming gradient
                weight = grad_logps[rows, columns, None].float() / temperature  # [n, c, 1]
                piece.mul_(-weight)
                piece.scatter_add_(-1, token_ids[rows, columns, None], weight)
                if grad_entropy is not None:
                    piece.add_(piece_h)
            else:
                piece = piece_h
            grad[rows, columns] = piece
        return grad, None, None, None, None


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, chunk_rows: int | None = None,
    with_entropy: bool = False,
):
    """log softmax(logits / temperature) at `token_ids`.  logits [B, T, V] (any strides), token_ids [B, T] -> [B, T]
    fp32; with `with_entropy`, also the entropy [B, T] of softmax(logits / temperature), differentiable too (the
    entropy bonus, entropy_coef); where only one of them reaches the loss, the backward computes that one's gradient.

    Differentiable in the logits, with the backward described in the module docstring. Chunks of about `chunk_rows`
    positions (default: CHUNK_ELEMENTS / V) are upcast to fp32 one at a time, so the extra memory is two fp32
    chunks, not B x T x V floats.
    """
    if logits.size(0) * logits.size(1) == 0:
        empty = logits.new_zeros(logits.shape[:2], dtype=torch.float32)
        return (empty, empty.clone()) if with_entropy else empty
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // logits.size(-1))
    return _TokenLogprobs.apply(logits, token_ids, float(temperature), chunk_rows, with_entropy)


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
