"""Episodes per minute of the agent loop with scripted policies (no model: the loop, the sandboxed
workspace, the tools and the grading are what is timed).

    .venv/bin/python benchmarks/agent_loop.py [--episodes 8] [--workers 1 2]

The task: a small real repository (a module and its pytest tests) with a planted bug, graded by
its FAIL_TO_PASS / PASS_TO_PASS tests. Two scripts:
  oracle   3 turns: apply the known fix in bash, submit, a final reply
  by hand  6 turns: grep, edit, run the tests, write the diff, submit, a final reply
Every episode: a fresh copy of the repository (task.materialize), a workspace, the loop, the tests
run on the patch (grading), the workspace closed. `cwm agent collect` runs them in N threads. The
last lines print episodes per minute and seconds per episode for each (script, workers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cwm.agent.collect import CollectParams, collect
from cwm.agent.loop import Limits
from cwm.agent.policy import ScriptedPolicy, oracle_policy
from cwm.agent.task import Task, diff_files, git, materialize

CODE = "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n"
BUGGY = CODE.replace("        return hi\n", "        return lo\n")
TESTS = ("from calc import clamp\n\n\ndef test_low():\n    assert clamp(-5, 0, 10) == 0\n\n\n"
         "def test_high():\n    assert clamp(50, 0, 10) == 10\n")
PYTEST = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -p no:cacheprovider"
BY_HAND = [
    "Look.\n</think>\n<tool: bash>\ngrep -n 'return lo' calc.py\n</tool>",
    "Fix.\n</think>\n<tool: edit>\ncalc.py\n<<<<<<< SEARCH\n    if x > hi:\n        return lo\n=======\n"
    "    if x > hi:\n        return hi\n>>>>>>> REPLACE\n</tool>",
    f"Test.\n</think>\n<tool: bash>\n{PYTEST} -q tests 2>&1 | tail -1\n</tool>",
    "Diff.\n</think>\n<tool: bash>\ngit diff > /tmp/fix.patch\n</tool>",
    "Submit.\n</think>\n<tool: submit>\n/tmp/fix.patch\n</tool>",
    "Done.\n</think>\n## Summary\n\nFixed clamp.",
]


def make_task(root: Path, name: str) -> Task:
    src = root / name
    (src / "tests").mkdir(parents=True)
    (src / "calc.py").write_text(CODE)
    (src / "tests" / "test_calc.py").write_text(TESTS)
    task = Task(instance_id=name, repo="calc", base_commit="", problem_statement="clamp(50, 0, 10) returns 0.",
                patch=diff_files(src, {"calc.py": BUGGY}, {"calc.py": CODE}), FAIL_TO_PASS=["tests/test_calc.py::test_high"],
                PASS_TO_PASS=["tests/test_calc.py::test_low"], source={"kind": "dir", "path": str(src)},
                bug_patch=diff_files(src, {"calc.py": CODE}, {"calc.py": BUGGY}), test_cmd=f"{PYTEST} -rA tests")
    task.base_commit = git(materialize(task, root / f"{name}-check", check=False), "rev-parse", "HEAD").strip()
    return task


def measure(tasks: list[Task], script: str, workers: int, out: Path) -> dict:
    def policy(task, seed):
        return oracle_policy(task) if script == "oracle" else ScriptedPolicy(BY_HAND)

    start = time.perf_counter()
    manifest = collect(tasks, out, CollectParams(policy=script, limits=Limits()), workers=workers, open_policy=policy)
    seconds = time.perf_counter() - start
    s = manifest["summary"]
    assert s["resolved"] == s["episodes"] == len(tasks), s
    return {"script": script, "workers": workers, "episodes": len(tasks), "seconds": round(seconds, 2),
            "episodes_per_minute": round(60 * len(tasks) / seconds, 1), "seconds_per_episode": round(seconds / len(tasks), 2),
            "mean_turns": s["mean_turns"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = [make_task(root, f"calc-{i}") for i in range(args.episodes)]
        rows = [measure(tasks, script, w, root / f"out-{script}-{w}") for script in ("oracle", "by-hand")
                for w in args.workers]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
