"""The on-disk format of packed training sequences, shared by `cwm data pack` and the trainer.

A packed dataset is a directory:

    meta.json       {"format": "cwm-packed-v1", "seq_len": L, "num_sequences": N, "vocab_size": V, ...}
    tokens.bin      int32  [N, L]  token ids
    doc_ids.bin     int32  [N, L]  document index inside each sequence (0, 0, 1, 1, 1, 2, ...)
    loss_mask.bin   uint8  [N, L]  1 where the token is a learning target
    tokenizer.json  (or tokenizer.model) the tokenizer that made the ids, when `cwm data pack` wrote it

Training reads a row as: inputs = tokens[:-1], targets = tokens[1:]; a target counts when its
loss_mask is 1 and it belongs to the same document as its input (doc_ids[1:] == doc_ids[:-1]);
attention is document-causal over doc_ids[:-1]. Files are memory-mapped, so a dataset larger
than memory trains fine. The writer builds under a temporary name and renames on close, so a
half-written dataset never looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "cwm-packed-v1"
_ARRAYS: dict[str, type] = {"tokens": np.int32, "doc_ids": np.int32, "loss_mask": np.uint8}


class PackedDataset:
    """Read-only, memory-mapped view of a packed dataset directory."""

    tokens: np.ndarray  # the arrays of _ARRAYS, memory-mapped: (num_sequences, seq_len)
    doc_ids: np.ndarray
    loss_mask: np.ndarray

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a packed dataset (no meta.json); build one with `cwm data pack`"
            )
        try:
            self.meta = json.loads(meta_path.read_bytes().decode("utf-8"))
        except ValueError as e:  # not UTF-8, not JSON
            raise ValueError(f"{meta_path}: not a readable JSON file ({type(e).__name__}: {e}); pack the dataset again") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else f"a JSON {type(self.meta).__name__}"
            raise ValueError(f"{meta_path}: format {found!r}, expected {FORMAT!r}")
        sizes: list[Any] = [self.meta.get(k) for k in ("seq_len", "num_sequences", "vocab_size")]
        if not all(type(v) is int and v >= 0 for v in sizes):
            raise ValueError(f"{meta_path}: seq_len, num_sequences and vocab_size must be non-negative integers; pack the dataset again")
        self.seq_len, self.num_sequences, self.vocab_size = sizes
        shape = (self.num_sequences, self.seq_len)
        for name, dtype in _ARRAYS.items():
            file = self.path / f"{name}.bin"
            expected = self.num_sequences * self.seq_len * np.dtype(dtype).itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise ValueError(f"{file}: missing or truncated (expected {expected} bytes)")
            setattr(self, name, np.memmap(file, dtype=dtype, mode="r", shape=shape))

    def __len__(self) -> int:
        return self.num_sequences

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer.json").is_file() or (self.path / "tokenizer.model").is_file()

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {
            "tokens": np.asarray(self.tokens[i]),
            "doc_ids": np.asarray(self.doc_ids[i]),
            "loss_mask": np.asarray(self.loss_mask[i]),
        }


class PackedWriter:
    """Append fixed-length sequences; `close()` publishes the directory atomically."""

    def __init__(self, path: str | os.PathLike, seq_len: int, vocab_size: int, **extra_meta):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.seq_len, self.vocab_size, self.extra_meta = seq_len, vocab_size, extra_meta
        self.count = 0
        self._files = {name: open(self.tmp / f"{name}.bin", "wb") for name in _ARRAYS}

    def add(self, tokens, doc_ids, loss_mask) -> None:
        for name, values in (("tokens", tokens), ("doc_ids", doc_ids), ("loss_mask", loss_mask)):
            array = np.asarray(values, dtype=_ARRAYS[name])
            if array.shape != (self.seq_len,):
                raise ValueError(f"{name}: shape {array.shape}, expected ({self.seq_len},)")
            self._files[name].write(array.tobytes())
        self.count += 1

    def close(self) -> Path:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta = {
            "format": FORMAT,
            "seq_len": self.seq_len,
            "num_sequences": self.count,
            "vocab_size": self.vocab_size,
            **self.extra_meta,
        }
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            for f in self._files.values():
                f.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
