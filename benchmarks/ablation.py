"""The trace ablation's evaluation: direct-mode output prediction of each run's checkpoints.

    .venv/bin/python benchmarks/ablation.py runs/mini/ablation/io runs/mini/ablation/traces \\
        --heldout runs/mini/data/heldout --limit 200 --out runs/mini/ablation/results.json --plot docs/ablation.png

For each run: the untrained model (step 0: the run's architecture and tokenizer, `init_weights(seed=0)`), every step checkpoint and the final one, greedy, on the held-out set's
first `limit` returning programs (cwm.eval.direct). Also two trivial baselines (answer = the first
argument of the call; answer = "0", the commonest output). Writes the numbers (JSON) and the
learning curve (PNG). Results already in --out are kept (a checkpoint is not evaluated twice).
See docs/ablation.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path


def first_argument(call: str) -> str:
    node = ast.parse(call, mode="eval").body
    return ast.unparse(node.args[0]) if isinstance(node, ast.Call) and node.args else ""


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    from cwm.train.checkpoint import export_checkpoint, is_step_checkpoint, step_checkpoints

    found = []
    for step, path in step_checkpoints(run):
        if is_step_checkpoint(path):  # sharded (DCP): evaluate its Hugging Face export, made once
            export = run / "export" / path.name
            if not (export / "config.json").is_file():
                export_checkpoint(path, export)
            path = export
        found.append((step, path))
    final = run / "final"
    if final.is_dir():
        import torch

        step = int(torch.load(final / "trainer_state.pt", weights_only=True)["step"])
        found = [(s, p) for s, p in found if s != step] + [(step, final)]
    return sorted(found)


def untrained(ckpt: Path):
    """A backend with the checkpoint's architecture and tokenizer, freshly initialised (seed 0)."""
    from cwm.backends import LocalBackend

    backend = LocalBackend.from_dir(ckpt)
    backend.model.init_weights(seed=0)
    return backend


def main() -> None:
    from cwm.backends import LocalBackend
    from cwm.eval.direct import direct_accuracy, heldout_items

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (train.out_dir)")
    parser.add_argument("--heldout", type=Path, default=Path("runs/mini/data/heldout"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/mini/ablation/results.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/ablation.png"))
    parser.add_argument("--steps", type=lambda t: {int(x) for x in t.split(",")}, default=None,
                        help="evaluate only these steps, e.g. 0,100 (default: step 0 and every checkpoint)")
    args = parser.parse_args()

    items = heldout_items(args.heldout, args.limit)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("baselines", {
        "first argument": direct_accuracy(None, items, [first_argument(i["call"]) for i in items])["accuracy"],
        "always 0": direct_accuracy(None, items, ["0"] * len(items))["accuracy"],
    })
    for run in args.runs:
        curve = results.setdefault("runs", {}).setdefault(run.name, {})
        found = checkpoints(run)
        todo = [(step, path) for step, path in [(0, None)] + found if args.steps is None or step in args.steps]
        for step, path in todo:
            if str(step) in curve:
                continue
            start = time.time()
            backend = untrained(found[0][1]) if path is None else LocalBackend.from_dir(path)
            scored = direct_accuracy(backend, items)
            curve[str(step)] = {"accuracy": scored["accuracy"], "correct": scored["correct"], "problems": scored["problems"],
                                "answers": scored["answers"]}
            print(f"{run.name} step {step}: {scored['correct']}/{scored['problems']} = {scored['accuracy']:.3f} "
                  f"({time.time() - start:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.plot)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, curve in results.get("runs", {}).items():
        steps = sorted(int(s) for s in curve)
        ax.plot(steps, [curve[str(s)]["accuracy"] for s in steps], marker="o", label={"io": "io only", "traces": "io + traces"}.get(name, name))
    for (name, value), style in zip(results.get("baselines", {}).items(), (":", "--")):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"baseline: {name}")
    ax.set_xlabel("training step (4 x 1,024 tokens)")
    ax.set_ylabel("held-out direct output accuracy (greedy)")
    ax.set_title("Trace ablation (cwm-mini data, 1.9M-parameter model)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()
