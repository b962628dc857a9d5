"""KV cache for generation, preallocated once.

Each layer keeps a ring of slots: `max_len` slots on global layers (it never wraps), `window`
slots on sliding layers (a sliding layer never looks further back, so its memory stops growing
at the window). The token at position p lives in slot p % size. Attention does not care about
the order of keys, so a decode step writes its key and attends to all filled slots without a
mask, unless rows mix documents (left padding in a batch), where a mask on the slots' document
ids keeps each row to its own document.
"""

from __future__ import annotations

import torch

from cwm.model.config import ModelConfig
from cwm.model.transformer import attention_mask


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
        # Per window: the position each slot holds (-1: empty) and, per row, its document id.
        self.slot_pos = {w: torch.full((s,), -1, device=device) for w, s in self.sizes.items()}
        self.slot_doc = {w: torch.zeros(batch_size, s, dtype=torch.long, device=device) for w, s in self.sizes.items()}
        self.doc = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's current document
        self.mixed_docs = False  # True once some row holds more than one document
        self._start = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def begin(self, T: int, doc_ids: torch.Tensor | None):
        """Account for T new tokens (doc_ids None: each row continues its document); return their
        positions and the SDPA arguments for each window size."""
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} tokens; {end} were asked for")
        positions = torch.arange(start, end, device=self.doc.device)
        if doc_ids is None:
            doc_ids = self.doc[:, None].expand(-1, T)
        elif not self.mixed_docs:
            self.mixed_docs = bool((doc_ids != (self.doc[:, None] if start else doc_ids[:, :1])).any())
        decode = T == 1 and start > 0
        attn = {} if decode else {w: self._chunk_kwargs(w, start, positions, doc_ids) for w in self.sizes}
        for window, size in self.sizes.items():  # record what each slot now holds
            kept = positions[max(0, T - size) :]  # only the last `size` new tokens stay
            self.slot_pos[window][kept % size] = kept
            self.slot_doc[window][:, kept % size] = doc_ids[:, max(0, T - size) :]
        if decode:
            for window, size in self.sizes.items():
                n = min(end, size)
                mask = (self.slot_doc[window][:, :n] == doc_ids)[:, None, None, :] if self.mixed_docs else None
                attn[window] = {"attn_mask": mask}
        self.doc = doc_ids[:, -1].clone()
        self._start, self.length = start, end
        return positions, attn

    def _chunk_kwargs(self, window, start, positions, doc_ids) -> dict:
        """SDPA arguments for T > 1 new tokens, laid out as `update` returns the keys."""
        T, size = positions.shape[0], self.sizes[window]
        if start == 0 and not self.mixed_docs and (window is None or window >= T):
            return {"is_causal": True}
        if start == 0:
            k_pos, k_doc = positions, doc_ids
        elif size == self.max_len:  # never wraps: slots 0 .. end-1 in order
            k_pos = torch.arange(start + T, device=positions.device)
            k_doc = torch.cat((self.slot_doc[window][:, :start], doc_ids), dim=1)
        else:  # the ring's old contents, then the new tokens
            n = min(start, size)
            k_pos = torch.cat((self.slot_pos[window][:n], positions))
            k_doc = torch.cat((self.slot_doc[window][:, :n], doc_ids), dim=1)
        if not self.mixed_docs:
            doc_ids = k_doc = None
        return {"attn_mask": attention_mask(positions, k_pos, window, doc_ids, k_doc)}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store a layer's new keys/values [B, kv_heads, T, head_dim]; return the keys/values to attend to."""
        K, V = self.keys[layer], self.values[layer]
        size, T, start = K.shape[2], k.shape[2], self._start
        if T == 1 and start > 0:  # decode
            K[:, :, start % size] = k[:, :, 0]
            V[:, :, start % size] = v[:, :, 0]
            n = min(start + 1, size)
            return K[:, :, :n], V[:, :, :n]
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
