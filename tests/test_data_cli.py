"""`cwm data` errors a user can cause: one clear message, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def cwm_data(*args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "cwm", "data", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "--source", "nonsense", "--out", "{tmp}/d"], "unknown --source 'nonsense'"),
        (["build", "--source", "synth", "--out", "{tmp}/d"], "--source synth needs --n"),
        (["build", "--source", "synth:depth=3", "--n", "2", "--out", "{tmp}/d"], "bad synth knob 'depth=3'"),
        (["build", "--source", "programs:{tmp}/missing.jsonl", "--out", "{tmp}/d"], "no such file"),
        (["build", "--source", "dir:{tmp}/nowhere", "--out", "{tmp}/d", "--decontaminate", "none"], "is not a directory"),
        (["stats", "{tmp}"], "is not a dataset (no manifest.json)"),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    run = cwm_data(*[a.format(tmp=tmp_path) for a in args])
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_ray_missing_is_a_clear_message(tmp_path):
    # Ray is installed here; hide it (as on a machine without the extra) and ask for --ray.
    code = "import sys; sys.modules['ray'] = None; from cwm.cli import main; sys.exit(main(['data', *sys.argv[1:]]))"
    run = cwm_data("build", "--source", "synth", "--n", "2", "--out", str(tmp_path / "d"), "--ray", "local", code=code)
    assert run.returncode == 2
    assert "--ray needs Ray, which is not installed: pip install 'cwm[distributed]'" in run.stderr
    assert "Traceback" not in run.stderr
