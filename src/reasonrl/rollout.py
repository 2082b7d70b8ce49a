"""Rollouts: G sampled completions per prompt (the training forward that scores them is policy.py).

The decode loop is our own (not `generate`) so that it can prefill each prompt once and share its KV cache over
the G samples, stop as soon as every sequence has ended, and record the log-probability of each sampled token at
the sampling temperature, which is what the training forward recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reasonrl.lean_decode import LeanDecoder
from reasonrl.policy import cache_keyword, last_position, output_cache, position_ids_from_mask


@dataclass
class Rollout:
    """One generation round. B = prompts x G rows, grouped consecutively by prompt."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 on prompt tokens
    completion_ids: torch.Tensor  # [B, C] right-padded with pad_token_id
    completion_mask: torch.Tensor  # [B, C] 1 up to and including the first EOS
    sampling_logps: torch.Tensor  # [B, C] log p(token) at the sampling temperature, unfiltered, at sampling time
    # (None from reasonrl's sampler, which does not keep them; vLLM's are of the filtered distribution that sampled)
    is_truncated: torch.Tensor  # [B] no EOS within max_completion_length
    texts: list[str] = field(default_factory=list)  # decoded completions (special tokens removed)
    # with tools (tools.py): each row is turns and tool results; tool_mask [B, C] is 0 on tool-result tokens,
    # messages each row's assistant and tool messages (TRL's completions), tool_counts what tools.tool_metrics reads
    tool_mask: torch.Tensor | None = None
    messages: list[list[dict]] | None = None
    tool_counts: torch.Tensor | None = None
    # what the rewards get beyond the dataset's columns (rollout_hooks.py): each completion's prompt when it is not
    # its row's (an environment's reset() observation appended), and per-completion columns (a rollout_func's extra
    # fields, the `environments`)
    prompts: list | None = None
    reward_columns: dict | None = None

    @property
    def completion_lengths(self) -> torch.Tensor:  # [B]
        return self.completion_mask.sum(-1)


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "suppress_tokens", "do_sample")
"""The generation_kwargs keys reasonrl's sampler honours (on the lean decoder and the generic one alike: it
filters the logits either gives). Each means what it means in transformers' GenerationConfig."""


def sampling_options(args) -> dict:
    """`generate`'s sampling keywords from a config: its temperature, top_p, top_k, min_p and repetition_penalty,
    then generation_kwargs over them (TRL: "keys that conflict with the other generation parameters override
    them"); do_sample=False samples greedily. config_checks refuses keys outside SAMPLING_KEYS."""
    options = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
               "repetition_penalty": args.repetition_penalty}
    extra = dict(args.generation_kwargs or {})
    if extra.pop("do_sample", True) is False:
        options["greedy"] = True
    options.update({key: value for key, value in extra.items() if value is not None or key == "min_p"})
    options["top_k"] = options["top_k"] or 0
    return options


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float | None = None) -> torch.Tensor:
    """Top-k, nucleus, then min-p filtering of [B, V] logits (removed entries become -inf), as HF's warpers do
    (min-p: drop the tokens whose probability is below min_p times the most likely one's)."""
    if top_k and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    if min_p:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))  # keeps the top one
    return logits


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on tokens already in the sequence (seen [B, V] bool): divide positive logits, multiply
    negative ones."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _repeatable(cache) -> bool:
    """Whether transformers' cache can repeat each row's state G times (every layer a key/value cache)."""
    layers = getattr(cache, "layers", None)
    return layers is None or all(hasattr(layer, "batch_repeat_interleave") for layer in layers)


