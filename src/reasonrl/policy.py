"""The policy's training forward: log-probs of given completions under the model, with their gradient.

`sequence_logprobs` is the one way to get a completion's per-token log-probs. Rows that share a prompt (a group's
G completions) compute it once: `PromptPrefix` runs the distinct prompts, keeps their KV cache, and the completions
attend to it through `ReadOnlyPrefixCache`, so the gradient is that of the unshared computation. That cache is never
written, so the completions' decoder layers may be recomputed in the backward (activation checkpointing) with the
cache in place, while the prompts' forward, which writes it, runs without checkpointing (`layers_not_checkpointed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from reasonrl.core import token_logprobs
from reasonrl.models import attributes_set, unwrap_model

logger = logging.getLogger("reasonrl")

def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at 0 like an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_position(prompt_ids: torch.Tensor) -> torch.Tensor:
    """logits_to_keep for the last prompt column only, as an index tensor rather than the int 1: with one prompt
    the int's slice makes a [1, 1, hidden] view that torch.matmul sends through bmm with a copy of the expanded
    [1, hidden, vocab] weight (65 ms for a 49k vocabulary on the project's machine); an index makes a plain mm."""
    return torch.tensor([prompt_ids.size(1) - 1], device=prompt_ids.device)


def cache_keyword(model) -> str:
    """Newer transformers call the KV cache argument `cache`; older ones `past_key_values`."""
    return "cache" if "cache" in inspect.signature(type(unwrap_model(model)).forward).parameters else "past_key_values"


def output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class ReadOnlyPrefixCache(DynamicCache):
    """A prompt's KV cache that completions attend to but never extend: `update` returns the prompt's keys and values
    followed by the new ones, and stores nothing. Calling a layer twice (a decoder layer recomputed in the backward,
    activation checkpointing) then sees the same cache again, which a growing cache would not allow."""

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def checkpointing_modules(model) -> list:
    """The modules of `model` with a gradient_checkpointing switch: transformers' decoder layers and their model."""
    return [module for module in unwrap_model(model).modules() if hasattr(module, "gradient_checkpointing")
            and isinstance(module.gradient_checkpointing, bool)]


def enable_layer_checkpointing(model) -> None:
    """Recompute decoder layers in the backward (transformers' gradient checkpointing, non-reentrant), keeping the
    KV cache passed to them: the training forward passes them only ReadOnlyPrefixCache, which a recompute may read
    again; the prompts' forward, which fills a cache, runs unchecked (`layers_not_checkpointed(model)`)."""
    unwrap_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in checkpointing_modules(model):
        if hasattr(module, "_can_checkpoint_with_cache"):
            module._can_checkpoint_with_cache = True


def disable_layer_checkpointing(model) -> None:
    model = unwrap_model(model)
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()


@contextlib.contextmanager
def layers_not_checkpointed(model):
    """Within: no decoder layer recomputes in the backward (for a forward that fills a KV cache)."""
    with attributes_set(checkpointing_modules(model), "gradient_checkpointing", False):
        yield


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
        cache = DynamicCache(config=unwrap_model(model).config)
        with layers_not_checkpointed(model):  # this forward fills the cache: a recompute would fill it twice
            out = model(input_ids=prompt_ids[first_row], attention_mask=unique_mask,
                        position_ids=position_ids_from_mask(unique_mask), use_cache=False,
                        logits_to_keep=last_position(prompt_ids), **{cache_keyword(model): cache})
        self.outputs = [t for layer in cache.layers for t in (layer.keys, layer.values)] + [out.logits[:, -1:]]
        if cut_graph:
            grad = torch.is_grad_enabled()
            # a cache entry no trainable weight produced (layer 0's keys when LoRA leaves k_proj alone) needs no grad
            self.leaves = [t.detach().requires_grad_(grad and t.requires_grad) for t in self.outputs]  # [U, ...]
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
        cache = ReadOnlyPrefixCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2])),
                                    config=unwrap_model(self.model).config)
        attention_mask = torch.cat([self.prompt_mask[rows], completion_mask], dim=1)  # [n, P+C]
        out = self.model(input_ids=completion_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask)[:, self.prompt_width:], use_cache=False,
                         logits_to_keep=completion_ids.size(1), **{cache_keyword(self.model): cache})
        return [first, out.logits[:, :-1]]

    def backward(self) -> None:
        """Send the gradients the chunks left on the prompts' cache and logits through the prompts' forward."""
        pairs = [(out, leaf.grad) for out, leaf in zip(self.outputs, self.leaves)
                 if out is not leaf and leaf.grad is not None and out.requires_grad]
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


