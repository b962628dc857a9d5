"""The episode's workspace: a copy at /testbed, a persistent bash in the sandbox, reset, diff; and
what a hostile agent command cannot do (touch the host, another episode, the network; leave
processes behind; exhaust processes or disk)."""

import os
import socket
import subprocess
import threading
import time

import pytest

from cwm.agent.workspace import (
    SESSION_EXIT,
    SESSION_RESTARTED,
    SESSION_TIMED_OUT,
    SESSION_TOO_LONG,
    BoxLimits,
    DockerWorkspace,
    Workspace,
    docker_available,
)  # fmt: skip

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the workspace's isolation tests need root (a uid "
                                "of its own, namespaces); without root it is a host temp dir")

SOURCE = {"calc.py": "def add(a, b):\n    return a - b\n", "README": "calc\n"}


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "repo"
    src.mkdir()
    for name, text in SOURCE.items():
        (src / name).write_text(text)
    return src


@pytest.fixture
def ws(repo):
    with Workspace.create(repo, limits=BoxLimits(max_processes=64, workspace_bytes=32 << 20,
                                                 max_disk_bytes=16 << 20)) as w:
        yield w


def processes_of(uid):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    found.append(int(pid))
            except FileNotFoundError:
                pass
    return found


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_the_copy_is_at_testbed_and_the_session_persists(ws, repo):
    assert ws.root == "/testbed"
    assert ws.bash("pwd; cat calc.py") == "/testbed\n" + SOURCE["calc.py"]
    assert ws.bash("cd /tmp && export GREETING=hi && f() { echo fn; }") == ""
    assert ws.bash("pwd; echo $GREETING; f") == "/tmp\nhi\nfn\n"
    r = ws.bash_result("ls missing")
    assert r["status"] == "success" and r["exit_code"] == 2 and "No such file" in r["output"]
    assert ws.bash_result("true")["exit_code"] == 0
    assert ws.run("cat README", timeout=30) == (0, "calc\n")
    assert ws.run("echo oops >&2; exit 3", timeout=30) == (3, "oops\n")
    # one-shot runs start at the root and see the session's files (one copy)
    ws.bash("echo from-session > /testbed/s.txt")
    assert ws.read_text("s.txt") == "from-session\n" and ws.exists("/testbed/s.txt") and not ws.exists("nope")
    ws.write_text("deep/dir/new.txt", "written\n")
    assert ws.bash("cat /testbed/deep/dir/new.txt") == "written\n"
    assert (repo / "calc.py").read_text() == SOURCE["calc.py"] and not (repo / "s.txt").exists()


def test_a_long_command_that_prints_much_first_does_not_block(ws):
    # bash reads the command as it runs it: its output must be read while the rest is written
    filler = "\n".join(f"# filler {i} " + "x" * 100 for i in range(2000))  # 200 KB, past a pipe's buffer
    out = ws.bash("head -c 300000 /dev/zero | tr '\\0' a; echo\n" + filler + "\necho end")
    assert out == "a" * 300000 + "\nend\n"


def test_timeout_and_restart_texts(ws):
    # cwm/rl/swerl/tools.py: bash_feedback_default
    assert SESSION_RESTARTED == " A fresh session has started with the current working directory reset to default."
    ws.bash("cd /tmp; export X=1")
    start = time.monotonic()
    assert ws.bash("sleep 30", timeout=1) == "The current session has terminated due to timeout." + SESSION_RESTARTED
    assert time.monotonic() - start < 5
    assert SESSION_TIMED_OUT == "The current session has terminated due to timeout."
    assert ws.bash("pwd; echo x${X}x") == "/testbed\nxx\n"  # a fresh session: cwd and variables reset
    assert ws.bash("exit 3") == "The current session has terminated unexpectedly." + SESSION_RESTARTED
    assert SESSION_EXIT == "The current session has terminated unexpectedly."
    assert ws.bash("head -c 600000 /dev/zero | tr '\\0' x") == (
        "The current session has terminated because your previous command produced too much output."
        + SESSION_RESTARTED)
    assert SESSION_TOO_LONG.endswith("produced too much output.")
    assert ws.bash("echo alive") == "alive\n"
    # one-shot runs have their own timeout
    code, output = ws.run("sleep 30", timeout=1)
    assert code == -1 and "timeout" in output


def test_reset_restores_the_copy_and_kills_everything(ws):
    ws.bash("echo changed > calc.py; rm README; echo new > new.txt; git add -A; git commit -qm agent; "
            "(sleep 300 &) ; cd /tmp")
    assert ws.diff()  # committed changes are still the agent's changes
    ws.reset()
    assert ws.bash("pwd; ls; cat calc.py; git status --short; git log --oneline | wc -l") == (
        "/testbed\nREADME\ncalc.py\n" + SOURCE["calc.py"] + "1\n")
    assert ws.diff() == ""
    assert [pid for pid in processes_of(ws._box.uid) if comm(pid) == "sleep"] == []  # killed with the old copy


