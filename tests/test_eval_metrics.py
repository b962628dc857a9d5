"""Trace metrics on hand-built frame lists, with hand-counted expectations.

The trace is the spec's example (f(3) calling g(3, 2)), seven frames:
  0 call f   1 line `y = g(x, 2)`   2 call g   3 line `return a * b`   4 return g "6"
  5 line `return y`   6 return f "6"
"""

import copy

import pytest

from cwm.eval.cruxeval import pass_at_k
from cwm.eval.metrics import aggregate, score_trace
from cwm.trace.format import Frame


def real_frames():
    return [
        Frame("call", 4, "def f(x):  # << START_OF_TRACE\n", {"x": "3"}),
        Frame("line", 5, "    y = g(x, 2)\n", {"x": "3"}),
        Frame("call", 1, "def g(a, b):\n", {"a": "3", "b": "2"}, depth=1),
        Frame("line", 2, "    return a * b\n", {"a": "3", "b": "2"}, depth=1),
        Frame("return", 2, "    return a * b\n", None, "6", depth=1),
        Frame("line", 6, "    return y\n", {"x": "3", "y": "6"}),
        Frame("return", 6, "    return y\n", None, "6"),
    ]


def test_identical_trace_scores_one_everywhere():
    s = score_trace(real_frames(), real_frames())
    assert (s.valid, s.output, s.action, s.state, s.action_aligned, s.state_aligned) == (True, True, 1, 1, 1, 1)
    assert s.first_divergence is None and s.step_ok == [True] * 7


def test_marker_and_trailing_newline_do_not_change_the_action():
    pred = real_frames()
    pred[0].source = "def f(x):"  # the model left out the marker and the newline
    assert score_trace(pred, real_frames()).action == 1


def test_one_wrong_local():
    pred = real_frames()
    pred[3].locals = {"a": "4", "b": "2"}
    s = score_trace(pred, real_frames())
    assert (s.action, s.state, s.state_aligned, s.output, s.first_divergence) == (1, 6 / 7, 6 / 7, True, 3)


def test_one_skipped_step_position_versus_alignment():
    pred = real_frames()
    del pred[3]
    s = score_trace(pred, real_frames())
    # By position, steps 3..5 compare shifted frames and step 6 is missing: only 0..2 match.
    assert (s.action, s.state) == (3 / 7, 3 / 7)
    # By alignment, the six frames that exist line up with their real steps.
    assert (s.action_aligned, s.state_aligned) == (6 / 7, 6 / 7)
    assert s.first_divergence == 3 and s.output


def test_extra_step_counts_against_the_trace():
    pred = real_frames()
    pred.insert(2, copy.deepcopy(pred[1]))
    s = score_trace(pred, real_frames())
    assert s.steps == 8 and s.action_aligned == 7 / 8 and s.first_divergence == 2


def test_wrong_return_value():
    pred = real_frames()
    pred[6].value = "7"
    s = score_trace(pred, real_frames())
    assert (s.output, s.state, s.action, s.first_divergence) == (False, 6 / 7, 1, 6)


def test_invalid_and_empty_prediction():
    s = score_trace([], real_frames(), valid=False)
    assert (s.valid, s.output, s.action, s.state, s.first_divergence) == (False, False, 0, 0, 0)


def test_aggregate_means_and_accuracy_by_step():
    good = score_trace(real_frames(), real_frames())
    pred = real_frames()
    pred[3].locals = {"a": "4", "b": "2"}
    bad = score_trace(pred, real_frames())
    agg = aggregate([good, bad])
    assert agg["traces"] == 2 and agg["state"] == pytest.approx((1 + 6 / 7) / 2)
    assert agg["accuracy_by_step"] == [1, 1, 1, 0.5, 1, 1, 1]
    assert agg["diverged"] == 1 and agg["mean_first_divergence"] == 3


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 0, 1) == 0 and pass_at_k(5, 5, 3) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(1 / 4)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 / 4) * (2 / 3))  # 1 - C(3,2)/C(4,2)
    with pytest.raises(ValueError, match="at least 3 samples"):
        pass_at_k(2, 1, 3)
