"""The cwm-mini recipe's learning curve: validation loss against training tokens, all phases.

    .venv/bin/python scripts/plot_cwm_mini.py [--runs runs/mini] [--out docs/cwm-mini-curve.png]

Reads each phase's `metrics.jsonl` (written by `cwm train`) and puts the phases end to end on one
token axis; also prints the table of the evaluations it plotted. Phase 1 is evaluated on rows of
1,024 tokens (`valid`), phase 2 on rows of 2,048 (`valid2`): the same programs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PHASES = ("phase1", "phase2")


def curve(run: Path) -> tuple[list[tuple[int, int, float]], int]:
    """[(step, tokens seen, validation loss)] of one run, and the tokens of the whole run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    per_step = next(r["tokens"] // r["step"] for r in rows if "tokens" in r)
    points = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}  # a resumed run logs a step again
    return [(step, step * per_step, loss) for step, loss in sorted(points.items())], max(r["step"] for r in rows) * per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/mini", help="the recipe's output directory")
    parser.add_argument("--out", default="docs/cwm-mini-curve.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    offset = 0
    for name in PHASES:
        run = Path(args.runs) / name
        if not (run / "metrics.jsonl").exists():
            print(f"{name}: no metrics.jsonl in {run}, skipped")
            continue
        points, run_tokens = curve(run)
        xs = [(offset + tokens) / 1e6 for _, tokens, _ in points]
        ax.plot(xs, [loss for *_, loss in points], marker="o", markersize=3, label=name)
        for step, tokens, loss in points:
            print(f"{name} step {step:5d}  tokens {(offset + tokens) / 1e6:6.1f}M  val loss {loss:.3f}")
        offset += run_tokens
    ax.set_xlabel("training tokens (millions, phases end to end)")
    ax.set_ylabel("validation loss (trace frames)")
    ax.set_yscale("log")
    ax.set_title("cwm-mini (1.9M parameters, 2-core CPU)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
