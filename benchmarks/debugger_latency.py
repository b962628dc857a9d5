"""The neural debugger's per-step latency against the step index, prefix reuse off and on, one run.

    .venv/bin/python benchmarks/debugger_latency.py [--model DIR] [--steps 80] [--every 10]

Two debugger sessions over the same program (a loop, so the trace grows long) step side by side,
one frame per `step` command, greedy: one with the local backend's prefix reuse off (each step
computes the whole prompt again: program, every frame so far), one with it on (the kept KV cache
holds the prompt of the last step; only the new frame is computed). Each step is timed as the
user waits for it; the two are interleaved so that load from other processes hits both alike.
The sessions must predict the same frames (reuse changes no token): the script checks it.

Prints, per block of `--every` steps, the prompt length and the median step time off / on, then
the least-squares slope of step time over prompt length (ms per 1,000 prompt tokens) of each.
Model: the shipped cwm-mini unless --model; torch threads 1 (a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PROGRAM = """def f(n):
    total = 0
    for i in range(n):
        if i % 3 == 0:
            total += i * i
        else:
            total -= i
    return total
"""


def slope_ms_per_1k(xs: list[int], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def main() -> None:
    from cwm.backends import LocalBackend, Sampling
    from cwm.debugger.session import Session, prepare
    from cwm.models import default_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped cwm-mini)")
    parser.add_argument("--call", default="f(60)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--every", type=int, default=10, help="steps per row of the table")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="per frame")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = args.model or default_model()
    off = LocalBackend.from_dir(path)
    off.reuse_prefix = False
    on = LocalBackend(model=off.model, tokenizer=off.tokenizer)  # the same weights, reuse on
    context, _, _ = prepare(PROGRAM, args.call, run_real=False)
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    sessions = {"off": Session(off, context, sampling=sampling), "on": Session(on, context, sampling=sampling)}
    print(f"model: {path} ({off.model.cfg.num_params():,} params, context {off.context_length}), "
          f"torch threads {torch.get_num_threads()}, call {args.call}")

    times: dict[str, list[float]] = {"off": [], "on": []}
    lengths: list[int] = []
    for _ in range(args.steps):
        s = sessions["off"]
        if s.done or s.current.error or len(s.prompt()) + 1 + args.max_new_tokens > off.context_length:
            break
        lengths.append(len(s.prompt()))
        for name in ("off", "on") if len(lengths) % 2 else ("on", "off"):
            start = time.perf_counter()
            sessions[name].step()
            times[name].append(time.perf_counter() - start)
        a, b = (sessions[n].current for n in ("off", "on"))
        if (a.ids, a.error) != (b.ids, b.error):
            raise SystemExit(f"step {len(lengths)}: reuse on predicted a different frame: {a.text!r} vs {b.text!r}")

    print(f"{'steps':>9} {'prompt tokens':>14} {'off ms':>8} {'on ms':>8}")
    for i in range(0, len(lengths), args.every):
        part = slice(i, i + args.every)
        print(f"{i + 1:>4}-{min(i + args.every, len(lengths)):<4} {statistics.median(lengths[part]):>14.0f} "
              f"{1000 * statistics.median(times['off'][part]):>8.1f} {1000 * statistics.median(times['on'][part]):>8.1f}")
    print(f"frames predicted: {len(lengths)} (identical with and without reuse); "
          f"prompt {lengths[0]} -> {lengths[-1]} tokens")
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for name in ("off", "on"):
        print(f"slope_{name}: {slope_ms_per_1k(lengths, [1000 * t for t in times[name]]):.1f} ms per 1000 prompt tokens")


if __name__ == "__main__":
    main()
