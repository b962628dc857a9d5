"""Where free-running traces first go wrong, and how: a table of the first wrong step's kind.

    .venv/bin/python scripts/first_divergence.py HELDOUT RESULTS.json [--show N]

HELDOUT is the dataset the results were scored on (`cwm eval trace --data HELDOUT --out
RESULTS.json`, any mode; most useful for `--mode free`). Each trace is classed by its first wrong
step (`first_divergence`): a wrong action (another event, another line of the program, a line the
program does not have) or a wrong state (a call's arguments, the value the step computed, a value
that should have been carried over unchanged, the variables' names, a return or exception value),
or a trace that is malformed, ends early or goes on past the real end. `--show N` prints the
first N wrong steps beside the real ones.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from cwm.eval.metrics import action_of, state_of
from cwm.eval.traces import load_cases
from cwm.trace.format import CALL, EXCEPTION, RETURN, Frame, from_dict, source_lines


def classify(pred: list[Frame], real: list[Frame], i: int | None, context: str, valid: float) -> str:
    """The kind of the first wrong step `i` of a predicted trace (real: the frames after the call;
    context: the program the trace ran, marker included)."""
    if i is None:
        return "right to the end"
    if i >= len(pred):
        return "malformed at that step" if not valid else "ended early"
    if i >= len(real):
        return "went on past the real end"
    p, r = pred[i], real[i]
    if action_of(p) != action_of(r):
        if p.event != r.event:
            return f"action: {p.event} instead of {r.event}"
        program = {line.rstrip("\n") for line in source_lines(context)}  # as action_of writes a line
        return "action: another line of the program" if action_of(p)[1] in program else "action: a line not in the program"
    if r.event in (RETURN, EXCEPTION):
        return f"state: the {r.event} value"
    if set(p.locals or {}) != set(r.locals or {}):
        return "state: the variables' names"
    if r.event == CALL:
        return "state: the call's arguments"
    before = (real[i - 1].locals or {}) if i > 0 and real[i - 1].depth == r.depth else {}
    wrong = [k for k, v in (r.locals or {}).items() if (p.locals or {}).get(k) != v]
    return "state: a value the step computed" if any(before.get(k) != r.locals[k] for k in wrong) \
        else "state: a value that should be unchanged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("heldout")
    parser.add_argument("results")
    parser.add_argument("--show", type=int, default=0, help="print the first N wrong steps beside the real ones")
    args = parser.parse_args()

    cases = {case.id: case for case in load_cases(args.heldout)}
    items = json.loads(Path(args.results).read_text())["items"]
    kinds: collections.Counter = collections.Counter()
    steps: dict[str, list[int]] = collections.defaultdict(list)
    shown = 0
    for item in items:
        case, score = cases.get(item["id"]), item.get("score")
        if case is None or not score:
            kinds["no prediction"] += 1
            continue
        real = case.frames[1:]
        pred = from_dict({"source": case.context, "frames": item.get("predicted") or []}).frames
        i = score["first_divergence"]
        kind = classify(pred, real, i, case.context, score["valid"])
        kinds[kind] += 1
        if i is not None:
            steps[kind].append(i)
        if shown < args.show and i is not None and i < min(len(pred), len(real)):
            shown += 1
            print(f"--- {item['id'][:12]} step {i}: {kind}")
            print(f"  real: {real[i].event} {real[i].source.rstrip()!r} {state_of(real[i])}")
            print(f"  pred: {pred[i].event} {pred[i].source.rstrip()!r} {state_of(pred[i])}")
    total = sum(kinds.values())
    print(f"{'first wrong step':45s} {'traces':>7s} {'share':>6s} {'mean step':>9s}")
    for kind, n in kinds.most_common():
        mean = f"{sum(steps[kind]) / len(steps[kind]):.1f}" if steps[kind] else "-"
        print(f"{kind:45s} {n:7d} {n / total:6.1%} {mean:>9s}")


if __name__ == "__main__":
    main()
