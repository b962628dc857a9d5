"""Trace prediction scored end to end: real programs traced for real, oracle backends that replay
those traces (exactly, or with one deliberate fault), and hand-counted expected scores.

The main example is f(3) calling g(3, 2), wrapped in main() as the evaluations do. Its real trace
has 10 frames; frame 0 (main's call) is given, so 9 steps are scored:
  1 line main `return f(3)`  2 call f  3 line `y = g(x, 2)`  4 call g  5 line `return a * b`
  6 return g "6"  7 line `return y`  8 return f "6"  9 return main "6"
"""

import copy
from pathlib import Path

import pytest

from cwm.backends import Sampling
from cwm.eval.metrics import aggregate
from cwm.eval.oracle import OracleBackend, OracleSet
from cwm.eval.traces import Case, evaluate_case, run_traces
from cwm.tokenizer.tracetext import MARKER, entry_context, frames_ids
from cwm.trace import trace_call

PROGRAM = "def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    return y\n"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAMPLING = Sampling(max_new_tokens=4000)


def real_case(program: str, call: str) -> Case:
    context = entry_context(program, call)
    trace = trace_call(context.replace(MARKER, ""), "main()")
    assert trace.status == "ok" and trace.source == context
    return Case(call, context, trace.frames)


@pytest.fixture(scope="module")
def case():
    c = real_case(PROGRAM, "f(3)")
    assert [f.event for f in c.frames] == ["call", "line", "call", "line", "call", "line", "return", "line", "return", "return"]
    return c


def scores(tok, case, frames, mode, frame_ids=None):
    oracle = OracleBackend.from_trace(tok, case.context, frames)
    if frame_ids is not None:
        oracle.frame_ids = frame_ids
    prediction, score = evaluate_case(oracle, case, mode, SAMPLING)
    return prediction, score


@pytest.mark.parametrize("mode", ["free", "teacher"])
def test_oracle_replaying_the_real_trace_scores_one(tok, mode):
    cases = [real_case(PROGRAM, "f(3)"), real_case((EXAMPLES / "collatz.py").read_text(), "collatz_steps(6)"),
             real_case("def h(s):\n    try:\n        return int(s)\n    except ValueError:\n        return -1\n", "h('x')")]
    oracle = OracleSet(tok, [OracleBackend.from_trace(tok, c.context, c.frames) for c in cases])
    results = run_traces(oracle, cases, mode, SAMPLING)
    agg = results["aggregates"]
    assert {k: agg[k] for k in ("valid", "action", "state", "output", "action_aligned", "state_aligned")} == \
        dict.fromkeys(("valid", "action", "state", "output", "action_aligned", "state_aligned"), 1.0)
    assert agg["diverged"] == 0 and results["headline"] == "state"


@pytest.mark.parametrize("mode", ["free", "teacher"])
def test_one_wrong_local(tok, case, mode):
    frames = copy.deepcopy(case.frames)
    frames[5].locals["a"] = "4"  # line `return a * b` sees a == 4
    _, s = scores(tok, case, frames, mode)
    assert (s.valid, s.action, s.state, s.output, s.first_divergence) == (1, 1, 8 / 9, True, 4)


@pytest.mark.parametrize("mode", ["free", "teacher"])
def test_wrong_return_value(tok, case, mode):
    frames = copy.deepcopy(case.frames)
    frames[9].value = "7"
    _, s = scores(tok, case, frames, mode)
    assert (s.valid, s.action, s.state, s.output, s.first_divergence) == (1, 1, 8 / 9, False, 8)


def test_one_skipped_step_free_running(tok, case):
    frames = copy.deepcopy(case.frames)
    del frames[3]  # the model never runs `y = g(x, 2)` as its own step
    _, s = scores(tok, case, frames, "free")
    # By position only steps 1-2 line up; states also agree by chance at 4 (line g vs call g:
    # same locals) and 8 (return main vs return f: both "6"). Step 9 is missing.
    assert (s.action, s.state) == (2 / 9, 4 / 9)
    assert (s.action_aligned, s.state_aligned) == (8 / 9, 8 / 9)  # alignment loses only the skipped step
    assert (s.valid, s.output, s.first_divergence) == (1, True, 2)


