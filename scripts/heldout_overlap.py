"""Does a held-out trace dataset share programs with training datasets?

    .venv/bin/python scripts/heldout_overlap.py HELDOUT TRAIN [TRAIN ...]

Compares (source, call) pairs exactly and the function code after the builder's normalisation
(identifiers renamed, layout gone: `cwm.data.evalsets.normalize_source`), and prints the counts.
"""

from __future__ import annotations

import argparse
import glob

import pyarrow.parquet as pq


def rows(path: str) -> list[dict]:
    out = []
    for shard in sorted(glob.glob(f"{path}/shard-*.parquet")):
        out += pq.read_table(shard, columns=["source", "call"]).to_pylist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("heldout")
    parser.add_argument("train", nargs="+")
    args = parser.parse_args()
    from cwm.data.evalsets import normalize_source

    held = rows(args.heldout)
    exact = {(r["source"], r["call"]) for r in held}
    shapes = {normalize_source(r["source"]) for r in held}
    for path in args.train:
        train = rows(path)
        same = sum((r["source"], r["call"]) in exact for r in train)
        similar = sum(normalize_source(r["source"]) in shapes for r in train)
        print(f"{path}: {len(train)} programs; same program and call as a held-out one: {same}; "
              f"same normalised source: {similar}")


if __name__ == "__main__":
    main()
