"""The sandbox against real hostile programs, one test each, with small limits.

Every run here is a real child process under real limits and namespaces; nothing is mocked.
Each test also checks that the caller (this pytest process) is still healthy afterwards.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import importlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cwm.sandbox import STATUSES, Limits, SandboxResult, allow_result_type, run_command, run_function
from cwm.sandbox.core import UID_BASE, _mount_plan

pytestmark = pytest.mark.timeout(60)

IS_ROOT = os.geteuid() == 0
SMALL = Limits(timeout=5, cpu_seconds=5, memory_bytes=256 << 20, max_processes=8, max_output_bytes=64 << 10)


# Names in the private /tmp that the sandbox mounts back because this interpreter, its venv or a
# sys.path entry lives under the host's /tmp (a checkout under /tmp, as a CI clone may be).
PYTHON_IN_TMP = sorted({Path(path).parts[2] for path, _ in _mount_plan(1, None)[1] if Path(path).parts[1] == "tmp"})


def small(**changes) -> Limits:
    return Limits(**{**SMALL.__dict__, **changes})


def assert_healthy(res: SandboxResult) -> None:
    """The result is data with a documented status, and the caller can still run a sandbox."""
    assert res.status in STATUSES
    assert res.duration > 0
    assert run_function(pow, 2, 10, limits=SMALL).value == 1024


# ---------------------------------------------------------------------------------------------
# Normal runs


def test_value_output_and_private_dir():
    def work(x):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        Path("scratch.txt").write_text("mine")  # the cwd is private and writable
        return {"x": x, "cwd": os.getcwd(), "uid": os.getuid(), "files": os.listdir("."), "pid": os.getpid()}

    res = run_function(work, [1, (2, 3)], limits=SMALL)
    assert res.status == "ok" and res.error is None and res.returncode == 0
    assert res.value["x"] == [1, (2, 3)]
    assert res.stdout == "to stdout\n" and res.stderr == "to stderr\n"
    assert [f for f in res.value["files"] if f not in PYTHON_IN_TMP] == ["scratch.txt"]
    if IS_ROOT:  # a private tmpfs on /tmp, seen by no one else and gone afterwards
        assert res.value["cwd"] == "/tmp" and not Path("/tmp/scratch.txt").exists()
    else:
        assert not os.path.exists(res.value["cwd"]), "the private temp dir must be removed afterwards"
    if IS_ROOT:
        assert res.value["uid"] >= 200_000, "the program must not run as root"
        assert res.value["pid"] == 2, "the runner lives in a PID namespace of its own"


def test_exception_comes_back_as_error():
    def fail():
        raise ValueError("bad input 42")

    res = run_function(fail, limits=SMALL)
    assert res.status == "error"
    assert "ValueError: bad input 42" in res.error and "Traceback" in res.error


def test_unpicklable_and_forged_results_are_refused():
    class Local:  # a class the caller cannot (and must not) import
        pass

    res = run_function(Local, limits=SMALL)
    assert res.status == "error" and "could not be pickled" in res.error

    marker = Path(f"/tmp/cwm-sandbox-test-forged-{os.getpid()}")
    marker.unlink(missing_ok=True)

    def forge():
        # A hostile program writes its own pickle, which would run a shell command in the caller.
        payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
        os.write(3, payload)
        os._exit(0)

    res = run_function(forge, limits=SMALL)
    assert res.status == "error" and "does not unpickle" in res.error
    assert not marker.exists(), "unpickling the child's bytes must never run code in the caller"


@allow_result_type
class Point:
    def __init__(self, x):
        self.x = x


def test_allow_result_type_lets_a_data_class_through():
    from cwm.trace.format import Frame, Trace

    res = run_function(lambda: Trace(source="x = 1\n", entry="<module>", frames=[Frame("line", 1, "x = 1\n", {})]))
    assert res.status == "ok" and res.value.frames[0].lineno == 1
    assert run_function(Point, 7, limits=SMALL).value.x == 7


def test_bad_limits_raise_a_clear_error():
    with pytest.raises(ValueError, match="Limits.timeout must be a positive number"):
        run_function(print, limits=Limits(timeout=0))
    with pytest.raises(ValueError, match="empty"):
        run_command([])
    with pytest.raises(NotADirectoryError, match="not a directory"):
        run_command("true", cwd="/nonexistent/workspace")


# ---------------------------------------------------------------------------------------------
# Hostile programs


def test_infinite_loop_times_out():
    def loop():
        while True:
            pass

    res = run_function(loop, limits=small(timeout=0.5))
    assert res.status == "timeout" and "0.5 s" in res.error
    assert res.duration < 0.5 + 3, "the caller must not wait long after the deadline"
    assert_healthy(res)


def test_cpu_limit():
    def spin():
        while True:
            pass

    res = run_function(spin, limits=small(timeout=20, cpu_seconds=1))
    assert res.status == "cpu_limit" and res.returncode == -signal.SIGXCPU
    assert_healthy(res)


def test_timeout_kills_the_whole_namespace(tmp_path):
    # A detached grandchild (its own session) would survive a kill of the child alone.
    script = "(setsid sh -c 'sleep 1.5; echo escaped > late.txt' &) ; sleep 60"
    res = run_command(script, cwd=tmp_path, limits=small(timeout=0.5))
    assert res.status == "timeout"
    time.sleep(2.0)
    assert not (tmp_path / "late.txt").exists(), "a process of the sandbox outlived the timeout"


def _spawn_sleepers(n: int) -> int:
    children = 0
    for _ in range(n):
        try:
            pid = os.fork()
        except BlockingIOError:
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
    return children


@pytest.mark.skipif(not IS_ROOT, reason="the process bound needs root (a uid of its own per sandbox)")
def test_fork_bomb_hits_the_process_bound():
    # First prove the bound holds with harmless sleepers, so a broken sandbox never meets a real bomb.
    probe = run_function(_spawn_sleepers, 50, limits=small(max_processes=6))
    assert probe.status == "ok" and probe.value == 5, "runner + 5 children = 6; refusing to run the fork bomb"

    def fork_bomb():
        while True:
            os.fork()

    res = run_function(fork_bomb, limits=small(max_processes=6, timeout=10))
    assert res.status == "process_limit"
    assert "BlockingIOError" in res.error
    assert_healthy(res)


def test_memory_bomb():
    def hog():
        chunks = []
        while True:
            chunks.append(bytearray(8 << 20))

    res = run_function(hog, limits=small(memory_bytes=128 << 20))
    assert res.status == "memory" and "MemoryError" in res.error
    assert_healthy(res)


def test_disk_filler_hits_the_file_size_limit():
    def fill():
        with open("fill.bin", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()

    res = run_function(fill, limits=small(max_file_bytes=1 << 20))
    assert res.status == "file_limit" and "File too large" in res.error

    dd = ["dd", "if=/dev/zero", "of=fill.bin", "bs=64k", "count=100"]
    res = run_command(dd, limits=small(max_file_bytes=1 << 20))
    assert res.status == "file_limit" and res.returncode == -signal.SIGXFSZ
    res = run_command("head -c 10000000 /dev/zero > fill.bin", limits=small(max_file_bytes=1 << 20))
    assert res.status == "exit" and "SIGXFSZ" in res.error  # the shell survives; its child does not
    assert_healthy(res)


def test_too_many_open_files():
    def hoard():
        return [open(os.devnull) for _ in range(100)]

    res = run_function(hoard, limits=small(max_open_files=16))
    assert res.status == "open_files_limit" and "Too many open files" in res.error


def test_stdout_flood_is_cut_and_stopped():
    def flood():
        while True:
            print("x" * 1000)

    res = run_function(flood, limits=small(max_output_bytes=64 << 10, timeout=20))
    assert res.status == "output_limit" and "stdout" in res.error
    assert res.stdout.startswith("x" * 1000)
    assert res.stdout.endswith("[cwm sandbox: output cut at 65536 bytes]\n")
    assert len(res.stdout) < (64 << 10) + 100
    assert res.duration < 10, "the flood must be stopped when it passes the cap, not at the timeout"

    res = run_command("yes", limits=small(max_output_bytes=64 << 10))
    assert res.status == "output_limit"
    assert_healthy(res)


def test_background_process_does_not_hold_the_caller():
    res = run_command("sleep 30 & echo started", limits=small(timeout=20))
    assert res.status == "ok" and res.stdout == "started\n" and res.duration < 10


def test_runs_from_many_threads_at_once():
    def work(i):
        print(i)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # works: the forking thread is the child's main thread
        return i, os.getuid()

    results: list[SandboxResult] = []
    threads = [threading.Thread(target=lambda k=k: results.extend(run_function(work, 10 * k + j, limits=SMALL)
                                                                  for j in range(5))) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.value[0] for r in results) == [10 * k + j for k in range(3) for j in range(5)]
    assert all(r.status == "ok" and r.stdout == f"{r.value[0]}\n" for r in results)
    if IS_ROOT:  # one uid per calling thread, so process bounds of parallel sandboxes stay apart
        assert len({r.value[1] for r in results}) == 3


def test_os_exit_and_sys_exit():
    def leave(code):
        print("bye", flush=True)
        os._exit(code)

    res = run_function(leave, 3, limits=SMALL)
    assert res.status == "exit" and res.returncode == 3 and res.stdout == "bye\n"
    res = run_function(sys.exit, 2, limits=SMALL)
    assert res.status == "exit" and res.returncode == 2


def test_killing_the_parent_leaves_the_caller_alive():
    def patricide():
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(-1, signal.SIGKILL)  # every process it may signal
        time.sleep(1)
        return "still here"

    res = run_function(patricide, limits=SMALL)
    assert os.getpid() > 0 and threading.main_thread().is_alive()
    assert res.status in ("error", "killed")
    if IS_ROOT:  # its parent is the root-owned keeper: not its to signal
        assert res.status == "error" and "PermissionError" in res.error
    assert_healthy(res)


def test_suicide_by_signal():
    res = run_function(lambda: os.kill(os.getpid(), signal.SIGTERM), limits=SMALL)
    assert res.status == "killed" and res.returncode == -signal.SIGTERM and "SIGTERM" in res.error


class LoopingRepr:
    def __repr__(self):
        while True:
            pass


def test_repr_that_loops_forever():
    res = run_function(repr, LoopingRepr(), limits=small(timeout=0.5))
    assert res.status == "timeout"
    assert_healthy(res)


def test_settrace_none_inside_the_program():
    def untrace():
        sys.settrace(None)
        return sum(range(10))

    res = run_function(untrace, limits=SMALL)
    assert res.status == "ok" and res.value == 45


def test_deep_recursion():
    def down(n):
        return down(n + 1)

    res = run_function(down, 0, limits=SMALL)
    assert res.status == "recursion" and "RecursionError" in res.error

    def c_stack_overflow():
        sys.setrecursionlimit(10**8)
        nested = []
        for _ in range(10**6):
            nested = [nested]
        return len(repr(nested))  # list repr recurses in C

    res = run_function(c_stack_overflow, limits=small(timeout=30))  # ~5 s on a loaded 2-core machine
    assert res.status == "crash" and res.returncode == -signal.SIGSEGV and "deep recursion" in res.error
    assert_healthy(res)


def _threads(n: int) -> list[int]:
    out = []
    workers = [threading.Thread(target=lambda i=i: (time.sleep(0.2), out.append(i * i))) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sorted(out)


def test_threads_work_up_to_the_process_bound():
    res = run_function(_threads, 4, limits=small(max_processes=8))
    assert res.status == "ok" and res.value == [0, 1, 4, 9]
    if IS_ROOT:
        res = run_function(_threads, 20, limits=small(max_processes=8))
        assert res.status == "process_limit" and "can't start new thread" in res.error


def _connect(host: str, port: int) -> str:
    with socket.socket() as s:  # a numeric address: no name lookup
        s.settimeout(2)
        s.connect((host, port))
        return s.recv(16).decode()


def test_no_network_inside():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    greet = threading.Thread(target=lambda: [server.accept()[0].sendall(b"hello") for _ in range(2)], daemon=True)
    greet.start()
    try:
        assert _connect("127.0.0.1", port) == "hello"  # works outside

        res = run_function(_connect, "127.0.0.1", port, limits=SMALL)
        assert res.status == "error" and "Network is unreachable" in res.error
        res = run_function(_connect, "1.1.1.1", 80, limits=SMALL)
        assert res.status == "error" and "Network is unreachable" in res.error

        # The namespace is what cuts it: with network=True the same connect works inside.
        res = run_function(_connect, "127.0.0.1", port, limits=small(network=True))
        assert res.status == "ok" and res.value == "hello"
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# Hostile programs through the tracer (once cwm.trace.trace_call exists)

trace_call = getattr(__import__("cwm.trace", fromlist=["trace_call"]), "trace_call", None)
needs_tracer = pytest.mark.skipif(trace_call is None, reason="the tracer (cwm.trace.trace_call) is not in yet")

LOOPING_REPR = """
class Loop:
    def __repr__(self):
        while True:
            pass

