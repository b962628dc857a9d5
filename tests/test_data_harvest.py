"""Harvesting real functions and synthesising their inputs (static: no tracer needed here)."""

import ast
import sysconfig
from pathlib import Path

from cwm.data.harvest import harvest

MODULE = '''
import os

LIMIT = 10


def double(x: int):
    """Twice x.

    >>> double(21)
    42
    """
    return 2 * x


def greet(name="world", punctuation="!"):
    return "hello " + name + punctuation


def uses_helper(items: list[int]):
    return [double(i) for i in items if i > 3]


def reads_file(path):
    return open(path).read()


def uses_module(path):
    return os.path.basename(path)


def uses_global(n):
    return n + LIMIT


def imports_inside(text: str):
    import json
    return json.loads(text)


def generator(n):
    yield n


def counts(text):
    total = 0
    for ch in text:
        if ch == "z":
            total += 1
    return total
'''


def test_only_self_contained_side_effect_free_functions_are_kept(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("def f(:\n")  # not Python: skipped, not fatal
    programs = harvest(tmp_path, seed=0)
    names = {p.origin.split(":")[1] for p in programs}
    assert names == {"double", "greet", "uses_helper", "counts"}
    assert all(p.origin.startswith("pkg/mod.py:") for p in programs)
    by_name = {}
    for p in programs:
        by_name.setdefault(p.origin.split(":")[1], []).append(p)
    # a helper it calls comes along, so the program runs on its own
    helper_src = by_name["uses_helper"][0].source
    assert "def double" in helper_src and "def uses_helper" in helper_src
    # inputs: the doctest call first, then the defaults, then typed values
    assert by_name["double"][0].call == "double(21)"
    assert by_name["greet"][0].call == "greet()"
    for p in by_name["double"][1:]:
        (arg,) = ast.parse(p.call, mode="eval").body.args
        assert isinstance(ast.literal_eval(arg), int)  # from the `x: int` annotation
    for p in by_name["uses_helper"]:
        (arg,) = ast.parse(p.call, mode="eval").body.args
        assert isinstance(ast.literal_eval(arg), list)
    # literals of the body join the pool: "z" is a likely input for counts
    assert any("'z'" in p.call for p in harvest(tmp_path, seed=0, calls_per_function=30) if "counts" in p.origin)
    # every program is complete: it defines what its call needs (whether the inputs suit the
    # function is decided when it is traced)
    for p in programs:
        namespace = {}
        exec(p.source, namespace)
        try:
            eval(p.call, namespace)
        except (TypeError, ValueError):
            pass


def test_harvest_is_deterministic_and_seeded(tmp_path):
    (tmp_path / "mod.py").write_text(MODULE)
    assert harvest(tmp_path, seed=3) == harvest(tmp_path, seed=3)
    calls = lambda seed: [p.call for p in harvest(tmp_path, seed, calls_per_function=6)]  # noqa: E731
    assert calls(1) != calls(2)


def test_the_standard_library_is_a_real_corpus():
    root = Path(sysconfig.get_paths()["stdlib"]) / "email"
    programs = harvest(root, seed=0)
    assert len(programs) >= 20
    for p in programs:
        compile(p.source, p.origin, "exec")


def test_symlinks_that_leave_the_tree_are_skipped(tmp_path):
    from cwm.data.corpus import source_files

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("def leaked(x=1):\n    return x\n")
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("def inside(x=1):\n    return x + 1\n")
    (tree / "link.py").symlink_to(outside / "secret.py")  # a file out of the tree
    (tree / "linked_dir").symlink_to(outside, target_is_directory=True)  # a directory out of the tree
    (tree / "alias.py").symlink_to(tree / "pkg" / "mod.py")  # stays inside: kept
    names = {p.origin for p in harvest(tree)}
    assert names == {"pkg/mod.py:inside", "alias.py:inside"}
    assert [path for path, _ in source_files(str(tree))] == ["alias.py", "pkg/mod.py"]


def test_files_that_would_blow_up_the_parser_are_parsed_only_in_the_sandbox_and_dropped(tmp_path):
    import resource

    from cwm.data.corpus import source_files
    from cwm.data.harvest import MAX_FILE_BYTES

    (tmp_path / "good.py").write_text("def fine(x=2):\n    return x * 3\n")
    (tmp_path / "deep_parens.py").write_text("x = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n")
    (tmp_path / "deep_unary.py").write_text("def f(x=1):\n    return " + "-" * 100_000 + "x\n")  # MemoryError in the parser
    (tmp_path / "deep_subscript.py").write_text("def g(a=[0]):\n    return a" + "[0]" * 100_000 + "\n")  # RecursionError
    (tmp_path / "huge.py").write_text("def h(x=1):\n    return x\n" + "y = 1\n" * (MAX_FILE_BYTES // 6 + 1))  # over the size cap: not read
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert {p.origin for p in harvest(tmp_path)} == {"good.py:fine"}
    assert [path for path, _ in source_files(str(tmp_path))] == ["good.py"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing parsed here
