"""Start and reset time of the agent's sandboxed workspace (cwm.agent.workspace), and its commands.

    .venv/bin/python benchmarks/agent_workspace.py [--source DIR] [--repeats 5]

Per repeat: Workspace.create(source) (copy to a pristine dir, `git init` + commit in the sandbox,
the tmpfs copy at /testbed), the first bash command (starts the session), a bash round trip,
a one-shot run, ws.reset() and the first command after it, ws.close(). Medians are printed last.
The default source is this project's own src/cwm (a few hundred files), a repository-sized tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from cwm.agent.workspace import Workspace


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "cwm")
    parser.add_argument("--source", default=default)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    files = sum(len(f) for _, _, f in os.walk(args.source))
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, fs in os.walk(args.source) for n in fs)
    print(f"source {args.source}: {files} files, {size / 2**20:.1f} MiB; load {os.getloadavg()[0]:.1f}")
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        t = {}
        start = time.perf_counter()
        ws = Workspace.create(args.source)
        t["create"] = time.perf_counter() - start
        t["first bash command"] = timed(ws.bash, "true")
        t["bash round trip"] = statistics.median(timed(ws.bash, "echo hi") for _ in range(10))
        t["one-shot run"] = statistics.median(timed(ws.run, "true", 30) for _ in range(5))
        ws.bash("echo x > new.txt; rm -f __init__.py")
        t["diff"] = timed(ws.diff)
        t["reset"] = timed(ws.reset)
        t["first command after reset"] = timed(ws.bash, "true")
        t["close"] = timed(ws.close)
        for k, v in t.items():
            rows.setdefault(k, []).append(v)
        print("  ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items()))
    print("medians:")
    for k, v in rows.items():
        print(f"  {k}: {statistics.median(v) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