def test_diff_shows_every_change_and_leaves_the_index_alone(ws):
    ws.bash("sed -i 's/a - b/a + b/' calc.py; rm README; echo new > new.txt")
    ws.bash("mkdir -p __pycache__ && echo x > __pycache__/calc.cpython-311.pyc && echo y > stray.pyc")
    diff = ws.diff()
    assert ".pyc" not in diff and "__pycache__" not in diff  # bytecode is no part of a patch
    assert "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n" in diff
    assert "diff --git a/README b/README\ndeleted file mode" in diff
    assert "diff --git a/new.txt b/new.txt\nnew file mode 100644" in diff
    assert ws.bash("git status --short") == " D README\n M calc.py\n?? __pycache__/\n?? new.txt\n?? stray.pyc\n"
    # the diff applies to the pristine source
    ws.reset()
    code, out = ws.run(["git", "apply", "-"], timeout=30, input=diff)
    assert code == 0, out
    assert ws.read_text("calc.py").endswith("a + b\n") and ws.exists("new.txt") and not ws.exists("README")


def test_a_git_repository_keeps_only_its_current_branchs_history(repo):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True, text=True).stdout

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "one")
    (repo / "calc.py").write_text("def add(a, b):\n    return a * b\n")
    git("commit", "-qam", "two")
    # a later fix on another branch, a tag and a remote: none may reach the episode (the release prunes them)
    git("checkout", "-qb", "future")
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    git("commit", "-qam", "the fix")
    fix = git("rev-parse", "HEAD").strip()
    git("tag", "v-fix")
    git("remote", "add", "origin", "https://example.invalid/repo.git")
    git("checkout", "-q", "main")
    with Workspace.create(repo) as ws:
        assert ws.bash("git log --all --format=%s; git branch -a; git tag; git remote") == "two\none\n* main\n"
        assert "fatal" in ws.bash(f"git cat-file -t {fix} 2>&1")  # the object itself is gone
        assert ws.diff() == ""
    assert git("tag") == "v-fix\n"  # the source is untouched


def test_commands_cannot_touch_the_host(ws, repo, tmp_path):
    marker = "/work/cwm-h5-probe-should-not-exist"
    out = ws.bash(f"echo x > {marker}; echo x > /etc/cwm-probe; touch /root/cwm-probe; "
                  f"ls {repo} 2>&1; echo x > {tmp_path}/escaped; id -u")
    assert not os.path.exists(marker) and not os.path.exists("/etc/cwm-probe")
    assert not os.path.exists("/root/cwm-probe") and not (tmp_path / "escaped").exists()
    assert "Permission denied" in out or "Read-only" in out
    assert int(out.strip().splitlines()[-1]) == ws._box.uid >= 200000
    # the test's own files (under the host's /tmp) are not there at all
    assert "No such file" in ws.bash(f"cat {repo}/calc.py")
    # the host-side helpers act as the box's uid too: a link the agent made leads nowhere it could not go
    ws.bash("ln -s /etc/shadow shadow; ln -s /etc/cwm-probe-link link")
    with pytest.raises(FileNotFoundError, match="Permission denied"):
        ws.read_text("shadow")
    with pytest.raises(OSError, match="Permission denied"):
        ws.write_text("link", "x")
    assert not os.path.exists("/etc/cwm-probe-link")


def test_an_episode_cannot_read_another_ones_workspace(repo):
    with Workspace.create(repo) as a, Workspace.create(repo) as b:
        assert a._box.uid != b._box.uid
        a.bash("echo secret-of-a > /testbed/secret.txt")
        assert "No such file" in b.bash("cat /testbed/secret.txt")
        # nor through /proc: a's keeper (root) and a's bash (a's uid) see a's /testbed
        a_pids = [a._shell._keeper] + processes_of(a._box.uid)
        assert len(a_pids) >= 2
        out = b.bash("; ".join(f"cat /proc/{pid}/root/testbed/secret.txt" for pid in a_pids) + "; true")
        assert "secret-of-a" not in out
        assert b.bash("kill -9 " + " ".join(map(str, a_pids)) + " 2>&1 | head -1; echo done").endswith("done\n")
        assert a.bash("cat /testbed/secret.txt") == "secret-of-a\n"  # a is unharmed