def f():
    x = Loop()
    return 1
"""

UNTRACE = """
import sys

def f():
    sys.settrace(None)
    y = 2
    return y
"""

FORK_BOMB = """
import os

def f():
    while True:
        os.fork()
"""


@needs_tracer
def test_traced_looping_repr():
    res = run_function(trace_call, LOOPING_REPR, "f()", limits=small(timeout=3))
    assert res.status in ("ok", "timeout")  # the tracer's own repr guard, or else the sandbox's clock
    assert_healthy(res)


@needs_tracer
def test_traced_settrace_none():
    from cwm.trace.format import Trace

    res = run_function(trace_call, UNTRACE, "f()", limits=SMALL)
    assert res.status == "ok" and isinstance(res.value, Trace)


@needs_tracer
@pytest.mark.skipif(not IS_ROOT, reason="the process bound needs root")
def test_traced_fork_bomb():
    assert run_function(_spawn_sleepers, 50, limits=small(max_processes=6)).value == 5  # the bound holds
    res = run_function(trace_call, FORK_BOMB, "f()", limits=small(max_processes=6, timeout=10))
    assert res.status in ("ok", "process_limit")  # the tracer reports the error in its Trace, or lets it out
    assert_healthy(res)


# ---------------------------------------------------------------------------------------------
# Commands


def test_command_exit_code_input_and_missing_program():
    res = run_command("read line; echo got:$line; echo oops >&2; exit 4", input="abc\n", limits=SMALL)
    assert res.status == "exit" and res.returncode == 4
    assert res.stdout == "got:abc\n" and res.stderr == "oops\n"

    res = run_command(["cat"], input="x" * 300_000, limits=small(max_output_bytes=1 << 20))
    assert res.status == "ok" and len(res.stdout) == 300_000  # bigger than a pipe buffer both ways

    res = run_command(["no-such-program-xyz"], limits=SMALL)
    assert res.status == "error" and "cannot run 'no-such-program-xyz'" in res.error


def test_command_env_is_minimal(monkeypatch):
    monkeypatch.setenv("CWM_TEST_API_KEY", "s3cret")
    res = run_command("env", limits=SMALL)
    assert res.status == "ok" and "s3cret" not in res.stdout and "PATH=" in res.stdout
    res = run_command("echo $GREETING", env={"GREETING": "hi", "PATH": "/usr/bin:/bin"}, limits=SMALL)
    assert res.stdout == "hi\n"


def test_command_edits_its_workspace_but_not_what_it_links_to(tmp_path):
    work, outside = tmp_path / "repo", tmp_path / "outside"
    work.mkdir(), outside.mkdir()
    (work / "existing.txt").write_text("one\n")
    secret = outside / "secret.txt"
    secret.write_text("keep\n")
    (work / "soft").symlink_to(secret)
    os.link(secret, work / "hard")  # a hard link is not handed over: it may point out of the tree

    script = "echo two >> existing.txt && mkdir sub && echo new > sub/new.txt; echo x > soft; echo y > hard"
    res = run_command(script, cwd=work, limits=SMALL)
    assert (work / "existing.txt").read_text() == "one\ntwo\n"
    assert (work / "sub" / "new.txt").read_text() == "new\n"
    assert res.status == "exit" and res.stderr.count("cannot create") == 2, res.stderr
    assert secret.read_text() == "keep\n" and secret.stat().st_uid == os.getuid()
    # Given back to its owner afterwards.
    assert {p.lstat().st_uid for p in [work, *work.rglob("*")]} == {os.getuid()}


@pytest.mark.skipif(not IS_ROOT, reason="non-root machines may not allow the mount namespace")
def test_private_tmp_is_bounded_and_hidden():
    def fill_tmp():
        for i in range(100):  # many files, each under max_file_bytes
            with open(f"/tmp/f{i}", "wb") as f:
                f.write(b"\0" * (1 << 20))

    res = run_function(fill_tmp, limits=small(max_disk_bytes=8 << 20, max_file_bytes=2 << 20))
    assert res.status == "error" and "No space left on device" in res.error
    assert not Path("/tmp/f0").exists()

    res = run_command("ls -A /tmp /dev/shm /var/tmp", limits=SMALL)
    assert res.status == "ok"
    listing: dict[str, list[str]] = {}
    for word in res.stdout.split():
        if word.endswith(":"):
            listing[directory := word[:-1]] = []
        else:
            listing[directory].append(word)
    # empty, but for the way back to the Python installation when it lives under /tmp
    assert sorted(listing) == ["/dev/shm", "/tmp", "/var/tmp"]
    assert all(set(names) <= set(PYTHON_IN_TMP) for names in listing.values()), listing


# ---------------------------------------------------------------------------------------------
# The Python installation, seen by the sandbox's uid (this machine's lives under /root, mode 700)


def closed_to_others(path: str) -> bool:
    """Whether some directory above `path` denies others the search (x) permission, like /root."""
    parts = Path(path).parts[1:-1]
    return any(not os.stat(os.path.join("/", *parts[: i + 1])).st_mode & stat.S_IXOTH for i in range(len(parts)))


def first_not_imported(names: list[str]) -> str:
    name = next((n for n in names if n not in sys.modules), None)
    assert name, f"all of {names} are imported already; add a module this process has not imported"
    return name


# "test" in katakana, as each codec writes it (CJK codecs load a C module from lib-dynload)
KATAKANA_TEST = {"euc_jis_2004": b"\xa5\xc6\xa5\xb9\xa5\xc8", "big5hkscs": b"\xc7\xc2\xc7\xb5\xc7\xc4",
                 "iso2022_jp_3": b"\x1b$B%F%9%H\x1b(B"}


def test_child_imports_what_the_caller_has_not():
    module = first_not_imported(["fractions", "colorsys", "wave", "sched", "tabnanny"])
    codec = first_not_imported([f"encodings.{c}" for c in KATAKANA_TEST]).split(".")[1]
    origin = importlib.util.find_spec(module).origin  # where it lives, without importing it here

    def import_fresh():
        read_only = bool(os.statvfs(sys.base_prefix).f_flag & os.ST_RDONLY)
        return importlib.import_module(module).__file__, "\u30c6\u30b9\u30c8".encode(codec), read_only

    res = run_function(import_fresh, limits=SMALL)
    assert res.status == "ok", res.error
    assert res.value[:2] == (origin, KATAKANA_TEST[codec])
    if IS_ROOT and closed_to_others(sys.base_prefix):  # mounted back for the sandbox: read-only
        assert res.value[2], "the Python installation must be read-only inside"
    assert module not in sys.modules and f"encodings.{codec}" not in sys.modules, "imported here, not only inside"


def test_command_runs_this_interpreter_as_the_sandbox_uid():
    script = "import json, fractions, os; print(json.dumps([os.getuid(), str(fractions.Fraction(2, 4))]))"
    res = run_command([sys.executable, "-c", script], limits=SMALL)
    assert res.status == "ok", (res.error, res.stderr)
    uid, half = json.loads(res.stdout)
    assert half == "1/2" and (uid >= 200_000 if IS_ROOT else uid == os.getuid())


@pytest.fixture
def root_files():
    """Files in /root, beside this machine's Python installation, and a workspace dir; removed afterwards."""
    made = {"secret": Path("/root/.cwm-sandbox-secret-test"), "public": Path("/root/.cwm-sandbox-public-test"),
            "workspace": Path("/root/.cwm-sandbox-workspace-test")}
    made["secret"].write_text("s3cret\n")
    made["secret"].chmod(0o600)
    made["public"].write_text("readable by mode\n")
    made["public"].chmod(0o644)
    made["workspace"].mkdir(exist_ok=True)
    yield made
    made["secret"].unlink(), made["public"].unlink()
    shutil.rmtree(made["workspace"])


