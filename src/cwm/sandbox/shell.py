"""A sandbox that lasts an episode: a directory at a fixed path and a persistent bash session.

    box = Box("/path/to/pristine/copy")             # its own uid, its own tmpfs at /testbed
    box.run(["pytest", "-q"], timeout=60)           # one-shot: a SandboxResult, cwd /testbed
    shell = box.shell()                             # bash, persistent between commands
    shell.run("cd src && export X=1", timeout=120)  # {"status", "output", "error_type", "exit_code"}
    box.reset(); box.close()

How (root, the normal case): a helper process, forked once per copy, makes a mount namespace of
its own with a tmpfs of `workspace_bytes` at /testbed (owned by the box's uid), copies the source
into it and exits; the box keeps the namespace alive by an open fd of it. Every run of the box (each one-shot command, each bash session) is an
ordinary cwm.sandbox run (cwm.sandbox.core: PID namespace, no network, rlimits, seccomp, a private
/tmp, its own uid, everything killed at the end) whose keeper first enters the holder's mount
namespace, so it sees the same /testbed. So the workspace is bounded in size (a full tmpfs says
ENOSPC), lives nowhere on the host's disk, outlives a killed bash session, and vanishes when the
box closes (or this process ends). The box's uid is 200000 + the id of a thread that the box keeps asleep for its lifetime:
like core's per-thread uid, unique among live sandboxes, and never shared with another episode.

Without root (a developer's laptop) there is no holder: the copy stays in a host temp dir, which
is also the path the agent sees (`Box.root`), bounded per file only (core warns what is missing).

The bash session follows the release (cwm/rl/swerl/remote/session.py): commands are written to
bash's stdin followed by `__EXIT_CODE__=$?` and `echo "<<exit>$((1))"`; the output (stdout and
stderr merged) is everything before the sentinel; past `timeout` seconds or `max_output` bytes,
or when bash has died, the session is stopped and the next command starts a fresh one.
"""

from __future__ import annotations

import ctypes
import os
import re
import selectors
import shutil
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import Self, TypedDict

from cwm.sandbox.core import (
    _CLONE_NEWNS,
    _MS_NODEV,
    _MS_NOSUID,
    _MS_PRIVATE,
    _MS_REC,
    UID_BASE,
    Limits,
    SandboxResult,
    _check_limits,
    _Job,
    _launch,
    _libc,
    _pidfd,
    _run,
    _wait_for,
)  # fmt: skip

__all__ = ["MAX_SESSION_OUTPUT", "SESSION_SENTINEL", "Box", "BoxLimits", "Shell", "ShellOutput"]

WORKSPACE_PATH = "/testbed"
SESSION_SENTINEL = "<<exit>1"  # session.py: echoed as "<<exit>$((1))", so the command text never matches
MAX_SESSION_OUTPUT = 480 * 1024  # session.py: max_buffer_size (~96k tokens)
_SENTINEL_LINE = re.compile(rb"<<exit>1(-?\d*)\n")


@dataclass
class BoxLimits(Limits):
    """A workspace's limits: core's Limits (per process, as there) with an agent's defaults, plus the
    size of the workspace's own tmpfs. `timeout` is the one-shot default; a session command has its own."""

    timeout: float = 120.0
    cpu_seconds: int = 600
    memory_bytes: int = 4 << 30
    max_processes: int = 256
    max_open_files: int = 1024
    max_file_bytes: int = 256 << 20
    max_output_bytes: int = 16 << 20
    max_disk_bytes: int = 256 << 20  # the private /tmp of each run
    workspace_bytes: int = 1 << 30  # the tmpfs at /testbed (root only)


class ShellOutput(TypedDict):
    status: str  # "success" | "error"
    output: str
    error_type: str  # "none" | "timeout" | "too_long" | "exit" | "broken_pipe" | "other"
    exit_code: int  # the command's exit code; -1 after an error


