"""The debugger against the release: a server that answers like serve/fgserve.py (finish_reason
always "length", no /health, temperature 0 a division by zero), and the demo mode where the
model predicts the entry call frame itself (demos/cwmdbg.py)."""

import argparse

import pytest

from conftest import DEBUG_PROGRAM as PROGRAM
from conftest import make_tiny_checkpoint, serving, serving_like_fgserve
from cwm.backends import NEAR_GREEDY_TEMPERATURE, HTTPBackend, LocalBackend, Sampling
from cwm.debugger import cli
from cwm.debugger.session import Session, mark_entry, prepare
from cwm.eval.metrics import action_of, state_of
from cwm.eval.oracle import OracleBackend
from cwm.eval.traces import Case, predict_teacher_forced
from cwm.tokenizer.tracetext import context_ids
from cwm.trace import trace_call


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tok, max_seq_len=1024)


def same(a, b):
    return (action_of(a), state_of(a)) == (action_of(b), state_of(b))


def test_debugger_and_eval_work_against_a_server_like_fgserve(tok, prepared):
    """Every frame is complete although the server says "length"; no temperature 0 is sent."""
    context, real = prepared
    with serving_like_fgserve(OracleBackend.from_trace(tok, context, real)) as (url, received):
        backend = HTTPBackend(url, tok)
        s = Session(backend, context, real=real, sampling=Sampling(max_new_tokens=64))  # greedy
        while not s.done:
            s.step()
        assert all(st.error is None for st in s.steps) and len(s.steps) == len(real)
        assert all(same(st.frame, r) for st, r in zip(s.steps, real)) and s.first_divergence() is None
        s.reset()
        s.step()
        s.next()  # call f, forced return (its value), then main's return
        assert [st.frame.event for st in s.steps] == ["call", "line", "call", "return", "return"]
        assert s.steps[3].frame.value == "6"
        forced = predict_teacher_forced(backend, Case("f", context, real), Sampling(max_new_tokens=64))
        assert forced.valid == 1.0 and forced.error is None and all(map(same, forced.frames, real[1:]))
        assert not backend.is_cwm_serve()
        assert received and {r["temperature"] for r in received} == {NEAR_GREEDY_TEMPERATURE}
        assert {r["stop"] for r in received} == {"<|frame_sep|>"}
        # a user's temperature goes as it is
        Session(backend, context, real=real, sampling=Sampling(temperature=0.3, top_p=0.95)).step()
        assert received[-1]["temperature"] == 0.3


def test_greedy_stays_greedy_on_cwm_serve(checkpoint, prepared):
    """`cwm serve` says who it is on /health: temperature 0 is sent as 0 and means greedy there, so
    a session through it is identical to one on the local model."""
    local = LocalBackend.from_dir(checkpoint)
    context, real = prepared
    with serving(local) as url:
        http = HTTPBackend(url, local.tokenizer)
        assert http.is_cwm_serve()
        runs = []
        for backend in (local, http):
            s = Session(backend, context, real=real, sampling=Sampling(max_new_tokens=24))
            s.step()
            runs.append([st.ids for st in s.steps])
        assert runs[0] == runs[1]


def test_a_tiny_model_behind_a_server_like_fgserve(checkpoint, prepared):
    """A real model behind the fgserve-like server: the same frames (near-greedy = greedy) as locally."""
    local = LocalBackend.from_dir(checkpoint)
    context, real = prepared
    with serving_like_fgserve(local) as (url, received):
        runs = []
        for backend in (local, HTTPBackend(url, local.tokenizer)):
            s = Session(backend, context, real=real, sampling=Sampling(max_new_tokens=24))
            s.step()
            s.back()
            s.next()
            runs.append([(st.ids, st.error) for st in s.steps])
        assert runs[0] == runs[1] and all(r["temperature"] > 0 for r in received)


# --- demo mode: the model predicts the entry call -------------------------------------------


def test_mark_entry():
    marked = mark_entry(PROGRAM, "f")
    assert "def f(x):  # << START_OF_TRACE\n" in marked and marked.count("START_OF_TRACE") == 1
    assert mark_entry(marked) == marked  # a file that marks its entry is used as it is
    with pytest.raises(ValueError, match="marks no entry"):
        mark_entry(PROGRAM)
    with pytest.raises(ValueError, match="no function 'h'"):
        mark_entry(PROGRAM, "h")
    with pytest.raises(ValueError, match="already marks an entry at line 4"):
        mark_entry(marked, "g")
    with pytest.raises(ValueError, match="not both"):
        prepare(PROGRAM, "f(3)", entry="f")


def test_demo_mode_predicts_the_call_frame(tok):
    """The first request is the context (ending in <|frame_sep|>) plus a forced <|call_sep|>; the
    frame the model writes (here a model that knows the run f(3)) is parsed with its arguments."""
    context, real, note = prepare(PROGRAM, None, entry="f")
    assert real is None and "demo mode" in note
    frames = trace_call(PROGRAM, "f(3)").frames
    with serving_like_fgserve(OracleBackend.from_trace(tok, context, frames)) as (url, received):
        s = Session(HTTPBackend(url, tok), context, sampling=Sampling(max_new_tokens=64), predict_entry=True)
        first = context_ids(tok, context)
        assert first[-1] == tok.frame_sep_id and received[0]["prompt"] == first + [tok.call_sep_id]
        assert s.current.frame.event == "call" and s.current.frame.locals == {"x": "3"}
        assert s.given == 0 and len(s.steps) == 1
        while not s.done:
            s.step()
        assert [st.frame.source for st in s.steps] == [f.source for f in frames]
        s.reset()  # asks for the call frame again
        assert len(s.steps) == 1 and received[-1]["prompt"] == first + [tok.call_sep_id]


def parse(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_demo_mode_cli_with_a_tiny_model(checkpoint, tmp_path, capsys):
    """`cwm debug FILE` on a file that marks its entry: the untrained model's call frame is
    requested and shown (malformed, most likely) and the session goes on to the summary."""
    path = tmp_path / "prog.py"
    path.write_text(mark_entry(PROGRAM, "f"))
    report = tmp_path / "r.html"
    code = cli.run(parse([str(path), "--model", str(checkpoint), "--auto", "--max-frame-tokens", "16",
                          "--max-steps", "2", "--report", str(report)]))
    out = capsys.readouterr().out
    assert code == 0 and "demo mode" in out and "predicted frames: 1" in out and "real trace: not available" in out
    assert "<pre class='raw'>" in report.read_text()  # the malformed call frame's raw text
    path.write_text(PROGRAM)
    assert cli.run(parse([str(path), "--model", str(checkpoint)])) == 2
    assert "marks no entry" in capsys.readouterr().err