@pytest.mark.skipif(not IS_ROOT, reason="the sandbox uid exists only when the caller is root")
def test_only_python_is_seen_in_root(root_files):
    def try_read(path):
        try:
            return Path(path).read_text()
        except OSError as e:
            return type(e).__name__

    res = run_function(try_read, str(root_files["secret"]), limits=SMALL)
    assert res.status == "ok" and res.value in ("PermissionError", "FileNotFoundError")
    res = run_command(["cat", str(root_files["secret"])], limits=SMALL)
    assert res.status == "exit" and "s3cret" not in res.stdout
    if not os.stat("/root").st_mode & stat.S_IXOTH:  # /root is closed: inside, only the way to Python is left
        assert run_function(try_read, str(root_files["public"]), limits=SMALL).value == "FileNotFoundError"
        res = run_function(os.listdir, "/root", limits=SMALL)
        assert res.status == "ok" and not {p.name for p in root_files.values()} & set(res.value)
        # A workspace in there is still the command's, at its own path, and comes back to its owner.
        ws = root_files["workspace"]
        res = run_command(f"echo made > {ws}/out.txt && cat {ws}/out.txt && pwd", cwd=ws, limits=SMALL)
        assert res.status == "ok" and res.stdout == f"made\n{ws}\n", (res.error, res.stderr)
        assert (ws / "out.txt").read_text() == "made\n" and (ws / "out.txt").stat().st_uid == os.getuid()