class Box:
    """One episode's sandbox: a copy of `source` at a fixed path, runs and bash sessions inside it."""

    def __init__(self, source: str | os.PathLike, limits: BoxLimits | None = None, path: str = WORKSPACE_PATH):
        self.source = os.path.realpath(os.fspath(source))
        if not os.path.isdir(self.source):
            raise NotADirectoryError(f"Box: {self.source!r} is not a directory; pass the repository to copy")
        self.limits = limits or BoxLimits()
        _check_limits(self.limits)
        self.is_root = os.geteuid() == 0
        self._lease = _UidLease() if self.is_root else None
        self.uid: int | None = UID_BASE + self._lease.tid if self._lease else None
        self._holder: _Holder | None = None
        self._host_copy: str | None = None
        self._shells: list[Shell] = []
        if self.is_root:
            os.makedirs(path, mode=0o755, exist_ok=True)  # an empty mount point on the host (see docs/agent.md)
            self.root = path
        else:
            warnings.warn("cwm sandbox: not root: the workspace is a host temp dir (its path is Box.root), "
                          "bounded per file only", RuntimeWarning, stacklevel=2)
            self.root = ""
        self._fill()

    # -- the copy
    def _fill(self) -> None:
        if self.uid is not None:
            self._holder = _Holder(self.source, self.root, self.uid, self.limits.workspace_bytes)
        else:
            self._host_copy = tempfile.mkdtemp(prefix="cwm-box-")
            shutil.copytree(self.source, self._host_copy, symlinks=True, dirs_exist_ok=True)
            self.root = self._host_copy

    def _empty(self) -> None:
        for shell in self._shells:
            shell.stop()
        self._shells.clear()
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        if self._host_copy is not None:
            shutil.rmtree(self._host_copy, ignore_errors=True)
            self._host_copy = None

    def reset(self) -> None:
        """A fresh copy of the source; every session and process of the old one is killed."""
        self._empty()
        self._fill()

    def close(self) -> None:
        self._empty()
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs
    def _job(self, argv: list[str], input: bytes | None) -> _Job:
        if self._holder is None and self._host_copy is None:
            raise RuntimeError("Box: closed; create a new one")
        if self._holder is not None:
            return _Job(argv=argv, input=input, workdir=self.root, mount_ns=self._holder.ns_fd)
        return _Job(argv=argv, input=input, workspace=self._host_copy)

    def run(self, cmd: str | list[str], timeout: float | None = None, input: str | bytes | None = None,
            env: dict[str, str] | None = None) -> SandboxResult:
        """One command (a shell string or an argv list), cwd the workspace, to its end."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [os.fspath(a) for a in cmd]
        if not argv:
            raise ValueError("Box.run: the command is empty")
        limits = self.limits if timeout is None else replace(self.limits, timeout=timeout)
        data = input.encode() if isinstance(input, str) else input
        job = self._job(argv, data)
        job.env = env
        return _run(limits, job, self.uid)

    def shell(self, timeout: float = 120.0, max_output: int = MAX_SESSION_OUTPUT, start_script: str = "") -> Shell:
        """A persistent bash session in the workspace (started at its first command)."""
        shell = Shell(self, timeout, max_output, start_script)
        self._shells.append(shell)
        return shell


class Shell:
    """A persistent bash session, the release's way (see the module's doc)."""

    def __init__(self, box: Box, timeout: float, max_output: int, start_script: str = ""):
        self.box, self.timeout, self.max_output, self.start_script = box, timeout, max_output, start_script
        self._keeper: int | None = None
        self._keeper_fd: int | None = None  # a pidfd: waited on, not waitpid (see core._wait_for)
        self._fds: dict[str, int] = {}
        self._stdin: int | None = None

    @property
    def alive(self) -> bool:
        return self._keeper is not None

    def start(self) -> None:
        self.stop()
        job = self.box._job(["/bin/bash", "--noprofile", "--norc"], b"")
        keeper, _, fds, stdin = _launch(self.box.limits, job, self.box.uid)
        assert stdin is not None  # job.input is set: a stdin pipe was made
        self._keeper, self._keeper_fd, self._fds, self._stdin = keeper, _pidfd(keeper), fds, stdin
        os.close(fds.pop("result"))  # the runner only writes there if bash could not be started
        for fd in [*fds.values(), stdin]:
            os.set_blocking(fd, False)
        # merged output as the release's stderr=STDOUT; then the release's start script ends with `cd {work_dir}`
        script = f"exec 2>&1\n{self.start_script}\ncd {self.box.root}" if self.start_script else \
            f"exec 2>&1\ncd {self.box.root}"
        out = self._communicate(script, self.timeout)
        if out["status"] != "success":
            self.stop()

    def stop(self) -> None:
        """Kill the session: the keeper is PID 1 of its namespace, so all it started dies with it."""
        if self._keeper is None:
            return
        try:
            if self._keeper_fd is not None:  # by its pidfd: never another process that took its pid
                signal.pidfd_send_signal(self._keeper_fd, signal.SIGKILL)
        except ProcessLookupError:  # it has exited already
            pass
        _wait_for(self._keeper, self._keeper_fd)
        for fd in [*self._fds.values(), self._stdin]:
            if fd is not None:
                os.close(fd)
        self._keeper, self._keeper_fd, self._fds, self._stdin = None, None, {}, None

    def run(self, command: str, timeout: float | None = None) -> ShellOutput:
        """Run `command` in the session (started if needed); on any error the session is stopped
        and the next command gets a fresh one (cwd back at the workspace, variables gone)."""
        if self._keeper is None:
            self.start()
        out = self._communicate(command, self.timeout if timeout is None else timeout)
        if out["error_type"] != "none":
            self.stop()
        return out

    def _communicate(self, command: str, timeout: float) -> ShellOutput:
        if self._keeper is None or self._stdin is None:
            return ShellOutput(status="error", output="", error_type="exit", exit_code=-1)
        text = command.rstrip() + "\n" + '__EXIT_CODE__=$?\necho "<<exit>$((1))$__EXIT_CODE__"\n'
        pending = memoryview(text.encode())
        buffer, deadline = bytearray(), time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        for name, fd in self._fds.items():
            sel.register(fd, selectors.EVENT_READ, name)
        # the command is written as bash takes it, while its output is read: a long command whose
        # first lines print much cannot block both sides on full pipes
        sel.register(self._stdin, selectors.EVENT_WRITE, "stdin")
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ShellOutput(status="error", output=buffer.decode(errors="ignore"),
                                       error_type="timeout", exit_code=-1)
                for key, _ in sel.select(left):
                    if key.data == "stdin":
                        try:
                            pending = pending[os.write(key.fd, pending[: 1 << 16]):]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError as e:
                            return ShellOutput(status="error", output=str(e), error_type="broken_pipe", exit_code=-1)
                        if not pending:
                            sel.unregister(key.fd)
                        continue
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fd)
                        if key.data == "status" or not set(_names(sel)) - {"stdin"}:  # the keeper or bash is gone
                            return ShellOutput(status="error", output=buffer.decode(errors="ignore"),
                                               error_type="exit", exit_code=-1)
                        continue
                    if key.data != "status":
                        buffer += chunk
                if len(buffer) > self.max_output:
                    return ShellOutput(status="error", output=buffer.decode(errors="ignore"),
                                       error_type="too_long", exit_code=-1)
                at = buffer.rfind(SESSION_SENTINEL.encode())
                if at != -1 and not pending:
                    match = _SENTINEL_LINE.match(buffer, at)
                    if match:
                        code = int(match.group(1)) if match.group(1) else -1
                        return ShellOutput(status="success", output=buffer[:at].decode(errors="ignore"),
                                           error_type="none", exit_code=code)
        finally:
            sel.close()


def _names(sel: selectors.BaseSelector) -> list[str]:
    return [key.data for key in sel.get_map().values()]


class _UidLease:
    """A thread kept asleep for a box's lifetime: its id makes the box's uid, which no other live
    sandbox can have (core gives a run 200000 + the id of the thread running it)."""

    def __init__(self):
        self._done = threading.Event()
        ready = threading.Event()
        self.tid = 0

        def hold():
            self.tid = threading.get_native_id()
            ready.set()
            self._done.wait()

        self._thread = threading.Thread(target=hold, name="cwm-box-uid", daemon=True)
        self._thread.start()
        ready.wait()

    def release(self) -> None:
        self._done.set()
        self._thread.join()


_PR_SET_PDEATHSIG = 1


class _Holder:
    """The workspace's mount namespace, with a tmpfs at `path` holding a copy of `source`.

    A forked helper makes the namespace, mounts and fills the tmpfs, and exits; an open fd of the
    namespace keeps it (and the tmpfs) alive until close(), or until this process ends."""

    def __init__(self, source: str, path: str, uid: int, size: int):
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # never returns
            _hold(source, path, uid, size, ready_w, hold_r)
        pidfd = _pidfd(pid)
        os.close(ready_w)
        os.close(hold_r)
        self.ns_fd: int | None = None
        try:
            with os.fdopen(ready_r, "rb") as f:
                answer = f.read(4096).decode(errors="replace")
            if answer == "ok":
                self.ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(hold_w)  # the helper's cue to exit
            _wait_for(pid, pidfd)
        if self.ns_fd is None:
            raise OSError(f"cwm sandbox: cannot set up the workspace at {path}: {answer or 'the helper died'}")

    def close(self) -> None:
        if self.ns_fd is not None:
            os.close(self.ns_fd)
            self.ns_fd = None


def _hold(source: str, path: str, uid: int, size: int, ready_w: int, hold_r: int) -> None:
    try:
        os.dup2(ready_w, 3), os.dup2(hold_r, 4)
        os.closerange(5, os.sysconf("SC_OPEN_MAX"))  # no pipe of another run stays open here
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if _libc.unshare(_CLONE_NEWNS) != 0 or _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "cannot make a mount namespace")
        options = f"size={size},mode=755,uid={uid},gid={uid}".encode()
        if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
            raise OSError(ctypes.get_errno(), f"cannot mount a tmpfs at {path}")
        shutil.copytree(source, path, symlinks=True, dirs_exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
        os.write(3, b"ok")
        os.close(3)
        os.read(4, 1)  # until the box has opened our namespace
    except BaseException as e:  # noqa: BLE001 (a forked child: every failure is reported, then _exit)
        try:
            os.write(3, f"{type(e).__name__}: {e}".encode())
        except OSError:
            pass
    finally:
        os._exit(0)
