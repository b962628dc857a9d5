"""A bug-fix task in SWE-bench's shape, and how to lay its repository out on disk offline.

    from cwm.agent.task import Task, read_tasks, write_tasks, materialize
    task = read_tasks("tasks.jsonl")[0]
    root = materialize(task, "/tmp/ws")      # the buggy repository, a git repo with one commit
    # ... an agent edits root; its `git diff` is the candidate patch ...

The fields that SWE-bench has keep SWE-bench's names and meanings: `instance_id`, `repo`,
`base_commit`, `problem_statement`, `patch` (the gold fix: a unified diff that starts with
`diff`), `test_patch` (always "" here: the tests are in the repository already), `FAIL_TO_PASS`
and `PASS_TO_PASS` (test ids as the test command's pytest log names them, e.g.
`tests/test_x.py::TestY::test_z`). What SWE-bench leaves to its Docker images is spelled out:

- `source`: where the pristine tree comes from, so that it can be rebuilt with no network
  beyond the package registry: `{"kind": "pypi", "name", "version", "sha256"}` (an sdist;
  found in the package's shipped copies, then the cache, then `pip download`), or
  `{"kind": "dir", "path"}` (a local directory, for one's own repositories and tests), or
  `{"kind": "git", "path", "commit"}` (a commit of a local clone: SWE-bench instances).
- `bug_patch`: the mutation that makes the buggy repository from the pristine tree (the
  reverse of `patch`). The agent never sees it or `patch`.
- `test_cmd`: the shell command, run at the repository root in the sandbox, whose pytest log
  (`-rA`) grades the task; `test_files` are the files it runs.
- `base_commit`: the git commit of the buggy repository as `materialize` builds it (fixed
  author, committer and dates, so the same tree always gives the same id); `materialize`
  checks it, so a task that no longer reproduces says so instead of grading garbage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE_KINDS = ("pypi", "dir", "git")
# The git identity and date of the one commit of a materialized repository: fixed, so that
# base_commit is a function of the tree alone.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "cwm", "GIT_AUTHOR_EMAIL": "cwm@localhost", "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "cwm", "GIT_COMMITTER_EMAIL": "cwm@localhost",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}
_GIT_FLAGS = ["-c", "core.autocrlf=false", "-c", "core.filemode=true", "-c", "init.defaultBranch=main",
              "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]


class TaskError(ValueError):
    """A task file or a task's source is wrong; the message says which and what to do."""


