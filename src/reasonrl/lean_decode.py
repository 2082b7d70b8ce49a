"""A lean decode path for Llama-family models (Llama, Qwen2, Qwen3, Mistral): the rollout's hot loop.

Decoding one token at a time is bound by reading the weights, but through `model.forward` a 135M model spends as
much time again in Python and small ops: transformers' per-layer machinery, and with LoRA five extra ops (and an
autocast cast of the adapter) for each of the 210 adapted linears. For the length of one rollout the weights do not
change, so this path:

  * merges each LoRA adapter into a copy of its base weight (W + scale * B @ A, computed in fp32), so that a linear
    is one matmul; the copies live only while the rollout runs;
  * fuses q/k/v into one matmul and gate/up into one;
  * on the CPU, reorders each of those weights into oneDNN's blocked layout (what torch.compile's CPU weight
    prepacking does): decode's matmuls have one row per sequence, and on this layout oneDNN reads the weights about
    1.6x faster (bf16: 20 against 13 GB/s on the project's machine; benchmarks/bench_components.py, `lean-plain`);
  * keeps a static KV cache [B, kv_heads, P + max_new_tokens, head_dim] per layer, written in place;
  * prefills each prompt once and copies its keys and values to the G rows that sample from it.

It reuses the model's own modules where they are not the bottleneck: the RMSNorm layers (and Qwen3's q/k norms)
and the rotary embedding, so scaling variants (rope_scaling) stay transformers'; the rotation itself (the same
rotate_half in all four modeling files) is applied to q and k together in three ops. Anything it does not cover
(other architectures, sliding windows, DoRA, quantized or LoRA'd embeddings) returns None from `LeanDecoder.build`,
and generation falls back to `model.forward` with its cache.
tests/test_rollout.py checks greedy tokens against HF `generate` and log-probs against the training forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonrl.models import unwrap_model

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def _is_lora(linear) -> bool:
    return hasattr(linear, "base_layer") and hasattr(linear, "lora_A")


@torch.no_grad()
def _merged_weights(linears, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights the linears apply, LoRA adapters merged in (W + scale * B @ A), stacked along the output
    dimension into one new `dtype` tensor (one matmul for q/k/v or gate/up); their biases likewise, or None."""
    bases = [linear.base_layer if _is_lora(linear) else linear for linear in linears]
    rows = [base.weight.size(0) for base in bases]
    weight = torch.empty(sum(rows), bases[0].weight.size(1), dtype=dtype, device=bases[0].weight.device)
    for linear, base, block in zip(linears, bases, weight.split(rows)):
        block.copy_(base.weight)
        if _is_lora(linear) and not linear.disable_adapters and not linear.merged:
            for name in linear.active_adapters:
                if name in linear.lora_A:
                    lora_b, lora_a = linear.lora_B[name].weight, linear.lora_A[name].weight  # [out, r], [r, in]
                    block.addmm_(lora_b.to(dtype), lora_a.to(dtype), alpha=linear.scaling[name])
    if bases[0].bias is None:
        return weight, None
    return weight, torch.cat([base.bias for base in bases]).to(dtype)


def _can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn,
                                                                                      "_linear_pointwise"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


PREPACK_MIN_FP32_ELEMENTS = 1 << 18  # 1 MiB: smaller fp32 weights stay in cache, where MKL's plain sgemm is quicker