@dataclass(frozen=True)
class ForwardPlan:
    """How a micro-batch's training forward and backward run, decided once at start-up (`plan_forward`).

    Its prompts run once (PromptPrefix) unless the model's cache is not a plain key/value one (`share_prompts`
    False: a hybrid model with Mamba or linear-attention layers, whose state a prefix cannot hand over; its rows
    then run whole, not chunked). `chunked`: its completions then go through forward and backward a
    few rows at a time (the prompts' graph cut between them), so activation memory is a chunk's; rows per chunk are
    `chunk_rows`, or as many as fit `chunk_tokens` completion tokens, or all of them. `checkpoint_layers`: decoder
    layers are recomputed in the backward (gradient checkpointing)."""

    chunked: bool
    chunk_rows: int | None
    chunk_tokens: int | None
    checkpoint_layers: bool
    share_prompts: bool = True  # False for a hybrid model (Mamba layers): each row then runs its own prompt

    def rows_per_chunk(self, num_rows: int, width: int) -> int:
        """Rows per forward/backward chunk of a micro-batch of `num_rows` completions `width` tokens wide."""
        if not self.chunked:
            return num_rows
        if self.chunk_rows:
            return self.chunk_rows
        if self.chunk_tokens:
            return max(1, self.chunk_tokens // max(1, width))
        return num_rows


def plan_forward(*, gradient_checkpointing: bool, backward_chunk_rows: int | None, device_type: str, bf16: bool,
                 distributed: bool, whole_micro_batch: bool = False) -> ForwardPlan:
    """The ForwardPlan for these settings.

    Chunks: one backward per forward under DDP (its gradient hooks expect that) and when the loss needs the whole
    micro-batch at once (entropy masking); else `backward_chunk_rows` rows (0: all), or by default on a CPU about
    128 completion tokens in fp32 and 256 in bf16 (where activation memory is the limit and small matmuls cost
    little) and the whole micro-batch on a GPU (where small matmuls waste the device).
    gradient_checkpointing=True asks for bounded activation memory: small chunks already bound it without the
    recompute, so layers are checkpointed only when a chunk is the whole micro-batch."""
    chunked = not (distributed or whole_micro_batch)
    if backward_chunk_rows is None:
        chunk_rows, chunk_tokens = None, (None if device_type == "cuda" else (256 if bf16 else 128))
    else:
        chunk_rows, chunk_tokens = (backward_chunk_rows or None), None
    small_chunks = chunked and (chunk_rows is not None or chunk_tokens is not None)
    return ForwardPlan(chunked=chunked, chunk_rows=chunk_rows, chunk_tokens=chunk_tokens,
                       checkpoint_layers=gradient_checkpointing and not small_chunks)


def key_value_cache(config) -> bool:
    """Whether every layer of the model caches keys and values (not a Mamba or linear-attention state), so that a
    prompt's cache can serve several rows (PromptPrefix, the sampler's repeated cache)."""
    return all(hasattr(layer, "batch_repeat_interleave") for layer in DynamicCache(config=config).layers)


def configure_forward(model, args, *, device_type: str, bf16: bool, distributed: bool,
                      sharded: bool = False) -> ForwardPlan:
    """A run's ForwardPlan (plan_forward for its config), with the model's layer checkpointing switched to match: on
    where the plan recomputes layers, off otherwise (a model object may come with it on; the row chunks bound the
    memory instead). Entropy masking needs each micro-batch whole: said once if backward_chunk_rows asked for less.

    `sharded` (fsdp): every forward all-gathers weights, so every process must run the same number of them, which
    data-dependent paths would not: the row chunks (their count follows the completions' width) and prompt sharing
    (PromptPrefix runs only where rows share a prompt). A micro-batch is then one forward and one backward."""
    entropy_masking = args.top_entropy_quantile < 1.0  # the entropy threshold is over a whole micro-batch
    if entropy_masking and args.backward_chunk_rows:
        logger.warning("top_entropy_quantile=%g < 1: each micro-batch goes through forward and backward whole "
                       "(backward_chunk_rows=%d is not used), as the entropy threshold is over all its rows; "
                       "lower per_device_train_batch_size if memory is short", args.top_entropy_quantile,
                       args.backward_chunk_rows)
    share_prompts = key_value_cache(unwrap_model(model).config) and not sharded
    plan = plan_forward(gradient_checkpointing=args.gradient_checkpointing,
                        backward_chunk_rows=args.backward_chunk_rows, device_type=device_type, bf16=bf16,
                        distributed=distributed or sharded, whole_micro_batch=entropy_masking or not share_prompts)
    plan = dataclasses.replace(plan, share_prompts=share_prompts)
    if plan.checkpoint_layers:
        enable_layer_checkpointing(model)
    else:
        disable_layer_checkpointing(model)
    return plan
