"""Build speed: `cwm data build` with 1 and 2 warm workers vs the naive way (a fresh `python`
per program running the tracer), on the same synthetic programs, in one run.

    .venv/bin/python benchmarks/data.py [--n 512] [--repeats 3]

The default n is 512 (a 1-worker build of ~2 s; 16 tasks of 32 programs): a 128-program build
lasts ~0.3 s, and then the fixed costs of a 2-worker build (starting the pool, the two workers'
last tasks ending apart, the last shard's write: ~35 ms together) weigh as much as a fifth of
it. Run with --n 128 to see that regime.

Prints the median seconds per program of each, then, last, the ratios:
    speedup_vs_naive: X     (naive time / 1-worker time; target >= 10)
    scaling_2_workers: Y    (1-worker time / 2-worker time; target >= 1.7 on 2 free cores)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cwm.data.build import BuildParams, build
from cwm.data.synth import generate

NAIVE = """
import sys
from cwm.trace import trace_call
from cwm.trace.format import to_cwm_text
source, call = sys.argv[1], sys.argv[2]
print(len(to_cwm_text(trace_call(source, call, max_events=10000, max_bytes=1000000))))
"""


def timed_build(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        params = BuildParams(source="synth", n=n, seed=0, shard_size=64, decontaminate=())
        start = time.perf_counter()
        build(Path(tmp) / "out", params, workers=workers, progress=False)
        return time.perf_counter() - start


def timed_naive(n: int) -> float:
    programs = generate(0, n)
    start = time.perf_counter()
    for p in programs:
        subprocess.run([sys.executable, "-c", NAIVE, p.source, p.call], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.n} synthetic programs, {args.repeats} repeats, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    generate(0, args.n)  # warm: the first import costs are not the build's
    times = {"naive": [], "1 worker": [], "2 workers": []}
    for repeat in range(args.repeats):
        times["naive"].append(timed_naive(args.n))
        for workers in (1, 2) if repeat % 2 == 0 else (2, 1):  # alternated: neither always runs first
            times["1 worker" if workers == 1 else "2 workers"].append(timed_build(args.n, workers))
    median = {k: statistics.median(v) for k, v in times.items()}
    for name, seconds in median.items():
        print(f"{name:>10}: median {1000 * seconds / args.n:.1f} ms per program")
    print(f"speedup_vs_naive: {median['naive'] / median['1 worker']:.1f}")
    print(f"scaling_2_workers: {median['1 worker'] / median['2 workers']:.2f}")


if __name__ == "__main__":
    main()