class ModelDecoder:
    """The generic path: `model.forward` with transformers' KV cache, prefilled once per prompt and repeated G times."""

    def __init__(self, model):
        self.model = model
        self.cache_keyword = cache_keyword(model)

    def prefill(self, prompt_ids, prompt_mask, positions, num_generations: int, max_new_tokens: int) -> torch.Tensor:
        out = self.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=last_position(prompt_ids))
        self.cache = output_cache(out)
        if num_generations > 1 and not _repeatable(self.cache):
            # a hybrid model's recurrent (Mamba, linear-attention) state cannot be repeated: each sample's copy
            # of the prompt is prefilled instead
            out = self.model(input_ids=prompt_ids.repeat_interleave(num_generations, dim=0),
                             attention_mask=prompt_mask.repeat_interleave(num_generations, dim=0),
                             position_ids=positions.repeat_interleave(num_generations, dim=0), use_cache=True,
                             logits_to_keep=last_position(prompt_ids))
            self.cache = output_cache(out)
            self.attention_mask = prompt_mask.repeat_interleave(num_generations, dim=0)  # [B, P]
            self.next_position = positions[:, -1:].repeat_interleave(num_generations, dim=0) + 1  # [B, 1]
            return out.logits[:, -1].float()  # [B, V]
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
        self.cache = output_cache(out)
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
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    suppress_tokens: list[int] | None = None,
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

    Filtering is transformers': `suppress_tokens` are never sampled, then the repetition penalty, temperature,
    top-k, top-p and min-p shape the sampling distribution; the log-probs recorded are the unfiltered ones at the
    temperature (what the training forward recomputes).

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
        seen.scatter_(1, (prompt_ids * prompt_mask).repeat_interleave(g, dim=0),
                      prompt_mask.bool().repeat_interleave(g, 0))
    # sampling by inverse CDF from uniforms drawn up front: one draw per row per step, from the prompt's own seed or
    # from `generator` (cheaper than torch.multinomial's exponential draw over the whole vocabulary)
    uniforms = None  # [B, max_new_tokens]
    if not greedy:
        if seeds is not None:
            if len(seeds) != prompt_ids.size(0):
                raise ValueError(f"seeds has {len(seeds)} entries for {prompt_ids.size(0)} prompts; "
                                 "give one per prompt")
            uniforms = torch.cat([torch.rand(g, max_new_tokens, generator=torch.Generator().manual_seed(int(seed)),
                                             dtype=torch.float64) for seed in seeds])
        else:
            uniforms = torch.rand(batch, max_new_tokens, generator=generator, dtype=torch.float64)
        uniforms = uniforms.to(device)

    tokens, logps = [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # without a penalty or filter the sampling distribution is the one whose log-probs are recorded
    unfiltered = (repetition_penalty == 1.0 and not (top_k and 0 < top_k < logits.size(-1)) and top_p >= 1.0
                  and not min_p and not suppress_tokens)
    suppressed = torch.tensor(suppress_tokens or [], dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        scaled = logits / temperature if temperature > 0 and temperature != 1.0 else logits
        log_probs = torch.log_softmax(scaled, dim=-1)  # what training recomputes: no penalty, no filtering
        # suppressed tokens are out of the sampling only: the recorded log-probs are the model's
        sampling_logits = logits if not len(suppressed) else logits.index_fill(-1, suppressed, float("-inf"))
        if greedy:
            token = sampling_logits.argmax(-1)
        else:
            if unfiltered:
                probs = log_probs.exp()  # = softmax(logits / temperature), one pass instead of three
            else:
                if seen is not None:
                    sampling_logits = _apply_repetition_penalty(sampling_logits, seen, repetition_penalty)
                probs = _filter_logits(sampling_logits / temperature, top_k, top_p, min_p).softmax(-1)  # [B, V]
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
    first_eos = torch.where(has_eos, is_eos.int().argmax(-1),
                            torch.full_like(has_eos, completion_ids.size(1), dtype=torch.long))
    completion_mask = (torch.arange(completion_ids.size(1), device=device)[None] <= first_eos[:, None]).long()
    return completion_ids, completion_mask, sampling_logps * completion_mask, ~has_eos


def sample_rollout(model, tokenizer, prompt_ids, prompt_mask, tool_calling=None, row_tools=None, engine=None,
                   **sampling) -> Rollout:
    """A round's samples: G completions of each prompt [N, P] (`generate`'s keyword arguments in `sampling`) as a
    Rollout of N*G rows, prompts repeated, completions decoded to texts. With `tool_calling` (tools.ToolCalling)
    the sampling is multi-turn: the tools' results join the completions, marked in tool_mask; `row_tools` (one
    {name: function} per row) replaces its functions row by row (an environment's methods). With `engine`
    (vllm_engine.VLLMEngine) the engine samples, and its log-probs are kept as sampling_logps."""
    g = sampling["num_generations"]
    turns = None
    if tool_calling:
        turns = tool_calling.generate(model, prompt_ids, prompt_mask, row_tools=row_tools, **sampling)
        completion_ids, completion_mask, is_truncated = turns.completion_ids, turns.completion_mask, turns.is_truncated
    elif engine is not None:
        completion_ids, completion_mask, sampling_logps, is_truncated = engine.generate(model, prompt_ids, prompt_mask,
                                                                                        **sampling)
    else:
        completion_ids, completion_mask, _, is_truncated = generate(model, prompt_ids, prompt_mask, **sampling)
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(g, 0), prompt_mask.repeat_interleave(g, 0)  # [B, P]
    ids_list = [ids[mask.bool()].tolist() for ids, mask in zip(completion_ids, completion_mask)]
    texts = tokenizer.batch_decode(ids_list, skip_special_tokens=True)
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                      sampling_logps if engine is not None and not tool_calling else None, is_truncated, texts)
    if turns is not None:
        rollout.tool_mask, rollout.messages = turns.tool_mask, turns.completions
        rollout.tool_counts = turns.counts(prompt_ids.device)
    return rollout
