"""Tracer speed: our tracer vs PySnooper on the same calls, in line events per second.

Both record every line of the same program calls (loops, recursion, list building, string
work; a few thousand line events). Ours records the full CWM frame content (the text of every
local on every line, and each frame's size against the limits; it re-renders only the locals
it cannot prove unchanged, see docs/trace-format.md) and its time includes parsing and
compiling the program; PySnooper runs with its default settings except `output` (a callable
that discards) and `depth` (so it, too, steps into the program's nested calls). The last line
is `ratio: X`, ours over PySnooper, the median over repeats.

    .venv/bin/python benchmarks/tracer.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import pysnooper

from cwm.trace import LINE, trace_call

PROGRAM = '''
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def squares(n):
    out = []
    for i in range(n):
        out.append(i * i)
    return out


def words(text):
    counts = {}
    for word in text.split():
        word = word.strip(".,").lower()
        counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:3]


def collatz(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main():
    a = fib(12)
    b = squares(300)
    c = words("the cat and the dog and the bird. " * 40)
    d = [collatz(k) for k in range(1, 40)]
    return a, len(b), c, sum(d)
'''
CALL = "main()"
PYSNOOPER_LINE = re.compile(r"^[ ]*\d\d:\d\d:\d\d\.\d+ line ", re.M)


def run_ours(source: str, path: str) -> tuple[float, int]:
    start = time.perf_counter()
    trace = trace_call(source, CALL, filename=path, max_events=10**6, max_bytes=10**9)
    seconds = time.perf_counter() - start
    assert trace.status == "ok", trace.error
    return seconds, sum(f.event == LINE for f in trace.frames)


def run_pysnooper(source: str, path: str) -> tuple[float, int]:
    ns: dict = {"__name__": "bench"}
    exec(compile(source, path, "exec"), ns)
    chunks: list[str] = []
    main = pysnooper.snoop(output=chunks.append, depth=40)(ns["main"])
    start = time.perf_counter()
    main()
    seconds = time.perf_counter() - start
    return seconds, sum(len(PYSNOOPER_LINE.findall(c)) for c in chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench_program.py")
        Path(path).write_text(PROGRAM)  # PySnooper reads the source from the file
        ours, theirs = [], []
        for _ in range(args.repeats):
            seconds, lines = run_ours(PROGRAM, path)
            ours.append(lines / seconds)
            seconds, snooped = run_pysnooper(PROGRAM, path)
            theirs.append(snooped / seconds)
        print(f"line events per run: ours {lines}, pysnooper {snooped}")
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"ours:      {statistics.median(ours):12,.0f} lines/s (median of {args.repeats})")
    print(f"pysnooper: {statistics.median(theirs):12,.0f} lines/s (median of {args.repeats})")
    print(f"ratio: {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
