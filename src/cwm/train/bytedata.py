"""Byte-level packed datasets from text files: real code to train on without a tokenizer.

Each file is one document: id 256 (begin of document) and then its UTF-8 bytes (ids 0-255).
Documents are laid end to end and cut into rows of `seq_len`; a document cut by a row boundary
goes on in the next row. Smoke runs and the trainer's tests use this; real runs read what
`cwm data pack` writes.

    python -m cwm.train.bytedata OUT_DIR FILE_OR_DIR... [--seq-len 129] [--glob '*.py']
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cwm.data.packed import PackedWriter

BOS = 256
VOCAB_SIZE = 257


def write_byte_dataset(out_dir, documents: list[bytes], seq_len: int) -> Path:
    """Pack byte documents into rows of `seq_len` (loss on every token); drops the last partial row."""
    tokens, docs = [], []
    for i, doc in enumerate(documents):
        tokens += [BOS, *doc]
        docs += [i] * (len(doc) + 1)
    n_rows = len(tokens) // seq_len
    if n_rows == 0:
        raise ValueError(f"{sum(map(len, documents))} bytes of text do not fill one row of {seq_len} tokens")
    tokens = np.asarray(tokens[: n_rows * seq_len]).reshape(n_rows, seq_len)
    docs = np.asarray(docs[: n_rows * seq_len]).reshape(n_rows, seq_len)
    with PackedWriter(out_dir, seq_len, VOCAB_SIZE, source="cwm.train.bytedata") as writer:
        for row_tokens, row_docs in zip(tokens, docs):
            writer.add(row_tokens, row_docs - row_docs[0], np.ones(seq_len))  # doc ids count from 0 per row
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cwm.train.bytedata", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("sources", nargs="+", help="files, or directories searched with --glob")
    parser.add_argument("--seq-len", type=int, default=129)
    parser.add_argument("--glob", default="*.py")
    args = parser.parse_args(argv)
    files = []
    for source in map(Path, args.sources):
        files += sorted(source.rglob(args.glob)) if source.is_dir() else [source]
    path = write_byte_dataset(args.out_dir, [f.read_bytes() for f in files], args.seq_len)
    print(f"wrote {path} from {len(files)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
