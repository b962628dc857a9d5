"""The CWM network: Llama-3 blocks with GQA, RoPE (Llama-3 scaling) and interleaved sliding/global attention.

Numerically the same function as transformers' `CwmForCausalLM` (tested to 1e-4 in float32).
Inside, q/k/v and gate/up are fused into one matmul each (fewer ops per step); on disk the
tensors keep their Hugging Face names (see checkpoint.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
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


def rope_table(positions: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for `positions`, [T, 1, head_dim], ready for `apply_rope`."""
    freqs = torch.outer(positions.float(), inv_freq.float())
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1)[:, None].to(dtype), torch.cat((-sin, sin), -1)[:, None].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (the HF convention; Meta's wq/wk rows are permuted to
    it): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    swapped = x.roll(x.shape[-1] // 2, dims=-1)  # (x2, x1)
    return torch.addcmul(x * cos, swapped, signed_sin)


def attention_mask(q_pos, k_pos, window: int | None, q_doc=None, k_doc=None) -> torch.Tensor:
    """Which keys each query may see: causal, within `window` (the query and window-1 before it),
    and, given document ids, only its own document. q_pos [..., T], k_pos [..., S] (-1: an empty
    slot), docs [B, ..., T] and [B, ..., S]; the mask is [..., T, S], or [B, ..., T, S] with docs."""
    offset = q_pos[..., :, None] - k_pos[..., None, :]
    mask = (offset >= 0) & (k_pos[..., None, :] >= 0)
    if window is not None:
        mask &= offset < window
    if q_doc is not None:
        mask = mask & (q_doc[..., :, None] == k_doc[..., None, :])
    return mask


def _in_blocks(x: torch.Tensor, window: int, n_blocks: int) -> torch.Tensor:
    """[B, heads, T, D] -> [B * n_blocks, heads, 2 * window, D]: for each block of `window`
    queries, the keys of the block before it and of its own (zeros before the start)."""
    B, heads, T, D = x.shape
    x = F.pad(x, (0, 0, window, n_blocks * window - T)).view(B, heads, n_blocks + 1, window, D)
    pairs = torch.cat((x[:, :, :-1], x[:, :, 1:]), dim=3)
    return pairs.transpose(1, 2).reshape(B * n_blocks, heads, 2 * window, D)


def blocked_window_mask(T: int, window: int, doc_ids=None, device=None) -> torch.Tensor:
    """The mask for `blocked_window_attention`, [B * n_blocks, 1, window, 2 * window]."""
    n_blocks = -(-T // window)
    starts = torch.arange(n_blocks, device=device)[:, None] * window
    q_pos = starts + torch.arange(window, device=device)  # [n_blocks, window]
    k_pos = starts - window + torch.arange(2 * window, device=device)  # [n_blocks, 2 * window]
    if doc_ids is None:
        return attention_mask(q_pos, k_pos, window)[:, None]  # broadcasts over a batch of 1 only
    docs = F.pad(doc_ids, (window, n_blocks * window - T), value=-1).view(doc_ids.shape[0], n_blocks + 1, window)
    q_doc, k_doc = docs[:, 1:], torch.cat((docs[:, :-1], docs[:, 1:]), dim=2)
    return attention_mask(q_pos, k_pos, window, q_doc, k_doc).flatten(0, 1)[:, None]


def blocked_window_attention(q, k, v, window: int, mask: torch.Tensor) -> torch.Tensor:
    """Sliding-window attention for T well above the window: queries in blocks of `window`, each
    attending to 2 * window keys, so the cost is T * 2W rather than the T * T of a masked SDPA.
    Padding queries past T see their own (zero) keys, so no row of the mask is empty."""
    B, H, T, D = q.shape
    n_blocks = -(-T // window)
    if mask.shape[0] != B * n_blocks:  # the doc-free mask is shared by every sequence
        mask = mask.repeat(B, 1, 1, 1)
    queries = F.pad(q, (0, 0, 0, n_blocks * window - T)).view(B, H, n_blocks, window, D)
    queries = queries.transpose(1, 2).reshape(B * n_blocks, H, window, D)
    keys, values = _in_blocks(k, window, n_blocks), _in_blocks(v, window, n_blocks)
    y = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=H != k.shape[1])
    return y.view(B, n_blocks, H, window, D).transpose(1, 2).reshape(B, H, n_blocks * window, D)[:, :, :T]


# Queries per SDPA call on CPU (of 32, 64 and 128, 64 was fastest at T = 512; see chunk_plan).
CPU_QUERY_CHUNK = 64


def chunk_plan(T: int, window: int | None, doc_ids=None, device=None, size: int = CPU_QUERY_CHUNK) -> list:
    """Attention on CPU in chunks of `size` queries, each given only the keys it may see:
    [(key slice, mask [chunk, keys] or [B, 1, chunk, keys])]. PyTorch's CPU flash kernel reads keys
    in blocks of 512 and skips only whole blocks past the diagonal, so at T <= 512 `is_causal` costs
    as much as no mask and a window mask saves nothing; chunks skip the keys ahead of the
    diagonal and behind the window (half the attention time of cwm-small at T = 512)."""
    positions = torch.arange(T, device=device)
    plan = []
    for start in range(0, T, size):
        q = slice(start, min(T, start + size))
        k = slice(0 if window is None else max(0, start - window + 1), q.stop)
        if doc_ids is None:
            mask = attention_mask(positions[q], positions[k], window)
        else:
            mask = attention_mask(positions[q], positions[k], window, doc_ids[:, q], doc_ids[:, k])[:, None]
        plan.append((k, mask))
    return plan


def chunked_attention(q, k, v, plan: list) -> torch.Tensor:
    """SDPA over the chunks of `chunk_plan`; [B, H, T, D] in and out."""
    gqa = q.shape[1] != k.shape[1]
    queries = q.split([mask.shape[-2] for _, mask in plan], dim=2)  # split, not slices: one op in backward
    ys = [
        F.scaled_dot_product_attention(qc, k[:, :, ks], v[:, :, ks], attn_mask=mask, enable_gqa=gqa)
        for qc, (ks, mask) in zip(queries, plan)
    ]
    return torch.cat([y.transpose(1, 2) for y in ys], dim=1).transpose(1, 2)  # one copy, into [B, T, H, D]


def attention_kwargs(T: int, window: int | None, doc_ids=None, device=None) -> dict:
    """How T tokens from position 0 attend, for one window size: on CPU in chunks (see
    `chunk_plan`); elsewhere plain `is_causal` where no mask is needed (fastest), blocks where the
    window is well below T, else a mask."""
    if torch.device(device or "cpu").type == "cpu" and T > 1:
        return {"chunks": chunk_plan(T, window, doc_ids, device)}
    if doc_ids is None and (window is None or window >= T):
        return {"is_causal": True}
    if window is not None and T > 2 * window:
        return {"blocked_window": window, "mask": blocked_window_mask(T, window, doc_ids, device)}
    positions = torch.arange(T, device=device)
    mask = attention_mask(positions, positions, window, doc_ids, doc_ids)
    return {"attn_mask": mask if doc_ids is None else mask[:, None]}


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
        if "chunks" in attn:
            y = chunked_attention(q, k, v, attn["chunks"])
        elif "blocked_window" in attn:
            y = blocked_window_attention(q, k, v, attn["blocked_window"], attn["mask"])
        else:
            y = F.scaled_dot_product_attention(q, k, v, **attn, enable_gqa=H != K)
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
        self.lm_head = Linear(cfg.dim, cfg.vocab_size)
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
            rope = rope_table(torch.arange(T, device=tokens.device), self.inv_freq, x.dtype)
            windows = {block.window for block in self.layers}
            attn = {w: attention_kwargs(T, w, doc_ids, tokens.device) for w in windows}
        else:
            rope, attn = cache.begin(T, doc_ids)
        for block in self.layers:
            x = block(x, rope, attn[block.window], cache)
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
            elif param is self.embed_tokens.weight:
                nn.init.normal_(param, std=1.0, generator=generator)
            else:
                std = param.shape[1] ** -0.5
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std *= depth_scale
                nn.init.normal_(param, std=std, generator=generator)
        self.inv_freq = rope_inv_freq(self.cfg, device=self.inv_freq.device)
