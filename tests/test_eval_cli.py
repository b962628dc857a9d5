"""`cwm eval` end to end: CruxEval in trace mode (oracles over real traces of the benchmark's
programs), and both commands through the CLI with a real tiny untrained model."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from conftest import make_tiny_checkpoint
from cwm.backends import Sampling
from cwm.eval import cli
from cwm.eval.cruxeval import DEFAULT_DATA, load_cruxeval, run_cruxeval, trace_context
from cwm.eval.oracle import OracleBackend, OracleSet
from cwm.tokenizer.tracetext import MARKER
from cwm.trace import trace_call

DATA = DEFAULT_DATA  # the copy inside the package


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tok)


def real_trace(item):
    context = trace_context(item["code"], item["input"])
    trace = trace_call(context.replace(MARKER, ""), "main()")
    assert trace.status == "ok" and trace.source == context
    return trace


def test_trace_mode_with_oracles(tok):
    items = load_cruxeval(DATA, limit=4)
    traces = [real_trace(item) for item in items]
    exact = OracleSet(tok, [OracleBackend.from_trace(tok, t.source, t.frames) for t in traces])
    results = run_cruxeval(exact, items, "trace", 1, Sampling(max_new_tokens=8000))
    assert results["aggregates"]["pass@1"] == 1.0
    assert [s["answer"] for r in results["items"] for s in r["samples"]] == [t.return_value for t in traces]

    # Item 2's oracle returns a wrong final value from main; item 3's trace is cut before main returns.
    wrong = [t.frames for t in traces]
    wrong[2] = wrong[2][:-1] + [dataclasses.replace(wrong[2][-1], value="'nope'")]
    wrong[3] = wrong[3][:-1]
    faulty = OracleSet(tok, [OracleBackend.from_trace(tok, t.source, f) for t, f in zip(traces, wrong)])
    results = run_cruxeval(faulty, items, "trace", 1, Sampling(max_new_tokens=8000))
    assert [r["correct"] for r in results["items"]] == [1, 1, 0, 0]
    assert results["aggregates"]["pass@1"] == 0.5


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cruxeval_cli_with_a_tiny_model(checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = run_cli(["cruxeval", "--mode", "trace", "--model", str(checkpoint), "--limit", "2",
                    "--max-new-tokens", "16", "--data", str(DATA), "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    results = json.loads(out.read_text())
    assert code == 0 and printed[-1] == f"score: {results['aggregates']['pass@1']:.4f}"
    assert results["config"]["mode"] == "trace" and len(results["items"]) == 2
    # An untrained model does not finish a trace in 16 tokens: each sample says why it has no answer.
    assert all(s["answer"] is None and s["error"] for r in results["items"] for s in r["samples"])


def test_cruxeval_cli_direct_mode_samples(checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run_cli(["cruxeval", "--model", str(checkpoint), "--limit", "1", "--samples", "2",
                    "--max-new-tokens", "8", "--data", str(DATA), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["aggregates"]) == {"pass@1", "pass@2", "problems", "failed"} and results["config"]["temperature"] == 0.2
    assert len(results["items"][0]["samples"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("score: ")


def test_trace_cli_on_a_built_dataset(checkpoint, tmp_path, capsys):
    from cwm.data.build import BuildParams, build

    programs = tmp_path / "programs.jsonl"
    programs.write_text("\n".join(json.dumps(p) for p in [
        {"source": "def f(x):\n    y = x * 2\n    return y\n", "call": "f(4)"},
        {"source": "def g(s):\n    return s.upper()\n", "call": "g('a')"},
    ]))
    dataset = tmp_path / "ds"
    build(dataset, BuildParams(source=f"programs:{programs}", split="eval"), progress=False)
    out = tmp_path / "results.json"
    import torch

    threads = torch.get_num_threads()
    try:
        assert run_cli(["trace", "--data", str(dataset), "--model", str(checkpoint), "--mode", "teacher",
                        "--max-new-tokens", "12", "--out", str(out), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert len(results["items"]) == 2 and results["mode"] == "teacher"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"score: {results['aggregates']['state']:.4f}"


def test_user_errors_are_one_line(tmp_path, capsys):
    assert run_cli(["trace", "--data", str(tmp_path), "--model", str(tmp_path)]) == 2
    assert run_cli(["cruxeval", "--server", "http://127.0.0.1:9"]) == 2  # no --tokenizer
    assert run_cli(["cruxeval", "--model", "m", "--server", "http://x"]) == 2
    assert run_cli(["cruxeval", "--context", "64"]) == 2  # the shipped local model's context is its own
    assert run_cli(["cruxeval", "--constrain-actions"]) == 2  # direct mode has no frames
    assert run_cli(["cruxeval", "--threads", "0"]) == 2
    assert run_cli(["trace", "--data", str(DATA.parent), "--constrain-actions", "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 7 and "--threads must be at least 1" in err and "--constrain-actions runs in this process" in err and "Traceback" not in err and "--context (at least 2 tokens) is for --server" in err
    assert not list(Path.cwd().glob("eval-cruxeval-*.jsonl"))  # a run that failed to start leaves no results file