def test_import_path_under_the_host_tmp(tmp_path, monkeypatch):
    """A sys.path entry under /tmp, which the private tmpfs hides, is mounted back for the child."""
    name = f"cwm_sandbox_test_module_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("ANSWER = 42\n")
    tmp_path.chmod(0o755)  # pytest makes it 0700; a venv or checkout under /tmp is open to others
    monkeypatch.syspath_prepend(str(tmp_path))
    res = run_function(lambda: importlib.import_module(name).ANSWER, limits=SMALL)
    assert res.status == "ok" and res.value == 42, res.error
    if IS_ROOT:  # nothing else of the host's /tmp comes along, only the way to that entry
        res = run_command("ls -A /tmp", limits=SMALL)
        assert res.status == "ok" and res.stdout.split() == sorted({tmp_path.parts[2], *PYTHON_IN_TMP})


# ---------------------------------------------------------------------------------------------
# Not root: a developer's laptop


def _as_nobody(module_dir: str) -> dict:
    """What a non-root caller sees (run in a forked copy of this process that dropped root)."""
    import warnings

    def spin():
        while True:
            pass

    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as for a process that was never root
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = {
            "value": run_function(pow, 3, 4).value,
            "timeout": run_function(spin, limits=Limits(timeout=0.5)).status,
            "network": run_function(_connect, "1.1.1.1", 80).error,
            "uid": run_function(os.getuid).value,
            "background": run_command("sleep 30 & echo started", limits=Limits(timeout=20)).__dict__,
        }
        sys.path.insert(0, module_dir)  # under the host's /tmp, which the private tmpfs hides
        out["import"] = run_function(lambda: importlib.import_module("cwm_sandbox_nobody_module").X).value
    out["warnings"] = [str(w.message) for w in caught]
    return out


