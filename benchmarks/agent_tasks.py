"""Task generation throughput: verified tasks per minute and the share of mutants that verify.

    PYTHONPATH=src python benchmarks/agent_tasks.py                    # 4 tasks per shipped repository
    PYTHONPATH=src python benchmarks/agent_tasks.py --repo toolz --count 8 --seed 1

Runs cwm.agent.mutate.generate (what `cwm agent tasks` runs) on the shipped repositories' pinned
sdists: each mutant's test file runs in the sandbox, each kept task's gold patch is graded through
the harness (--no-verify skips that). Prints one JSON line per repository and a total: mutants
tested, kept (FAIL_TO_PASS >= 1, PASS_TO_PASS >= 1), verified, the reasons for rejection, the
seconds, verified tasks per minute and the verified share of the mutants tested.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from cwm.agent.mutate import SHIPPED_REPOS, GenStats, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", action="append", help="a shipped repository by name (repeatable; default: all)")
    ap.add_argument("--count", type=int, default=4, help="verified tasks per repository (default 4)")
    ap.add_argument("--seed", type=int, default=1, help="default 1 (seed 0 made the shipped tasks)")
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    specs = [s for s in SHIPPED_REPOS if not args.repo or s.name in args.repo]
    if not specs:
        ap.error(f"no shipped repository named {args.repo}; the names: {[s.name for s in SHIPPED_REPOS]}")
    total = GenStats()
    for spec in specs:
        stats = GenStats()
        generate(spec, args.count, seed=args.seed, verify=not args.no_verify, download=False, stats=stats)
        print(json.dumps(_row(spec.name, stats)), flush=True)
        total.tried += stats.tried
        total.kept += stats.kept
        total.verified += stats.verified
        total.seconds += stats.seconds
        for k, v in stats.rejected.items():
            total.rejected[k] = total.rejected.get(k, 0) + v
    print(json.dumps({**_row("total", total), "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d")}))


def _row(name: str, s: GenStats) -> dict:
    return {"repo": name, "tested": s.tried, "kept": s.kept, "verified": s.verified, "rejected": s.rejected,
            "seconds": round(s.seconds, 1), "verified_per_minute": round(s.verified / max(s.seconds, 1e-9) * 60, 2),
            "verified_share": round(s.verified / max(s.tried, 1), 3)}


if __name__ == "__main__":
    main()
