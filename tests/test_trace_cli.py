"""`cwm trace` as a user runs it: a real subprocess, the program in the sandbox."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cwm(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "cwm", "trace", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_json_cwm_and_pretty_outputs(tmp_path):
    out = cwm("examples/collatz.py", "--call", "collatz_steps(6)", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "ok" and data["return_value"] == "8"
    first = data["frames"][0]
    assert (first["event"], first["lineno"], first["source"], first["locals"], first["value"]) == (
        "call", 7, "def collatz_steps(n):\n", {"n": "6"}, None)
    cwm_text = cwm("examples/collatz.py", "--call", "collatz_steps(6)", "--format", "cwm").stdout
    assert cwm_text.startswith("<|begin_of_text|><|trace_context_start|>") and cwm_text.endswith("<|end_of_text|>")
    assert "def collatz_steps(n):  # << START_OF_TRACE\n" in cwm_text
    pretty = cwm("examples/collatz.py", "--call", "collatz_steps(6)")
    assert pretty.returncode == 0 and "seen = [6, 3]" in pretty.stdout and "status: ok" in pretty.stdout


def test_marker_entry_and_limits(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("def sq(x):\n    return x * x\n\nprint(sq(7))  # << START_OF_TRACE\n")
    data = json.loads(cwm(str(prog), "--format", "json").stdout)
    assert data["return_value"] == "49" and data["entry"] == "print(sq(7))"
    data = json.loads(cwm(str(prog), "--entry", "sq", "--format", "json").stdout)
    assert data["status"] == "ok" and data["frames"][0]["locals"] == {"x": "7"}
    out = cwm("examples/collatz.py", "--call", "collatz_steps(27)", "--max-events", "20", "--format", "json")
    assert out.returncode == 3 and json.loads(out.stdout)["status"] == "event_limit"


def test_hostile_program_is_stopped_by_timeout(tmp_path):
    prog = tmp_path / "spin.py"
    prog.write_text("import time\ndef f():\n    time.sleep(60)\n")  # no events to stop it: the sandbox kills it
    out = cwm(str(prog), "--call", "f()", "--timeout", "0.5", "--format", "json")
    assert out.returncode == 3 and json.loads(out.stdout)["status"] == "timeout"


def test_user_errors_give_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    cases = [
        (("missing.py",), "cannot read missing.py"),
        ((str(bad),), "bad.py:1: syntax error"),
        (("examples/collatz.py", "--call", "collatz_steps("), "is not a Python expression"),
        (("examples/collatz.py", "--call", "nope(1)"), "no function 'nope'"),
        (("examples/collatz.py", "--call", "collatz_steps(zz)"), "NameError: name 'zz' is not defined"),
    ]
    for args, message in cases:
        out = cwm(*args)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1
