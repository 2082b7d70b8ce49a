"""Rollouts: G sampled completions per prompt, with the log-probs the loss needs.

The decode loop is our own (not `generate`) so that it can prefill each prompt once and share its KV cache over
the G samples, stop as soon as every sequence has ended, and record the log-probability of each sampled token at
the sampling temperature, which is what the training forward recomputes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from reasonrl.core import token_logprobs
from reasonrl.lean_decode import LeanDecoder
from reasonrl.models import unwrap_model


@dataclass
class Rollout:
    """One generation round. B = prompts x G rows, grouped consecutively by prompt."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 on prompt tokens
    completion_ids: torch.Tensor  # [B, C] right-padded with pad_token_id
    completion_mask: torch.Tensor  # [B, C] 1 up to and including the first EOS
    sampling_logps: torch.Tensor  # [B, C] log p(token) at the sampling temperature, unfiltered, at sampling time
    is_truncated: torch.Tensor  # [B] no EOS within max_completion_length
    texts: list[str] = field(default_factory=list)  # decoded completions (special tokens removed)

    @property
    def completion_lengths(self) -> torch.Tensor:  # [B]
        return self.completion_mask.sum(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at 0 like an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering of [B, V] logits (removed entries become -inf), as HF's warpers do."""
    if top_k and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on tokens already in the sequence (seen [B, V] bool): divide positive logits, multiply
    negative ones."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _last_position(prompt_ids: torch.Tensor) -> torch.Tensor:
    """logits_to_keep for the last prompt column only, as an index tensor rather than the int 1: with one prompt
    the int's slice makes a [1, 1, hidden] view that torch.matmul sends through bmm with a copy of the expanded
    [1, hidden, vocab] weight (65 ms for a 49k vocabulary on the project's machine); an index makes a plain mm."""
    return torch.tensor([prompt_ids.size(1) - 1], device=prompt_ids.device)


def _cache_keyword(model) -> str:
    """Newer transformers call the KV cache argument `cache`; older ones `past_key_values`."""
    return "cache" if "cache" in inspect.signature(type(unwrap_model(model)).forward).parameters else "past_key_values"


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class ModelDecoder:
    """The generic path: `model.forward` with transformers' KV cache, prefilled once per prompt and repeated G times."""

    def __init__(self, model):
        self.model = model
        self.cache_keyword = _cache_keyword(model)

    def prefill(self, prompt_ids, prompt_mask, positions, num_generations: int, max_new_tokens: int) -> torch.Tensor:
        out = self.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=_last_position(prompt_ids))
        self.cache = _output_cache(out)
        if num_generations > 1:
            self.cache.batch_repeat_interleave(num_generations)
        self.attention_mask = prompt_mask.repeat_interleave(num_generations, dim=0)  # [B, P]
        self.next_position = positions[:, -1:].repeat_interleave(num_generations, dim=0) + 1  # [B, 1]
        return out.logits[:, -1].float().repeat_interleave(num_generations, dim=0)  # [B, V]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(token.size(0), 1, dtype=self.attention_mask.dtype, device=token.device)
        self.attention_mask = torch.cat([self.attention_mask, ones], 1)
        out = self.model(input_ids=token[:, None], attention_mask=self.attention_mask, position_ids=self.next_position,
                         use_cache=True, **{self.cache_keyword: self.cache})
        self.cache = _output_cache(out)
        self.next_position = self.next_position + 1
        return out.logits[:, -1].float()

    def close(self) -> None:
        self.cache = None


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    num_generations: int,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    seeds: list[int] | None = None,
    lean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample `num_generations` completions for each of the prompts (prompt_ids [N, P], left-padded).

    Randomness: with `seeds` (one int per prompt), prompt i's samples come from its own generator seeded with
    seeds[i] (inverse-CDF sampling from uniforms drawn up front), so they do not depend on which other prompts share
    the batch, or on which process of a distributed run draws them. Otherwise the uniforms come from `generator`.
    The model runs through lean_decode.LeanDecoder (merged LoRA, fused projections, static cache) when it supports
    the architecture and `lean` is true, else through its own forward with transformers' cache (ModelDecoder).

    Returns completion_ids [N*G, C], completion_mask [N*G, C], sampling_logps [N*G, C], is_truncated [N*G].
    Rows are grouped by prompt: rows i*G .. i*G+G-1 belong to prompt i.
    """
    device = prompt_ids.device
    eos_ids = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    g = num_generations
    positions = position_ids_from_mask(prompt_mask)  # [N, P]
    decoder = None
    if lean:
        autocast = torch.is_autocast_enabled(device.type)
        decoder = LeanDecoder.build(model, torch.get_autocast_dtype(device.type) if autocast else None)
    decoder = decoder or ModelDecoder(model)
    # each prompt is prefilled once; its keys and values serve its G samples
    logits = decoder.prefill(prompt_ids, prompt_mask, positions, g, max_new_tokens)  # [B, V]
    batch = logits.size(0)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch, logits.size(-1), dtype=torch.bool, device=device)
        seen.scatter_(1, (prompt_ids * prompt_mask).repeat_interleave(g, dim=0), prompt_mask.bool().repeat_interleave(g, 0))
    # sampling by inverse CDF from uniforms drawn up front: one draw per row per step, from the prompt's own seed or
    # from `generator` (cheaper than torch.multinomial's exponential draw over the whole vocabulary)
    uniforms = None  # [B, max_new_tokens]
    if not greedy:
        if seeds is not None:
            if len(seeds) != prompt_ids.size(0):
                raise ValueError(f"seeds has {len(seeds)} entries for {prompt_ids.size(0)} prompts; give one per prompt")
            uniforms = torch.cat([torch.rand(g, max_new_tokens, generator=torch.Generator().manual_seed(int(seed)),
                                             dtype=torch.float64) for seed in seeds])
        else:
            uniforms = torch.rand(batch, max_new_tokens, generator=generator, dtype=torch.float64)
        uniforms = uniforms.to(device)

    tokens, logps = [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # without a penalty or filter the sampling distribution is the one whose log-probs are recorded
    unfiltered = repetition_penalty == 1.0 and not (top_k and 0 < top_k < logits.size(-1)) and top_p >= 1.0
    for step in range(max_new_tokens):
        scaled = logits / temperature if temperature > 0 and temperature != 1.0 else logits
        log_probs = torch.log_softmax(scaled, dim=-1)  # what training recomputes: no penalty, no filtering
        if greedy:
            token = logits.argmax(-1)
        else:
            if unfiltered:
                probs = log_probs.exp()  # = softmax(logits / temperature), one pass instead of three
            else:
                sampling_logits = logits if seen is None else _apply_repetition_penalty(logits, seen,
                                                                                        repetition_penalty)
                probs = _filter_logits(sampling_logits / temperature, top_k, top_p).softmax(-1)  # [B, V]
            # the first token whose cumulative probability passes u (a zero-probability token never does)
            cdf = torch.cumsum(probs, -1, dtype=torch.float64)  # [B, V]
            target = uniforms[:, step:step + 1] * cdf[:, -1:]
            token = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.size(-1) - 1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        logps.append(log_probs.gather(-1, token[:, None]).squeeze(-1))
        if seen is not None:
            seen[torch.arange(batch, device=device), token] = True
        finished = finished | torch.isin(token, eos_ids)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        logits = decoder.step(token)
    decoder.close()

    completion_ids = torch.stack(tokens, dim=1)  # [B, C]
    sampling_logps = torch.stack(logps, dim=1)  # [B, C]
    is_eos = torch.isin(completion_ids, eos_ids)
    has_eos = is_eos.any(-1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, completion_ids.size(1), dtype=torch.long))
    completion_mask = (torch.arange(completion_ids.size(1), device=device)[None] <= first_eos[:, None]).long()
    return completion_ids, completion_mask, sampling_logps * completion_mask, ~has_eos


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      share_prompts: bool = False) -> torch.Tensor:
    """Logits [B, C, V] that predict each completion token, with positions counted over real tokens.

    Only the C+1 last positions are projected to the vocabulary (logits_to_keep), not the prompt's. With
    `share_prompts`, rows with the same prompt run it once (the idea of Prefix Grouper, arXiv 2506.05433): a
    forward over the U distinct prompts fills a KV cache, still attached to the graph, that the completions of all B
    rows attend to, so the gradients are those of the unshared computation and the prompt tokens cost U rows, not B.
    """
    return torch.cat(_completion_logit_pieces(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                              share_prompts), dim=1)


def _completion_logit_pieces(model, prompt_ids, prompt_mask, completion_ids, completion_mask, share_prompts):
    """completion_logits as pieces along the columns (views, no concatenation of [B, C, V])."""
    if share_prompts:
        distinct = distinct_prompts(prompt_ids, prompt_mask)
        if distinct[1].numel() < prompt_ids.size(0):  # some rows share a prompt
            prefix = PromptPrefix(model, prompt_ids, prompt_mask, cut_graph=False, distinct=distinct)
            return prefix.completion_logit_pieces(slice(None), completion_ids, completion_mask)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+C]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return [model(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                  logits_to_keep=completion_ids.size(1) + 1).logits[:, :-1]]


def _logprobs_of_pieces(pieces, completion_ids, temperature: float, with_entropy: bool):
    """token_logprobs over logit pieces [B, c_i, V] that cover the completion's C columns in order."""
    results, start = [], 0
    for piece in pieces:
        columns = slice(start, start + piece.size(1))
        results.append(token_logprobs(piece, completion_ids[:, columns], temperature, with_entropy=with_entropy))
        start = columns.stop
    if not with_entropy:
        return torch.cat(results, dim=1)
    return torch.cat([r[0] for r in results], dim=1), torch.cat([r[1] for r in results], dim=1)


