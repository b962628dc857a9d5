"""Run untrusted code (traced programs, generated solutions, agent commands) in a child process.

    res = run_function(fn, *args, limits=Limits(timeout=5), **kwargs)   # fork of this warm process
    res = run_command("pytest -q", cwd=workspace, limits=Limits())        # exec of a command

How one run is built (root, the normal case on our machines; see docs/sandbox.md):

    caller ──fork──► keeper = PID 1 of a new PID namespace (root, our code only)
                       new mount, IPC and network namespaces; a size-bounded tmpfs on /tmp;
                       an empty tmpfs over a closed dir holding Python (/root), Python bound back read-only
                       ──fork──► runner (PID 2)
                                   rlimits (CPU, address space, open files, file size, processes)
                                   cwd: the private /tmp (or the caller's workspace)
                                   drop to a uid of its own (200000 + caller thread id), no new privileges
                                   seccomp: no unix sockets, no nested user namespaces
                                   a fixed clean environment (none of the caller's variables)
                                   run fn / exec the command (run_each: each call in a fresh fork)
                       wait4(runner), report its exit status and CPU time, exit

The caller never blocks forever: it reads every pipe through one selector until a wall-clock
deadline and caps what it keeps. On a timeout it kills the keeper: a PID namespace dies with its
PID 1, so the kernel kills everything the program started, however detached. The caller only
ever signals its own unreaped child, never a pid that could have been reused. Results come back
as a `SandboxResult`; nothing the child does raises in the caller, only a misuse of the API.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import functools
import io
import os
import pickle
import resource
import select
import selectors
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

__all__ = ["Limits", "SandboxResult", "STATUSES", "run_function", "run_each", "run_command", "allow_result_type"]

# Every status a SandboxResult can have (docs/sandbox.md says what each means).
STATUSES = (
    "ok",  # fn returned / the command exited 0
    "error",  # fn raised (error holds the traceback), or the command could not be started
    "exit",  # the child exited without returning (os._exit, sys.exit) / the command exited non-zero
    "timeout",  # wall clock ran out; the whole PID namespace was killed
    "cpu_limit",  # RLIMIT_CPU: SIGXCPU, or SIGKILL at the hard limit
    "memory",  # MemoryError in fn (RLIMIT_AS refused an allocation)
    "file_limit",  # RLIMIT_FSIZE: a write past max_file_bytes (EFBIG or SIGXFSZ)
    "open_files_limit",  # RLIMIT_NOFILE: EMFILE escaped fn
    "process_limit",  # RLIMIT_NPROC: fork or thread start refused and not handled by fn
    "recursion",  # RecursionError escaped fn
    "output_limit",  # stdout or stderr passed max_output_bytes; output cut and the run stopped
    "crash",  # killed by a fault signal (SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE, ...)
    "killed",  # killed by any other signal (e.g. it killed itself)
)

UID_BASE = 200_000  # runner uid = UID_BASE + the calling thread's id: unique among live sandboxes

_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 0x1, 0x2, 0x4, 0x20
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_FAULT_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE, signal.SIGSYS,
                  signal.SIGTRAP}
_LEFTOVER_GRACE = 0.5  # seconds the pipes may stay open after the keeper has reported
_EMERGENCY_BYTES = 1 << 20  # held by the runner, freed on MemoryError so the report can be written
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Limits:
    timeout: float = 10.0  # wall clock, seconds; kills the whole PID namespace
    cpu_seconds: int = 10  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS; for run_function, on top of the warm process's own size
    max_processes: int = 16  # RLIMIT_NPROC of the runner's own uid: processes + threads, runner included
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE
    max_output_bytes: int = 1 << 20  # per stream; past it the output is cut, marked, and the run stopped
    max_disk_bytes: int = 64 << 20  # size of the private tmpfs on /tmp (the cwd, unless run_command's cwd)
    network: bool = False  # True: share the host's network (no new network namespace)
    max_result_bytes: int = 256 << 20  # run_function's return value, counted as if no object were shared


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    value: Any = None  # fn's return value (run_function, status "ok"); None otherwise
    error: str | None = None  # human-readable reason when status != "ok"
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None  # exit code, or -signal when killed by a signal
    duration: float = 0.0  # wall-clock seconds, as seen by the caller

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------------
# Public API


def run_function(fn: Callable[..., Any], *args: Any, limits: Limits | None = None,
                 input: str | bytes | None = None, cwd: str | os.PathLike | None = None,
                 **kwargs: Any) -> SandboxResult:
    """Run fn(*args, **kwargs) in a forked child under `limits`; its return value comes back pickled.

    The child is a fork of this process, so fn needs no import and no pickling; only the return
    value crosses back, only types in the allow-list are unpickled (see allow_result_type), and
    the value is checked (field types of data classes, size) before it is returned.
    The child starts with stdin at /dev/null (or `input`), stdout/stderr captured, a minimal
    environment (none of this process's variables), none of this process's other open files, and
    a private temp dir as tempfile.gettempdir() and cwd; with `cwd=DIR`, its cwd is a read-only
    view of DIR instead. (So fn's own keyword arguments cannot be named limits, input or cwd.)
    """
    view = None
    if cwd is not None:
        view = os.path.realpath(os.fspath(cwd))
        if not os.path.isdir(view):
            raise NotADirectoryError(f"run_function: cwd {view!r} is not a directory; pass a directory or None")
    data = input.encode() if isinstance(input, str) else input
    return _run(limits or Limits(), _Job(fn=fn, args=args, kwargs=kwargs, workspace=view, read_only=True, input=data))


def run_command(
    cmd: str | list[str],
    *,
    cwd: str | os.PathLike | None = None,
    limits: Limits | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> SandboxResult:
    """Run a shell command (str, through /bin/sh -c) or an argv list under `limits`.

    cwd: a workspace directory the caller owns; the command may edit it. As root, the tree is
    handed to the runner's uid for the run and given back to its owner afterwards (no symlink
    is followed; hard-linked files are left alone). Without cwd: a private temp dir.
    env: the whole environment; by default a minimal one (PATH, HOME and TMPDIR = the working
    dir, LANG), so the caller's secrets (API keys) never reach the command.
    """
    if isinstance(cmd, str):
        argv = ["/bin/sh", "-c", cmd]
    else:
        argv = [os.fspath(a) for a in cmd]
        if not argv:
            raise ValueError("run_command: the command is empty; pass a shell string or a non-empty argv list")
    workspace = None
    if cwd is not None:
        workspace = os.path.realpath(os.fspath(cwd))
        if not os.path.isdir(workspace):
            raise NotADirectoryError(f"run_command: cwd {workspace!r} is not a directory; "
                                     "create it or pass cwd=None")
    job = _Job(argv=argv, workspace=workspace, env=env, input=None if input is None else input.encode())
    return _run(limits or Limits(), job)


# Classes the caller unpickles from a child's result. The child runs hostile code that can write
# any bytes to the result pipe, so a plain pickle.loads would hand it code execution in the caller.
_SAFE_GLOBALS: set[tuple[str, str]] = {
    ("builtins", n)
    # not bytearray: bytearray(10**12) is a bomb; not range: set(range(10**12)) would be one
    for n in ("complex", "set", "frozenset", "slice")
} | {
    ("collections", n) for n in ("OrderedDict", "defaultdict", "deque", "Counter")
} | {
    ("datetime", n) for n in ("date", "time", "datetime", "timedelta", "timezone")
} | {("decimal", "Decimal"), ("fractions", "Fraction")} | {
    ("cwm.trace.format", n) for n in ("Trace", "Frame")
}


def allow_result_type(cls: type) -> type:
    """Let run_function return instances of `cls` (usable as a class decorator).

    Only register plain data classes: unpickling may call cls(*args) with values the untrusted child chose.
    """
    _SAFE_GLOBALS.add((cls.__module__, cls.__qualname__))
    return cls


# ---------------------------------------------------------------------------------------------
# The caller's side


@dataclass
class _Job:
    fn: Callable[..., Any] | None = None
    args: tuple = ()
    kwargs: dict | None = None
    argv: list[str] | None = None
    workspace: str | None = None
    env: dict[str, str] | None = None
    input: bytes | None = None
    read_only: bool = False  # the workspace is a read-only view (run_function's cwd)
    pid_ns: bool = False  # the keeper is PID 1 of a PID namespace of its own
    # For cwm.sandbox.shell (a workspace at a fixed path): the mount namespace to start from (an fd
    # of /proc/PID/ns/mnt, whose mounts the run's own namespace copies), and the cwd inside it.
    mount_ns: int | None = None
    workdir: str | None = None
    # The keeper dies with the caller's thread (SIGKILL): set for a one-shot run (_run), whose thread
    # waits for the keeper, so that a caller killed mid-run (kill -9, os._exit) leaves nothing behind.
    dies_with_caller: bool = False


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"cwm sandbox: {message}", RuntimeWarning, stacklevel=4)


def _run(limits: Limits, job: _Job, uid: int | None = None) -> SandboxResult:
    """One run to its end. uid: the runner's (root only); by default one of this thread's own."""
    _check_limits(limits)
    start = time.monotonic()
    is_root = os.geteuid() == 0
    owner = None
    if job.workspace is not None and is_root and not job.read_only:
        st = os.stat(job.workspace)
        owner = (st.st_uid, st.st_gid)
    job.dies_with_caller = True
    keeper, pid_ns, pipes, stdin_w = _launch(limits, job, uid)
    keeper_fd = _pidfd(keeper)
    got = {name: bytearray() for name in pipes}
    try:
        killed_for = _collect(limits, job, keeper_fd, pid_ns, pipes, stdin_w, start, got)
    finally:
        keeper_status = _wait_for(keeper, keeper_fd)
        if owner is not None and job.workspace is not None:
            _hand_over(job.workspace, *owner)  # give the workspace back to its owner
        report = _parse_status(bytes(got["status"]))
        if report.get("host_tmpdir"):  # only where no private tmpfs could be mounted
            shutil.rmtree(report["host_tmpdir"], ignore_errors=True)
    res = _classify(limits, job, got, report, keeper_status, killed_for)
    res.duration = time.monotonic() - start
    return res


def _launch(limits: Limits, job: _Job, uid: int | None = None) -> tuple[int, bool, dict[str, int], int | None]:
    """Fork the keeper of one run; returns (keeper pid, whether it is PID 1 of a namespace of its own,
    the read ends of its stdout/stderr/result/status pipes, the write end of its stdin or None).
    The caller reads the pipes, then reaps the keeper (os.waitpid)."""
    is_root = os.geteuid() == 0
    if is_root and uid is None:
        # A uid of its own for the runner, so RLIMIT_NPROC counts only its processes. Our thread id is
        # unique among live threads, and a thread runs one sandbox at a time, all dead when it returns.
        uid = UID_BASE + threading.get_native_id()
    uid = uid if is_root else None
    plan = _mount_plan(uid, job.workspace, job.read_only)  # what to hide and show in the runner's file system
    _seccomp_program()  # built once here (cached), not in every child
    # Flush our own buffers, or the child would write them out a second time.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    pipes = {name: os.pipe() for name in ("stdout", "stderr", "result", "status")}
    stdin = os.pipe() if job.input is not None else None
    # As root, the keeper is born as PID 1 of a new PID namespace: killing it kills everything inside.
    pid_ns = is_root and _enter_new_pid_ns()
    job.pid_ns = pid_ns
    try:
        keeper = os.fork()
    except OSError:
        if pid_ns:
            _leave_new_pid_ns()
        for r, w in list(pipes.values()) + ([stdin] if stdin else []):
            os.close(r)
            os.close(w)
        raise
    if keeper == 0:  # never returns
        _keeper(limits, job, uid, plan, pipes, stdin)
    if pid_ns:
        _leave_new_pid_ns()
    for _, w in pipes.values():
        os.close(w)
    if stdin:
        os.close(stdin[0])
    return keeper, pid_ns, {n: r for n, (r, _) in pipes.items()}, stdin[1] if stdin else None


_own_pid_ns: int | None = None  # fd of our PID namespace, to come back to after each fork


def _enter_new_pid_ns() -> bool:
    """Make this thread's next child PID 1 of a new PID namespace (unshare affects only children)."""
    global _own_pid_ns
    if _own_pid_ns is None:
        _own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.unshare(_CLONE_NEWPID) == 0:
        return True
    _warn_once(f"cannot create a PID namespace ({os.strerror(ctypes.get_errno())}); a timeout kills only "
               "the child's process group, and processes that leave it survive")
    return False


def _leave_new_pid_ns() -> None:
    if _libc.setns(_own_pid_ns, _CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cwm sandbox: cannot return to our own PID namespace: {os.strerror(err)}")


def _pidfd(pid: int) -> int | None:
    """An fd of our child `pid`, to wait for it and signal it; None if it is gone already (reaped by the
    kernel: only where the caller ignores SIGCHLD)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _wait_for(pid: int, pidfd: int | None) -> int:
    """Reap our child `pid` and close its pidfd; its wait status (0 if the kernel reaped it). Where the
    caller ignores SIGCHLD, the kernel reaps the child itself and waitpid(pid, 0) would wait for every
    other child of the caller before failing; a pidfd is readable once the child has exited, either way."""
    if pidfd is None:
        return 0
    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
    while True:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # the kernel reaped it (SIGCHLD ignored)
            return 0
        if reaped:
            return status
        time.sleep(0.001)  # exited, not yet waitable (only while the kernel reaps it)


def _check_limits(limits: Limits) -> None:
    for name, value in limits.__dict__.items():
        if name == "network":
            continue
        if not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")
    if limits.max_open_files < 8:
        raise ValueError(f"Limits.max_open_files must be at least 8 (the runner needs a few), "
                         f"got {limits.max_open_files}")


def _collect(limits, job, keeper_fd, pid_ns, fds, stdin_w, start, got) -> str | None:
    """Read every pipe into `got` until all are closed or the deadline; returns why we killed, if we did."""
    sel = selectors.DefaultSelector()
    caps = {"stdout": limits.max_output_bytes, "stderr": limits.max_output_bytes,
            "result": limits.max_result_bytes, "status": 4096}
    for name, fd in fds.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    pending_input = memoryview(job.input or b"")
    if stdin_w is not None:
        os.set_blocking(stdin_w, False)
        sel.register(stdin_w, selectors.EVENT_WRITE, "stdin")
    killed_for, deadline, finished = None, start + limits.timeout, False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                # After the keeper has reported, only leftovers of the runner (possible without a PID
                # namespace) still hold the pipes: stop them, but the run itself finished in time.
                killed_for = "leftovers" if "status" not in _open_names(sel) else "timeout"
                break
            for key, _ in sel.select(min(left, 1.0)):
                name, fd = key.data, key.fd
                if name == "stdin":
                    try:
                        pending_input = pending_input[os.write(fd, pending_input[: 1 << 16]):]
                    except BrokenPipeError:
                        pending_input = pending_input[:0]
                    if not pending_input:
                        sel.unregister(fd)
                        os.close(fd)
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    os.close(fd)
                    if name == "status":  # the keeper is gone: the rest closes now, or never
                        deadline = min(deadline, time.monotonic() + _LEFTOVER_GRACE)
                    continue
                got[name] += chunk
                if len(got[name]) > caps[name]:
                    del got[name][caps[name]:]
                    killed_for = f"output_limit:{name}" if name in ("stdout", "stderr") else f"result_flood:{name}"
                    break
            if killed_for:
                break
        finished = True
    finally:
        if killed_for or not finished:  # not finished: we are being interrupted (Ctrl-C)
            # Signalled through its pidfd, which names that process and no other even once its pid
            # is free again. As PID 1 its death kills the whole namespace; without one, kill the
            # runner's process group first.
            if not pid_ns:
                runner = _parse_status(bytes(got["status"])).get("runner")
                if runner:
                    try:
                        os.killpg(runner, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            if keeper_fd is not None:
                try:
                    signal.pidfd_send_signal(keeper_fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _drain(sel, got, caps, grace=2.0)
        for key in list(sel.get_map().values()):
            os.close(key.fd)
        sel.close()
    return killed_for


def _open_names(sel: selectors.BaseSelector) -> set[str]:
    return {key.data for key in sel.get_map().values()}


def _drain(sel, got, caps, grace):
    """After a kill: read what is left (status from the keeper), waiting a little for the pipes to close."""
    end = time.monotonic() + grace
    while sel.get_map() and time.monotonic() < end:
        for key, _ in sel.select(max(0.0, end - time.monotonic())):
            if key.data == "stdin":
                sel.unregister(key.fd), os.close(key.fd)
                continue
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fd), os.close(key.fd)
            elif len(got[key.data]) < caps[key.data]:
                got[key.data] += chunk[: caps[key.data] - len(got[key.data])]


def _classify(limits, job, got, report, keeper_status, killed_for) -> SandboxResult:
    stdout = _text(got["stdout"], limits, killed_for == "output_limit:stdout")
    stderr = _text(got["stderr"], limits, killed_for == "output_limit:stderr")
    res = SandboxResult("error", stdout=stdout, stderr=stderr)
    for message in report.get("warnings", ()):
        _warn_once(message)
    if report.get("setup_error"):
        res.error = f"the sandbox could not start the child: {report['setup_error']}"
        return res
    wait_status, cpu = report.get("wait"), report.get("cpu", 0.0)
    if wait_status is not None:
        if os.WIFSIGNALED(wait_status):
            res.returncode = -os.WTERMSIG(wait_status)
        elif os.WIFEXITED(wait_status):
            res.returncode = os.WEXITSTATUS(wait_status)

    if killed_for == "timeout":
        res.status = "timeout"
        res.error = f"the child ran past the {limits.timeout:g} s wall-clock limit and was killed"
        return res
    if killed_for and killed_for.startswith("output_limit"):
        stream = killed_for.split(":")[1]
        res.status = "output_limit"
        res.error = (f"{stream} passed max_output_bytes={limits.max_output_bytes}; "
                     "the output was cut and the child stopped")
        return res
    if killed_for and killed_for.startswith("result_flood"):
        res.error = "the child flooded the result pipe past memory_bytes and was killed"
        return res
    if wait_status is None:  # the keeper died before reporting: only a signal from outside does that
        res.status = "killed"
        res.error = f"the sandbox keeper process died unexpectedly (wait status {keeper_status:#x})"
        return res

    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        name = _signal_name(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
            res.status = "cpu_limit"
            res.error = f"the child used {cpu:.1f} s of CPU, past cpu_seconds={limits.cpu_seconds}"
        elif sig == signal.SIGXFSZ:
            res.status = "file_limit"
            res.error = f"the child wrote a file past max_file_bytes={limits.max_file_bytes}"
        elif sig in _FAULT_SIGNALS:
            res.status, res.error = "crash", f"the child crashed with {name}"
            if sig == signal.SIGSEGV and job.fn:
                res.error += " (for Python code, usually a C stack overflow from deep recursion)"
        else:
            res.status, res.error = "killed", f"the child was killed by {name}"
        return res

    code = res.returncode
    if job.argv is not None:  # run_command
        if got["result"]:  # the exec itself failed; the runner wrote why
            res.status, res.error = "error", bytes(got["result"]).decode(errors="replace")
        elif code == 0:
            res.status = "ok"
        else:
            res.status, res.error = "exit", f"the command exited with code {code}"
            if code is not None and 128 < code < 128 + signal.NSIG:  # how a shell reports a process it ran that died by a signal
                res.error += f" (a shell's 128 + {_signal_name(code - 128)}: a process it ran was killed)"
        return res

    if code == 0 and got["result"]:
        try:
            status, value, error = load_result(bytes(got["result"]), limits.max_result_bytes)
        except Exception as e:  # forged or cut by the child: report, never trust
            res.error = f"the child's result could not be read: {e}"
            return res
        res.status, res.value, res.error = status, value, error
        if status == "exit":
            res.returncode, res.value = value if isinstance(value, int) else 1, None
        return res
    res.status = "exit"
    res.error = f"the child exited with code {code} without returning (os._exit or similar)"
    return res


def _text(data: bytearray, limits: Limits, cut: bool) -> str:
    text = bytes(data).decode("utf-8", errors="replace")
    if cut:
        text += f"\n[cwm sandbox: output cut at {limits.max_output_bytes} bytes]\n"
    return text


def _parse_status(data: bytes) -> dict:
    """The keeper's reports: newline-separated `key=value` lines (plain text, never unpickled)."""
    report: dict = {"warnings": []}
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "warning":
            report["warnings"].append(value)
        elif key == "setup_error":
            report["setup_error"] = value
        elif key == "host_tmpdir":
            report["host_tmpdir"] = value
        elif key == "runner":
            report["runner"] = int(value)
        elif key == "wait":
            status, cpu = value.split(",")
            report["wait"], report["cpu"] = int(status), float(cpu)
    return report


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CHECKED_CONSTRUCTORS:
            return _CHECKED_CONSTRUCTORS[module, name]
        if (module, name) in _SAFE_GLOBALS or (module == "builtins" and _is_builtin_exception(name)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"the return value holds a {module}.{name}, which the sandbox does not unpickle; return plain data "
            "(numbers, strings, lists, dicts, ...) or register the class with cwm.sandbox.allow_result_type"
        )


def _fraction(*args):
    """Fraction(numerator, denominator) from a pickle: ints only (Fraction("1e999999999") would compute
    a number of a billion digits)."""
    from fractions import Fraction

    if not all(type(a) is int for a in args):
        raise pickle.UnpicklingError("a Fraction in the result was not made of two ints")
    return Fraction(*args)


_CHECKED_CONSTRUCTORS = {("fractions", "Fraction"): _fraction}
MAX_RESULT_DEPTH = 100  # nesting of containers in a result; deeper ones would crash repr or json in the caller


def load_result(data: bytes, max_bytes: int, check: bool = True) -> tuple[str, Any, str | None]:
    """The (status, value, error) a child sent, unpickled with the allow-list and (check) its value
    checked by check_value; raises ValueError or pickle.UnpicklingError (with the reason) for
    anything else."""
    message = _SafeUnpickler(io.BytesIO(data)).load()
    if type(message) is not tuple or len(message) != 3:
        raise ValueError("it is not a (status, value, error) triple")
    status, value, error = message
    if type(status) is not str or status not in STATUSES:
        raise ValueError(f"it has an unknown status {status!r:.80}")
    if error is not None and type(error) is not str:
        raise ValueError(f"its error is a {type(error).__name__}, not a str")
    if check:
        check_value(value, max_bytes)
    return status, value, error


_LEAVES = (type(None), bool, int, float, complex, str, bytes, slice)


def check_value(value: Any, max_bytes: int, max_depth: int = MAX_RESULT_DEPTH) -> None:
    """Raise ValueError unless `value` is safe for the caller to use: its size counted as if no object
    were shared (a pickle can reference one object 10,000 times, and the caller's repr, json or
    rendering would then make 10,000 copies) at most max_bytes, no cycle, nesting at most max_depth,
    and each field of a data class (Trace, Frame, ...) of its annotated type.

    Each distinct object is visited once (sizes are memoised by id), so the cost is that of the
    pickle, not of the expansion."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    checked: set[tuple[int, int]] = set()  # (id, id of a type hint) of containers found of that type
    stack: list[tuple[Any, bool]] = [(value, False)]
    open_: set[int] = set()
    while stack:
        obj, children_done = stack.pop()
        key = id(obj)
        if not children_done:
            if key in sizes:
                continue
            if key in open_:
                raise ValueError("it contains a cycle")
            children = _children(obj, checked)
            open_.add(key)
            stack.append((obj, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        open_.discard(key)
        size, height = _own_size(obj), 0
        for c in _children(obj, None):
            child_size, child_height = sizes[id(c)]
            size, height = size + child_size, max(height, child_height + 1)
        if size > max_bytes:
            raise ValueError(f"it would take more than max_result_bytes={max_bytes} once expanded")
        if height > max_depth:
            raise ValueError(f"it nests containers deeper than {max_depth} levels")
        sizes[key] = (size, height)


def _own_size(obj: Any) -> int:
    if isinstance(obj, (str, bytes)):
        return 48 + len(obj)
    if isinstance(obj, int):
        return 28 + obj.bit_length() // 8
    return 56


def _children(obj: Any, checked: set | None) -> list:
    """The objects `obj` refers to (its items, fields, args); `checked`: also check a data class's
    field types (once per object; None: skip)."""
    if isinstance(obj, _LEAVES):
        return [obj.start, obj.stop, obj.step] if type(obj) is slice else []
    if isinstance(obj, dict):
        items = [x for kv in obj.items() for x in kv]
        factory = getattr(obj, "default_factory", None)  # defaultdict
        return items + ([factory] if factory is not None else [])
    if isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__module__ == "collections":
        return list(obj)
    if isinstance(obj, type) or callable(obj) and not isinstance(obj, BaseException):
        return []  # an allowed class (a defaultdict's factory)
    if isinstance(obj, BaseException):
        return list(obj.args) + list(vars(obj).values())
    import dataclasses

    if dataclasses.is_dataclass(obj):
        if checked is not None:
            _check_fields(obj, checked)  # once: a visited object is not visited again
        return [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if hasattr(obj, "__dict__"):  # a registered plain class
        return list(vars(obj).values())
    return []  # datetime, Decimal, Fraction: bounded by their pickle


def _check_fields(obj: Any, checked: set) -> None:
    import dataclasses
    import typing

    hints = _type_hints(obj.__class__)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, _MISSING)
        if value is _MISSING:
            raise ValueError(f"a {type(obj).__name__} in it lacks its field {f.name!r}")
        hint = hints.get(f.name, typing.Any)
        if not _conforms(value, hint, checked):
            raise ValueError(f"a {type(obj).__name__} in it has a {type(value).__name__} as its field "
                             f"{f.name!r}, which must be {hint}")


_MISSING = object()


@functools.lru_cache(maxsize=64)
def _type_hints(cls: type) -> dict:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # annotations this check cannot read: fields are not checked
        return {}


def _conforms(value: Any, hint: Any, checked: set) -> bool:
    """Is value of the annotated type? Understands classes, X | None, list[X], tuple[X, ...],
    dict[K, V], set[X]; anything else (Any, a TypeVar, ...) passes. A container found conforming
    is remembered in `checked` (by id and hint), so a shared one is checked once."""
    import types
    import typing

    if hint is typing.Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a, checked) for a in args)
    if origin is None:
        if not isinstance(hint, type):
            return True
        return isinstance(value, hint) and not (isinstance(value, bool) and hint in (int, float))
    if not isinstance(origin, type):
        return True
    if not isinstance(value, typing.cast(Any, origin)):  # (not narrowed: the branches below use it as the origin)
        return False
    key = (id(value), id(hint))
    if not args or key in checked:
        return True
    if origin in (list, set, frozenset):
        ok = all(_conforms(v, args[0], checked) for v in value)
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        ok = all(_conforms(v, args[0], checked) for v in value)
    elif origin is tuple:
        ok = len(value) == len(args) and all(_conforms(v, a, checked) for v, a in zip(value, args))
    elif origin is dict and len(args) == 2:
        ok = all(_conforms(k, args[0], checked) and _conforms(v, args[1], checked) for k, v in value.items())
    else:
        ok = True
    if ok:
        checked.add(key)
    return ok


def _is_builtin_exception(name: str) -> bool:
    obj = getattr(builtins, name, None)
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _hand_over(root: str, uid: int, gid: int) -> None:
    """chown a tree without following symlinks; hard-linked files are skipped (they could be links
    the child made to files outside the tree)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if (st.st_uid, st.st_gid) != (uid, gid) and (st.st_nlink == 1 or name in dirnames):
                    os.chown(path, uid, gid, follow_symlinks=False)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------------------------
# The keeper: a root-side helper that owns the namespaces and reports the runner's fate.
# Everything below runs in forked children and must end in os._exit.

_STDIN, _STDOUT, _STDERR, _RESULT, _STATUS = 0, 1, 2, 3, 4


def _keeper(limits, job, uid, plan, pipes, stdin) -> None:
    try:
        _default_signals()
        if job.mount_ns is not None and _libc.setns(job.mount_ns, _CLONE_NEWNS) != 0:  # before _unshare copies it
            raise OSError(ctypes.get_errno(), "cannot enter the workspace's mount namespace")
        # Keep only the fds we need, at fixed numbers; the rest of the caller's files stay out.
        targets = {pipes["stdout"][1]: _STDOUT, pipes["stderr"][1]: _STDERR,
                   pipes["result"][1]: _RESULT, pipes["status"][1]: _STATUS}
        moved = {fd: os.dup(fd) for fd in targets}  # dup first: a target number may already be in use
        moved_stdin = os.dup(stdin[0]) if stdin else os.open(os.devnull, os.O_RDONLY)
        os.dup2(moved_stdin, _STDIN)
        for fd, target in targets.items():
            os.dup2(moved[fd], target)
        os.closerange(_STATUS + 1, _max_fd())
        if job.dies_with_caller:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            poller = select.poll()  # the caller died before that: no one reads the status pipe
            poller.register(_STATUS, select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                os._exit(0)
        status = os.fdopen(_STATUS, "w", buffering=1)

        for message in _unshare(limits, is_root=uid is not None):
            status.write(f"warning={message}\n")
        if _seccomp_missing():
            status.write(f"warning={_seccomp_missing()}: unix sockets on the host stay reachable (to the "
                         "runner's uid) and nested user namespaces can be made\n")
        if uid is not None and job.workspace and not job.read_only:
            _hand_over(job.workspace, uid, uid)
        tmpdir = _private_fs(limits, uid, status, *plan)
        workdir = job.workspace or job.workdir or tmpdir

        lifeline_r, lifeline_w = os.pipe()
        runner = os.fork()
        if runner == 0:
            os.close(_STATUS)
            os.close(lifeline_w)
            _runner(limits, job, workdir, tmpdir, uid, lifeline_r)
        os.close(lifeline_r)
        status.write(f"runner={runner}\n")
        for fd in (_STDIN, _STDOUT, _STDERR, _RESULT):
            os.close(fd)
        _, wait_status, usage = os.wait4(runner, 0)
        status.write(f"wait={wait_status},{usage.ru_utime + usage.ru_stime}\n")
        status.flush()
    except BaseException as e:
        try:
            os.write(_STATUS, f"setup_error={type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(0)


def _default_signals() -> None:
    """First thing in the keeper (the runner inherits it): the caller's signal handling is not ours.
    Its Python handlers would run in our processes, and its wakeup fd (signal.set_wakeup_fd, as asyncio
    sets it) is a bare fd number that the keeper gives to its own pipes: each signal would then write
    a byte into the status or the result pipe. An ignored SIGCHLD would have the kernel reap the
    runner before the keeper (or run_each) could. Signals the calling thread blocks would stay blocked
    for the program (SIGXCPU, the tracer's SIGALRM). So: no wakeup fd, no signal blocked, every Python
    handler but Python's own SIGINT one back to the default, and SIGCHLD at its default."""
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in signal.valid_signals():
        handler = signal.getsignal(sig)
        if (callable(handler) and handler is not signal.default_int_handler) or \
                (sig == signal.SIGCHLD and handler == signal.SIG_IGN):
            signal.signal(sig, signal.SIG_DFL)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 1 << 16


def _unshare(limits: Limits, is_root: bool) -> list[str]:
    """New mount, IPC and (unless limits.network) network namespaces for the keeper and the runner.

    Not root: inside an unprivileged user namespace, where the machine allows one. Returns warnings."""
    notes = [] if is_root else ["not root: no PID namespace and no process bound (max_processes); the child "
                                "runs under your own uid, and a timeout kills only its process group"]
    if not is_root and _libc.unshare(_CLONE_NEWUSER) == 0:
        _map_own_ids()
    wanted = [(_CLONE_NEWNS, "mount", "the private temp dir is on the host disk, bounded per file only, and "
               "the child cannot import from a Python installation under a closed directory (/root)"),
              (_CLONE_NEWIPC, "IPC", "SysV IPC objects can outlive the child")]
    if not limits.network:
        wanted.append((_CLONE_NEWNET, "network", "the child HAS network access"))
    for flag, name, consequence in wanted:  # one by one: a machine may allow some and not others
        if _libc.unshare(flag) != 0:
            notes.append(f"cannot create a {name} namespace ({os.strerror(ctypes.get_errno())}); {consequence}")
    return notes


_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable: shared by every uid


def _private_fs(limits: Limits, uid: int | None, status, covers: list[str], reveals: list[tuple[str, bool]]) -> str:
    """The runner's view of the file system, private to this mount namespace; returns its temp dir.

    A fresh tmpfs of max_disk_bytes on /tmp (and the other world-writable temp dirs): it bounds what
    the child can write there, and vanishes with it. An empty tmpfs over each of `covers` (a directory
    closed to the runner's uid that holds something it needs, like /root holding the interpreter).
    Then each of `reveals` (path, read_only) mounted back at its own path from the host's copy.
    Where nothing can be mounted: a temp dir on the host, which the caller removes afterwards."""
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    options = f"size={limits.max_disk_bytes},mode=1777{owner}".encode()
    # Open what to show back before the covers hide it. Never left to the runner: an fd would be
    # a way past the closed directory above it.
    sources = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path, _ in reveals]
    # Private propagation first, or our mounts would appear in the host's mount namespace.
    if (_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
            and _libc.mount(b"tmpfs", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, options) == 0):
        for other in _TEMP_DIRS[1:]:  # one budget for all of them
            if os.path.isdir(other):
                _libc.mount(b"/tmp", other.encode(), None, _MS_BIND, None)
        for cover in covers:  # root-owned and 0755: the runner may pass, never write
            if _libc.mount(b"tmpfs", cover.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=64k,mode=755"):
                raise OSError(ctypes.get_errno(), f"cannot hide {cover} from the sandbox")
        for (path, read_only), fd in zip(reveals, sources):
            _mount_back(path, fd, read_only, status)
        return "/tmp"
    for fd in sources:
        os.close(fd)
    tmpdir = tempfile.mkdtemp(prefix="cwm-sandbox-")
    status.write(f"host_tmpdir={tmpdir}\n")
    if uid is not None:
        os.chown(tmpdir, uid, uid)
    return tmpdir


def _mount_back(path: str, fd: int, read_only: bool, status) -> None:
    """Bind the host's `path` (open as `fd`) back at the same path, under a cover or a private temp dir."""
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    os.makedirs(path if is_dir else os.path.dirname(path), exist_ok=True)
    if not is_dir:  # a file is mounted on a file
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    if _libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, _MS_BIND | _MS_REC, None):
        raise OSError(ctypes.get_errno(), f"cannot mount {path} back in the sandbox")
    os.close(fd)
    # A bind mount takes its flags from its source; read-only needs a second call.
    if read_only and _libc.mount(None, path.encode(), None,
                                 _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None):
        status.write(f"warning=cannot make {path} read-only in the sandbox "
                     f"({os.strerror(ctypes.get_errno())}); only file permissions protect it\n")


def _mount_plan(uid: int | None, workspace: str | None,
                read_only: bool = False) -> tuple[list[str], list[tuple[str, bool]]]:
    """(covers, reveals) for _private_fs: the Python installation read-only, then the workspace
    (last: it may lie inside a read-only one): writable (run_command), or a read-only view
    (run_function's cwd), bound back even where the runner could reach it, so that it cannot write it."""
    drop_uid = uid is not None
    python = (sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path)
    covers, reveals = _hidden_python_paths(python, drop_uid)
    reveals = [(path, True) for path in reveals]
    if workspace:
        hidden, cover = _hiding(workspace, drop_uid)  # no check of its mode: it is handed to the runner
        if cover:
            covers = sorted({*covers, cover})
        if hidden or read_only:
            reveals.append((workspace, read_only))
    return covers, reveals


@functools.lru_cache(maxsize=8)
def _hidden_python_paths(python: tuple[str, ...], drop_uid: bool) -> tuple[list[str], list[str]]:
    """Which of the paths a Python child needs (its prefixes, executable and sys.path) the runner would
    not reach: the covers they need and the outermost paths to reveal. Cached: it stats every
    ancestor of every path, about 0.2 ms, as much as the mounts themselves."""
    paths = {os.path.normpath(p) for p in python if p and os.path.isabs(p)}
    paths |= {os.path.realpath(p) for p in paths}  # the path as named, and where it leads
    covers, reveals = set(), []
    for path in sorted(paths):
        if not os.path.exists(path):
            continue
        hidden, cover = _hiding(path, drop_uid)
        if not hidden or (drop_uid and not _open_to_others(path)):
            continue  # reachable already, or of no use to the runner (and it would block what lies below)
        if cover:
            covers.add(cover)
        reveals.append(path)
    # Mount only the outermost: what lies inside comes back with it.
    reveals = [p for p in reveals if not any(_is_under(p, [q]) for q in reveals)]
    return sorted(covers), reveals


def _hiding(path: str, drop_uid: bool) -> tuple[bool, str | None]:
    """Whether the runner would miss `path`, and the directory to cover for it, if any.

    Missed: under a private temp dir (a fresh tmpfs), or, for a runner with a uid of its own, under
    a directory that others may not search (like /root, mode 700): that one gets covered."""
    if _is_under(path, _TEMP_DIRS):
        return True, None
    cover = _closed_ancestor(path) if drop_uid else None
    return cover is not None, cover


def _is_under(path: str, dirs) -> bool:
    return any(path.startswith(d.rstrip("/") + "/") for d in dirs)


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that others may not search (no o+x), if any."""
    parts = path.strip("/").split("/")[:-1]
    for i in range(len(parts)):
        ancestor = "/" + "/".join(parts[: i + 1])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _open_to_others(path: str) -> bool:
    mode = os.stat(path).st_mode
    wanted = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & wanted == wanted


def _map_own_ids() -> None:
    """In a fresh user namespace, keep our uid and gid as they are outside (best effort: unmapped,
    they only read as 65534 inside, and files still belong to us)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        for path, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{path}", "w") as f:
                f.write(text)
    except OSError:
        pass


def _runner(limits, job, workdir, tmpdir, uid, lifeline_r) -> None:
    try:
        os.setsid()  # own process group and session: kill(0, ...) stays inside
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)  # the CPU limit must kill, even if our caller ignores it
        os.chdir(workdir)  # before dropping root: the workspace's parents may be closed to the runner
        _set_limits(limits, uid is not None, fork_mode=job.fn is not None)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary gives root back
        _install_seccomp_filter()  # no unix sockets, no nested user namespaces (needs no_new_privs)
        # Die with the keeper (set after setuid, which clears it); if the keeper is already gone, go.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if select.select([lifeline_r], [], [], 0)[0]:
            os._exit(1)
        os.close(lifeline_r)
        if job.fn is not None:
            _run_fn(job, tmpdir, limits)
        else:
            _exec(job, workdir, tmpdir)
    except BaseException as e:
        try:
            os.write(_STDERR, f"cwm sandbox: the runner failed around the program: {e!r}\n".encode())
        finally:
            os._exit(126)


_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_environment(tmpdir: str) -> dict[str, str]:
    """The whole environment of untrusted code, fixed: none of the caller's variables (API keys,
    tokens) reach it. PYTHONHASHSEED is kept where the caller set one: it is no secret, and a
    Python the program starts then hashes as the caller does (the fork itself shares its seed)."""
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{_SYSTEM_PATH}", "HOME": tmpdir, "TMPDIR": tmpdir,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb"}
    if os.environ.get("PYTHONHASHSEED"):
        env["PYTHONHASHSEED"] = os.environ["PYTHONHASHSEED"]
    return env


def _replace_environment(env: dict[str, str]) -> None:
    """In the forked runner: make `env` the whole environment, and wipe every copy of the caller's
    that the program could read: os.environ, posix.environ (os's source), the C environ, and the
    block the kernel shows as /proc/self/environ (the process's initial stack)."""
    import posix

    os.environ.clear()  # unsetenv for each variable
    posix.environ.clear()
    _libc.clearenv()
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (proc(5) fields 50, 51)
        if 0 < start < end:
            ctypes.memset(start, 0, end - start)
    except (OSError, ValueError, IndexError):
        pass
    os.environ.update(env)
    posix.environ.update({k.encode(): v.encode() for k, v in env.items()})


# A seccomp filter (classic BPF, built here: no library needed) for the runner and all it starts:
# socket(AF_UNIX) fails with EACCES, so no unix socket on the host is reachable (abstract ones are
# also cut by the network namespace); unshare/clone with CLONE_NEWUSER fail with EPERM (a nested
# user namespace would give the program root-like powers over new namespaces). clone3 fails with
# ENOSYS (its flags are behind a pointer the filter cannot read); glibc then falls back to clone.
_SECCOMP_ARCHES = {  # machine: (AUDIT_ARCH_*, syscall numbers, x32 syscalls to refuse)
    "x86_64": (0xC000003E, {"socket": 41, "unshare": 272, "clone": 56, "clone3": 435}, True),
    "aarch64": (0xC00000B7, {"socket": 198, "unshare": 97, "clone": 220, "clone3": 435}, False),
}
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_AF_UNIX = 1


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


@functools.lru_cache(maxsize=1)
def _seccomp_program() -> list[tuple[int, int, int, int]] | None:
    import platform

    if platform.machine() not in _SECCOMP_ARCHES:
        return None
    arch, nr, x32 = _SECCOMP_ARCHES[platform.machine()]

    def load(offset):  # seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low 32 bits on little endian)
        return (0x20, 0, 0, offset)  # BPF_LD | BPF_W | BPF_ABS

    def jeq(k, jt, jf):
        return (0x15, jt, jf, k)  # BPF_JMP | BPF_JEQ | BPF_K

    def ret(k):
        return (0x06, 0, 0, k)  # BPF_RET | BPF_K

    def deny(code):
        return _RET_ERRNO | code

    program = [load(4), jeq(arch, 1, 0), ret(deny(errno.ENOSYS)), load(0)]  # another ABI: nothing works
    if x32:
        program += [(0x35, 0, 1, 0x40000000), ret(deny(errno.ENOSYS))]  # BPF_JGE: x32 numbers
    program += [jeq(nr["clone3"], 0, 1), ret(deny(errno.ENOSYS))]
    program += [jeq(nr["socket"], 0, 4), load(16), jeq(_AF_UNIX, 0, 1), ret(deny(errno.EACCES)), ret(_RET_ALLOW)]
    program += [jeq(nr["unshare"], 1, 0), jeq(nr["clone"], 0, 4), load(16),
                (0x45, 0, 1, _CLONE_NEWUSER), ret(deny(errno.EPERM)), ret(_RET_ALLOW)]  # BPF_JSET
    return program + [ret(_RET_ALLOW)]


def _seccomp_missing() -> str | None:
    """Why the runner gets no seccomp filter here, or None (checked by the keeper, which reports it)."""
    if _seccomp_program() is None:
        import platform

        return f"no seccomp filter for this machine ({platform.machine()})"
    try:
        with open("/proc/self/status") as f:
            if "Seccomp:" not in f.read():
                return "this kernel has no seccomp"
    except OSError:
        pass
    return None


def _install_seccomp_filter() -> None:
    program = _seccomp_program()
    if program is None:
        return
    filters = (_SockFilter * len(program))(*(_SockFilter(*f) for f in program))
    fprog = _SockFprog(len(program), filters)
    _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)


