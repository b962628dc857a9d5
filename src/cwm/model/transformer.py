"""The CWM network: Llama-3 blocks with GQA, RoPE (Llama-3 scaling) and interleaved sliding/global attention.

Numerically the same function as transformers' `CwmForCausalLM` (tested to 1e-4 in float32).
Inside, q/k/v and gate/up are fused into one matmul each (fewer ops per step); on disk the
tensors keep their Hugging Face names (see checkpoint.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cwm.model.attention import AttentionPlan, plan_attention
from cwm.model.cache import CacheStep, KVCache
from cwm.model.config import ModelConfig
from cwm.model.rope import apply_rope, rope_inv_freq, rope_table

__all__ = ["Linear", "Transformer", "apply_rope", "decode_layout", "rope_inv_freq", "rope_table"]


class Linear(nn.Linear):
    """A bias-free `nn.Linear` that, while `decode_weight` is set (see `decode_layout`), multiplies
    up to 16 rows without autograd (decoding) by that [in, out] copy of its weight: on CPU, MKL's
    matrix-vector product reads [in, out] about 1.6x faster than nn.Linear's [out, in], and
    decoding a small model is bound by it (docs/model.md, Speed)."""

    decode_weight: torch.Tensor | None = None

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1]
        if self.decode_weight is None or rows.numel() > 16 or torch.is_grad_enabled():
            return F.linear(x, self.weight)
        return torch.mm(x.reshape(-1, x.shape[-1]), self.decode_weight).view(*rows, -1)  # 2-D: no matmul folding


@contextmanager
def decode_layout(model: nn.Module):
    """For the length of the block (a generate call), give each `Linear` of a CPU model an
    [in, out] copy of its weight: the projections' size in memory again, and ~10 ms to copy
    cwm-small's 27 MB, against ~1.2 ms saved per decoded token. Other devices: nothing changes."""
    linears = [m for m in model.modules() if isinstance(m, Linear) and m.weight.device.type == "cpu"]
    with torch.no_grad():
        for m in linears:
            m.decode_weight = m.weight.t().contiguous()
    try:
        yield
    finally:
        for m in linears:
            m.decode_weight = None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv_proj = Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim)
        self.o_proj = Linear(cfg.n_heads * cfg.head_dim, cfg.dim)

    def forward(self, x, rope, plan: AttentionPlan, cache: KVCache | None = None, step: CacheStep | None = None):
        B, T, _ = x.shape
        H, K = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(x).view(B, T, H + 2 * K, self.head_dim)
        qk = apply_rope(qkv[:, :, : H + K], *rope)  # q and k rotated in one go
        q = qk[:, :, :H].transpose(1, 2)
        k = qk[:, :, H:].transpose(1, 2)
        v = qkv[:, :, H + K :].transpose(1, 2)
        if cache is not None:
            assert step is not None  # a cache comes with the step it stores
            k, v = cache.store(self.layer, step, k, v)
        y = plan.attend(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = Linear(cfg.dim, 2 * cfg.ffn_dim)
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.window = cfg.window(layer)
        self.input_layernorm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, rope, plan: AttentionPlan, cache: KVCache | None = None, step: CacheStep | None = None):
        x = x + self.self_attn(self.input_layernorm(x), rope, plan, cache, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    inv_freq: torch.Tensor  # a buffer (rope_inv_freq), not saved

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.windows = [cfg.window(i) for i in range(cfg.n_layers)]  # each block's attention window (Block.window)
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab] (or [B, 1, vocab] with `last_only`).

        doc_ids [B, T]: tokens attend only to earlier tokens of the same document (packed
        training sequences; padding in a generation batch). Positions are not reset at document
        starts: RoPE depends only on the distance between query and key, so it makes no difference.
        positions [T]: where the tokens stand in their sequence. Without a cache they default to
        0..T-1 (and must be that); with a `cache` they are required: the tokens are written there
        and attend to what the cache holds before them (cache.py: prefill, or decode one token).
        """
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)
        if cache is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.cfg.max_seq_len}")
            if positions is None:
                positions = torch.arange(T, device=tokens.device)
            rope = rope_table(positions, self.inv_freq, x.dtype)
            plans = {w: plan_attention(T, w, doc_ids, tokens.device) for w in set(self.windows)}
            for block, window in zip(self.layers, self.windows):
                x = block(x, rope, plans[window])
        else:
            if positions is None:
                raise ValueError("a forward with a KV cache needs the tokens' positions")
            rope, steps = cache.plan(positions, doc_ids)
            for block, window in zip(self.layers, self.windows):
                step = steps[window]
                x = block(x, rope, step.plan, cache, step)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """LeCun init: each matrix Normal(0, 1/sqrt(fan_in)), the embedding Normal(0, 1); the
        projections that write into the residual stream (o_proj, down_proj) further scaled by
        1/sqrt(2 * n_layers) so its variance does not grow with depth (GPT-2). GPT-2's fixed 0.02
        is 1/sqrt(fan_in) for d_model ~2,500; on cwm-mini's 128 it is 4x too small: attention stays
        uniform for hundreds of steps and no copy (induction) head forms (docs/cwm-mini.md).
        Works after `to_empty()` from the meta device."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.embed_tokens.weight.device).manual_seed(seed)
        depth_scale = 1 / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            elif name.endswith("embed_tokens.weight"):
                nn.init.normal_(param, std=1.0, generator=generator)
            else:
                std = param.shape[1] ** -0.5
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std *= depth_scale
                nn.init.normal_(param, std=std, generator=generator)
        self.inv_freq = rope_inv_freq(self.cfg, device=self.inv_freq.device)
