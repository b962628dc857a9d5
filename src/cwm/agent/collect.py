"""`cwm agent collect`: many episodes in parallel, resumable after a kill, as training data.

    collect(tasks, "oracle", "runs/traj", CollectParams(attempts=2), workers=4)

The work is a fixed list of episodes: every task of the file, `attempts` times (episode
`{instance_id}#{k}`; attempt k of a sampling policy gets seed `seed + k`). A worker thread runs one
episode at a time: the task's repository laid out in a fresh directory (cwm.agent.task.materialize),
a workspace on it (cwm.agent.workspace), the loop (cwm.agent.loop.run_episode). Threads suffice:
an episode waits on its sandboxed shell or on a model server; a local model generates one reply
at a time for all of them (cwm.backends.LocalBackend's lock).

The output directory, like `cwm data build`'s:

    manifest.json       the parameters (a rerun with other ones is refused) and progress
    episodes/NNNNNN.json one finished episode each (its trajectory record), written to a temporary
                        file, fsynced, renamed: a file there is a whole episode
    trajectories.jsonl  every episode in episode order, written when all are done
    sft.jsonl           with `sft`: the training records (cwm.agent.trajectory.sft_records)

Resume: a rerun with the same command (after kill -9, a crash, Ctrl-C) skips the episodes whose
file is there and runs the others; an episode cut off midway is run again from its start. With a
deterministic policy the result equals an uninterrupted run. An episode that ended because the
policy gave no reply (a server down; exit_status policy_error) is not saved: the run ends with an
error after the others, and a rerun retries it. Ctrl-C ends the running episodes before their next
reply (not saved either) and leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from cwm.agent.loop import Limits, run_episode
from cwm.agent.policy import policy_factory
from cwm.agent.trajectory import Trajectory, sft_records, write_jsonl

FORMAT = "cwm-collect-1"
MANIFEST = "manifest.json"
EPISODES = "episodes"


class CollectError(ValueError):
    """A collection that cannot start or resume as asked (the message says what to do)."""


@dataclass(frozen=True)
class CollectParams:
    """Everything the episodes depend on (and nothing they do not, such as the worker count)."""

    policy: str  # oracle | script file | URL | model directory (cwm.agent.policy.open_policy)
    attempts: int = 1  # episodes per task
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int | None = None  # per reply
    limits: Limits = Limits()
    backend: str = "sandbox"  # the workspace's backend

    def manifest_dict(self, tasks_digest: str) -> dict:
        d = asdict(self)
        d["tasks"] = tasks_digest
        return d


def episode_name(number: int) -> str:
    return f"{number:06d}.json"


def collect(tasks: list, out: str | os.PathLike, params: CollectParams, workers: int = 1,
            sft: str | os.PathLike | None = None, observations=(), resolved_only: bool = True,
            tokenizer=None, device: str = "cpu", progress: Callable[[int, int, Trajectory], None] | None = None,
            open_policy: Callable | None = None) -> dict:
    """Run (or finish running) the episodes into `out`; returns the manifest.

    progress(done, total, trajectory) is called as each episode ends. open_policy(task, seed)
    makes an episode's policy (default: cwm.agent.policy.policy_factory of params.policy; a model
    directory on `device`)."""
    if params.attempts < 1 or workers < 1:
        raise CollectError("--attempts and --workers must be at least 1")
    if not tasks:
        raise CollectError("no tasks to run; give a task file with at least one task")
    out = Path(out)
    (out / EPISODES).mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps([t.to_json() for t in tasks], sort_keys=True).encode()).hexdigest()
    manifest = _open_manifest(out, params.manifest_dict(digest), len(tasks) * params.attempts)
    _remove_partial(out)
    episodes = [(task, k) for task in tasks for k in range(params.attempts)]
    todo = [n for n in range(len(episodes)) if not (out / EPISODES / episode_name(n)).is_file()]
    done = len(episodes) - len(todo)
    make_policy = open_policy or policy_factory(params.policy, device=device, temperature=params.temperature,
                                                top_p=params.top_p, max_tokens=params.max_tokens)
    lock = threading.Lock()

    failed: list[Trajectory] = []
    stop = threading.Event()  # set on Ctrl-C: running episodes end before their next reply

    def one(number: int) -> Trajectory:
        task, k = episodes[number]
        trajectory = run_one(task, make_policy(task, params.seed + k), params.backend, params.limits,
                             tokenizer=tokenizer, stop=stop)
        if trajectory.exit_status in ("policy_error", "interrupted"):  # not done: a rerun retries it
            failed.append(trajectory)
        else:
            _write_atomic(out / EPISODES / episode_name(number), json.dumps(trajectory.to_json(), ensure_ascii=False))
        return trajectory

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cwm-episode") as pool:
        pending = {pool.submit(one, n) for n in todo}
        try:
            while pending:
                # a timeout, so the main thread runs Python often: a Ctrl-C the kernel delivered
                # to a worker thread would not wake a wait without one
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    trajectory = future.result()
                    with lock:
                        done += 1
                    if progress:
                        progress(done, len(episodes), trajectory)
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            raise

    if failed:
        raise CollectError(f"{len(failed)} episode(s) got no reply from the policy ({failed[0].message}); "
                           "they are not saved: rerun the same command to retry them")
    trajectories = [Trajectory.from_json(json.loads((out / EPISODES / episode_name(n)).read_text(encoding="utf-8")))
                    for n in range(len(episodes))]
    write_jsonl(out / "trajectories.jsonl", (t.to_json() for t in trajectories))
    manifest.update(complete=True, summary=summary(trajectories))
    if sft is not None:
        manifest["sft"] = {"path": str(sft), "records": write_jsonl(sft, sft_records(trajectories, observations, resolved_only)),
                           "observations": observations if isinstance(observations, str) else list(observations),
                           "resolved_only": resolved_only}
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def run_one(task, policy, backend: str = "sandbox", limits: Limits = Limits(), source_dir=None, tokenizer=None,
            on_message=None, stop=None) -> Trajectory:
    """One episode: a workspace on the task's repository (laid out in a fresh directory, or
    `source_dir` as it is), the loop, the workspace closed."""
    from cwm.agent.task import materialize
    from cwm.agent.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="cwm-episode-") as tmp:
        source = source_dir if source_dir is not None else materialize(task, Path(tmp) / "repo")
        workspace = Workspace.create(source, backend=backend, session_timeout=limits.session_timeout)
        try:
            return run_episode(task, policy, workspace, limits, tokenizer=tokenizer, on_message=on_message, stop=stop)
        finally:
            workspace.close()


def summary(trajectories: list[Trajectory]) -> dict:
    """Counts over the episodes: resolved, exit statuses, turns and tokens."""
    n = len(trajectories)
    exits: dict[str, int] = {}
    for t in trajectories:
        exits[t.exit_status] = exits.get(t.exit_status, 0) + 1
    return {"episodes": n, "resolved": sum(bool(t.resolved) for t in trajectories), "exit_status": exits,
            "mean_turns": round(sum(t.turns for t in trajectories) / max(n, 1), 2),
            "mean_tokens": round(sum(t.tokens for t in trajectories) / max(n, 1), 1)}


def _open_manifest(out: Path, params: dict, episodes: int) -> dict:
    fresh = {"format": FORMAT, "params": params, "episodes": episodes, "complete": False}
    path = out / MANIFEST
    if not path.exists():
        _write_atomic(path, json.dumps(fresh, indent=1) + "\n")
        return fresh
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CollectError(f"{path}: not a readable manifest ({e}); collect into another --out") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise CollectError(f"{out} is not a `cwm agent collect` output; choose another --out")
    if old.get("params") != params:
        diff = ", ".join(f"{k}: {old.get('params', {}).get(k)!r} then {v!r}" for k, v in params.items()
                         if old.get("params", {}).get(k) != v)
        raise CollectError(f"{out} holds a collection with other parameters ({diff}); rerun with the same "
                           "parameters to resume it, or choose another --out")
    return old


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_partial(out: Path) -> None:
    """Delete the temporary files a killed run left behind."""
    for p in (out / EPISODES).glob(".*.tmp.*"):
        p.unlink(missing_ok=True)
