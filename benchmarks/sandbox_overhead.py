"""Per-call overhead of cwm.sandbox.run_function against named peers, on the same trivial work.

    .venv/bin/python benchmarks/sandbox_overhead.py [--calls 200] [--import-torch]

Peers, all returning fn's value to the caller:
  bare fork      os.fork + pipe + pickle + waitpid: the floor, with no limits and no isolation
  multiprocessing  multiprocessing.get_context("fork").Process + Pipe
  subprocess     a fresh interpreter: subprocess.run([sys.executable, "-c", ...])
And one ablation, to price a part of run_function itself:
  no python reveal  run_function without the mounts that hide closed directories (/root) and show
                    the Python installation back (children then cannot import what the caller has not)
The last lines print medians and the ratio of each peer's median to run_function's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import statistics
import subprocess
import sys
import time

from cwm.sandbox import Limits, run_function
from cwm.sandbox import core as sandbox_module


def work(x):
    return x * 2


def bare_fork(x):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, pickle.dumps(work(x)))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        value = pickle.loads(f.read())
    os.waitpid(pid, 0)
    return value


def _mp_target(conn, x):
    conn.send(work(x))


def with_multiprocessing(x):
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.get_context("fork").Process(target=_mp_target, args=(child, x))
    p.start()
    value = parent.recv()
    p.join()
    return value


def with_subprocess(x):
    out = subprocess.run([sys.executable, "-c", f"print({x} * 2)"], capture_output=True, text=True, check=True)
    return int(out.stdout)


def sandbox(x):
    res = run_function(work, x, limits=Limits(timeout=10))
    assert res.status == "ok", res
    return res.value


def sandbox_without_reveal(x):
    plan = sandbox_module._mount_plan
    sandbox_module._mount_plan = lambda *args: ([], [])
    try:
        return sandbox(x)
    finally:
        sandbox_module._mount_plan = plan


def medians_ms(methods: dict, calls: int) -> dict[str, float]:
    """Interleaved (one call of each per round), so load from other users hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(calls):
        for name, fn in methods.items():
            if name == "subprocess" and i % 10:  # a fresh interpreter is slow; every 10th round suffices
                continue
            start = time.perf_counter()
            assert fn(i) == 2 * i
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--import-torch", action="store_true", help="fork a heavier warm process (torch imported)")
    args = parser.parse_args()
    if args.import_torch:
        import torch  # noqa: F401

    methods = {"run_function": sandbox, "bare fork": bare_fork, "multiprocessing": with_multiprocessing,
               "subprocess": with_subprocess, "no python reveal": sandbox_without_reveal}
    medians = medians_ms(methods, args.calls)
    ours = medians.pop("run_function")
    print(f"run_function (limits + PID/mount/IPC/net namespaces + uid drop): median {ours:.2f} ms/call")
    for name, ms in medians.items():
        print(f"{name:>16}: median {ms:.2f} ms/call")
    for name, ms in medians.items():
        print(f"ratio {name} / run_function = {ms / ours:.2f}")


if __name__ == "__main__":
    main()
