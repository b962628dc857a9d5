"""KV cache for generation, preallocated once.

Each layer keeps a ring of slots: `max_len` slots on global layers (it never wraps), `window`
slots on sliding layers (a sliding layer never looks further back, so its memory stops growing
at the window). The token at position p lives in slot p % size. Attention does not care about
the order of keys, so a decode step writes its key and attends to all filled slots without a
mask, unless rows mix documents (left padding in a batch), where a mask on the slots' document
ids keeps each row to its own document. The rotary table for all positions is computed once here.
"""

from __future__ import annotations

import torch

from cwm.model.config import ModelConfig
from cwm.model.transformer import attention_kwargs, attention_mask, rope_inv_freq, rope_table


class KVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > cfg.max_seq_len:
            raise ValueError(f"a KV cache of {max_len} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # tokens written so far = position of the next token
        self.sizes = {w: min(w or max_len, max_len) for w in map(cfg.window, range(cfg.n_layers))}
        self.keys, self.values = [], []
        for layer in range(cfg.n_layers):
            shape = (batch_size, cfg.n_kv_heads, self.sizes[cfg.window(layer)], cfg.head_dim)
            self.keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.values.append(torch.zeros(shape, device=device, dtype=dtype))
        positions = torch.arange(max_len, device=device)
        self.cos, self.sin = rope_table(positions, rope_inv_freq(cfg, device=device), dtype)
        self.doc = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's current document
        # Once rows hold several documents: per window, the document id in each slot.
        self.slot_doc: dict[int | None, torch.Tensor] | None = None
        self._start = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def begin(self, T: int, doc_ids: torch.Tensor | None):
        """Account for T new tokens (doc_ids None: each row continues its document); return the
        rotary table for their positions and the SDPA arguments for each window size."""
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} tokens; {end} were asked for")
        rope = (self.cos[start:end], self.sin[start:end])
        self._start, self.length = start, end
        if doc_ids is not None and self.slot_doc is None:
            previous = self.doc[:, None] if start else doc_ids[:, :1]
            if (doc_ids != previous).any():  # from now on, track documents per slot
                self.slot_doc = {w: self.doc[:, None].repeat(1, s) for w, s in self.sizes.items()}
        if doc_ids is None:
            doc_ids = self.doc[:, None].expand(-1, T)

        if T == 1 and start > 0:  # decode: attend to every filled slot
            attn = {}
            for window, size in self.sizes.items():
                mask = None
                if self.slot_doc is not None:
                    self.slot_doc[window][:, start % size] = doc_ids[:, 0]
                    mask = (self.slot_doc[window][:, : min(end, size)] == doc_ids)[:, None, None, :]
                attn[window] = {"attn_mask": mask}
        else:
            attn = {window: self._chunk_kwargs(window, start, doc_ids) for window in self.sizes}
            if self.slot_doc is not None:
                for window, size in self.sizes.items():
                    kept = torch.arange(max(start, end - size), end, device=doc_ids.device)
                    self.slot_doc[window][:, kept % size] = doc_ids[:, kept - start]
        self.doc = doc_ids[:, -1].clone()
        return rope, attn

    def _chunk_kwargs(self, window, start, doc_ids) -> dict:
        """SDPA arguments for T > 1 new tokens, keys laid out as `update` returns them."""
        T, size, device = doc_ids.shape[1], self.sizes[window], doc_ids.device
        if start == 0:  # a prefill attends like an uncached forward
            return attention_kwargs(T, window, None if self.slot_doc is None else doc_ids, device)
        positions = torch.arange(start, start + T, device=device)
        if size == self.max_len:  # never wraps: slots 0 .. end-1 in order
            k_pos = torch.arange(start + T, device=device)
        else:  # the ring's old contents (slot s holds the last position = s mod size), then the new tokens
            slots = torch.arange(min(start, size), device=device)
            k_pos = torch.cat((start - 1 - (start - 1 - slots) % size, positions))
        if self.slot_doc is None:
            return {"attn_mask": attention_mask(positions, k_pos, window)}
        k_doc = torch.cat((self.slot_doc[window][:, : len(k_pos) - T], doc_ids), 1)
        return {"attn_mask": attention_mask(positions, k_pos, window, doc_ids, k_doc)[:, None]}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store a layer's new keys/values [B, kv_heads, T, head_dim]; return the keys/values to attend to."""
        K, V = self.keys[layer], self.values[layer]
        size, T, start = K.shape[2], k.shape[2], self._start
        if T == 1 and start > 0:  # decode
            K.narrow(2, start % size, 1).copy_(k)
            V.narrow(2, start % size, 1).copy_(v)
            n = min(start + 1, size)
            return K.narrow(2, 0, n), V.narrow(2, 0, n)
        if size == self.max_len:  # never wraps
            K[:, :, start : start + T] = k
            V[:, :, start : start + T] = v
            return (k, v) if start == 0 else (K[:, :, : start + T], V[:, :, : start + T])
        # A ring and a chunk: attend to the old contents plus the chunk, then keep the last `size`.
        n = min(start, size)
        keys, values = (k, v) if start == 0 else (torch.cat((K[:, :, :n], k), 2), torch.cat((V[:, :, :n], v), 2))
        kept = slice(max(0, T - size), T)
        slots = torch.arange(start, start + T, device=k.device)[kept] % size
        K[:, :, slots] = k[:, :, kept]
        V[:, :, slots] = v[:, :, kept]
        return keys, values
