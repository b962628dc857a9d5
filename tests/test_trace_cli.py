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


READER = """\
import sys
from pathlib import Path

def main():
    name = input()
    rest = sys.stdin.read()
    beside = Path("data.txt").read_text()
    try:
        Path("out.txt").write_text("x")
        wrote = True
    except OSError:
        wrote = False
    return name, rest, beside, wrote
"""


def test_stdin_and_a_read_only_cwd(tmp_path):
    prog_dir = tmp_path / "prog"
    prog_dir.mkdir(mode=0o755)
    (prog_dir / "data.txt").write_text("beside")
    (prog_dir / "reader.py").write_text(READER)
    (tmp_path / "in.txt").write_text("ada\nmore\n")
    # default cwd: the program's directory, read-only
    out = cwm(str(prog_dir / "reader.py"), "--call", "main()", "--stdin", str(tmp_path / "in.txt"), "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["return_value"] == "('ada', 'more\\n', 'beside', False)"
    assert not (prog_dir / "out.txt").exists()
    # --stdin - (this process's stdin) and an explicit --cwd
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    (other / "data.txt").write_text("elsewhere")
    out = subprocess.run([sys.executable, "-m", "cwm", "trace", str(prog_dir / "reader.py"), "--call", "main()",
                          "--stdin", "-", "--cwd", str(other), "--format", "json"],
                         input="bob\n", capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["return_value"] == "('bob', '', 'elsewhere', False)"
    for args, message in [(("--stdin", str(tmp_path / "none.txt")), "cannot read --stdin"),
                          (("--cwd", str(tmp_path / "none")), "not a directory")]:
        out = cwm(str(prog_dir / "reader.py"), "--call", "main()", *args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_exit_status_says_whether_the_call_raised(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("def f(x):\n    return 10 // x\n")
    assert cwm(str(prog), "--call", "f(2)").returncode == 0
    out = cwm(str(prog), "--call", "f(0)", "--format", "json")
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "exception"
    help_text = cwm("--help").stdout
    assert "1 the traced call raised" in help_text and "--stdin" in help_text and "--cwd" in help_text


def test_a_script_runs_as_its_main_module(tmp_path):
    prog = tmp_path / "s.py"
    prog.write_text("import pickle\nfrom dataclasses import dataclass\n\n@dataclass\nclass P:\n    x: int\n\n"
                    "def main():\n    return pickle.loads(pickle.dumps(P(3)))\n\n"
                    "if __name__ == '__main__':\n    main()\n")
    out = cwm(str(prog), "--entry", "main", "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)["return_value"] == "P(x=3)"


def test_the_program_is_never_compiled_in_the_caller(tmp_path, monkeypatch, capsys):
    import builtins
    import os

    from cwm.trace import cli

    prog = tmp_path / "p.py"
    prog.write_text("def f():\n    return 1\n")
    deep = tmp_path / "deep.py"
    deep.write_text("x = " + "+".join(["1"] * 100_000) + "\ndef f():\n    return 1\n")
    caller, compiled_here = os.getpid(), []
    real_compile = builtins.compile

    def watched(source, filename, *args, **kwargs):
        if os.getpid() == caller and filename in (str(prog), str(deep)):
            compiled_here.append(filename)
        return real_compile(source, filename, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", watched)
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args([str(prog), "--call", "f()", "--format", "json"])) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    assert cli.run(parser.parse_args([str(deep), "--call", "f()"])) == 2  # the compiler's RecursionError, as one line
    assert "cannot compile: the code nests too deeply" in capsys.readouterr().err
    assert compiled_here == []