def test_malformed_frame(tok, case):
    ids = frames_ids(tok, case.context, case.frames)
    ids[5] = [tok.line_sep_id] + tok.encode('{"a": "3", "b"') + [tok.frame_sep_id]  # broken JSON, no action
    prediction, s = scores(tok, case, case.frames, "free", frame_ids=ids)
    # Free-running: the parse stops at the broken frame; frames 1-4 survive.
    assert prediction.error and len(prediction.frames) == 4
    assert (s.valid, s.action, s.state, s.output, s.first_divergence) == (0, 4 / 9, 4 / 9, False, 4)
    # Teacher-forced: only step 5 is lost; the others are predicted from the real prefix.
    prediction, s = scores(tok, case, case.frames, "teacher", frame_ids=ids)
    assert (s.valid, s.action, s.state, s.output, s.first_divergence) == (8 / 9, 8 / 9, 8 / 9, True, 4)


def test_aggregate_over_perturbed_oracles(tok, case):
    wrong = copy.deepcopy(case.frames)
    wrong[9].value = "7"
    results = [scores(tok, case, f, "free")[1] for f in (case.frames, wrong)]
    agg = aggregate(results)
    assert agg["output"] == 0.5 and agg["state"] == pytest.approx((1 + 8 / 9) / 2)
    assert agg["accuracy_by_step"] == [1] * 8 + [0.5]


def test_action_lines_allow_exactly_the_programs_lines(tok, case):
    from cwm.tokenizer.tracetext import ActionLines
    from cwm.trace.format import source_lines

    allowed = ActionLines(tok, case.context)
    lines = set(source_lines(case.context))
    assert allowed([]) is None and allowed(tok.encode("x = 1")) is None  # no action begun: free
    sep = [tok.frame_sep_id, tok.action_sep_id]
    assert set(allowed(sep)) == {tok.encode(line)[0] for line in lines}
    # walk one line token by token: each is allowed, and once it is complete the text is free again
    line = "    y = g(x, 2)\n"
    ids = tok.encode(line)
    for k, t in enumerate(ids):
        assert t in allowed(sep + ids[:k])
    assert allowed(sep + ids) is None and allowed(sep + ids + [tok.frame_sep_id]) is None
    assert allowed(sep + tok.encode("    y = h(")) is None  # off the program (a prompt that was): free
    # the marker's line is the action the trace writes: `def main():`, not the comment
    assert "def main():\n" in lines and not any("START_OF_TRACE" in line for line in lines)


def test_constrained_actions_are_always_program_lines():
    """The shipped cwm-mini, teacher-forced on a real trace: with --constrain-actions every action it
    writes is a line of the program (its lineno is found), and the results say it was constrained."""
    from cwm.backends import open_backend
    from cwm.trace.format import source_lines

    backend = open_backend()
    c = real_case((EXAMPLES / "collatz.py").read_text(), "collatz_steps(6)")
    c.frames = c.frames[:12]
    results = run_traces(backend, [c], "teacher", Sampling(max_new_tokens=200), constrain=True)
    predicted = results["items"][0]["predicted"]
    assert results["constrained"] and len(predicted) == 11
    lines = set(source_lines(c.context))
    assert all(f["event"] == "invalid" or (f["source"] in lines and f["lineno"] > 0) for f in predicted), predicted


def test_a_server_refuses_a_constraint(tok):
    """A constraint is Python run on each token here: an HTTP backend says so instead of ignoring it."""
    from cwm.backends import CONSTRAINT_NEEDS_LOCAL, BackendError, HTTPBackend

    backend = HTTPBackend(url="http://127.0.0.1:9", tokenizer=tok)  # nothing listens: no request is made
    with pytest.raises(BackendError, match="runs in this process"):
        backend.complete([1, 2], sampling=Sampling(constraint=lambda tokens: None))
    assert "--server" in CONSTRAINT_NEEDS_LOCAL
