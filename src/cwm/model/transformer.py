"""The CWM network: Llama-3 blocks with GQA, RoPE (Llama-3 scaling) and interleaved sliding/global attention.

Numerically the same function as transformers' `CwmForCausalLM` (tested to 1e-4 in float32).
Inside, q/k/v and gate/up are fused into one matmul each (fewer ops per step); on disk the
tensors keep their Hugging Face names (see checkpoint.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cwm.model.config import ModelConfig

if TYPE_CHECKING:
    from cwm.model.cache import KVCache


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse RoPE frequencies [head_dim/2], with Llama-3 scaling (as transformers computes them)."""
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float() / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    if cfg.rope_factor is None:
        return inv_freq
    # Llama 3.1: long wavelengths are slowed down by `factor`, short ones kept, the band between
    # interpolated smoothly.
    low_freq_wavelen = cfg.rope_original_max_seq_len / cfg.rope_low_freq_factor
    high_freq_wavelen = cfg.rope_original_max_seq_len / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (cfg.rope_original_max_seq_len / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    in_band = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


def rope_table(cfg: ModelConfig, positions: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for `positions`, [T, 1, head_dim], ready for `apply_rope`."""
    freqs = torch.outer(positions.float(), inv_freq.float())
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1)[:, None].to(dtype), torch.cat((-sin, sin), -1)[:, None].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (the HF convention; Meta's wq/wk rows are permuted to
    it): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # (x2, x1)
    return x * cos + swapped * signed_sin


def attention_mask(q_pos, k_pos, window: int | None, q_doc=None, k_doc=None) -> torch.Tensor:
    """Which keys each query may see: causal, within `window` (the query and window-1 before it),
    and, given document ids, only its own document. Shape [T, S] or [B, 1, T, S]."""
    offset = q_pos[:, None] - k_pos[None, :]
    mask = (offset >= 0) & (k_pos >= 0)[None, :]  # k_pos -1 marks an empty cache slot
    if window is not None:
        mask &= offset < window
    if q_doc is not None:
        mask = (mask & (q_doc[:, :, None] == k_doc[:, None, :]))[:, None]
    return mask


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, rope, attn: dict, cache: KVCache | None = None):
        B, T, _ = x.shape
        H, K = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(x).view(B, T, H + 2 * K, self.head_dim)
        qk = apply_rope(qkv[:, :, : H + K], *rope)  # q and k rotated in one go
        q = qk[:, :, :H].transpose(1, 2)
        k = qk[:, :, H:].transpose(1, 2)
        v = qkv[:, :, H + K :].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, **attn, enable_gqa=H != K)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

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

    def forward(self, x, rope, attn: dict, cache: KVCache | None = None):
        x = x + self.self_attn(self.input_layernorm(x), rope, attn, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab] (or [B, 1, vocab] with `last_only`).

        doc_ids [B, T]: tokens attend only to earlier tokens of the same document (packed
        training sequences; padding in a generation batch). Positions are not reset at document
        starts: RoPE depends only on the distance between query and key, so it makes no difference.
        With a `cache`, the tokens continue the cached sequence (prefill, then decode).
        """
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)
        if cache is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.cfg.max_seq_len}")
            positions = torch.arange(T, device=tokens.device)
            rope = rope_table(self.cfg, positions, self.inv_freq, x.dtype)
            attn = self._attention_kwargs(positions, doc_ids)
        else:
            rope, attn = cache.begin(T, doc_ids)
        for block in self.layers:
            x = block(x, rope, attn[block.window], cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    def _attention_kwargs(self, positions, doc_ids) -> dict:
        """SDPA arguments per window size; plain `is_causal` where no mask is needed (fastest)."""
        T = positions.shape[0]
        kwargs = {}
        for window in {block.window for block in self.layers}:
            if doc_ids is None and (window is None or window >= T):
                kwargs[window] = {"is_causal": True}
            else:
                mask = attention_mask(positions, positions, window, doc_ids, doc_ids)
                kwargs[window] = {"attn_mask": mask}
        return kwargs

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, 0.02) weights; the projections that write into the residual stream (o_proj,
        down_proj) scaled by 1/sqrt(2 * n_layers) so the stream's variance does not grow with depth
        (GPT-2). Works after `to_empty()` from the meta device."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.embed_tokens.weight.device).manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            else:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(param, std=std, generator=generator)
        self.inv_freq = rope_inv_freq(self.cfg, device=self.inv_freq.device)
