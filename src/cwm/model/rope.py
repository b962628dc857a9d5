"""Rotary position embeddings with Llama-3 scaling, as transformers computes them."""

from __future__ import annotations

import math

import torch

from cwm.model.config import ModelConfig


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