@pytest.mark.skipif(not IS_ROOT, reason="needs root to become another user")
def test_works_when_not_root():
    module_dir = Path(tempfile.mkdtemp(prefix="cwm-sandbox-test-", dir="/tmp"))  # open to nobody, unlike tmp_path
    module_dir.chmod(0o755)
    (module_dir / "cwm_sandbox_nobody_module.py").write_text("X = 7\n")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked copy of pytest: report and leave without running pytest's exit code
        try:
            os.write(write, json.dumps(_as_nobody(str(module_dir))).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    shutil.rmtree(module_dir)
    assert out["import"] == 7
    assert out["value"] == 81 and out["timeout"] == "timeout" and out["uid"] == 65534
    # A background process holding stdout is stopped soon after the command itself ends.
    assert out["background"]["status"] == "ok" and out["background"]["stdout"] == "started\n"
    assert out["background"]["duration"] < 10
    not_root = [w for w in out["warnings"] if "not root" in w]
    assert len(not_root) == 1, out["warnings"]  # said once, not on every call
    if not any("network" in w for w in out["warnings"]):  # a user namespace was allowed: no network
        assert "Network is unreachable" in out["network"]


# ---------------------------------------------------------------------------------------------
# Isolation from the caller and between programs (issue 12, point 7)

ENV_PROBE = """
import ctypes, json, os, posix, sys
from cwm.sandbox import run_function

def probe():
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    start, end = int(fields[47]), int(fields[48])
    try:
        with open("/proc/self/environ", "rb") as f:
            proc_environ = f.read()
    except OSError:  # a runner that dropped root is not dumpable: its /proc files are root's
        proc_environ = b""
    return {"environ": dict(os.environ), "posix": repr(posix.environ), "block": ctypes.string_at(start, end - start),
            "proc": proc_environ}

res = run_function(probe)
print(json.dumps({"status": res.status, "error": res.error, **{k: repr(v) if k != "environ" else v
                                                                 for k, v in (res.value or {}).items()}}))
"""


def test_child_sees_none_of_the_callers_environment():
    secret = "sk-cwm-test-" + "7" * 20
    env = {**os.environ, "OPENAI_API_KEY": secret, "PYTHONHASHSEED": "123"}
    out = subprocess_run([sys.executable, "-c", ENV_PROBE], env=env)
    data = json.loads(out.stdout)
    assert data["status"] == "ok", data["error"]
    assert secret not in out.stdout  # not in os.environ, posix.environ, the initial block, /proc/self/environ
    environ = data["environ"]
    assert set(environ) == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TERM", "PYTHONHASHSEED"}
    assert environ["HOME"] == environ["TMPDIR"] == "/tmp" and environ["PYTHONHASHSEED"] == "123"
    assert environ["LANG"] == environ["LC_ALL"] == "C.UTF-8"
    # commands too
    res = run_command("env", limits=SMALL)
    assert res.ok and "OPENAI_API_KEY" not in res.stdout and "HOME=/tmp\n" in res.stdout


def subprocess_run(argv, **kwargs):
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True, **kwargs)


def _connect_unix(address) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(address)
        return s.recv(16).decode()