class _Linear:
    """x -> x @ weight.T + bias, with the weight reordered into oneDNN's blocked layout when `prepack` (the result is
    bitwise F.linear's in bf16 and within float rounding in fp32), else plain F.linear. The blocked layout pays
    when the weights stream from memory; an fp32 weight under 1 MiB is left plain (for a weight that stays in
    cache, MKL's sgemm with 8 rows takes 4-25 us against oneDNN's 18-35 us)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, prepack: bool):
        self.bias, self.prepacked, self.dtype = bias, False, weight.dtype
        if prepack and weight.dtype == torch.float32 and weight.numel() < PREPACK_MIN_FP32_ELEMENTS:
            prepack = False
        if prepack:
            try:
                weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                self.prepacked = True
            except RuntimeError:  # a oneDNN build without this layout: keep the plain weight
                pass
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)  # as autocast would: an fp32 model decoded in bf16 keeps fp32 norms and residuals
        if self.prepacked:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class _SharedLinear:
    """The same linears (a fused group such as q/k/v) applied to the model's own weights, without a merged copy: the
    base matmuls one by one, and the LoRA adapters as x @ A.T (all of the group's A stacked into one matmul) then
    each @ B.T * scale. Costs more small matmuls than `_Linear` but no memory beyond the adapters: the merged and
    fused copies of a model's layers are as large as its frozen weights."""

    def __init__(self, linears, dtype: torch.dtype):
        self.dtype = dtype
        self.bases = []
        for linear in linears:
            base = linear.base_layer if _is_lora(linear) else linear
            self.bases.append((base.weight if base.weight.dtype == dtype else base.weight.to(dtype),
                               None if base.bias is None else base.bias.to(dtype)))
        self.adapters = []  # (index of the linear, its rows in the stacked A, B [out, r] * scale)
        stacked = []
        for index, linear in enumerate(linears):
            if not _is_lora(linear) or linear.disable_adapters or linear.merged:
                continue
            for name in linear.active_adapters:
                if name in linear.lora_A:
                    lora_a, lora_b = linear.lora_A[name].weight, linear.lora_B[name].weight
                    start = sum(a.size(0) for a in stacked)
                    stacked.append(lora_a.to(dtype))
                    self.adapters.append((index, slice(start, start + lora_a.size(0)),
                                          (lora_b * linear.scaling[name]).to(dtype)))
        self.lora_a = torch.cat(stacked) if stacked else None  # [sum r, in]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        outputs = [F.linear(x, weight, bias) for weight, bias in self.bases]
        if self.lora_a is not None:
            low_rank = F.linear(x, self.lora_a)  # [.., sum r]
            for index, rows, lora_b in self.adapters:
                outputs[index] = outputs[index] + F.linear(low_rank[..., rows], lora_b)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


def _unsupported_reason(model) -> str | None:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "use_sliding_window", False) or any(
            kind != "full_attention" for kind in (getattr(config, "layer_types", None) or [])):
        return "sliding-window attention"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no model.layers / rotary_emb"
    if type(inner.embed_tokens) is not torch.nn.Embedding or type(model.get_output_embeddings()) is not torch.nn.Linear:
        return "a wrapped (LoRA or quantized) embedding or lm_head"
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            base = linear.base_layer if _is_lora(linear) else linear
            if type(base) is not torch.nn.Linear or not base.weight.is_floating_point():
                return "a quantized or non-Linear projection"
            if _is_lora(linear) and (any(linear.use_dora.values()) or getattr(linear, "lora_bias", {}) and any(
                    linear.lora_bias.values())):
                return "DoRA or LoRA bias"
    return None


