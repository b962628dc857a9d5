"""One episode's workspace: a private copy of a repository at /testbed, a persistent bash session
and one-shot commands, all inside the project's sandbox (or a Docker container).

    with Workspace.create("path/to/repo") as ws:          # backend="sandbox" (default) or "docker"
        ws.bash("cd src && grep -n foo *.py")               # the release's bash tool: its feedback text
        ws.run("python -m pytest -q tests/test_x.py", timeout=300)   # (exit code, merged output)
        ws.write_text("notes.txt", "..."); ws.read_text("/testbed/notes.txt"); ws.exists("x")
        ws.diff()                                           # the agent's changes as a git diff
        ws.reset()                                          # back to the pristine copy

The copy is made once (`git init` + one commit when the source is not a repository, so `git diff`
works; a repository keeps the history of its current branch), kept pristine on the host, and copied again into the
sandbox at every reset. Paths are as the agent sees them: relative ones are under ws.root.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Self

from cwm.sandbox import Limits, run_command
from cwm.sandbox.shell import (
    MAX_SESSION_OUTPUT,
    WORKSPACE_PATH,
    Box,
    BoxLimits,
    Shell,
    ShellOutput,
)

__all__ = ["BoxLimits", "DockerWorkspace", "Workspace", "bash_feedback", "docker_available"]

SESSION_TIMEOUT = 120.0  # the release's session timeout (swerl_tool.py SWERLConfig.session_timeout)
PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")  # edit.py, create.py
DOCKER_PLUGIN_DIR = "/cwm-plugins"

# cwm/rl/swerl/tools.py: bash_feedback_default
SESSION_EXIT = "The current session has terminated unexpectedly."
SESSION_TIMED_OUT = "The current session has terminated due to timeout."
SESSION_TOO_LONG = "The current session has terminated because your previous command produced too much output."
SESSION_RESTARTED = " A fresh session has started with the current working directory reset to default."


def bash_feedback(out: ShellOutput) -> tuple[str, bool]:
    """What the model sees after a bash command (release: bash_feedback_default): the output as it
    came (stdout and stderr merged; the exit code is not shown), or the restart text on an error."""
    if out["status"] == "success":
        return out["output"], True
    text = {"timeout": SESSION_TIMED_OUT, "too_long": SESSION_TOO_LONG}.get(out["error_type"], SESSION_EXIT)
    return text + SESSION_RESTARTED, False


# A repository's history is pruned to what its current branch descends from, as the release does
# before an episode (cwm/rl/swerl/common.py retain_only_current_branch_ancestor_commits): no
# remote, no other branch or tag, no reflog, unreachable objects gone, so no later commit (the fix)
# can leak into the episode.
_PRUNE_HISTORY = """
for r in $(git remote); do git remote remove "$r"; done
cur=$(git symbolic-ref --quiet --short HEAD || true)
git for-each-ref --format='%(refname)' | while read -r ref; do
  [ "$ref" = "refs/heads/$cur" ] || git update-ref -d "$ref"
