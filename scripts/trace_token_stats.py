"""Token lengths of a built trace dataset: will its traces fit the model's context?

    .venv/bin/python scripts/trace_token_stats.py DATASET TOKENIZER [--by-origin]

Prints, over the complete traces (those `cwm data pack` learns from): median / p90 / max of
events, bytes and tokens (the whole document as packed: context + frames), the share within
1,024 and 2,048 tokens, and with --by-origin the records per origin (for `real`: per template).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("tokenizer")
    parser.add_argument("--by-origin", action="store_true")
    args = parser.parse_args()

    from cwm.data.dataset import row_to_trace, rows
    from cwm.data.pack import trace_document
    from cwm.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    events, nbytes, tokens, origins = [], [], [], Counter()
    for row in rows(args.dataset):
        if row["cwm_text"] is None:
            continue
        events.append(row["num_events"])
        nbytes.append(row["num_bytes"])
        tokens.append(len(trace_document(row_to_trace(row), tok, "frames")[0]))
        origin = row["origin"]
        origins[origin.split(":")[1] if origin.startswith("real:") else origin.split(":")[0]] += 1
    if not tokens:
        raise SystemExit(f"{args.dataset}: no complete traces")

    def summary(values: list[int]) -> str:
        ranked = sorted(values)
        return f"median {statistics.median(ranked):.0f}, p90 {ranked[int(0.9 * (len(ranked) - 1))]}, max {ranked[-1]}"

    print(f"{len(tokens)} complete traces")
    print(f"events: {summary(events)}")
    print(f"bytes:  {summary(nbytes)}")
    print(f"tokens: {summary(tokens)}; within 1024: {sum(t <= 1024 for t in tokens) / len(tokens):.1%}, "
          f"within 2048: {sum(t <= 2048 for t in tokens) / len(tokens):.1%}")  # fmt: skip
    if args.by_origin:
        print("per origin: " + ", ".join(f"{k} {v}" for k, v in origins.most_common()))


if __name__ == "__main__":
    main()
