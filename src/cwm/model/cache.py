"""KV cache for generation: fixed-shape tensors, allocated once.

Each layer keeps `max_len` slots on global layers (they never wrap) and `window + ROLLBACK_SLOTS`
on sliding layers (a sliding layer never looks further back than its window, so its memory stops
growing there; the extra slots let a cache be cut back a little, see `truncate`). The token at
position p lives in slot p % size; `slot_pos` records which position each slot holds (-1: none),
and, once rows hold several documents (left padding in a batch), `slot_doc` which document.
Masks come from those two, so attention never depends on the order of the slots.

Two ways in, both with explicit positions (`Transformer.forward(..., positions=, cache=)`):
  decode   one token per row: written into its slot, then its query attends to every slot under a
           mask. Compiled (or on a GPU), shapes never change and no host value is read, so the
           step compiles once; eager on CPU the slots never filled yet are left out.
  prefill  T > 1 tokens at positions start..start+T-1: queries attend to the slots filled before
           `start`, then to each other; then the last tokens are written. From start 0 this is
           the uncached attention plan (attention.py).
`plan` turns positions into the rotary table and one `CacheStep` per window size; each layer
then calls `store` with its step. Nothing else passes between the model and the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cwm.model.attention import AttentionPlan, Masked, attention_mask, plan_attention
from cwm.model.config import ModelConfig
from cwm.model.rope import rope_inv_freq, rope_table

# Slots a sliding layer keeps beyond its window: a cache can be cut back by up to this many tokens
# (`truncate`: the debugger's next prompt drops the tokens decoded past a stop) and still reused.
ROLLBACK_SLOTS = 64


@dataclass(frozen=True)
class CacheStep:
    """One forward's use of the layers of one window size."""

    plan: AttentionPlan  # how the queries attend to the keys `store` returns
    slots: Tensor  # the slots the last len(slots) new tokens are written to
    old: int | None  # prefill: the first `old` slots are attended before the new keys; None: decode
    n_slots: int = 0  # decode: the leading slots attended (all but never-filled ones)


class KVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > cfg.max_seq_len:
            raise ValueError(f"a KV cache of {max_len} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
        self.batch_size, self.max_len = batch_size, max_len
        windows = [cfg.window(layer) for layer in range(cfg.n_layers)]
        self.sizes = {w: max_len if w is None else min(w + ROLLBACK_SLOTS, max_len) for w in windows}
        self.keys, self.values = [], []
        for w in windows:
            shape = (batch_size, cfg.n_kv_heads, self.sizes[w], cfg.head_dim)
            self.keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.values.append(torch.zeros(shape, device=device, dtype=dtype))
        self.slot_pos = {w: torch.full((s,), -1, dtype=torch.long, device=device) for w, s in self.sizes.items()}
        self.slot_doc: dict[int | None, Tensor] | None = None  # [B, size] each, once rows hold several documents
        self.doc = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's current document
        self.cos, self.sin = rope_table(torch.arange(max_len, device=device), rope_inv_freq(cfg, device=device), dtype)
        self.ids: list[int] = []  # batch 1: the tokens whose keys are held, in order (for prefix reuse)
        self.reused = 0  # of the last prompt generated from, the leading tokens found here (not computed)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def plan(self, positions: Tensor, doc_ids: Tensor | None = None):
        """The rotary table for `positions` [T] and a `CacheStep` per window size. doc_ids [B, T]
        (None: each row continues its document) is given by a prefill whose rows mix documents."""
        rope = (self.cos[positions], self.sin[positions])
        if positions.shape[0] == 1:
            return rope, self._decode(positions)
        return rope, self._prefill(positions, doc_ids)

    def _decode(self, positions: Tensor) -> dict:
        # Eager on CPU, where reading the position costs nothing, keys stop at the last slot filled
        # (fewer keys); compiled or on GPUs every slot is attended (one shape).
        eager_cpu = positions.device.type == "cpu" and not torch.compiler.is_compiling()
        last = int(positions[0]) if eager_cpu else None
        steps = {}
        for window, size in self.sizes.items():
            slots = positions % size
            n = size if last is None else min(last + 1, size)
            slot_pos = self.slot_pos[window].index_copy_(0, slots, positions)[:n]
            mask = attention_mask(positions, slot_pos, window)  # [1, n]
            if self.slot_doc is not None:
                slot_doc = self.slot_doc[window].index_copy_(1, slots, self.doc[:, None])[:, :n]
                mask = (mask & (slot_doc == self.doc[:, None]))[:, None, None, :]
            # additive, made once for every layer of the window (SDPA would convert it in each)
            mask = torch.zeros(mask.shape, dtype=self.cos.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
            steps[window] = CacheStep(Masked(mask), slots, None, n)
        return steps

    def _prefill(self, positions: Tensor, doc_ids: Tensor | None) -> dict:
        T, device = positions.shape[0], positions.device
        start = int(positions[0])  # one host read per prefill
        if start == 0:  # a new sequence: forget every slot
            for t in self.slot_pos.values():
                t.fill_(-1)
            self.slot_doc = None
        if doc_ids is not None and self.slot_doc is None and bool((doc_ids != doc_ids[:, :1]).any() or start):
            self.slot_doc = {w: self.doc[:, None].repeat(1, s) for w, s in self.sizes.items()}
        docs = self.doc[:, None].expand(-1, T) if doc_ids is None else doc_ids
        steps = {}
        for window, size in self.sizes.items():
            if start == 0:  # attend like an uncached forward
                plan = plan_attention(T, window, None if self.slot_doc is None else docs, device)
                old = 0
            else:
                old = min(start, size)
                k_pos = torch.cat((self.slot_pos[window][:old], positions))
                if self.slot_doc is None:
                    plan = Masked(attention_mask(positions, k_pos, window))
                else:
                    k_doc = torch.cat((self.slot_doc[window][:, :old], docs), 1)
                    plan = Masked(attention_mask(positions, k_pos, window, docs, k_doc)[:, None])
            kept = positions[-min(T, size):]
            slots = kept % size
            self.slot_pos[window][slots] = kept
            if self.slot_doc is not None:
                self.slot_doc[window][:, slots] = docs[:, -len(kept):]
            steps[window] = CacheStep(plan, slots, old)
        self.doc = docs[:, -1].clone()
        return steps

    def store(self, layer: int, step: CacheStep, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write a layer's new keys/values [B, kv_heads, T, head_dim]; return the ones to attend to."""
        K, V = self.keys[layer], self.values[layer]
        if step.old is None:  # decode: into the token's slot, then attend to every slot
            K.index_copy_(2, step.slots, k)
            V.index_copy_(2, step.slots, v)
            return K[:, :, : step.n_slots], V[:, :, : step.n_slots]
        keys, values = (k, v) if step.old == 0 else (torch.cat((K[:, :, : step.old], k), 2), torch.cat((V[:, :, : step.old], v), 2))
        n = step.slots.shape[0]
        K[:, :, step.slots] = k[:, :, -n:]
        V[:, :, step.slots] = v[:, :, -n:]
        return keys, values

    def truncate(self, length: int) -> bool:
        """Keep only the first `length` tokens (the next ones will overwrite the rest). False, and
        nothing changed, when a sliding layer has already overwritten some of the last `window`
        of them: the caller starts over (a prefill from position 0)."""
        for window, size in self.sizes.items():
            needed = torch.arange(max(0, length - (window or length)), length, device=self.slot_pos[window].device)
            if not bool((self.slot_pos[window][needed % size] == needed).all()):
                return False
        for t in self.slot_pos.values():
            t.masked_fill_(t >= length, -1)
        self.ids = self.ids[:length]
        return True
