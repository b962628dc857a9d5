"""How the queries of one forward pass attend: a typed plan, built once per forward and window size.

A plan says which keys each query may see (causal, within a sliding window, within its document)
and how that is computed fastest on the device at hand. `Transformer.forward` builds one plan per
window size (layers of the same window share it) from the positions it is given, and each layer
calls `plan.attend(q, k, v)`. A KV cache adds where the new keys are written (cache.py).

The kinds:
  Causal   SDPA's `is_causal`: keys are the queries themselves, no window or document limit
  Masked   one SDPA with a boolean mask [..., T, S] (a KV cache's keys, short windows, documents)
  Blocked  a sliding window far below T, in blocks of `window` queries (GPUs: cost T * 2W)
  Chunked  CPU: chunks of queries, each given only the keys it may see (see `chunk_plan`)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_mask(q_pos, k_pos, window: int | None, q_doc=None, k_doc=None) -> Tensor:
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


def _sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1], **kwargs)


@dataclass(frozen=True)
class Causal:
    """Every query sees itself and the queries before it (keys = queries)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _sdpa(q, k, v, is_causal=True)


@dataclass(frozen=True)
class Masked:
    """One SDPA under a boolean mask [T, S] (shared by the batch) or [B, 1, T, S]."""

    mask: Tensor

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _sdpa(q, k, v, attn_mask=self.mask)


def _in_blocks(x: Tensor, window: int, n_blocks: int) -> Tensor:
    """[B, heads, T, D] -> [B * n_blocks, heads, 2 * window, D]: for each block of `window`
    queries, the keys of the block before it and of its own (zeros before the start)."""
    B, heads, T, D = x.shape
    x = F.pad(x, (0, 0, window, n_blocks * window - T)).view(B, heads, n_blocks + 1, window, D)
    pairs = torch.cat((x[:, :, :-1], x[:, :, 1:]), dim=3)
    return pairs.transpose(1, 2).reshape(B * n_blocks, heads, 2 * window, D)


def blocked_window_mask(T: int, window: int, doc_ids=None, device=None) -> Tensor:
    """The mask of a `Blocked` plan, [B * n_blocks, 1, window, 2 * window] ([n_blocks, ...] without docs)."""
    n_blocks = -(-T // window)
    starts = torch.arange(n_blocks, device=device)[:, None] * window
    q_pos = starts + torch.arange(window, device=device)  # [n_blocks, window]
    k_pos = starts - window + torch.arange(2 * window, device=device)  # [n_blocks, 2 * window]
    if doc_ids is None:
        return attention_mask(q_pos, k_pos, window)[:, None]  # broadcasts over a batch of 1 only
    docs = F.pad(doc_ids, (window, n_blocks * window - T), value=-1).view(doc_ids.shape[0], n_blocks + 1, window)
    q_doc, k_doc = docs[:, 1:], torch.cat((docs[:, :-1], docs[:, 1:]), dim=2)
    return attention_mask(q_pos, k_pos, window, q_doc, k_doc).flatten(0, 1)[:, None]


@dataclass(frozen=True)
class Blocked:
    """Sliding-window attention for T well above the window: queries in blocks of `window`, each
    attending to 2 * window keys, so the cost is T * 2W rather than the T * T of a masked SDPA.
    Padding queries past T see their own (zero) keys, so no row of the mask is empty."""

    window: int
    mask: Tensor  # blocked_window_mask

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, T, D = q.shape
        window, mask = self.window, self.mask
        n_blocks = -(-T // window)
        if mask.shape[0] != B * n_blocks:  # the doc-free mask is shared by every sequence
            mask = mask.repeat(B, 1, 1, 1)
        queries = F.pad(q, (0, 0, 0, n_blocks * window - T)).view(B, H, n_blocks, window, D)
        queries = queries.transpose(1, 2).reshape(B * n_blocks, H, window, D)
        keys, values = _in_blocks(k, window, n_blocks), _in_blocks(v, window, n_blocks)
        y = _sdpa(queries, keys, values, attn_mask=mask)
        return y.view(B, n_blocks, H, window, D).transpose(1, 2).reshape(B, H, n_blocks * window, D)[:, :, :T]


@dataclass(frozen=True)
class Chunk:
    keys: slice  # the keys in reach of the chunk's queries
    mask: Tensor  # [queries, keys] or [B, 1, queries, keys]


# Queries per SDPA call on CPU (of 32, 64 and 128, 64 was fastest at T = 512; see chunk_plan).
CPU_QUERY_CHUNK = 64


@dataclass(frozen=True)
class Chunked:
    """SDPA over chunks of queries, each with only its keys (`chunk_plan`); [B, H, T, D] in and out."""

    chunks: tuple[Chunk, ...]

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        queries = q.split([c.mask.shape[-2] for c in self.chunks], dim=2)  # split, not slices: one op in backward
        ys = [_sdpa(qc, k[:, :, c.keys], v[:, :, c.keys], attn_mask=c.mask) for qc, c in zip(queries, self.chunks)]
        return torch.cat([y.transpose(1, 2) for y in ys], dim=1).transpose(1, 2)  # one copy, into [B, T, H, D]


def chunk_plan(T: int, window: int | None, doc_ids=None, device=None, size: int = CPU_QUERY_CHUNK) -> Chunked:
    """Attention on CPU in chunks of `size` queries, each given only the keys it may see. PyTorch's
    CPU flash kernel reads keys in blocks of 512 and skips only whole blocks past the diagonal, so
    at T <= 512 `is_causal` costs as much as no mask and a window mask saves nothing; chunks skip
    the keys ahead of the diagonal and behind the window (half the attention time of cwm-small at
    T = 512)."""
    positions = torch.arange(T, device=device)
    chunks = []
    for start in range(0, T, size):
        q = slice(start, min(T, start + size))
        k = slice(0 if window is None else max(0, start - window + 1), q.stop)
        if doc_ids is None:
            mask = attention_mask(positions[q], positions[k], window)
        else:
            mask = attention_mask(positions[q], positions[k], window, doc_ids[:, q], doc_ids[:, k])[:, None]
        chunks.append(Chunk(k, mask))
    return Chunked(tuple(chunks))


AttentionPlan = Causal | Masked | Blocked | Chunked


def plan_attention(T: int, window: int | None, doc_ids: Tensor | None = None, device=None) -> AttentionPlan:
    """How T tokens at positions 0..T-1 attend to each other, for one window size: on CPU in chunks
    (`chunk_plan`); elsewhere `is_causal` where no mask is needed (fastest), blocks where the window
    is well below T, else a mask."""
    if torch.device(device or "cpu").type == "cpu" and T > 1:
        return chunk_plan(T, window, doc_ids, device)
    if doc_ids is None and (window is None or window >= T):
        return Causal()
    if window is not None and T > 2 * window:
        return Blocked(window, blocked_window_mask(T, window, doc_ids, device))
    positions = torch.arange(T, device=device)
    mask = attention_mask(positions, positions, window, doc_ids, doc_ids)
    return Masked(mask if doc_ids is None else mask[:, None])
