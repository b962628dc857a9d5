"""Batches for training: a deterministic weighted mixture of packed datasets.

Every rank computes the same global batch (dataset choices drawn from `seed` and the step; rows
taken in a per-epoch permutation of each dataset) and keeps its own slice, so the data a step sees
depends only on the seed and the step, not on the number of ranks. The position in the stream
(`state_dict`) is a step count plus how many rows each dataset has given, which is what a resumed
run needs to continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cwm.data.packed import PackedDataset


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, T] token ids the model reads
    targets: torch.Tensor  # [B, T] next token ids; -100 where no loss is taken
    doc_ids: torch.Tensor  # [B, T] document of each input (document-causal attention)

    @property
    def num_targets(self) -> int:
        return int((self.targets != -100).sum())

    def to(self, device) -> "Batch":
        """Copy to `device`; to a GPU through pinned memory, so the copy does not wait for the
        kernels already queued (a copy from pageable memory would)."""
        tensors = (self.inputs, self.targets, self.doc_ids)
        if torch.device(device).type == "cuda":
            tensors = (t.pin_memory() for t in tensors)
        return Batch(*(t.to(device, non_blocking=True) for t in tensors))


def make_batch(rows: list[dict[str, np.ndarray]]) -> Batch:
    """Shift packed rows into inputs and targets (cwm.data.packed semantics): a target counts when
    its loss_mask is 1 and it is in the same document as the token before it."""
    tokens = torch.from_numpy(np.stack([r["tokens"] for r in rows]).astype(np.int64))
    doc_ids = torch.from_numpy(np.stack([r["doc_ids"] for r in rows]).astype(np.int64))
    loss_mask = torch.from_numpy(np.stack([r["loss_mask"] for r in rows]).astype(bool))
    keep = loss_mask[:, 1:] & (doc_ids[:, 1:] == doc_ids[:, :-1])
    targets = tokens[:, 1:].masked_fill(~keep, -100)
    return Batch(tokens[:, :-1].contiguous(), targets.contiguous(), doc_ids[:, :-1].contiguous())


def open_datasets(paths: list[str]) -> list[PackedDataset]:
    return [PackedDataset(p) for p in paths]


class MixtureSampler:
    """Global batches of rows drawn from datasets with mixture weights, reproducible from a seed."""

    def __init__(self, datasets: list[PackedDataset], weights: list[float] | None = None, seed: int = 0):
        self.datasets = datasets
        w = np.asarray(weights if weights else [1.0] * len(datasets), dtype=np.float64)
        self.probs = w / w.sum()
        self.seed = seed
        self.step = 0
        self.taken = [0] * len(datasets)
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    def _row(self, d: int, j: int) -> int:
        """The j-th row taken from dataset d: a fresh permutation every pass over it."""
        n = len(self.datasets[d])
        epoch = j // n
        cached = self._perm_cache.get(d)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, d, epoch]).permutation(n)
            self._perm_cache[d] = cached = (epoch, perm)
        return int(cached[1][j % n])

    def next_indices(self, size: int) -> list[tuple[int, int]]:
        """(dataset, row) for the next global batch of `size` rows."""
        choices = np.random.default_rng([self.seed, 1 << 20, self.step]).choice(
            len(self.datasets), size=size, p=self.probs
        )
        out = []
        for d in choices.tolist():
            out.append((d, self._row(d, self.taken[d])))
            self.taken[d] += 1
        self.step += 1
        return out

    def next_batches(self, global_size: int, micro: int, rank: int = 0, world: int = 1) -> list[Batch]:
        """This rank's micro-batches of the next global batch."""
        indices = self.next_indices(global_size)
        per_rank = global_size // world
        mine = indices[rank * per_rank : (rank + 1) * per_rank]
        return [make_batch([self.datasets[d][r] for d, r in mine[i : i + micro]]) for i in range(0, len(mine), micro)]

    def state_dict(self) -> dict:
        return {"step": self.step, "taken": list(self.taken), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if len(state["taken"]) != len(self.datasets):
            raise ValueError(
                f"the checkpoint's data state has {len(state['taken'])} datasets, the config {len(self.datasets)}"
            )
        self.step, self.taken, self.seed = int(state["step"]), list(state["taken"]), int(state["seed"])
        self._perm_cache.clear()


def validation_batches(dataset: PackedDataset, micro: int, max_batches: int, rank: int = 0, world: int = 1):
    """The first `max_batches` micro-batches of a validation set in order, dealt round-robin to ranks."""
    n_batches = min(max_batches, -(-len(dataset) // micro))
    for b in range(rank, n_batches, world):
        rows = range(b * micro, min(len(dataset), (b + 1) * micro))
        yield make_batch([dataset[i] for i in rows])


def dataset_name(path: str) -> str:
    return Path(path).name
