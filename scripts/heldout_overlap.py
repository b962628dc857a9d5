"""Does a held-out trace dataset share programs with training datasets?

    .venv/bin/python scripts/heldout_overlap.py HELDOUT TRAIN [TRAIN ...] [--results EVAL.json ...]

Compares (source, call) pairs exactly and the function code after the builder's normalisation
(identifiers renamed, layout gone: `cwm.data.evalsets.normalize_source`), and prints the counts.
With --results (files written by `cwm eval trace --data HELDOUT`), also prints each run's
metrics on the held-out programs whose normalised source no training program has ("novel") and
on the others ("seen").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cwm.data import dataset


def rows(path: str, columns=("source", "call")) -> list[dict]:
    return list(dataset.rows(path, columns=list(columns)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("heldout")
    parser.add_argument("train", nargs="+")
    parser.add_argument("--results", nargs="*", default=[], help="cwm eval trace result files on HELDOUT")
    args = parser.parse_args()
    from cwm.data.evalsets import normalize_source

    held = rows(args.heldout)
    exact = {(r["source"], r["call"]) for r in held}
    shapes = {normalize_source(r["source"]) for r in held}
    trained: set = set()
    for path in args.train:
        train = rows(path)
        same = sum((r["source"], r["call"]) in exact for r in train)
        sources = [normalize_source(r["source"]) for r in train]
        trained.update(sources)
        print(f"{path}: {len(train)} programs; same program and call as a held-out one: {same}; "
              f"same normalised source: {sum(s in shapes for s in sources)}")
    seen = {r["id"] for r in rows(args.heldout, ["id", "source"]) if normalize_source(r["source"]) in trained}
    print(f"held-out programs whose normalised source a training program has: {len(seen)} of {len(held)}")
    for path in args.results:
        items = [i for i in json.loads(Path(path).read_text())["items"] if i.get("score")]
        for name, part in (("novel", [i for i in items if i["id"] not in seen]), ("seen", [i for i in items if i["id"] in seen])):
            means = {m: sum(float(i["score"][m]) for i in part) / max(len(part), 1) for m in ("valid", "action", "state", "output")}
            print(f"{path} [{name}, {len(part)} traces]: " + ", ".join(f"{m} {v:.3f}" for m, v in means.items()))


if __name__ == "__main__":
    main()
