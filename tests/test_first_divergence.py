"""scripts/first_divergence.py: the first wrong step of a predicted trace, classed, on a real trace
whose copies are altered by hand (one kind of mistake each)."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from cwm.eval.metrics import score_trace
from cwm.trace import trace_call

SOURCE = """def total(items):
    acc = 0
    for x in items:
        acc += x
    return acc
"""

spec = importlib.util.spec_from_file_location("first_divergence", Path(__file__).parents[1] / "scripts/first_divergence.py")
first_divergence = importlib.util.module_from_spec(spec)
spec.loader.exec_module(first_divergence)


def kind_of(pred, real):
    score = score_trace(pred, real)
    return first_divergence.classify(pred, real, score.first_divergence, SOURCE, score.valid)


@pytest.fixture(scope="module")
def real():
    trace = trace_call(SOURCE, "total([4, 5])")
    frames = trace.frames[1:]  # the evaluations score the frames after the call
    # acc = 0 / for / acc += x / for / acc += x / for / return acc / return
    assert [f.source.strip() for f in frames][:3] == ["acc = 0", "for x in items:", "acc += x"]
    return frames


def replaced(frames, i, **changes):
    out = list(frames)
    out[i] = dataclasses.replace(out[i], **changes)
    return out


def test_each_kind_of_first_mistake_is_named(real):
    assert kind_of(real, real) == "right to the end"
    assert kind_of(real[:3], real) == "ended early"
    assert kind_of(real + real[-1:], real) == "went on past the real end"
    assert kind_of(replaced(real, 1, source="    return acc\n"), real) == "action: another line of the program"
    assert kind_of(replaced(real, 1, source="    for x in itms:\n"), real) == "action: a line not in the program"
    assert kind_of(replaced(real, 1, event="return", locals=None, value="0"), real) == "action: return instead of line"
    assert kind_of(replaced(real, 3, locals={**real[3].locals, "acc": "5"}), real) == "state: a value the step computed"
    assert kind_of(replaced(real, 3, locals={**real[3].locals, "items": "[4]"}), real) == "state: a value that should be unchanged"
    assert kind_of(replaced(real, 3, locals={"itms": "[4, 5]", "acc": "4", "x": "4"}), real) == "state: the variables' names"
    assert kind_of(replaced(real, len(real) - 1, value="8"), real) == "state: the return value"
