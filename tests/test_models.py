"""The shipped world model (src/cwm/models/cwm-mini): it is there, small, loads, predicts
well-formed frames on an example, and is the default of debug / eval / serve, without network."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cwm.models import DEFAULT_MODEL, default_model

ROOT = Path(__file__).resolve().parents[1]
COLLATZ = ROOT / "examples" / "collatz.py"


def test_the_shipped_model_is_complete_and_small():
    path = default_model()
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "tokenizer.json", "README.md"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert json.loads((path / "config.json").read_text())["model_type"] == "cwm"
    assert sum(p.stat().st_size for p in path.iterdir()) <= 50 * 2**20  # the bound


def test_it_predicts_well_formed_frames_on_an_example():
    from cwm.backends import open_backend
    from cwm.debugger.session import Session, prepare

    context, real, _ = prepare(COLLATZ.read_text(), "collatz_steps(6)")
    session = Session(open_backend(), context, real)  # no --model: the shipped one
    steps = [session.step() for _ in range(3)]
    # well-formed: each parses as a frame of the trace format (what it predicts is measured in
    # docs/cwm-mini.md, not asserted here)
    assert all(s.error is None and s.frame is not None for s in steps), [s.text for s in steps]
    assert steps[0].frame.event == "line" and steps[1].frame.event == "call"


def test_constrained_actions_in_the_debugger():
    """`cwm debug --constrain-actions`: every action the debugger predicts is a line of the program."""
    from cwm.backends import Sampling, open_backend
    from cwm.debugger.session import Session, prepare
    from cwm.tokenizer.tracetext import ActionLines
    from cwm.trace.format import source_lines

    context, real, _ = prepare(COLLATZ.read_text(), "collatz_steps(6)")
    backend = open_backend()
    session = Session(backend, context, real, sampling=Sampling(max_new_tokens=256,
                                                                constraint=ActionLines(backend.tokenizer, context)))
    steps = [session.step() for _ in range(4)]
    assert all(s.frame is not None and s.frame.source in source_lines(context) for s in steps), [s.text for s in steps]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a network-less run")
def test_debug_without_model_or_network_uses_the_shipped_model():
    """`cwm debug ... --auto` with no --model, in a new network namespace (no network at all)."""
    cmd = ["unshare", "--net", sys.executable, "-m", "cwm", "debug", str(COLLATZ), "--call", "collatz_steps(6)",
           "--auto", "--max-steps", "4"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "collatz_steps(6)" in out.stdout and "steps matching the real trace" in out.stdout


def test_a_missing_shipped_model_is_one_clear_error(tmp_path, monkeypatch):
    import cwm.models

    monkeypatch.setattr(cwm.models, "DEFAULT_MODEL", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="pass --model DIR"):
        cwm.models.default_model()
    assert DEFAULT_MODEL.name == "cwm-mini"


def test_serve_without_model_serves_the_shipped_one():
    import httpx

    from conftest import free_port, wait_until_healthy

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cwm", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, tries=1200)
        assert httpx.get(url + "/health").json()["model"] == "cwm-mini"
        body = httpx.post(url + "/completions", json={"prompt": "def f(x):", "max_tokens": 4, "temperature": 0}).json()
        assert len(body["choices"][0]["tokens"]) >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