def test_no_network(ws):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        out = ws.bash(f"(echo hi > /dev/tcp/127.0.0.1/{port}) 2>&1; "
                      f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\" "
                      "2>&1 | tail -1; (echo hi > /dev/tcp/1.1.1.1/80) 2>&1")
        assert f"/dev/tcp/127.0.0.1/{port}: Network is unreachable" in out
        assert "OSError: [Errno 101] Network is unreachable" in out
        assert "/dev/tcp/1.1.1.1/80: Network is unreachable" in out
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_no_process_outlives_the_workspace(repo):
    ws = Workspace.create(repo)
    uid = ws._box.uid
    ws.bash("(sleep 300 &); nohup sleep 301 >/dev/null 2>&1 & disown; setsid sleep 302 & "
            "python3 -c 'import os,time\nif os.fork()==0:\n os.setsid(); time.sleep(303)' &")
    time.sleep(0.3)
    assert len(processes_of(uid)) >= 5  # bash and its four sleepers
    ws.close()
    deadline = time.monotonic() + 5
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(uid) == []


def test_a_fork_bomb_is_contained(ws):
    uid = ws._box.uid
    ws.bash("bomb() { bomb | bomb & }; bomb", timeout=3)  # returns at once; the bomb goes on in the background
    time.sleep(1)
    assert len(processes_of(uid)) <= 64  # BoxLimits.max_processes: RLIMIT_NPROC of the box's own uid
    assert ws.bash("echo survived").endswith("survived\n")  # the bomb's "fork: retry" lines come first
    ws.reset()  # kills every process of the old copy
    deadline = time.monotonic() + 5
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(uid) == []
    assert ws.bash("echo fresh") == "fresh\n"


def test_filling_the_disk_is_bounded(ws):
    before = os.statvfs("/").f_bfree
    out = ws.bash("dd if=/dev/zero of=/testbed/big bs=1M count=200 2>&1 | grep -c 'No space'; "
                  "dd if=/dev/zero of=/tmp/big bs=1M count=200 2>&1 | grep -c 'No space'; "
                  "for i in $(seq 1 20000); do echo x > /testbed/f$i || break; done 2>&1 | grep -c 'No space'; "
                  "df -k /testbed | tail -1")
    assert out.splitlines()[:3] == ["1", "1", "1"], out
    used_kb = int(out.strip().splitlines()[-1].split()[2])
    assert used_kb <= 32 << 10  # the workspace's own tmpfs: 32 MiB here
    assert os.statvfs("/").f_bfree >= before - (8 << 20) // os.statvfs("/").f_frsize  # the host's disk untouched
    ws.bash("rm -f /testbed/big /testbed/f*")
    assert ws.bash("echo ok > /testbed/ok.txt && cat /testbed/ok.txt") == "ok\n"


def test_workspaces_in_threads_are_independent(repo):
    results = {}

    def episode(i):
        with Workspace.create(repo) as w:
            w.bash(f"echo {i} > mine.txt")
            time.sleep(0.2)
            results[i] = w.bash("cat mine.txt; ls | wc -l")

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i}\n3\n" for i in range(3)}


def test_a_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        Workspace.create(tmp_path / "nope")
    with pytest.raises(ValueError, match="use 'sandbox' or 'docker'"):
        Workspace.create(tmp_path, backend="vm")


@pytest.mark.skipif(docker_available() is not None, reason=f"docker backend: {docker_available()}")
def test_docker_backend_has_the_same_interface(repo):
    with Workspace.create(repo, backend="docker") as ws:
        assert isinstance(ws, DockerWorkspace) and ws.root == "/testbed"
        ws.bash("cd /tmp; export X=1")
        assert ws.bash("pwd; echo $X") == "/tmp\n1\n"
        assert ws.bash("sleep 30", timeout=1) == SESSION_TIMED_OUT + SESSION_RESTARTED
        ws.bash("sed -i 's/a - b/a + b/' calc.py")
        assert "+    return a + b" in ws.diff()
        ws.reset()
        assert ws.diff() == "" and ws.read_text("calc.py") == SOURCE["calc.py"]


def _shell_from_a_caller_that_ignores_sigchld(source: str) -> list:
    """A bash session started, used and stopped by a caller that ignores SIGCHLD while a child of
    its own lives on: the kernel reaps the caller's children itself, so stopping by waitpid(keeper)
    failed, or waited for that other child first (for ever, here)."""
    import signal

    from cwm.sandbox.shell import Box

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "60"])
    try:
        with Box(source) as box:
            shell = box.shell(timeout=30)
            out = shell.run("echo hello")
            shell.stop()
            return [out["output"], shell.alive]
    finally:
        child.kill()


def test_a_shell_stops_in_a_caller_that_ignores_sigchld(repo):
    import sys
    from pathlib import Path

    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import test_agent_workspace as t; "
            "os.write(1, repr(t._shell_from_a_caller_that_ignores_sigchld(sys.argv[2])).encode()); os._exit(0)")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(Path(__file__).parent), str(repo)],
                         capture_output=True, text=True, timeout=40)
    assert out.returncode == 0 and out.stdout == "['hello\\n', False]", (out.stdout, out.stderr[-2000:])