def _set_limits(limits: Limits, is_root: bool, fork_mode: bool) -> None:
    address_space = limits.memory_bytes
    if fork_mode:  # the fork already holds the warm process's mappings; memory_bytes comes on top
        with open("/proc/self/statm") as f:
            address_space += int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    wanted = [
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),  # SIGXCPU first, SIGKILL 1 s later
        (resource.RLIMIT_AS, address_space, address_space),
        (resource.RLIMIT_NOFILE, limits.max_open_files, limits.max_open_files),
        (resource.RLIMIT_FSIZE, limits.max_file_bytes, limits.max_file_bytes),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if is_root:  # per-uid count: only meaningful for the runner's own fresh uid
        wanted.append((resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes))
    for which, soft, hard in wanted:
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (int(soft), int(hard)))


def _run_fn(job: _Job, tmpdir: str, limits: Limits) -> None:
    global _runner_state
    me = os.getpid()
    _runner_state = _RunnerState(tmpdir, job.pid_ns, limits.max_result_bytes, frozenset(os.listdir(tmpdir)))
    # Fresh text streams on fds 1 and 2 (the caller's sys.stdout may be a pytest or Jupyter object).
    # The caller's stay referenced: finalizing one flushes it, which waits forever for its lock if
    # another thread of the caller held it at the fork (the child ends by os._exit: no finalizers).
    _callers_streams.extend((sys.stdin, sys.stdout, sys.stderr))
    sys.stdout = open(_STDOUT, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(_STDERR, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stdin = open(_STDIN, "r", closefd=False)
    _replace_environment(clean_environment(tmpdir))
    tempfile.tempdir = tmpdir
    reserve = bytes(_EMERGENCY_BYTES)  # address space to give back on MemoryError (calloc: no page touched)
    try:
        assert job.fn is not None  # a function's run
        message = ("ok", job.fn(*job.args, **(job.kwargs or {})), None)
    except BaseException as e:
        del reserve  # room to format the report after a MemoryError
        if os.getpid() != me:  # a process fn forked: let it end quietly, it has no result to give
            _flush_and_exit(1)
        message = _exception_message(e)
    if os.getpid() != me:
        _flush_and_exit(0)
    _write_result(message, _RESULT)


@dataclass
class _RunnerState:
    tmpdir: str
    pid_ns: bool
    max_result_bytes: int
    tmp_names: frozenset[str]  # what the private temp dir held before fn ran (Python mounted back, ...)


_runner_state: _RunnerState | None = None  # set in run_function's child only
_callers_streams: list = []  # in run_function's child: the caller's sys.stdin/stdout/stderr, never finalized
_PR_SET_CHILD_SUBREAPER = 36


def run_each(fn: Callable[[Any], Any], items: list) -> list:
    """Inside run_function's child: [fn(item) for item in items], each call in a fresh fork of the
    child, so that nothing one call does (patching modules, builtins, the tracer; files in the temp
    dir; processes it leaves) can change what a later one returns. Between calls, every process the
    last one left is killed and the files it left in the temp dir are removed.

    Each value crosses back pickled and is unpickled with the same allow-list (the caller then checks
    the whole result with check_value, as for any run_function). If a call does not return
    (it raises, exits, crashes, hits a limit), the whole run ends at once with that call's outcome,
    as if it had run alone: run_function then reports its status (and error) for the whole run.
    """
    state = _runner_state
    if state is None:
        raise RuntimeError("run_each runs inside a run_function child (it isolates untrusted calls from each other)")
    if state.pid_ns:  # orphans of a call come back to us, to be reaped
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return [_run_one(fn, item, state) for item in items]


def _run_one(fn, item, state: _RunnerState):
    read_end, write_end = os.pipe()
    _flush_streams()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.close(_RESULT)  # only the runner may write the run's result
        os.setsid()
        me = os.getpid()
        try:
            message = ("ok", fn(item), None)
        except BaseException as e:
            message = _exception_message(e)
        if os.getpid() != me:  # a process the call forked: it has no result to give
            _flush_and_exit(0)
        _write_result(message, write_end)
    os.close(write_end)
    data, flooded = bytearray(), False
    with os.fdopen(os.pidfd_open(pid), "rb", buffering=0) as exited:
        os.set_blocking(read_end, False)
        while True:
            ready, _, _ = select.select([read_end, exited.fileno()], [], [])
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                chunk = None
            if chunk:
                data += chunk
                if len(data) > state.max_result_bytes:
                    flooded = True
                    os.kill(pid, signal.SIGKILL)
                    break
            elif chunk == b"" or exited.fileno() in ready:
                break  # EOF, or the call's process is gone and the pipe holds nothing more
    os.close(read_end)
    _end_leftovers(pid, state)
    _, wait_status = os.waitpid(pid, 0)
    _reap(state)
    _clean_tmp(state)
    if flooded:
        _write_result(("error", None, f"a call sent back more than max_result_bytes={state.max_result_bytes}"), _RESULT)
    if os.WIFSIGNALED(wait_status):  # die as it died: the caller classifies the signal
        _flush_streams()
        sig = os.WTERMSIG(wait_status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    try:
        # check_value is left to the caller, which checks the whole run's result (the runner only
        # re-pickles this value, which keeps its sharing and so cannot expand it)
        status, value, error = load_result(bytes(data), state.max_result_bytes, check=False) if data else ("exit", None, None)
    except Exception as e:
        _write_result(("error", None, f"a call's result could not be read: {e}"), _RESULT)
    if status == "exit" and not data:  # it left without a result: os._exit(n) or similar
        _flush_and_exit(os.WEXITSTATUS(wait_status))
    if status != "ok":
        _write_result((status, value, error), _RESULT)
    return value


def _end_leftovers(pid: int, state: _RunnerState) -> None:
    """Kill every process the call left: its process group, and in a PID namespace of our own
    all of our uid's processes but this one (kill(-1) stays inside the namespace)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if state.pid_ns:
        try:
            os.kill(-1, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(state: _RunnerState) -> None:
    """Reap the killed orphans (a subreaper gets them), so they do not count against max_processes."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if state.pid_ns else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _clean_tmp(state: _RunnerState) -> None:
    try:
        names = os.listdir(state.tmpdir)
    except OSError:
        return
    for name in names:
        if name not in state.tmp_names:
            path = os.path.join(state.tmpdir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _write_result(message: tuple, fd: int) -> NoReturn:
    """Pickle (status, value, error) to fd and end this process."""
    try:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as e:
        data = pickle.dumps(("error", None, f"the return value could not be pickled: {type(e).__name__}: {e}"))
    _flush_streams()
    with open(fd, "wb", closefd=False) as f:
        f.write(data)
    os._exit(0)


def _exception_message(e: BaseException) -> tuple[str, Any, str]:
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        return ("exit", code, f"the program called sys.exit({e.code!r})")
    if isinstance(e, MemoryError):
        traceback.clear_frames(e.__traceback__)  # drop the frames' locals (the bomb itself)
    status = (
        "memory" if isinstance(e, MemoryError)
        else "recursion" if isinstance(e, RecursionError)
        else "file_limit" if isinstance(e, OSError) and e.errno == errno.EFBIG
        else "open_files_limit" if isinstance(e, OSError) and e.errno == errno.EMFILE
        else "process_limit" if (isinstance(e, OSError) and e.errno == errno.EAGAIN)
        or (isinstance(e, RuntimeError) and "can't start new thread" in str(e))
        else "error"
    )
    try:
        text = "".join(traceback.format_exception(e))
    except BaseException:
        text = f"{type(e).__name__}: (the traceback could not be formatted)"
    return (status, None, text)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _flush_and_exit(code: int) -> None:
    _flush_streams()
    os._exit(code)


def _exec(job: _Job, workdir: str, tmpdir: str) -> None:
    os.set_inheritable(_RESULT, False)  # closed by a successful exec; carries the error otherwise
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; commands expect the defaults
        signal.signal(sig, signal.SIG_DFL)
    env = clean_environment(tmpdir) if job.env is None else job.env
    assert job.argv is not None  # a command's run
    program = job.argv[0]
    if os.sep not in program:  # resolve it as the runner sees PATH (some entries may be closed to it)
        program = shutil.which(program, path=env.get("PATH", os.defpath)) or program
    try:
        os.execve(program, job.argv, env)
    except OSError as e:
        os.write(_RESULT, f"cannot run {job.argv[0]!r}: {e.strerror}; check the command and PATH".encode())
        os._exit(127)