def distinct_prompts(prompt_ids, prompt_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_prompt [B], first_row [U]): which of the U distinct prompts each row holds (its tokens and padding),
    and the first row holding each."""
    keyed = prompt_ids.masked_fill(prompt_mask == 0, -1)
    distinct, row_prompt = torch.unique(keyed, dim=0, return_inverse=True)  # [U, P], [B]
    rows = torch.arange(keyed.size(0), device=keyed.device)
    first_row = torch.full((distinct.size(0),), keyed.size(0), dtype=torch.long, device=keyed.device)
    return row_prompt, first_row.scatter_reduce(0, row_prompt, rows, "amin")


class PromptPrefix:
    """A micro-batch's prompts run once, so that its completions can go through forward and backward a few rows at
    a time (activation memory of a chunk, not of the micro-batch), still computing each distinct prompt only once.

    The prompts' KV cache and last logits are cut from the graph into leaf tensors; each chunk's completions attend
    to them and its backward accumulates their gradients; `backward()` then sends those through the prompts'
    forward. The sum over chunks is the gradient of the whole micro-batch, as the loss is a sum over rows.
    With `cut_graph=False` the cache stays in the graph: one forward and one backward of all the rows
    (completion_logits(share_prompts=True)), and `backward()` has nothing to do.
    """

    def __init__(self, model, prompt_ids, prompt_mask, cut_graph: bool = True, distinct=None):
        self.model, self.prompt_width = model, prompt_ids.size(1)
        self.row_prompt, first_row = distinct or distinct_prompts(prompt_ids, prompt_mask)  # [B], [U]
        self.prompt_mask = prompt_mask
        unique_mask = prompt_mask[first_row]
        out = model(input_ids=prompt_ids[first_row], attention_mask=unique_mask,
                    position_ids=position_ids_from_mask(unique_mask), use_cache=True,
                    logits_to_keep=_last_position(prompt_ids))
        cache = _output_cache(out)
        self.outputs = [t for layer in cache.layers for t in (layer.keys, layer.values)] + [out.logits[:, -1:]]
        if cut_graph:
            grad = torch.is_grad_enabled()
            self.leaves = [t.detach().requires_grad_(grad) for t in self.outputs]  # [U, ...] each
        else:
            self.leaves = self.outputs

    def completion_logits(self, rows: slice, completion_ids, completion_mask) -> torch.Tensor:
        """Logits [n, C, V] predicting the completion tokens of rows `rows` (completion_ids [n, C] are theirs)."""
        return torch.cat(self.completion_logit_pieces(rows, completion_ids, completion_mask), dim=1)

    def completion_logprobs(self, rows: slice, completion_ids, completion_mask, temperature: float = 1.0,
                            with_entropy: bool = False):
        """Log-probs [n, C] of the completion tokens of rows `rows` at `temperature` (and their entropies [n, C])."""
        pieces = self.completion_logit_pieces(rows, completion_ids, completion_mask)
        return _logprobs_of_pieces(pieces, completion_ids, temperature, with_entropy)

    def completion_logit_pieces(self, rows: slice, completion_ids, completion_mask) -> list[torch.Tensor]:
        """completion_logits as [n, 1, V] (from the prompt's last position) and [n, C-1, V], not concatenated."""
        prompt_of_row = self.row_prompt[rows]  # [n]
        *kv, first = [leaf[prompt_of_row] for leaf in self.leaves]
        cache = DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2])), config=unwrap_model(self.model).config)
        attention_mask = torch.cat([self.prompt_mask[rows], completion_mask], dim=1)  # [n, P+C]
        out = self.model(input_ids=completion_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask)[:, self.prompt_width:], use_cache=True,
                         logits_to_keep=completion_ids.size(1), **{_cache_keyword(self.model): cache})
        return [first, out.logits[:, :-1]]

    def backward(self) -> None:
        """Send the gradients the chunks left on the prompts' cache and logits through the prompts' forward."""
        pairs = [(out, leaf.grad) for out, leaf in zip(self.outputs, self.leaves)
                 if out is not leaf and leaf.grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        self.outputs = self.leaves = []


def sequence_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float = 1.0,
                      share_prompts: bool = False, with_entropy: bool = False):
    """Log-probs [B, C] of the completion tokens under `model`, at `temperature`: what the loss uses; with
    `with_entropy`, also the entropies [B, C] of those positions' distributions. `share_prompts` as in
    completion_logits."""
    pieces = _completion_logit_pieces(model, prompt_ids, prompt_mask, completion_ids, completion_mask, share_prompts)
    return _logprobs_of_pieces(pieces, completion_ids, temperature, with_entropy)
