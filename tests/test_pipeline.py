"""The whole flow of DESIGN.md through the real CLI, at toy size: train a tokenizer, build trace and
code datasets, pack them, train a model whose loss falls, then use the checkpoint (which carries its
tokenizer) in the neural debugger and the trace evaluation."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cwm(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "cwm", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


def test_tokenizer_data_train_debug_eval(tmp_path):
    cwm("tokenizer", "train", "--corpus", ROOT / "src/cwm/trace", "--vocab-size", 512, "--out", "tok", cwd=tmp_path)
    cwm("data", "build", "--source", "synth:length=3,nesting=1", "--n", 48, "--out", "traces", "--quiet", cwd=tmp_path)
    cwm("data", "build", "--source", f"code:{ROOT / 'src/cwm/model'}", "--out", "code", "--quiet", cwd=tmp_path)
    cwm("data", "pack", "--tokenizer", "tok", "--input", "traces=traces:0.7", "--input", "code=code:0.3",
        "--out", "packed", "--seq-len", 129, cwd=tmp_path)
    assert (tmp_path / "packed/tokenizer.json").is_file()

    cwm("train", "--config", ROOT / "configs/smoke.toml", "data.train=['packed']", "data.valid=[]",
        "model.overrides={vocab_size = 768, n_layers = 2}", "train.out_dir='run'", "train.max_steps=40",
        "train.device='cpu'", "eval.every=0", cwd=tmp_path)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < 0.8 * losses[0], losses
    final = tmp_path / "run/final"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()

    out = cwm("debug", ROOT / "examples/collatz.py", "--call", "collatz_steps(3)", "--model", final,
              "--auto", "--max-steps", 4, "--report", "report.html", cwd=tmp_path)
    assert "real frames: 64" in out and "predicted frames:" in out
    assert "collatz_steps" in (tmp_path / "report.html").read_text()

    out = cwm("eval", "trace", "--data", "traces", "--model", final, "--limit", 2, "--max-new-tokens", 64,
              "--out", "results.json", cwd=tmp_path)
    score = float(out.strip().splitlines()[-1].removeprefix("score: "))
    assert 0.0 <= score <= 1.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["items"] if "items" in results else results["per_item"]) == 2
