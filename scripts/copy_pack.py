"""A packed dataset that can only be predicted by copying (the probe configs/probe-copy.toml).

    .venv/bin/python scripts/copy_pack.py --out runs/mini/packed/copy --rows 4000 --seq-len 513

Each document is a span of random ordinary tokens followed by one or two exact repeats of it;
the loss is taken on the repeats only (the first occurrence cannot be predicted). A model learns
it only by forming a copy (induction) head: find the earlier occurrence of the current token and
predict what followed it. docs/cwm-mini.md ("Copying") says what it showed.
"""

from __future__ import annotations

import argparse

import numpy as np

from cwm.data.packed import PackedDataset, PackedWriter


def copy_rows(rows: int, seq_len: int, vocab: int, seed: int, min_span: int = 4, max_span: int = 64, weights=None):
    """Yield (tokens, doc_ids, loss_mask) rows filled with span-and-repeat documents; the span's
    tokens are drawn independently, uniformly or with `weights` (a probability per token id)."""
    rng = np.random.default_rng(seed)
    for _ in range(rows):
        tokens, docs, mask = [], [], []
        doc = 0
        while len(tokens) < seq_len:
            span = rng.choice(vocab, int(rng.integers(min_span, max_span + 1)), p=weights).tolist()
            copies = int(rng.integers(2, 4))
            tokens += span * copies
            mask += [0] * len(span) + [1] * len(span) * (copies - 1)
            docs += [doc] * len(span) * copies
            doc += 1
        yield tokens[:seq_len], docs[:seq_len], mask[:seq_len]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="packed dataset directory to write")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seq-len", type=int, default=513, help="row length (the config's data.seq_len)")
    parser.add_argument("--vocab", type=int, default=4096, help="draw from token ids below this (the ordinary tokens)")
    parser.add_argument("--model-vocab", type=int, default=4352, help="the model's vocabulary size (written to meta.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--like", help="a packed dataset: draw tokens with its token frequencies (the tokens traces use) instead of uniformly")
    args = parser.parse_args()
    weights = None
    if args.like:
        counts = np.bincount(PackedDataset(args.like).tokens[:2000].ravel(), minlength=args.model_vocab)[: args.vocab]
        weights = counts / counts.sum()
    with PackedWriter(args.out, args.seq_len, args.model_vocab, kind="copy", seed=args.seed, like=args.like) as writer:
        for row in copy_rows(args.rows, args.seq_len, args.vocab, args.seed, weights=weights):
            writer.add(*row)
    print(f"wrote {writer.count} rows of {args.seq_len} to {args.out}")


if __name__ == "__main__":
    main()
