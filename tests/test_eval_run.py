"""Evaluations never die on one long item: prompts checked against the context, new tokens capped at
the context left, over-long items recorded as failed with a reason; items written as they finish
and resumed; progress with n/total, rate and ETA; the raw text of every malformed frame kept;
CruxEval's generations end as soon as the answer is complete."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from conftest import make_tiny_checkpoint
from cwm.backends import Completion, Sampling, TooLong, fit, split_stops
from cwm.eval import cli
from cwm.eval.cruxeval import answer_by_trace, load_cruxeval, trace_context
from cwm.eval.oracle import OracleBackend
from cwm.eval.run import ResultsLog
from cwm.eval.traces import Case, evaluate_case, run_traces
from cwm.tokenizer.tracetext import MARKER, context_ids, entry_context, frames_ids
from cwm.trace import trace_call

CONTEXT = 160  # the small tiny model's context: SHORT's trace prompts fit (~70 tokens), LONG's do not (~900)
BIG = 1024  # the other one's: CruxEval's direct prompts fit (~450-600 tokens), LONG's does not (~1,300)
SHORT = "def f(x):\n    y = x * 2\n    return y\n"
LONG = "def g(s):\n" + "".join(f"    s = s + '{i}' * {i % 7 + 1}  # step {i}\n" for i in range(40)) + "    return s\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tok, max_seq_len=CONTEXT)


@pytest.fixture(scope="module")
def big(tmp_path_factory, tok):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-big"), tok, max_seq_len=BIG)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from cwm.data.build import BuildParams, build

    tmp = tmp_path_factory.mktemp("ds")
    programs = tmp / "programs.jsonl"
    programs.write_text("\n".join(json.dumps(p) for p in [
        {"source": SHORT, "call": "f(4)"}, {"source": LONG, "call": "g('a')"}, {"source": SHORT, "call": "f(5)"}]))
    build(tmp / "ds", BuildParams(source=f"programs:{programs}", split="eval"), progress=False)
    return tmp / "ds"


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def real_case(program, call):
    context = entry_context(program, call)
    return Case(call, context, trace_call(context.replace(MARKER, ""), "main()").frames)


def test_fit_caps_new_tokens_at_the_context_left():
    class Model:
        context_length = 100

    assert fit(Model(), 30, Sampling(max_new_tokens=1024)).max_new_tokens == 70
    assert fit(Model(), 30, Sampling(max_new_tokens=8)).max_new_tokens == 8
    with pytest.raises(TooLong, match=r"prompt longer than the context \(101 > 100 tokens\)"):
        fit(Model(), 101, Sampling())
    with pytest.raises(TooLong):
        fit(Model(), 100, Sampling())  # nothing left to generate
    assert fit(object(), 10**6, Sampling(max_new_tokens=5)).max_new_tokens == 5  # context unknown: unchecked


@pytest.mark.parametrize("mode", ["free", "teacher"])
def test_an_over_long_item_is_recorded_as_failed_and_the_rest_run(checkpoint, dataset, tmp_path, capsys, mode):
    out = tmp_path / "r.json"
    # The default max new tokens (1024) exceeds the context: each request is capped, none crashes
    # (teacher-forced: 8 a frame, to keep the test fast; its prompts are checked all the same).
    new = [] if mode == "free" else ["--max-new-tokens", "8"]
    assert run_cli(["trace", "--data", str(dataset), "--model", str(checkpoint), "--mode", mode, "--out", str(out), *new]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("score: ")
    results = json.loads(out.read_text())
    by_id = {item["id"]: item for item in results["items"]}
    assert len(by_id) == 3 and results["aggregates"]["failed"] == 1
    long = next(item for item in results["items"] if item["failed"])
    assert long["reason"].startswith("prompt longer than the context (") and long["reason"].endswith(f" > {CONTEXT} tokens)")
    assert long["score"]["state"] == 0 and long["predicted"] == []
    assert all(item["reason"] is None for item in results["items"] if not item["failed"])


def test_teacher_forced_steps_past_the_context_are_not_asked(tok):
    case = real_case(SHORT, "f(4)")
    oracle = OracleBackend.from_trace(tok, case.context, case.frames)
    prompts = [len(tracetext_prompt(tok, case, k)) for k in range(1, len(case.frames))]
    oracle.context_length = prompts[3]  # steps 1-3 fit (step 3 with just its frame's room); step 4's does not
    prediction, score = evaluate_case(oracle, case, "teacher", Sampling(max_new_tokens=4000))
    assert prediction.frames[:3] == case.frames[1:4] and len(prediction.frames) == len(case.frames) - 1
    assert prediction.reason.startswith(f"steps 4-{len(case.frames) - 1} not asked: prompt longer than the context")
    assert score.state == 3 / (len(case.frames) - 1)


def tracetext_prompt(tok, case, k):
    return context_ids(tok, case.context) + [t for ids in frames_ids(tok, case.context, case.frames)[:k] for t in ids]


def test_cruxeval_over_long_items_fail_with_a_reason_in_both_modes(checkpoint, big, tmp_path, capsys):
    data = tmp_path / "crux.jsonl"
    data.write_text("\n".join(json.dumps(item) for item in [
        {"id": "short", "code": "def f(x):\n    return x + 1", "input": "1", "output": "2"},
        {"id": "long", "code": LONG.replace("def g", "def f"), "input": "'a'", "output": "''"}]))
    # trace mode: 2000 new tokens asked, capped at the context left; direct mode: the big model
    for mode, model, new in (("trace", checkpoint, "2000"), ("direct", big, "8")):
        out = tmp_path / f"{mode}.json"
        assert run_cli(["cruxeval", "--mode", mode, "--model", str(model), "--data", str(data),
                        "--max-new-tokens", new, "--out", str(out)]) == 0
        results = json.loads(out.read_text())
        long = results["items"][1]
        assert results["aggregates"]["failed"] == 1 and long["failed"] and long["correct"] == 0
        assert long["samples"][0]["reason"].startswith("prompt longer than the context (")
        assert not results["items"][0]["failed"] and results["items"][0]["samples"][0]["reason"] is None
    assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 0.0000"


def test_items_are_written_as_they_finish_and_a_rerun_resumes(big, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["cruxeval", "--model", str(big), "--max-new-tokens", "4", "--out", str(out)]
    assert run_cli(argv + ["--limit", "2"]) == 0
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["max_new_tokens"] == 4 and len(lines) == 3
    # Mark the first item: a resumed run keeps it as it is (it is not asked again); cut the last
    # line in half, as a kill while writing it would: that item is asked again.
    first = json.loads(lines[1]) | {"gold": "kept"}
    (tmp_path / "r.jsonl").write_text("\n".join([lines[0], json.dumps(first), lines[2][:20]]) + "\n")
    capsys.readouterr()
    assert run_cli(argv + ["--limit", "3"]) == 0
    assert "resuming: 1 done" in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert [item["id"] for item in results["items"]] == ["sample_0", "sample_1", "sample_2"]
    assert results["items"][0]["gold"] == "kept" and results["items"][1]["gold"] != "kept"
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 4
    # Other settings are refused with one line naming them; --fresh starts over.
    assert run_cli(argv[:-2] + ["--max-new-tokens", "5", "--out", str(out), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens: 4 there, 5 now" in err and "--fresh" in err and err.count("\n") == 1
    assert run_cli(argv + ["--limit", "1", "--fresh"]) == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2
    assert json.loads(out.read_text())["items"][0]["gold"] != "kept"


def test_results_log_keeps_items_on_disk_at_once(tmp_path):
    log = ResultsLog(tmp_path / "x.jsonl", {"a": 1})
    log.add({"id": "one", "v": 1})
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[1]) == {"id": "one", "v": 1}  # flushed
    log.close()
    (tmp_path / "y.jsonl").write_text("not a results file\n")
    with pytest.raises(ValueError, match="not a results file"):
        ResultsLog(tmp_path / "y.jsonl", {"a": 1})


def test_progress_shows_n_of_total_rate_and_eta_on_stderr(big, tmp_path):
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "cwm", "eval", "cruxeval", "--model", str(big), "--limit", "2",
                          "--max-new-tokens", "2", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "2/2" in run.stderr and ("items/s" in run.stderr or "s/item" in run.stderr) and "ETA" in run.stderr
    assert "2/2" not in run.stdout and run.stdout.strip().splitlines()[-1].startswith("score: ")


def test_the_raw_text_of_malformed_frames_is_kept(tok, tmp_path):
    case = real_case("def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    return y\n", "f(3)")
    broken = [tok.line_sep_id] + tok.encode('{"a": "3", "b"') + [tok.frame_sep_id]  # broken JSON, no action
    oracle = OracleBackend.from_trace(tok, case.context, case.frames)
    oracle.frame_ids = frames_ids(tok, case.context, case.frames)
    oracle.frame_ids[5] = broken
    for mode in ("free", "teacher"):
        prediction, _ = evaluate_case(oracle, case, mode, Sampling(max_new_tokens=4000))
        assert prediction.malformed == [{"step": 5, "text": tok.decode(broken)}], mode
    results = run_traces(oracle, [case], "teacher", Sampling(max_new_tokens=4000),
                         log=ResultsLog(tmp_path / "r.jsonl", {}))
    assert results["items"][0]["malformed"] == [{"step": 5, "text": tok.decode(broken)}]
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[1])["malformed"][0]["text"] == tok.decode(broken)


class ScriptedModel:
    """Stands in for a model that writes a real trace and then keeps going (as an under-trained
    model does): it continues a fixed token stream from where the prompt leaves it, honouring stop
    tokens and max_new_tokens as a backend does, and counts the tokens it generates."""

    def __init__(self, tok, prompt, stream):
        self.tokenizer, self.prompt, self.stream, self.generated = tok, prompt, stream, 0

    def complete(self, prompt, stop=(), sampling=Sampling()):
        start = len(prompt) - len(self.prompt)
        assert prompt[:len(self.prompt)] == self.prompt and prompt[len(self.prompt):] == self.stream[:start]
        stop_ids, _ = split_stops(self.tokenizer, stop)
        tokens = []
        for t in self.stream[start:start + sampling.max_new_tokens]:
            tokens.append(t)
            if t in stop_ids:
                break
        self.generated += len(tokens)
        return Completion(tokens, self.tokenizer.decode(tokens), "stop" if tokens[-1:] and tokens[-1] in stop_ids else "length")


def test_cruxeval_trace_mode_stops_at_mains_return_or_the_first_malformed_frame(tok):
    item = load_cruxeval(limit=1)[0]
    context = trace_context(item["code"], item["input"])
    real = trace_call(context.replace(MARKER, ""), "main()").frames
    ids = frames_ids(tok, context, real)
    garbage = [t for frame in ids[1:] for t in frame] * 3  # the model writes on after main returned
    stream = [t for frame in ids[1:] for t in frame] + garbage
    prompt = context_ids(tok, context) + ids[0]
    model = ScriptedModel(tok, prompt, stream)
    answer, detail = answer_by_trace(model, item, Sampling(max_new_tokens=len(stream)))
    assert answer == real[-1].value and detail["error"] is None
    assert model.generated == len(stream) - len(garbage)  # not one token past main's return frame
    # A budget that ends before main returns (here: after two whole frames) gives no answer, and says why.
    model = ScriptedModel(tok, prompt, stream)
    budget = len(ids[1]) + len(ids[2])
    answer, detail = answer_by_trace(model, item, Sampling(max_new_tokens=budget))
    assert answer is None and model.generated == budget
    assert detail["error"] == f"the entry did not return within {budget} tokens"
    # A frame that does not parse ends the generation there: no answer can follow it.
    broken = [tok.line_sep_id] + tok.encode('{"a": ') + [tok.frame_sep_id]
    stream = ids[1] + broken + [t for frame in ids[2:] for t in frame]
    model = ScriptedModel(tok, prompt, stream)
    answer, detail = answer_by_trace(model, item, Sampling(max_new_tokens=len(stream)))
    assert answer is None and model.generated == len(ids[1]) + len(broken) and detail["error"]
    assert detail["malformed"] == [{"step": 2, "text": tok.decode(broken)}]


def test_direct_mode_stops_at_the_end_of_the_answer_line(big, tok):
    from cwm.backends import LocalBackend
    from cwm.eval.cruxeval import answer_directly

    backend = LocalBackend.from_dir(big)
    item = {"id": "x", "code": "def f(x):\n    return x", "input": "1", "output": "1"}
    _, detail = answer_directly(backend, item, Sampling(max_new_tokens=64))
    generation = detail["generation"]
    assert "\n" not in generation[:-1]  # one line at most: a newline ends it