def test_no_unix_socket_is_reachable():
    # A socket file outside every temp dir, open to everyone: only the sandbox can keep it out of reach.
    host_dir = Path(tempfile.mkdtemp(prefix=".cwm-sock-", dir=Path(__file__).parent))
    servers = []
    try:
        host_dir.chmod(0o777)
        path = str(host_dir / "s")
        for address in (path, f"\0cwm-test-{os.getpid()}"):  # a file, and the abstract namespace
            server = socket.socket(socket.AF_UNIX)
            server.bind(address)
            server.listen(8)
            servers.append(server)
            threading.Thread(target=lambda s=server: [s.accept()[0].sendall(b"hello") for _ in range(2)],
                             daemon=True).start()
            assert _connect_unix(address) == "hello"  # reachable from outside
        os.chmod(path, 0o777)
        for address in (path, f"\0cwm-test-{os.getpid()}"):
            for limits in (SMALL, small(network=True)):
                res = run_function(_connect_unix, address, limits=limits)
                assert res.status == "error" and "PermissionError" in res.error, (address, res.error)
            res = run_command([sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({address!r})"],
                              limits=SMALL)
            assert res.status == "exit" and "PermissionError" in res.stderr
        # The abstract socket is not even listed inside: it lives in the host's network namespace
        # (with network=True the namespace is shared: listed, and only the filter refuses it).
        name = f"@cwm-test-{os.getpid()}"
        assert name in Path("/proc/net/unix").read_text()
        assert run_function(lambda: name in Path("/proc/net/unix").read_text(), limits=SMALL).value is False
        assert run_function(lambda: name in Path("/proc/net/unix").read_text(), limits=small(network=True)).value is True
        # what needs no socket file still works: socketpair (asyncio's self-pipe)
        res = run_function(lambda: socket.socketpair()[0].family.name, limits=SMALL)
        assert res.ok and res.value == "AF_UNIX"
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(host_dir, ignore_errors=True)


def _new_user_namespace() -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    out = {"unshare": libc.unshare(0x10000000) == 0, "unshare_errno": ctypes.get_errno()}
    pid = libc.syscall(56 if os.uname().machine == "x86_64" else 220, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:  # the clone worked: this is the child
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    out["clone"] = pid > 0
    return out


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="the seccomp filter knows these machines")
def test_no_nested_user_namespaces():
    res = run_function(_new_user_namespace, limits=SMALL)
    assert res.ok and res.value == {"unshare": False, "unshare_errno": errno.EPERM, "clone": False}
    if shutil.which("unshare"):
        res = run_command(["unshare", "--user", "true"], limits=SMALL)
        assert res.status == "exit" and "Operation not permitted" in res.stderr
    # threads (clone3, refused, then clone without the flag) and forks still work
    res = run_function(lambda: (_threads(2), os.waitpid(os.fork() or os._exit(0), 0)[0] > 0), limits=SMALL)
    assert res.ok and res.value == ([0, 1], True)


PATCHER = """
import builtins, json, os, sys, time

def f():
    rec = sys.modules["cwm.trace.recorder"]
    rec.outcome = lambda frames: ("ok", "'forged'", None)
    sys.modules["cwm.trace.format"].outcome = rec.outcome
    json.dumps = lambda *a, **k: '"forged"'
    builtins.sorted = lambda xs, **k: ["forged"]
    with open("/tmp/fractions.py", "w") as out:  # a module a later program may import first
        out.write("raise SystemExit('forged')")
    if os.fork() == 0:  # a process left behind, to spoil what comes next
        os.setsid()
        time.sleep(30)
    return 1
"""

ORDINARY = """
def f(xs):
    ys = sorted(xs)
    return ys[0] + len(ys)
"""


def _call_each(items):
    from cwm.sandbox import run_each

    def one(item):
        kind, x = item
        if kind == "patch":
            import builtins
            # a process left behind; forked before the patch, as a fork runs the at-fork hooks of
            # what the caller imported (filelock's waits 30 s for a `len` that allows the fork)
            if os.fork() == 0:
                os.setsid()
                time.sleep(30)
                os._exit(0)
            builtins.len = lambda v: -1
            Path("/tmp/left.txt").write_text("x")
            return "patched"
        return len([1, 2, x]), sorted(os.listdir("/tmp")), os.getppid()

    return run_each(one, items)


def _busy_caller() -> list:
    """run_each's isolation check from a caller as busy as the whole suite's process is by the time
    this module runs, once per wakeup fd number the sandbox also uses (3-6: its result and status
    pipes, run_each's pipe). Busy: library at-fork hooks (filelock's: ray, transformers and
    torch.compile import it), threads that hold locks (logging, a stream, a file lock), a thread pool
    blocked, a live HTTP server and its client, an asyncio loop, a thread blocked in a read, other
    sandboxes in flight, children (live, and a zombie), Python signal handlers (SIGCHLD, SIGTERM)
    and a signal wakeup fd, as asyncio's add_signal_handler sets one. Returns [(status, error, value)]
    of the checks, and the statuses of the sandboxes another thread ran meanwhile."""
    import asyncio
    import concurrent.futures
    import fcntl
    import http.server
    import io
    import logging
    import urllib.request

    import filelock

    numbers = (3, 4, 5, 6)
    pair = socket.socketpair()  # moved above the numbers, then set at each of them
    wakeup_r, wakeup_w = (socket.socket(fileno=fcntl.fcntl(end.fileno(), fcntl.F_DUPFD_CLOEXEC, 16)) for end in pair)
    for end in pair:
        end.close()
    wakeup_w.setblocking(False)
    for n in numbers:
        assert not os.path.exists(f"/proc/self/fd/{n}"), f"fd {n} is taken: pick free numbers"
        os.dup2(wakeup_w.fileno(), n)
    stop = threading.Event()
    sys.stdout = open(os.devnull, "w")  # the chatter below (the caller reads our own stdout)

    def forever(step):
        def loop():
            while not stop.is_set():
                step()
        threading.Thread(target=loop, daemon=True).start()

    log = logging.getLogger("busy")
    log.addHandler(logging.StreamHandler(io.StringIO()))
    log.setLevel(logging.INFO)
    forever(lambda: log.info("busy"))
    forever(lambda: print("busy", flush=True))
    lock = filelock.FileLock(os.path.join(tempfile.mkdtemp(), "busy.lock"))

    def take_lock():
        with lock:
            pass

    forever(take_lock)
    pool = concurrent.futures.ThreadPoolExecutor(4)
    for _ in range(4):
        pool.submit(stop.wait)

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"busy")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    forever(lambda: urllib.request.urlopen(url, timeout=5).read())

    async def ticking():
        while not stop.is_set():
            await asyncio.sleep(0.001)

    threading.Thread(target=asyncio.run, args=(ticking(),), daemon=True).start()
    blocked_r, _blocked_w = os.pipe()
    threading.Thread(target=os.read, args=(blocked_r, 1), daemon=True).start()
    beside = []  # the sandboxes run by another thread meanwhile
    forever(lambda: beside.append(run_function(pow, 2, 5, limits=SMALL).status))
    forever(lambda: wakeup_r.recv(1 << 16))
    children = [subprocess.Popen(["sleep", "60"]), subprocess.Popen(["true"])]  # the second: a zombie
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    time.sleep(0.5)  # all of it running

    results = []
    for n in numbers:
        signal.set_wakeup_fd(n)
        res = run_function(_call_each, [("patch", 0), ("plain", 3), ("plain", 4)], limits=small(timeout=20))
        results.append((res.status, res.error, res.value))
    stop.set()
    for child in children:
        child.kill()
    return results, beside