@dataclass
class Task:
    instance_id: str
    repo: str  # e.g. "more-itertools" (PyPI name) or a local repository's name
    base_commit: str  # git commit of the buggy tree as materialize() builds it
    problem_statement: str  # the issue text the agent gets
    patch: str  # the gold fix: unified diff (starts with "diff"), applied to the buggy tree
    FAIL_TO_PASS: list[str]
    PASS_TO_PASS: list[str]
    source: dict[str, str]  # see the module doc
    bug_patch: str  # pristine tree -> buggy tree (the mutation)
    test_cmd: str  # run at the repository root; prints a pytest -rA log
    test_files: list[str] = field(default_factory=list)
    test_patch: str = ""
    version: str = ""
    created_at: str = ""
    hints_text: str = ""
    mutation: dict[str, Any] = field(default_factory=dict)  # what was changed: operator, file, line

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "task") -> Task:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - obj.keys())
        if missing:
            raise TaskError(f"{where}: missing field(s) {', '.join(missing)}; a task needs {', '.join(sorted(required))}")
        data = {k: v for k, v in obj.items() if k in names}
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS", "test_files"):
            if isinstance(data.get(key), str):  # SWE-bench's files hold these as JSON strings
                data[key] = json.loads(data[key])
        kind = (data.get("source") or {}).get("kind")
        if kind not in SOURCE_KINDS:
            raise TaskError(f"{where}: source kind {kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        return cls(**data)


def read_tasks(path: str | os.PathLike) -> list[Task]:
    """Tasks from a JSONL file (one task per line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} not found; make one with `cwm agent tasks` or pass an existing file")
    tasks = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{n}: not JSON ({e.msg}); a task file has one JSON object per line") from None
            tasks.append(Task.from_json(obj, f"{path}:{n}"))
    return tasks


def write_tasks(path: str | os.PathLike, tasks: Iterable[Task]) -> None:
    """Write tasks as JSONL (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in tasks)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Sources


def shipped_dir() -> Path:
    """The sdists that ship inside the package (the local benchmark's sources)."""
    return Path(__file__).with_name("data") / "sources"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cwm" / "sources"


def sdist_path(name: str, version: str, sha256: str, download: bool = True) -> Path:
    """The sdist of name==version with this sha256: a shipped copy, a cached one, or `pip download`."""
    for d in (shipped_dir(), cache_dir() / f"{name}-{version}"):
        for p in sorted(d.glob("*")) if d.is_dir() else ():
            if p.is_file() and _is_archive(p) and _sha256(p) == sha256:
                return p
    if not download:
        raise TaskError(f"the sdist of {name}=={version} (sha256 {sha256[:12]}...) is not here; "
                        "run without --offline so that pip can download it")
    dest = cache_dir() / f"{name}-{version}"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q", "-d", str(dest), f"{name}=={version}"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode != 0:
        raise TaskError(f"pip could not download {name}=={version}: {res.stderr.strip().splitlines()[-1:]}; "
                        "check the name, the version and the package registry")
    for p in sorted(dest.glob("*")):
        if _is_archive(p) and _sha256(p) == sha256:
            return p
    got = ", ".join(f"{p.name} {_sha256(p)}" for p in dest.glob("*") if _is_archive(p))
    raise TaskError(f"the sdist of {name}=={version} has another sha256 than pinned ({sha256}); got {got}")


def _is_archive(p: Path) -> bool:
    return p.name.endswith((".tar.gz", ".tgz", ".zip"))


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def extract_sdist(archive: Path, dest: Path) -> None:
    """Unpack an sdist's single top directory into dest (no member may leave it)."""
    with tempfile.TemporaryDirectory() as tmp:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for m in z.namelist():
                    if m.startswith("/") or ".." in Path(m).parts:
                        raise TaskError(f"{archive}: member {m!r} would leave the directory; refusing it")
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        tops = os.listdir(tmp)
        top = Path(tmp, tops[0]) if len(tops) == 1 and Path(tmp, tops[0]).is_dir() else Path(tmp)
        shutil.copytree(top, dest, symlinks=True, dirs_exist_ok=True)


def pristine_tree(source: dict[str, str], dest: str | os.PathLike, download: bool = True) -> Path:
    """Lay the unmodified source tree out in dest (created; must not exist or be empty)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise TaskError(f"{dest} is not empty; materialize into a new directory")
    kind = source.get("kind")
    if kind == "pypi":
        extract_sdist(sdist_path(source["name"], source["version"], source["sha256"], download), dest)
    elif kind == "dir":
        src = Path(source["path"])
        if not src.is_dir():
            raise TaskError(f"source directory {src} not found")
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache"))
    elif kind == "git":
        src = Path(source["path"])
        if not (src / ".git").exists() and not (src / "HEAD").exists():
            raise TaskError(f"{src} is not a git clone; clone the repository there (for SWE-bench: "
                            "repos_dir/<owner>__<name>)")
        res = subprocess.run(["git", "-C", str(src), "archive", "--format=tar", source["commit"]], check=False, capture_output=True)
        if res.returncode != 0:
            raise TaskError(f"{src}: commit {source['commit'][:12]} not found ({res.stderr.decode().strip()}); "
                            "fetch it into the clone")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(res.stdout)) as t:
            t.extractall(dest, filter="data")
    else:
        raise TaskError(f"source kind {kind!r} is not one of {', '.join(SOURCE_KINDS)}")
    return dest


# ---------------------------------------------------------------------------------------------
# Git and patches


def git(root: str | os.PathLike, *args: str, input: str | None = None, check: bool = True) -> str:
    """Run git in root with a fixed, user-independent configuration (no hooks, no global config)."""
    env = {**os.environ, **_GIT_ENV, "GIT_CEILING_DIRECTORIES": str(Path(root).resolve().parent)}
    res = subprocess.run(["git", *_GIT_FLAGS, *args], cwd=root, input=input, check=False, capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise TaskError(f"git {' '.join(args[:2])} failed in {root}: {res.stderr.strip()}")
    return res.stdout


def commit_tree(root: str | os.PathLike) -> str:
    """Make root a git repository whose one commit holds the whole tree; return the commit id."""
    git(root, "init", "-q")
    git(root, "add", "-A", "-f")
    git(root, "commit", "-q", "--allow-empty", "-m", "base")
    return git(root, "rev-parse", "HEAD").strip()


def apply_patch(root: str | os.PathLike, patch: str) -> tuple[bool, str]:
    """Apply a unified diff in root (a git repository or not). (True, "") or (False, why).

    `git apply` refuses paths outside root; nothing of the patch is executed."""
    if not patch.strip():
        return False, "the patch is empty"
    text = patch if patch.endswith("\n") else patch + "\n"
    ok_git = (Path(root) / ".git").exists()
    args = ["apply", "--whitespace=nowarn"] if ok_git else ["--git-dir=/nonexistent", "apply", "--whitespace=nowarn"]
    env = {**os.environ, **_GIT_ENV, "GIT_CEILING_DIRECTORIES": str(Path(root).resolve().parent)}
    res = subprocess.run(["git", *_GIT_FLAGS, *args, "-"], cwd=root, input=text, check=False, capture_output=True, text=True,
                         env=env)
    return res.returncode == 0, res.stderr.strip()


def diff_files(root: str | os.PathLike, old: dict[str, str], new: dict[str, str]) -> str:
    """A git-style unified diff (`diff --git a/.. b/..`) from old to new contents of files in root."""
    import difflib

    out = []
    for rel in sorted(set(old) | set(new)):
        a, b = old.get(rel, ""), new.get(rel, "")
        if a == b:
            continue
        lines = list(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                          f"a/{rel}", f"b/{rel}", n=3))
        out.append(f"diff --git a/{rel} b/{rel}\n")
        for line in lines:
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def materialize(task: Task, dest: str | os.PathLike, download: bool = True, check: bool = True) -> Path:
    """The task's buggy repository in dest: the pristine tree, the bug patch applied, one git commit.

    Returns dest. With check (default), the commit must equal task.base_commit (not for a git
    source: there base_commit names the source's own commit)."""
    dest = pristine_tree(task.source, dest, download)
    ok, why = apply_patch(dest, task.bug_patch) if task.bug_patch else (True, "")
    if not ok:
        raise TaskError(f"{task.instance_id}: the bug patch does not apply to its source ({why}); "
                        "the source is not the one the task was made from")
    commit = commit_tree(dest)
    if check and task.base_commit and task.source.get("kind") != "git" and commit != task.base_commit:
        raise TaskError(f"{task.instance_id}: the materialized tree is commit {commit[:12]}, the task says "
                        f"{task.base_commit[:12]}; the source or the bug patch changed: regenerate the task")
    return dest
