"""What a built dataset holds: statuses, events per trace, constructs covered (AST node kinds)."""

from __future__ import annotations

import ast
import os
import statistics
from collections import Counter
from pathlib import Path

from cwm.data.dataset import read_manifest, read_shard
from cwm.trace.format import COMPLETE

# The constructs the synthetic generator promises, as AST node kinds (a report lists any missing).
PROMISED = (
    "BinOp", "Compare", "BoolOp", "If", "For", "While", "Break", "Continue", "List", "Dict", "Set",
    "Tuple", "Subscript", "Slice", "Attribute", "Call", "Try", "Raise", "ExceptHandler", "Return",
    "ListComp", "DictComp", "SetComp", "GeneratorExp", "FunctionDef", "Lambda", "JoinedStr",
)  # fmt: skip


def node_kinds(source: str) -> set[str]:
    """The AST node kinds a program uses (empty if it does not parse). dataset_stats parses only
    the sources of complete traces, which the tracer compiled in its sandbox under its limits."""
    try:
        return {type(node).__name__ for node in ast.walk(ast.parse(source))}
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()


def dataset_stats(path: str | os.PathLike) -> dict:
    """Read a dataset's shards back and summarise them (finished shards only)."""
    path = Path(path)
    manifest = read_manifest(path)
    stats = {"kind": manifest["kind"], "records": 0, "complete": manifest["complete"], "plan": manifest.get("plan", {})}
    if manifest["kind"] == "code":
        sizes = []
        for name in sorted(manifest["shards"]):
            sizes += read_shard(path / name, columns=["num_bytes"]).column("num_bytes").to_pylist()
        stats.update(records=len(sizes), files=len(sizes), bytes=sum(sizes))
        return stats
    statuses, events, sizes, kinds = Counter(), [], [], Counter()
    for name in sorted(manifest["shards"]):
        table = read_shard(path / name, columns=["status", "num_events", "num_bytes", "source"]).to_pylist()
        for row in table:
            statuses[row["status"]] += 1
            if row["status"] in COMPLETE:
                events.append(row["num_events"])
                sizes.append(row["num_bytes"])
                kinds.update(node_kinds(row["source"]))
    stats.update(
        records=sum(statuses.values()),
        statuses=dict(statuses.most_common()),
        events=_summary(events),
        bytes=_summary(sizes),
        constructs=dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        missing_constructs=[k for k in PROMISED if k not in kinds],
    )
    return stats


def _summary(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0], "median": statistics.median(ordered), "mean": round(statistics.fmean(ordered), 1),
        "p90": ordered[int(0.9 * (len(ordered) - 1))], "max": ordered[-1],
    }  # fmt: skip


def print_stats(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    plan = stats.get("plan") or {}
    head = f"{stats['records']} records" + ("" if stats["complete"] else " (build not complete)")
    if plan:
        head += f"; from {plan.get('candidates')} candidates: {plan.get('duplicates')} duplicates and {plan.get('contaminated')} evaluation programs dropped"
    console.print(head)
    if stats["kind"] == "code":
        console.print(f"{stats['files']} files, {stats['bytes']} bytes")
        return
    table = Table("status", "records", title="statuses")
    for status, count in stats["statuses"].items():
        table.add_row(status, str(count))
    console.print(table)
    numbers = Table("per complete trace", "min", "median", "mean", "p90", "max")
    for name in ("events", "bytes"):
        if stats[name]:
            numbers.add_row(name, *(str(stats[name][k]) for k in ("min", "median", "mean", "p90", "max")))
    console.print(numbers)
    constructs = ", ".join(f"{k} {v}" for k, v in stats["constructs"].items())
    console.print(f"constructs covered ({len(stats['constructs'])} AST node kinds, programs using each): {constructs}")
    if stats["missing_constructs"]:
        console.print(f"constructs not covered: {', '.join(stats['missing_constructs'])}")