class LeanDecoder:
    """Prefill + one-token steps over a static KV cache, with merged and fused weights (see the module docstring)."""

    def __init__(self, model, dtype: torch.dtype, prepack: bool | None = None, merge: bool = True):
        self.model, self.dtype = model, dtype
        if prepack is None:
            prepack = merge and _can_prepack(model.model.embed_tokens.weight.device, dtype)

        def linear(linears):
            if merge:
                return _Linear(*_merged_weights(linears, dtype), prepack)
            return _SharedLinear(linears, dtype)

        inner = model.model
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.rotary = inner.rotary_emb
        self.embed = inner.embed_tokens
        self.final_norm = self._norm(inner.norm)
        lm_head = model.get_output_embeddings()
        if lm_head.weight.dtype == dtype:  # (tied) weights used as they are, or prepacked straight from them
            self.lm_head = _Linear(lm_head.weight, lm_head.bias, prepack)
        else:
            self.lm_head = linear([lm_head])
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append({
                "input_norm": self._norm(layer.input_layernorm),
                "post_norm": self._norm(layer.post_attention_layernorm),
                "q_norm": getattr(attn, "q_norm", None), "k_norm": getattr(attn, "k_norm", None),
                # [(H + 2 KVH) D, hidden] and [2 I, hidden]: one matmul each
                "qkv": linear([attn.q_proj, attn.k_proj, attn.v_proj]),
                "o": linear([attn.o_proj]),
                "gate_up": linear([mlp.gate_proj, mlp.up_proj]),
                "down": linear([mlp.down_proj]),
                "scaling": attn.scaling,
            })

    @classmethod
    def build(cls, model, dtype: torch.dtype | None = None, prepack: bool | None = None,
              merge: bool = True) -> LeanDecoder | None:
        """A decoder for `model` (peft-wrapped or not), or None when the model needs the generic path.
        merge=False decodes with the model's own weights and the adapters beside them (no merged copies)."""
        inner = unwrap_model(model)
        if _unsupported_reason(inner) is not None:
            return None
        if dtype is None:
            dtype = inner.model.embed_tokens.weight.dtype
        return cls(inner, dtype, prepack, merge)

    # ------------------------------------------------------------------ one pass over the layers

    @staticmethod
    def _norm(module):
        """RMSNorm as one fused op (torch's rms_norm) instead of the module's eight; the module if it is not one."""
        eps = getattr(module, "variance_epsilon", None)
        weight = getattr(module, "weight", None)
        if eps is None or weight is None or not type(module).__name__.endswith("RMSNorm"):
            return module
        return lambda x: F.rms_norm(x.float(), (x.size(-1),), None, eps).to(x.dtype) * weight

    def _rotary(self, hidden, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin [b, T, 1, D] for positions [b, T], from the model's own rotary embedding (so
        rope_scaling variants stay transformers'); the sin's first half is negated, for rotate_half."""
        cos, sin = self.rotary(hidden, positions)  # [b, T, D]
        half = sin.size(-1) // 2
        return cos.unsqueeze(2), torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).unsqueeze(2)

    def _layers(self, hidden, cos, sin, mask, start: int, expand: int = 1):
        """hidden [b, T, hidden] at cache slots start..start+T-1, cos and sin from _rotary; `mask` [b, 1, T,
        start+T] (True = attend).

        With expand = G the b rows are prompts and their keys/values are written to the G rows of each."""
        batch, length, _ = hidden.shape
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        for layer, (key_cache, value_cache) in zip(self.layers, self.cache):
            x = layer["input_norm"](hidden)
            qkv = layer["qkv"](x).view(batch, length, heads + 2 * kv_heads, head_dim)
            qk, v = qkv[:, :, : heads + kv_heads], qkv[:, :, heads + kv_heads:]
            if layer["q_norm"] is not None:
                qk = torch.cat([layer["q_norm"](qk[:, :, :heads]), layer["k_norm"](qk[:, :, heads:])], dim=2)
            # rotary on q and k at once: x cos + rotate_half(x) sin, where rotate_half(x) = roll(x) * (-1 | +1)
            qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, -1), sin)
            q, k, v = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2), v.transpose(1, 2)
            end = start + length
            if expand > 1:
                key_cache[:, :, start:end] = k.repeat_interleave(expand, 0)
                value_cache[:, :, start:end] = v.repeat_interleave(expand, 0)
                keys, values = k, v  # the prompts attend within themselves
            else:
                key_cache[:, :, start:end] = k
                value_cache[:, :, start:end] = v
                keys, values = key_cache[:, :, :end], value_cache[:, :, :end]
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=layer["scaling"],
                                                  enable_gqa=heads != kv_heads)  # [b, H, T, D]
            hidden = hidden + layer["o"](attn.transpose(1, 2).reshape(batch, length, -1))
            x = layer["post_norm"](hidden)
            gate, up = layer["gate_up"](x).chunk(2, dim=-1)
            hidden = hidden + layer["down"](F.silu(gate) * up)
        return hidden

    def _logits(self, hidden) -> torch.Tensor:
        return self.lm_head(self.final_norm(hidden)).float()

    # ------------------------------------------------------------------ the decoder interface

    @torch.no_grad()
    def prefill(self, prompt_ids, prompt_mask, positions, num_generations: int, max_new_tokens: int) -> torch.Tensor:
        """Run the prompts [N, P] once, fill the cache of their N*G rows; logits [N*G, V] of the first new token."""
        with torch.autocast(prompt_ids.device.type, enabled=False):
            num_prompts, width = prompt_ids.shape
            rows = num_prompts * num_generations
            total = width + max_new_tokens
            self.cache = [(torch.empty(rows, self.num_kv_heads, total, self.head_dim, dtype=self.dtype,
                                       device=prompt_ids.device),
                           torch.empty(rows, self.num_kv_heads, total, self.head_dim, dtype=self.dtype,
                                       device=prompt_ids.device)) for _ in self.layers]
            self.attend = torch.zeros(rows, 1, 1, total, dtype=torch.bool, device=prompt_ids.device)  # [B,1,1,L]
            self.attend[:, 0, 0, :width] = prompt_mask.bool().repeat_interleave(num_generations, 0)
            self.slot, self.width = width, width
            self.next_position = positions[:, -1:].repeat_interleave(num_generations, 0) + 1  # [B, 1]
            causal = torch.ones(width, width, dtype=torch.bool, device=prompt_ids.device).tril()
            # a padding query attends to itself only, so that no row of the mask is empty (its output is unused)
            mask = (causal & prompt_mask.bool()[:, None, None, :]) | torch.eye(width, dtype=torch.bool,
                                                                                 device=prompt_ids.device)
            hidden = self.embed(prompt_ids).to(self.dtype)  # [N, P, hidden]
            hidden = self._layers(hidden, *self._rotary(hidden, positions), mask, 0, expand=num_generations)
            return self._logits(hidden[:, -1]).repeat_interleave(num_generations, 0)

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; logits [B, V] of the next."""
        with torch.autocast(token.device.type, enabled=False):
            self.attend[:, 0, 0, self.slot] = True
            hidden = self.embed(token[:, None]).to(self.dtype)  # [B, 1, hidden]
            hidden = self._layers(hidden, *self._rotary(hidden, self.next_position), self.attend[..., : self.slot + 1],
                                  self.slot)
            self.slot += 1
            self.next_position = self.next_position + 1
            return self._logits(hidden[:, -1])

    def close(self) -> None:
        """Free the merged weights and the cache now rather than when the decoder is collected."""
        self.layers, self.cache, self.lm_head = [], [], None
