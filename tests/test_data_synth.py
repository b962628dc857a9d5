"""The synthetic program generator: seeded, diverse, every program parses and runs within budget."""

import ast
import statistics

import pytest

from cwm.data.stats import PROMISED, node_kinds
from cwm.data.synth import Knobs, generate, generate_one, runs_within


@pytest.fixture(scope="module")
def programs():
    return generate(seed=0, n=150)


def test_same_seed_same_programs_and_prefix_stable(programs):
    again = generate(seed=0, n=40)
    assert again == programs[:40]  # program i depends on (seed, i) only, not on n
    other = generate(seed=1, n=40)
    assert len({p.source for p in other} & {p.source for p in again}) == 0


def test_every_program_parses_and_runs_within_the_budget(programs):
    for p in programs:
        tree = ast.parse(p.source)
        assert any(isinstance(n, ast.FunctionDef) and n.name == "f" for n in tree.body)
        assert p.call.startswith("f(")
        assert runs_within(p, Knobs().max_events), p.source


def test_the_set_covers_every_promised_construct(programs):
    covered = set().union(*(node_kinds(p.source) for p in programs))
    assert [k for k in PROMISED if k not in covered] == []
    # recursion: some module-level function calls itself
    assert any("rec" in p.source for p in programs)
    # exceptions both raised and caught
    assert any("raise ValueError" in p.source for p in programs)


def _depth(node, level=0, is_elif=False):
    """Nesting of for/while/if blocks (an elif, a one-line guard `if c: break` and try add none)."""
    guard = isinstance(node, ast.If) and len(node.body) == 1 and not node.orelse
    level += isinstance(node, (ast.If, ast.For, ast.While)) and not guard and not is_elif
    elif_ = node.orelse[0] if isinstance(node, ast.If) and len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If) else None
    return max([_depth(c, level, c is elif_) for c in ast.iter_child_nodes(node)], default=level)


def _f(program):
    return next(n for n in ast.parse(program.source).body if isinstance(n, ast.FunctionDef) and n.name == "f")


def test_difficulty_knobs_change_the_programs():
    easy = generate(3, 30, Knobs(length=3, nesting=1, values=5))
    hard = generate(3, 30, Knobs(length=12, nesting=3, values=500))
    lines = lambda ps: statistics.mean(len(p.source.splitlines()) for p in ps)  # noqa: E731
    assert lines(hard) > 2 * lines(easy)
    assert max(_depth(_f(p)) for p in easy) <= 1
    assert max(_depth(_f(p)) for p in hard) == 3
    ints = lambda ps: max(abs(n.value) for p in ps for n in ast.walk(ast.parse(p.call)) if isinstance(n, ast.Constant) and type(n.value) is int)  # noqa: E731
    assert ints(easy) <= 5 < ints(hard)


def test_a_candidate_that_runs_too_long_is_rejected():
    from cwm.data.synth import Program

    looping = Program("def f(n):\n    while n < 10**9:\n        n += 1\n    return n\n", "f(0)")
    assert not runs_within(looping, 1000)
    raising = Program("def f(x):\n    return 1 // x\n", "f(0)")
    assert not runs_within(raising, 1000)
    # and the generator never emits such: with a tiny budget it still returns checked programs
    small = generate_one(5, 0, Knobs(max_events=60))
    assert runs_within(small, 60)


def test_bad_knobs_name_the_problem():
    with pytest.raises(ValueError, match="bad synth knob 'depth=3'"):
        Knobs.parse("depth=3")
    assert Knobs.parse("length=8,values=50") == Knobs(length=8, values=50)
