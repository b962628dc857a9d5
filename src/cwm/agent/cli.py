"""`cwm agent run|collect|tasks`: the coding agent from the command line (docs/agent.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# sub-verb -> (module with add_arguments(parser) and run(args), one-line help)
SUBVERBS: dict[str, tuple[str, str]] = {
    "run": ("cwm.agent.cli", "run one episode: a task (or a repository and an issue), a policy; writes the trajectory"),
    "collect": ("cwm.agent.cli", "run many episodes in parallel workers (resumable); trajectories and SFT data"),
    "tasks": ("cwm.agent.mutate", "make verified bug-fix tasks from real Python repositories"),
}

POLICY_HELP = ("who writes the replies: `oracle` (applies the task's known fix and submits it), a script file "
               "(a JSON list of replies, or a trajectory JSONL to replay), an http(s) URL of an OpenAI-compatible "
               "chat server (`cwm serve`, vLLM serving facebook/cwm), or a model directory (generated here)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "The coding agent of the release (docs/agent.md): the model gets an issue and a repository at\n"
        "/testbed in a sandbox, works with the tools bash, edit, create and submit, and submits a patch;\n"
        "the patch is graded by the task's FAIL_TO_PASS / PASS_TO_PASS tests.")
    sub = parser.add_subparsers(dest="subverb", metavar="{run,collect,tasks}", required=True)
    for name, (module, help_) in SUBVERBS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if module == __name__:
            globals()[f"_add_{name}_arguments"](p)
        else:  # another module's sub-verb (its own add_arguments and run)
            try:
                importlib.import_module(module).add_arguments(p)
            except (ModuleNotFoundError, AttributeError) as e:
                p.set_defaults(unavailable=f"{module} cannot be loaded ({e})")


def _add_episode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    g = p.add_argument_group("limits (the release's by default)")
    g.add_argument("--max-turns", type=int, default=128, help="replies of the policy per episode (default 128)")
    g.add_argument("--max-tokens", type=int, default=131072,
                   help="tokens per episode: prompt, replies, observations (default 131072)")
    g.add_argument("--session-timeout", type=float, default=120.0, help="seconds per bash command (default 120)")
    g.add_argument("--no-plugins", action="store_true", help="offer bash and submit only (no edit, create)")
    g.add_argument("--no-grade", action="store_true", help="do not run the task's tests on the patch")
    g.add_argument("--test-timeout", type=float, default=900.0, help="seconds for the task's tests (default 900)")
    g.add_argument("--backend", default="sandbox", help="the workspace: sandbox (default) or docker")
    s = p.add_argument_group("the model (URL or model directory policies)")
    s.add_argument("--temperature", type=float, default=1.0, help="default 1.0 (the release's evaluation)")
    s.add_argument("--top-p", type=float, default=0.95, help="default 0.95")
    s.add_argument("--max-new-tokens", type=int, default=None, help="per reply (default: the server's; local: 4096)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", default=None,
                   help="tokenizer directory that counts the token budget of a URL policy (default: cwm-mini's, an estimate)")
    s.add_argument("--device", default="cpu", help="for a model directory: cpu or cuda")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("the task: a task file, or a repository and an issue")
    where.add_argument("--task", help="task JSONL (`cwm agent tasks`, or SWE-bench instances converted by it)")
    where.add_argument("--instance", help="the instance_id to run from --task (needed when it holds several); "
                       "alone: a task of the shipped benchmark (`cwm eval swe-local`)")
    where.add_argument("--repo", help="a repository directory to work on (copied; never changed)")
    where.add_argument("--issue", help="the issue text (with --repo)")
    where.add_argument("--issue-file", help="a file holding the issue text (with --repo)")
    _add_episode_arguments(p)
    p.add_argument("--out", help="trajectory JSONL to write (default: runs/agent/INSTANCE_ID.jsonl)")
    p.add_argument("--quiet", action="store_true", help="do not print the messages as they come")


def _add_collect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="task JSONL: every task is run --attempts times (default: the shipped "
                   "benchmark of `cwm eval swe-local`)")
    p.add_argument("--out", required=True, help="output directory (manifest, episodes/, trajectories.jsonl); "
                   "rerun the same command to resume")
    p.add_argument("--attempts", type=int, default=1, help="episodes per task (attempt k gets seed + k)")
    p.add_argument("--workers", type=int, default=2, help="episodes at a time (default 2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    p.add_argument("--sft", help="also write training records (JSONL for `cwm data pack --input NAME=FILE`)")
    p.add_argument("--observations", default="none",
                   help="for --sft: tools whose observations are learned too (e.g. `bash`, `all`; default none)")
    p.add_argument("--keep-unresolved", action="store_true", help="for --sft: keep unresolved episodes too")
    _add_episode_arguments(p)


def run(args: argparse.Namespace) -> int:
    module, _ = SUBVERBS[args.subverb]
    if getattr(args, "unavailable", None):
        print(f"cwm agent {args.subverb}: not available: {args.unavailable}", file=sys.stderr)
        return 2
    if module != __name__:
        return int(importlib.import_module(module).run(args) or 0)
    from cwm.agent.policy import PolicyError
    from cwm.agent.task import TaskError
    from cwm.agent.trajectory import TrajectoryError

    try:
        return _run(args) if args.subverb == "run" else _collect(args)
    except (PolicyError, TaskError, TrajectoryError, ValueError, FileNotFoundError) as e:
        print(f"cwm agent {args.subverb}: {e}", file=sys.stderr)
        return 2


def _limits(args):
    from cwm.agent.loop import Limits

    return Limits(max_turns=args.max_turns, max_tokens=args.max_tokens, session_timeout=args.session_timeout,
                  plugins=not args.no_plugins, grade=not args.no_grade, test_timeout=args.test_timeout)


def _one_task(args):
    """(task, source directory or None): a task of --task, or one made of --repo and the issue."""
    from cwm.agent.task import Task, read_tasks

    if args.instance and not args.task and not args.repo:
        from cwm.agent.mutate import shipped_tasks_path

        args.task = str(shipped_tasks_path())  # an instance of the shipped benchmark
    if bool(args.task) == bool(args.repo):
        raise ValueError("give --task FILE (with --instance ID when it holds several), --instance ID of the shipped "
                         "benchmark, or --repo DIR with --issue")
    if args.task:
        tasks = read_tasks(args.task)
        if args.instance:
            tasks = [t for t in tasks if t.instance_id == args.instance]
            if not tasks:
                raise ValueError(f"{args.task} has no task {args.instance!r}")
        elif len(tasks) != 1:
            ids = ", ".join(t.instance_id for t in tasks[:5])
            raise ValueError(f"{args.task} holds {len(tasks)} tasks; pick one with --instance ID ({ids}, ...)")
        return tasks[0], None
    repo = Path(args.repo)
    if not repo.is_dir():
        raise ValueError(f"--repo {repo}: no such directory")
    if bool(args.issue) == bool(args.issue_file):
        raise ValueError("with --repo, give the issue as --issue TEXT or --issue-file FILE")
    issue = args.issue or Path(args.issue_file).read_text(encoding="utf-8")
    task = Task(instance_id=repo.resolve().name, repo=repo.resolve().name, base_commit="", problem_statement=issue,
                patch="", FAIL_TO_PASS=[], PASS_TO_PASS=[], source={"kind": "dir", "path": str(repo.resolve())},
                bug_patch="", test_cmd="")
    return task, repo


def _open(args, task, seed: int):
    from cwm.agent.policy import open_policy

    return open_policy(args.policy, task, tokenizer=args.tokenizer, device=args.device, temperature=args.temperature,
                       top_p=args.top_p, max_tokens=args.max_new_tokens, seed=seed)


def _run(args) -> int:
    from cwm.agent.collect import run_one
    from cwm.agent.trajectory import write_trajectories

    limits = _limits(args)
    task, source = _one_task(args)
    policy = _open(args, task, args.seed)
    show = None if args.quiet else _show
    trajectory = run_one(task, policy, args.backend, limits, source_dir=source, on_message=show)
    out = Path(args.out or f"runs/agent/{task.instance_id}.jsonl")
    write_trajectories(out, [trajectory])
    graded = "not graded" if trajectory.resolved is None else f"resolved: {str(trajectory.resolved).lower()}"
    print(f"{task.instance_id}: {trajectory.exit_status} after {trajectory.turns} turns, {trajectory.tokens} tokens, "
          f"{trajectory.seconds:.1f} s; patch {len(trajectory.patch)} chars; trajectory -> {out}")
    if trajectory.message:
        print(f"ended: {trajectory.message}")
    print(graded)
    return 0


def _show(message: dict) -> None:
    text = message["content"]
    if message["role"] == "system":
        text = text[:200] + (" [...]" if len(text) > 200 else "")
    print(f"--- {message['role']} ---\n{text}", file=sys.stderr, flush=True)


def _collect(args) -> int:
    from cwm.agent.collect import CollectParams, collect
    from cwm.agent.task import read_tasks

    if args.tasks is None:
        from cwm.agent.mutate import shipped_tasks_path

        args.tasks = str(shipped_tasks_path())
    tasks = read_tasks(args.tasks)[: args.limit]
    params = CollectParams(policy=args.policy, attempts=args.attempts, seed=args.seed, temperature=args.temperature,
                           top_p=args.top_p, max_tokens=args.max_new_tokens, limits=_limits(args), backend=args.backend)
    tokenizer = None
    if args.tokenizer:
        from cwm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)

    def progress(done: int, total: int, t) -> None:
        state = "resolved" if t.resolved else "unresolved" if t.resolved is False else "ungraded"
        print(f"[{done}/{total}] {t.instance_id}: {t.exit_status}, {t.turns} turns, {state}", file=sys.stderr, flush=True)

    manifest = collect(tasks, args.out, params, workers=args.workers, sft=args.sft, observations=args.observations,
                       resolved_only=not args.keep_unresolved, tokenizer=tokenizer, device=args.device,
                       progress=progress)
    s = manifest["summary"]
    print(json.dumps(s))
    if args.sft:
        print(f"sft: {manifest['sft']['records']} records -> {args.sft}")
    print(f"resolved: {s['resolved']}/{s['episodes']}")
    return 0
