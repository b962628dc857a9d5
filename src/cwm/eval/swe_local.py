"""`cwm eval swe-local`: the resolved rate on the shipped local SWE benchmark (or any task file).

    cwm eval swe-local                                  # --policy oracle: every gold patch; must be 1.0
    cwm eval swe-local --policy http://127.0.0.1:8000 --limit 10
    cwm eval swe-local --policy path/to/model --predictions preds.jsonl

The tasks (src/cwm/agent/data/swe_local.jsonl, made by `cwm agent tasks`) are bugs put into real
packages (pinned sdists shipped in the package), each with FAIL_TO_PASS / PASS_TO_PASS tests.
`oracle` grades each task's gold patch through the harness (a fresh copy of the buggy repository,
the patch applied, the task's test command in the sandbox, the log graded by SWE-bench's rules):
its score of 1.0 proves every task solvable and graded right. Any other policy (a chat server
URL, a model directory, a script) runs the agent loop (cwm.agent: the release's tools, a
sandboxed workspace) on each task; its submitted patch is graded the same way. The last line
printed is `score: X`, the share of tasks resolved.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--policy", default="oracle",
                   help="oracle (the gold patches; default), an http(s) URL of an OpenAI-compatible chat server, "
                        "a model directory, or a script file (see `cwm agent run --help`)")
    p.add_argument("--tasks", default=None, help="task JSONL (default: the shipped benchmark)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    p.add_argument("--workers", type=int, default=2, help="tasks at a time (default 2)")
    p.add_argument("--test-timeout", type=float, default=120.0, help="seconds per test run (default 120)")
    p.add_argument("--max-turns", type=int, default=128, help="agent turns per task (default 128, the release's)")
    p.add_argument("--max-tokens", type=int, default=131072, help="agent tokens per task (default 131072)")
    p.add_argument("--temperature", type=float, default=1.0, help="default 1.0 (the release's evaluation)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=None, help="per reply")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer that counts a URL policy's token budget")
    p.add_argument("--device", default="cpu", help="for a model directory: cpu or cuda")
    p.add_argument("--offline", action="store_true", help="never download an sdist (shipped or cached only)")
    p.add_argument("--out", default=None, help="results JSON (default eval-swe-local-<policy>.json); each task's "
                   "result is written as it finishes to the same name with .jsonl, and a rerun with the same "
                   "settings resumes from it")
    p.add_argument("--fresh", action="store_true", help="start over: ignore (and overwrite) an earlier run's results")
    p.add_argument("--predictions", default=None, help="also write SWE-bench predictions JSONL (the patches)")


def run(args) -> int:
    from cwm.agent.bench import PolicyError, TaskError

    try:
        return _run(args)
    except (PolicyError, TaskError, ValueError) as e:  # user-fixable: one line
        print(f"cwm eval swe-local: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from cwm.agent.bench import episode_runner, evaluate, load, write_predictions
    from cwm.eval.run import ResultsLog

    tasks = load(args.tasks, args.limit)
    name = "oracle" if args.policy == "oracle" else Path(args.policy.rstrip("/")).name or "policy"
    out = Path(args.out or f"eval-swe-local-{name.replace(':', '_')}.json")
    log = ResultsLog(out.with_suffix(".jsonl"), _settings(args), fresh=args.fresh)
    todo = [t for t in tasks if t.instance_id not in log.done]
    episode = None if args.policy == "oracle" or not todo else episode_runner(
        args.policy, max_turns=args.max_turns, max_tokens=args.max_tokens, test_timeout=args.test_timeout,
        tokenizer=args.tokenizer, device=args.device, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed, check_with=todo[0])
    print(f"items: {log.path}" + (f" (resuming: {len(tasks) - len(todo)} done)" if len(todo) < len(tasks) else ""),
          file=sys.stderr)
    workers = args.workers if args.policy == "oracle" or not Path(args.policy).is_dir() else 1
    lock = threading.Lock()

    def progress(row: dict) -> None:  # from the workers' threads: each item is saved as it finishes
        with lock:
            log.add({"id": row["instance_id"], **row})
            print(f"{row['instance_id']}: {'resolved' if row['resolved'] else 'unresolved'} ({row['seconds']} s)",
                  file=sys.stderr, flush=True)

    started = time.time()
    try:
        evaluate(todo, args.policy, workers, args.test_timeout, not args.offline, episode, progress)
    finally:
        log.close()
    results = [log.done[t.instance_id] for t in tasks]
    resolved = sum(r["resolved"] for r in results)
    score = resolved / len(results) if results else 0.0
    by_repo: dict[str, list[int]] = {}
    for task, r in zip(tasks, results):
        by_repo.setdefault(task.repo, [0, 0])
        by_repo[task.repo][0] += r["resolved"]
        by_repo[task.repo][1] += 1
    summary = {"task": "swe-local", "policy": args.policy, "tasks": len(results), "resolved": resolved,
               "score": score, "by_repo": {k: v[0] / v[1] for k, v in by_repo.items()},
               "seconds": round(time.time() - started, 1)}
    out.write_text(json.dumps({"summary": summary, "results": results}, indent=1) + "\n")
    if args.predictions:
        write_predictions(args.predictions, [{"instance_id": r["instance_id"], "model_patch": r["patch"]}
                                             for r in results], model=name)
    for repo, (k, n) in by_repo.items():
        print(f"{repo:<12} {k}/{n} resolved")
    print(f"results: {out}")
    print(f"score: {score:.4f}")
    return 0


def _settings(args) -> dict:
    """What a task's result depends on: a rerun with the same ones resumes (paths made absolute)."""
    keys = ("policy", "tasks", "test_timeout", "max_turns", "max_tokens", "temperature", "top_p", "max_new_tokens",
            "seed", "tokenizer")
    settings = {k: getattr(args, k) for k in keys}
    for k in ("tasks", "tokenizer") + (() if args.policy == "oracle" or "://" in args.policy else ("policy",)):
        if settings[k]:
            settings[k] = str(Path(settings[k]).resolve())
    return {"task": "swe-local", **settings}