done
git branch --unset-upstream >/dev/null 2>&1 || true
git reflog expire --expire=now --all
git gc -q --prune=now
"""
_MAKE_REPO = "git init -q; git add -A; git -c user.name=cwm -c user.email=cwm@localhost commit -q --no-verify --allow-empty -m base"


def prepare_copy(source: str | os.PathLike, dest: str | os.PathLike, timeout: float = 300.0) -> str:
    """Copy `source` to the new directory `dest` and make it the episode's repository: `git init` and
    one commit if it is not a repository; if it is, its history pruned to the current branch's
    ancestors. git runs in the sandbox (a repository's config could run programs). Returns HEAD."""
    dest = os.fspath(dest)
    shutil.copytree(os.fspath(source), dest, symlinks=True)
    script = f"set -e\nif [ -e .git ]; then\n{_PRUNE_HISTORY}\nelse\n{_MAKE_REPO}\nfi\ngit rev-parse HEAD"
    res = run_command(script, cwd=dest, limits=Limits(timeout=timeout, cpu_seconds=int(timeout),
                                                         max_processes=64, max_file_bytes=1 << 30))
    if not res.ok:
        raise OSError(f"workspace: cannot make {dest} a git repository: {res.error}\n{res.stdout}{res.stderr}".strip())
    return res.stdout.strip().splitlines()[-1]


# Python's bytecode is not part of a patch (SWE-bench diffs never carry it): left out of diff().
_NOT_BUILD_OUTPUT = "':(exclude,glob)**/__pycache__/**' ':(exclude,glob)**/*.pyc'"

class Workspace:
    """A sandboxed workspace (cwm.sandbox: no network, its own uid, rlimits, killed at the end)."""

    def __init__(self, source_dir: str | os.PathLike, limits: BoxLimits | None = None,
                 session_timeout: float = SESSION_TIMEOUT):
        source = os.fspath(source_dir)
        if not os.path.isdir(source):
            raise NotADirectoryError(f"workspace: {source!r} is not a directory; pass the repository to copy")
        self._tmp = tempfile.mkdtemp(prefix="cwm-ws-")
        try:
            self.base_commit = prepare_copy(source, os.path.join(self._tmp, "pristine"))
            self._box = Box(os.path.join(self._tmp, "pristine"), limits)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.session_timeout = session_timeout
        # the release's session exports the plugins' Python (default_configs.py PLUGIN_SETUP_SCRIPT)
        self.plugin_dir = PLUGIN_DIR
        self._start_script = f"export PYPLUGIN_PYTHON_PATH={shlex.quote(sys.executable)}"
        self._shell: Shell = self._box.shell(session_timeout, start_script=self._start_script)

    @classmethod
    def create(cls, source_dir: str | os.PathLike, backend: str = "sandbox", limits: Any = None,
               **kwargs: Any) -> Workspace | DockerWorkspace:
        if backend == "sandbox":
            return cls(source_dir, limits, **kwargs)
        if backend == "docker":
            return DockerWorkspace(source_dir, **kwargs)
        raise ValueError(f"workspace backend {backend!r}: use 'sandbox' or 'docker'")

    @property
    def root(self) -> str:
        """Where the agent sees the copy: /testbed (without root: the host temp dir of the copy)."""
        return self._box.root

    # -- the agent's session
    def bash_result(self, command: str, timeout: float | None = None) -> ShellOutput:
        """The session's raw result: status, output, error_type, exit_code."""
        return self._shell.run(command, self.session_timeout if timeout is None else timeout)

    def bash(self, command: str, timeout: float = SESSION_TIMEOUT) -> str:
        return bash_feedback(self.bash_result(command, timeout))[0]

    # -- one-shot commands (grading, file access), cwd ws.root, a fresh sandbox each
    def run(self, command: str | list[str], timeout: float = 600.0, input: str | None = None) -> tuple[int, str]:
        """(exit code, stdout and stderr merged in order); a command stopped at a limit (timeout,
        output) gets -1 and a last line naming it."""
        if isinstance(command, str):
            argv = ["/bin/sh", "-c", "exec 2>&1\n" + command]
        else:
            argv = ["/bin/sh", "-c", 'exec 2>&1; exec "$@"', "sh", *command]
        res = self._box.run(argv, timeout=timeout, input=input)
        output = res.stdout + res.stderr
        if res.returncode is None or res.status not in ("ok", "exit"):
            return (res.returncode if res.returncode is not None else -1), output + f"\n[{res.status}: {res.error}]"
        return res.returncode, output

    def _path(self, path: str | os.PathLike) -> str:
        return os.path.join(self.root, os.fspath(path))

    def read_text(self, path: str | os.PathLike) -> str:
        res = self._box.run(["cat", "--", self._path(path)], timeout=60)
        if not res.ok:
            raise FileNotFoundError(f"workspace: cannot read {path}: {res.stderr.strip() or res.error}")
        return res.stdout

    def write_text(self, path: str | os.PathLike, text: str) -> None:
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        res = self._box.run(["/bin/sh", "-c", script, "sh", self._path(path)], timeout=60, input=text)
        if not res.ok:
            raise OSError(f"workspace: cannot write {path}: {res.stderr.strip() or res.error}")

    def exists(self, path: str | os.PathLike) -> bool:
        return self._box.run(["test", "-e", self._path(path)], timeout=60).ok

    def diff(self) -> str:
        """Every change since the copy was made (edits, new files, deletions; committed or not),
        as `git diff` text; the agent's index is left alone (a private index in the run's /tmp)."""
        script = (f"cp .git/index /tmp/index 2>/dev/null; export GIT_INDEX_FILE=/tmp/index; "
                  f"git add -A -- . {_NOT_BUILD_OUTPUT} && git -c core.quotepath=off diff --cached --no-ext-diff --no-textconv "
                  f"--no-color {self.base_commit}")
        res = self._box.run(script, timeout=120)
        if not res.ok:
            raise OSError(f"workspace: git diff failed: {(res.stderr or res.error or '').strip()}")
        return res.stdout

    def reset(self) -> None:
        """Back to the pristine copy: the session and every process are killed, the copy made anew."""
        self._box.reset()
        self._shell = self._box.shell(self.session_timeout, start_script=self._start_script)

    def close(self) -> None:
        self._box.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def docker_available() -> str | None:
    """None if a Docker engine answers, else why not (one line)."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        res = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker info failed: {e}"
    if res.returncode != 0:
        return "no Docker engine reachable: " + (res.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


class DockerWorkspace:
    """The same interface in a Docker container (no network, memory and process limits), for
    images that hold a repository's own environment. `image` must have bash and git."""

    root: str = WORKSPACE_PATH
    plugin_dir: str = DOCKER_PLUGIN_DIR

    def __init__(self, source_dir: str | os.PathLike, image: str = "python:3.11",
                 session_timeout: float = SESSION_TIMEOUT, memory: str = "4g", pids: int = 512):
        why = docker_available()
        if why:
            raise RuntimeError(f"docker backend: {why}; use backend='sandbox'")
        self.image, self.session_timeout = image, session_timeout
        self.name = f"cwm-ws-{uuid.uuid4().hex[:12]}"
        self._tmp = tempfile.mkdtemp(prefix="cwm-ws-")
        self._pristine = os.path.join(self._tmp, "pristine")
        self.base_commit = prepare_copy(source_dir, self._pristine)
        self._args = ["--network", "none", "--memory", memory, "--pids-limit", str(pids)]
        self._shell: _DockerShell | None = None
        self._start()

    def _docker(self, *args: str, input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def _start(self) -> None:
        res = self._docker("run", "-d", "--name", self.name, *self._args, "-w", self.root, self.image,
                           "sleep", "infinity")
        if res.returncode != 0:
            raise RuntimeError(f"docker run {self.image}: {res.stderr.strip()}")
        self._docker("exec", self.name, "mkdir", "-p", self.root)
        res = self._docker("cp", f"{self._pristine}/.", f"{self.name}:{self.root}")
        if res.returncode != 0:
            raise RuntimeError(f"docker cp: {res.stderr.strip()}")
        self._docker("cp", PLUGIN_DIR, f"{self.name}:{DOCKER_PLUGIN_DIR}")
        self._shell = _DockerShell(self.name, self.root, self.session_timeout)

    def bash_result(self, command: str, timeout: float | None = None) -> ShellOutput:
        if self._shell is None:
            raise RuntimeError("docker workspace: closed; create a new one")
        return self._shell.run(command, self.session_timeout if timeout is None else timeout)

    def bash(self, command: str, timeout: float = SESSION_TIMEOUT) -> str:
        return bash_feedback(self.bash_result(command, timeout))[0]

    def run(self, command: str | list[str], timeout: float = 600.0, input: str | None = None) -> tuple[int, str]:
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        try:
            res = self._docker("exec", "-i", "-w", self.root, self.name, "timeout", "-s", "KILL", str(int(timeout)),
                               *argv, input=input, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            return -1, "[timeout]"
        return res.returncode, res.stdout + res.stderr

    def read_text(self, path: str | os.PathLike) -> str:
        code, out = self.run(["cat", "--", os.path.join(self.root, os.fspath(path))], timeout=60)
        if code != 0:
            raise FileNotFoundError(f"workspace: cannot read {path}: {out.strip()}")
        return out

    def write_text(self, path: str | os.PathLike, text: str) -> None:
        target = shlex.quote(os.path.join(self.root, os.fspath(path)))
        code, out = self.run(f'mkdir -p -- "$(dirname -- {target})" && cat > {target}', timeout=60, input=text)
        if code != 0:
            raise OSError(f"workspace: cannot write {path}: {out.strip()}")

    def exists(self, path: str | os.PathLike) -> bool:
        return self.run(["test", "-e", os.path.join(self.root, os.fspath(path))], timeout=60)[0] == 0

    def diff(self) -> str:
        script = (f"cp .git/index /tmp/cwm-index 2>/dev/null; export GIT_INDEX_FILE=/tmp/cwm-index; "
                  f"git add -A -- . {_NOT_BUILD_OUTPUT} && git -c core.quotepath=off diff --cached --no-ext-diff --no-textconv "
                  f"--no-color {self.base_commit}; rm -f /tmp/cwm-index")
        code, output = self.run(script, timeout=120)
        if code != 0:
            raise OSError(f"workspace: git diff failed: {output.strip()}")
        return output

    def reset(self) -> None:
        self._stop()
        self._start()

    def _stop(self) -> None:
        if self._shell is not None:
            self._shell.stop()
            self._shell = None
        self._docker("rm", "-f", self.name, timeout=120)

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DockerShell(Shell):
    """The release's session over `docker exec -i CONTAINER bash`."""

    def __init__(self, container: str, root: str, timeout: float):
        self.container, self.root = container, root
        self.timeout, self.max_output, self.start_script = timeout, MAX_SESSION_OUTPUT, ""
        self._proc: subprocess.Popen | None = None
        self._keeper, self._fds, self._stdin = None, {}, None

    def start(self) -> None:
        self.stop()
        self._proc = subprocess.Popen(["docker", "exec", "-i", "-w", self.root, self.container, "bash"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._keeper = self._proc.pid
        self._stdin = self._proc.stdin.fileno()
        self._fds = {"stdout": self._proc.stdout.fileno()}
        os.set_blocking(self._fds["stdout"], False)
        os.set_blocking(self._stdin, False)
        self._communicate(f"cd {self.root}", self.timeout)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        # the command bash was running inside the container is not a child of `docker exec`: end it too
        subprocess.run(["docker", "exec", self.container, "sh", "-c", "kill -9 -1"], capture_output=True, timeout=30,
                       check=False)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._proc, self._keeper, self._fds, self._stdin = None, None, {}, None
