"""Evaluation sets stay out of training: refused by train builds, and their programs deduplicated."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cwm.data.build import BuildParams, make_plan
from cwm.data.evalsets import EvaluationOnlyError, evaluation_programs, function_shape, normalize_source, source_key

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CRUXEVAL = SHARED / "data" / "cruxeval" / "cruxeval.jsonl"
needs_cruxeval = pytest.mark.skipif(not CRUXEVAL.is_file(), reason=f"no CruxEval at {CRUXEVAL}")


def test_normalisation_ignores_names_comments_docstrings_and_layout():
    a = "def f(nums):\n    out = []\n    for n in nums:  # each\n        out.append(n * 2)\n    return out\n"
    b = 'def double_all(xs):\n    """Doubles."""\n    result = []\n    for x in xs:\n        result.append(x*2)\n    return result'
    c = "def f(nums):\n    out = []\n    for n in nums:\n        out.append(n * 3)\n    return out\n"
    assert normalize_source(a) == normalize_source(b)
    assert source_key(a) == source_key(b) != source_key(c)
    assert normalize_source("def f(:") is None


@needs_cruxeval
def test_normalising_keeps_the_function_shape_that_rules_programs_out_early():
    from cwm.data.synth import generate_compiled

    shape = lambda source: function_shape(compile(source, "<p>", "exec"))  # noqa: E731
    programs = evaluation_programs("cruxeval", CRUXEVAL)
    assert all(shape(normalize_source(p.source)) == shape(p.source) for p in programs)
    renamed = programs[0].source.replace("def f(nums)", "def tally(values)").replace("nums", "values")
    assert shape(renamed) == shape(programs[0].source)
    assert shape("def f(a, *, b=1):\n    g = lambda x: x\n    def h(c):\n        return c\n    return h\n") == (1, 2)
    # most synthetic programs are ruled out by their shape alone
    shapes = {shape(p.source) for p in programs}
    ruled_out = sum(function_shape(generate_compiled(0, i)[1]) not in shapes for i in range(100))
    assert ruled_out > 50


@needs_cruxeval
def test_cruxeval_loads_as_programs_with_their_benchmark_call():
    programs = evaluation_programs("cruxeval", CRUXEVAL)
    assert len(programs) == 800
    first = json.loads(CRUXEVAL.read_text().splitlines()[0])
    assert programs[0].call == f"f({first['input']})"
    assert programs[0].origin == "cruxeval:sample_0"
    namespace = {}
    exec(programs[0].source, namespace)
    assert repr(eval(programs[0].call, namespace)) == first["output"]


def test_a_training_build_refuses_an_evaluation_set(tmp_path):
    with pytest.raises(EvaluationOnlyError, match="evaluation set"):
        BuildParams(source="eval:cruxeval").check()
    run = subprocess.run(
        [sys.executable, "-m", "cwm", "data", "build", "--source", "eval:cruxeval", "--out", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert "is an evaluation set and cannot be used for training" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "d").exists()


@needs_cruxeval
def test_training_programs_equal_to_an_evaluation_program_are_dropped(tmp_path):
    sample = json.loads(CRUXEVAL.read_text().splitlines()[0])
    # the same function as CruxEval's sample_0, renamed, reformatted and commented, among others
    copied = sample["code"].replace("def f(nums)", "def tally(values)").replace("nums", "values")
    copied = copied.replace("output", "pairs") + "  # a comment\n"
    (tmp_path / "mod.py").write_text(copied + "\n\ndef add(a: int, b: int):\n    return a + b\n")
    plan = make_plan(BuildParams(source=f"dir:{tmp_path}", seed=0))
    assert {p.origin.split(":")[1] for p in plan.items} == {"add"}
    assert plan.counts["contaminated"] >= 1
    # without decontamination the copy would have been kept
    plan = make_plan(BuildParams(source=f"dir:{tmp_path}", seed=0, decontaminate=()))
    assert {p.origin.split(":")[1] for p in plan.items} == {"add", "tally"}
