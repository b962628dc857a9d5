"""The local SWE benchmark: its tasks, and a policy's resolved rate on them (`cwm eval swe-local`).

    from cwm.agent.bench import load, evaluate
    rows = evaluate(load(None, limit=5), "oracle")      # the gold patches: all resolved

The public face of the agent package to `cwm.eval` (tests/test_layers.py PUBLIC).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cwm.agent.mutate import shipped_tasks_path
from cwm.agent.policy import PolicyError
from cwm.agent.swebench import evaluate_patch, write_predictions
from cwm.agent.task import TaskError, read_tasks

__all__ = ["PolicyError", "TaskError", "episode_runner", "evaluate", "load", "shipped_tasks_path", "write_predictions"]


def load(path: str | None, limit: int | None):
    """The tasks of `path` (default: the shipped benchmark), the first `limit` of them."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, not {limit}")
    return read_tasks(path or shipped_tasks_path())[:limit]


def evaluate(tasks, policy: str = "oracle", workers: int = 2, test_timeout: float = 120.0, download: bool = True,
             episode=None, progress=None) -> list[dict]:
    """One result per task (in task order): instance_id, resolved, patch, seconds (and the agent's
    exit_status and turns for a policy). `episode(task) -> trajectory` runs a non-oracle policy."""
    def one(task) -> dict:
        start = time.monotonic()
        if policy == "oracle":
            report = evaluate_patch(task, task.patch, download=download, timeout=test_timeout)
            row = {"instance_id": task.instance_id, "resolved": report.resolved, "status": report.status,
                   "patch": task.patch}
            if not report.resolved:
                row["tests_status"] = report.tests_status
                row["log_tail"] = report.log[-2000:]
        else:
            t = episode(task)
            row = {"instance_id": task.instance_id, "resolved": bool(t.resolved), "patch": t.patch,
                   "exit_status": t.exit_status, "turns": t.turns, "tokens": t.tokens}
        row["seconds"] = round(time.monotonic() - start, 2)
        if progress:
            progress(row)
        return row

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, tasks))


def episode_runner(policy: str, max_turns: int = 128, max_tokens: int = 131072, test_timeout: float = 120.0,
                   tokenizer: str | None = None, device: str = "cpu", temperature: float = 1.0, top_p: float = 0.95,
                   max_new_tokens: int | None = None, seed: int = 0, check_with=None) -> Callable:
    """task -> trajectory: the agent loop (cwm.agent.collect.run_one) with a fresh `policy` per task
    (cwm.agent.policy.policy_factory: a URL, a model directory loaded once, a script). With
    `check_with` (a task), the policy is opened once now: a bad one raises PolicyError here."""
    from cwm.agent.collect import run_one
    from cwm.agent.loop import Limits
    from cwm.agent.policy import policy_factory

    limits = Limits(max_turns=max_turns, max_tokens=max_tokens, test_timeout=test_timeout)
    make = policy_factory(policy, tokenizer=tokenizer, device=device, temperature=temperature, top_p=top_p,
                          max_tokens=max_new_tokens)
    if check_with is not None:
        make(check_with, seed)
    tok = None
    if tokenizer:
        from cwm.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)

    def episode(task):
        return run_one(task, make(task, seed), "sandbox", limits, tokenizer=tok)

    return episode