@needs_tracer
def test_one_program_cannot_change_the_next_ones_record():
    # run_each: patches, files and leftover processes of one call reach no later call
    # (wall-clock room for a loaded machine: this checks isolation, not speed)
    res = run_function(_call_each, [("patch", 0), ("plain", 3), ("plain", 4)], limits=small(timeout=30))
    assert res.ok, (res.error, res.stderr[-2000:])
    assert res.value[0] == "patched" and res.value[1][:2] == (3, sorted(PYTHON_IN_TMP)) and res.value[2][0] == 3

    # the data builder's shared sandbox: a program that patches the recorder, json and builtins,
    # then an ordinary one; in a first run and in the determinism re-run
    from cwm.data.build import BuildParams, trace_chunk
    from cwm.data.synth import Program

    hostile, ordinary = Program(PATCHER, "f()", "test"), Program(ORDINARY, "f([3, 1, 2])", "test")
    # (programs our own generators write, synth and real, are not hostile: they share a process)
    for source in ("programs:unused.jsonl", "dir:unused"):  # programs: each chunk is traced twice
        params = BuildParams(source=source, n=2)
        alone = trace_chunk([(1, ordinary)], params).to_pylist()[0]
        assert alone["status"] == "ok" and alone["return_value"] == "4"
        shared = trace_chunk([(0, hostile), (1, ordinary), (2, ordinary)], params).to_pylist()
        assert shared[1] == alone and {**shared[2], "index": 1} == alone
        # the attack ran: its own record it can forge (it shares the tracer's process), no other one
        assert shared[0]["return_value"] == "'forged'"


def _fresh_caller(call: str, timeout: float = 150):
    """The value of `call` (an expression over this module, as t) in a fresh interpreter, under a
    timeout, so that a hang fails the test instead of hanging the suite."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import test_sandbox as t; "
            f"os.write(1, repr({call}).encode()); os._exit(0)")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} hung (still running after {timeout} s)")
    assert out.returncode == 0, out.stderr[-3000:]
    return ast.literal_eval(out.stdout)


def test_run_each_from_a_busy_long_lived_caller():
    # In the whole suite this process carries threads, children, servers, signal handlers and the
    # at-fork hooks of what earlier tests imported; the check above timed out there (CI, twice).
    # Causes found: the hostile call patched `len` before it forked, and filelock's at-fork hook then
    # waits 30 s (test_data_ray imports filelock); and a caller's signal wakeup fd, a bare fd number,
    # is one of the sandbox's own pipes in the keeper (a byte per signal into the status pipe).
    # And a runner forked while another thread of the caller held sys.stdout's lock deadlocked as
    # it replaced sys.stdout (the old one, finalized, flushed).
    checks, beside = _fresh_caller("t._busy_caller()")
    for status, error, value in checks:
        assert status == "ok", error
        assert value[0] == "patched" and value[1][:2] == (3, sorted(PYTHON_IN_TMP)) and value[2][0] == 3
    assert beside and set(beside) == {"ok"}, beside


def _alarmed():
    signal.alarm(1)
    time.sleep(10)


def _odd_signal_state() -> list:
    """Runs from a caller that ignores SIGCHLD, has a child of its own alive all along, and blocks
    SIGALRM in the calling thread."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    child = subprocess.Popen(["sleep", "60"])
    try:
        runs = [run_function(pow, 2, 10, limits=SMALL), run_function(_call_each, [("plain", 3)], limits=SMALL),
                run_command(["true"], limits=SMALL), run_function(time.sleep, 10, limits=small(timeout=1)),
                run_function(_alarmed, limits=small(timeout=5))]
        return [(r.status, r.value, r.error) for r in runs]
    finally:
        child.kill()


