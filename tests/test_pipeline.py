"""The README's tour, run as written: its commands are read from README.md (so a tour command that
breaks, or names a flag that no longer exists, fails here) and run in order in a fresh directory,
through the real CLI. Where the tour's setting would take too long for a test, it is shrunk, and
SHRUNK below says which and why; everything else runs at the tour's own settings."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]

# (command prefix, flag, value): the tour's value replaced (or the flag added), each for time.
SHRUNK = [
    # the stdlib corpus (~30 s) -> one package's sources; 4,096 tokens -> 512
    ("tokenizer train", "--corpus", str(ROOT / "src/cwm/trace")),
    ("tokenizer train", "--vocab-size", "512"),
    # 1,000 synthetic programs (~60 s) -> 48; --workers 2 kept
    ("data build --source synth", "--n", "48"),
    # 300 stdlib files (~12 s) -> 30
    ("data build --source code:", "--n", "30"),
    # the smoke config's 60 steps (minutes on a loaded 2-core machine) -> 30
    ("train", "train.max_steps", "30"),
    # 20 items -> 2 each; 1,024 new tokens of the toy model per item -> 64 (it never writes a
    # whole trace anyway; tests/test_eval_run.py covers the default and its cap at the context)
    ("eval trace", "--limit", "2"),
    ("eval trace", "--max-new-tokens", "64"),
    ("eval cruxeval", "--limit", "2"),
    ("eval cruxeval", "--max-new-tokens", "64"),
    ("debug", "--max-steps", "4"),  # the --auto walk: 64 frames -> 4 steps
]


def tour_commands() -> list[list[str]]:
    """The `cwm ...` commands of the README's tour section, in order, as argument lists."""
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A tour"):text.index("**The real 32B model**")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", tour, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            args = shlex.split(line, comments=True)
            if args:
                assert args[0] == "cwm", line
                commands.append(args[1:])
    return commands


def shrink(args: list[str]) -> list[str]:
    args = list(args)
    line = " ".join(args)
    for prefix, flag, value in SHRUNK:
        if not line.startswith(prefix):
            continue
        if flag.startswith("--"):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        else:  # a config override
            args.append(f"{flag}={value}")
    return args


def cwm(args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-m", "cwm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


def test_the_readme_tour(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    commands = tour_commands()
    assert [c[0] for c in commands] == ["trace", "trace", "tokenizer", "data", "data", "data", "train", "debug",
                                       "eval", "eval", "serve"], "the tour changed: update this test's checks"
    outputs, seconds = [], {}
    for args in commands[:-1]:
        args = shrink(args)
        started = time.time()
        outputs.append(cwm(args, tmp_path))
        seconds[" ".join(args[:2])] = round(time.time() - started, 1)

    assert "<|trace_context_start|>" in outputs[0] and json.loads(outputs[1])["status"] == "ok"
    assert (tmp_path / "runs/tok/tokenizer.json").is_file()
    assert (tmp_path / "runs/data/mix/tokenizer.json").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "runs/smoke/metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < 0.8 * losses[0], losses
    final = tmp_path / "runs/smoke/final"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    assert "predicted frames:" in outputs[7] and "collatz_steps" in (tmp_path / "report.html").read_text()
    for out in outputs[8:10]:  # each eval ends with its score
        assert 0.0 <= float(out.strip().splitlines()[-1].removeprefix("score: ")) <= 1.0

    # the server: started as the tour starts it (on a free port), answers /health, then stopped
    args = commands[-1]
    args[args.index("--port") + 1] = str(port := free_port())
    server = subprocess.Popen([sys.executable, "-m", "cwm", *args], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", tries=1200)  # (loading torch and the model)
        reply = httpx.post(f"http://127.0.0.1:{port}/completions", json={"prompt": "def f(", "max_tokens": 4}, timeout=60)
        if reply.status_code != 200:
            server.terminate()
            raise AssertionError(f"{reply.status_code}: {reply.text[:500]}\n{server.communicate(timeout=30)[1][-3000:]}")
        assert len(reply.json()["choices"][0]["tokens"]) <= 4
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(seconds)


def test_the_readme_agent_commands(tmp_path):
    """The README's coding-agent block, as written (`--limit` shrunk to 1): the oracle resolves the
    shipped benchmark's task, one episode runs and is graded, collect writes trajectories and SFT
    records. The URL line needs a server: tests/test_agent_loop.py drives that policy."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("**The coding agent**"):text.index("## Measured")]
    (code,) = re.findall(r"```bash\n(.*?)```", block, re.S)
    commands = [shlex.split(line, comments=True)[1:] for line in code.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["eval", "swe-local"], ["agent", "run"], ["agent", "run"],
                                         ["agent", "collect"], ["agent", "tasks"]], "the block changed"
    for args in commands:
        if any(a.startswith("http") for a in args):
            continue
        if "--limit" in args:
            args[args.index("--limit") + 1] = "1"
        outputs = cwm(args + (["--quiet"] if args[:2] == ["agent", "run"] else []), tmp_path)
        if args[:2] == ["eval", "swe-local"]:
            assert outputs.strip().splitlines()[-1] == "score: 1.0000", outputs
        elif args[:2] == ["agent", "run"]:
            assert "resolved: true" in outputs, outputs
    assert len((tmp_path / "runs/agent/sft.jsonl").read_text().splitlines()) == 1
