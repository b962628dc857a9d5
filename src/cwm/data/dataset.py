"""A dataset of `cwm data build`: its format, and the one reader everything reads datasets through.

A dataset is a directory: `manifest.json` (format, kind, the build's parameters, the finished
shards) and Parquet shards `shard-00000.parquet`, ... whose rows are records (`schema(kind)`).
Shards are listed in record order: shard i holds records i * shard_size, ... The builder
(cwm.data.build) writes them; packing, stats, the evaluations and the scripts read them here.

    for row in rows("runs/data/heldout", kind="traces"):
        trace = row_to_trace(row)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

FORMAT = "cwm-dataset-v1"
MANIFEST = "manifest.json"
KINDS = ("traces", "code")


class DatasetError(ValueError):
    """A dataset that cannot be read as asked (the message names the file and what to do)."""


def schema(kind: str):
    """The Arrow schema of a shard of a dataset of this kind."""
    import pyarrow as pa

    if kind == "code":
        return pa.schema([("index", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("text", pa.string()), ("num_bytes", pa.int64())])
    frame = pa.struct([
        ("event", pa.string()), ("lineno", pa.int32()), ("source", pa.string()),
        ("locals", pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))),
        ("value", pa.string()), ("depth", pa.int32()), ("rewritten", pa.list_(pa.string())),
    ])  # fmt: skip
    return pa.schema([
        ("index", pa.int64()), ("id", pa.string()), ("origin", pa.string()), ("source", pa.string()),
        ("call", pa.string()), ("status", pa.string()), ("error", pa.string()), ("return_value", pa.string()),
        ("num_events", pa.int32()), ("num_bytes", pa.int64()),
        ("context", pa.string()), ("cwm_text", pa.string()), ("frames", pa.list_(frame)),
    ])  # fmt: skip


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.parquet"


def frame_row(frame) -> tuple:
    """A frame as a row of the `frames` column (a tuple in the struct's field order: Arrow takes
    tuples for structs, and they are cheaper to build and to pickle than dicts)."""
    locals_ = None if frame.locals is None else tuple(frame.locals.items())
    return frame.event, frame.lineno, frame.source, locals_, frame.value, frame.depth, tuple(frame.rewritten)


def row_to_trace(row: dict):
    """A record (as read back from a shard) -> cwm.trace.format.Trace; the inverse of frame_row."""
    from cwm.trace.format import Frame, Trace

    frames = [
        Frame(
            f["event"], f["lineno"], f["source"], None if f["locals"] is None else {kv["name"]: kv["value"] for kv in f["locals"]},
            f["value"], f["depth"], tuple(f["rewritten"] or ()),
        )
        for f in row["frames"] or []
    ]
    return Trace(source=row["context"], entry=row["call"], frames=frames, status=row["status"], return_value=row["return_value"], error=row["error"])


def read_manifest(out: str | os.PathLike, kind: str | None = None) -> dict:
    """A dataset's manifest, checked: anything else (not JSON, not UTF-8, fields of the wrong type,
    a shard name that is not one; with `kind`, a dataset of another kind) is a DatasetError naming
    the file, never a traceback later."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{out} is not a dataset (no {MANIFEST}); build one with `cwm data build`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DatasetError(f"{path}: not a readable JSON manifest ({type(e).__name__}: {e}); rebuild the dataset with `cwm data build`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        raise DatasetError(f"{path}: format {found!r}, expected {FORMAT!r}")
    shards = manifest.get("shards")
    problem = (
        "kind" if manifest.get("kind") not in KINDS
        else "params" if not isinstance(manifest.get("params"), dict)
        else "num_records" if type(manifest.get("num_records")) is not int
        else "complete" if type(manifest.get("complete")) is not bool
        else "shards" if not isinstance(shards, dict)
        or not all(re.fullmatch(r"shard-\d{5}\.parquet", name) and isinstance(e, dict) and type(e.get("rows")) is int for name, e in shards.items())
        else None
    )  # fmt: skip
    if problem:
        raise DatasetError(f"{path}: a damaged manifest (its {problem!r} is missing or of the wrong type); rebuild the dataset with `cwm data build`")
    if kind is not None and manifest["kind"] != kind:
        raise DatasetError(f"{out} holds {manifest['kind']!r} records, not {kind}; build one with `cwm data build`")
    return manifest


def read_shard(path: Path, columns: list[str] | None = None):
    """A shard as an Arrow table; a file that is not readable Parquet is a DatasetError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: not a readable Parquet shard ({e}); delete it and rerun `cwm data build` to write it again") from None


def shards(out: str | os.PathLike, kind: str | None = None) -> list[Path]:
    """The finished shards of a dataset, in record order."""
    return [Path(out) / name for name in sorted(read_manifest(out, kind)["shards"])]


def rows(out: str | os.PathLike, columns: list[str] | None = None, kind: str | None = None) -> Iterator[dict]:
    """Every record of the finished shards as a dict, in record order, one shard in memory at a time."""
    for path in shards(out, kind):
        yield from sorted(read_shard(path, columns).to_pylist(), key=lambda r: r.get("index", 0))