def _processes_of(uid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("Uid:") and int(line.split()[1]) == uid for line in f):
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not IS_ROOT, reason="the runner's own uid (and a keeper as PID 1) needs root")
def test_a_caller_killed_mid_run_leaves_nothing_behind():
    # kill -9 (or os._exit) of the caller while its sandbox runs: the keeper dies with it (and the
    # namespace with the keeper); it used to live on with its program, as long as that one ran
    code = ("import os, sys, threading, time; sys.path.insert(0, sys.argv[1]); import test_sandbox as t; "
            "os.write(1, b'%d\\n' % threading.get_native_id()); "
            "t.run_function(time.sleep, 60, limits=t.small(timeout=120))")
    caller = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent)], stdout=subprocess.PIPE)
    try:
        uid = UID_BASE + int(caller.stdout.readline())  # the runner's uid
        deadline = time.monotonic() + 30
        while not _processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_of(uid), "the program never started"
    finally:
        caller.kill()
        caller.wait()
        caller.stdout.close()
    deadline = time.monotonic() + 10
    while _processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _processes_of(uid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the sandboxed program outlived its caller"


def test_a_caller_that_ignores_sigchld_or_blocks_signals():
    # Ignoring SIGCHLD, the kernel reaps the caller's children itself: waitpid(keeper) failed (ECHILD
    # raised in the caller), or, with another child alive, waited for that one first; the keeper's
    # own waits (the runner, run_each's calls) would fail the same way. A signal the calling thread
    # blocks stayed blocked for the program (an alarm, SIGXCPU).
    runs = _fresh_caller("t._odd_signal_state()", timeout=60)
    assert [status for status, _, _ in runs] == ["ok", "ok", "ok", "timeout", "killed"], runs
    assert runs[0][1] == 1024 and runs[1][1][0][:2] == (3, sorted(PYTHON_IN_TMP))
    assert "SIGALRM" in runs[4][2]


def _hand_back(kind):
    big = "x" * 100_000
    if kind == "shared":  # 10,000 references to one string: 1 GB once expanded
        return [big] * 10_000
    if kind == "dag":  # 2**200 paths through 200 small lists
        x = [0]
        for _ in range(200):
            x = [x, x]
        return x
    if kind == "cycle":
        x = []
        x.append(x)
        return x
    from cwm.trace.format import Frame, Trace

    if kind == "frames":
        return Trace("s", "f()", ["not a frame"], "ok")
    if kind == "lineno":
        return Trace("s", "f()", [Frame("line", "1", "x\n", {})], "ok")
    if kind == "locals":
        return Trace("s", "f()", [Frame("line", 1, "x\n", {"a": 1})], "ok")
    if kind == "status":
        return Trace("s", "f()", [], ["ok"])
    raw = {  # pickles written by hand
        "range": b"cbuiltins\nset\n(cbuiltins\nrange\n(J\x00\xe1\xf5\x05tRtR.",  # set(range(10**8))
        "fraction": b"(S'ok'\ncfractions\nFraction\n(S'1e999999999'\ntRNt.",  # Fraction("1e999999999")
        "triple": b"(S'ok'\nI1\nt.",  # not (status, value, error)
        "unknown": b"(S'fine'\nNNt.",
    }[kind]
    os.write(3, raw)
    os._exit(0)


@pytest.mark.parametrize("kind, reason", [
    ("shared", "max_result_bytes"), ("dag", "max_result_bytes"), ("cycle", "cycle"),
    ("frames", "field 'frames'"), ("lineno", "field 'lineno'"), ("locals", "field 'locals'"),
    ("status", "field 'status'"), ("range", "builtins.range"), ("fraction", "two ints"),
    ("triple", "not a (status, value, error) triple"), ("unknown", "unknown status"),
])
def test_forged_or_memo_shared_results_give_a_clean_error(kind, reason):
    start = time.monotonic()
    res = run_function(_hand_back, kind, limits=SMALL)
    assert res.status == "error" and "could not be read" in res.error and reason in res.error, res.error
    assert time.monotonic() - start < 5  # checked at the cost of the pickle, not of the expansion
    assert_healthy(res)


def test_deep_results_are_refused_and_good_ones_pass():
    from collections import Counter, OrderedDict, defaultdict, deque
    from datetime import datetime, timezone
    from decimal import Decimal
    from fractions import Fraction

    def deep():
        x = []
        for _ in range(150):
            x = [x]
        return x

    res = run_function(deep, limits=SMALL)
    assert res.status == "error" and "deeper than 100" in res.error
    value = [Fraction(1, 3), Decimal("1.5"), Counter("aab"), deque([1]), defaultdict(set, a={1}), OrderedDict(b=2),
             datetime(2024, 1, 2, tzinfo=timezone.utc), {1, 2}, frozenset({3}), 1 + 2j, slice(1, 2), ("t", None, True)]
    res = run_function(lambda: value, limits=SMALL)
    assert res.ok and res.value == value
    shared = ["s" * 10] * 1000  # memo sharing in a result of a reasonable size is fine
    assert run_function(lambda: shared, limits=SMALL).value == shared


def test_function_gets_input_and_a_read_only_cwd(tmp_path):
    (tmp_path / "data.txt").write_text("beside")
    tmp_path.chmod(0o755)  # the runner reads it as others may (pytest makes it 700)

    def work():
        try:
            Path("new.txt").write_text("x")
            wrote = True
        except OSError:
            wrote = False
        return sys.stdin.read(), Path("data.txt").read_text(), wrote, os.getcwd()

    res = run_function(work, input="line 1\nline 2\n", cwd=tmp_path, limits=SMALL)
    assert res.ok and res.value == ("line 1\nline 2\n", "beside", False, str(tmp_path))
    assert not (tmp_path / "new.txt").exists()
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        run_function(work, cwd=tmp_path / "data.txt")
