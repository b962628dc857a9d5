"""Evaluation sets as programs, kept out of training: loading, normalising, decontaminating.

An evaluation set (CruxEval) loads only as *evaluation* programs: `cwm data build --split train`
refuses it, and every training build drops each program whose normalised source equals an
evaluation program's (see `normalize_source` for what "equal" means; docs/data.md says why).
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import types
from pathlib import Path

from cwm.data.synth import Program

EVAL_SETS = ("cruxeval",)


class EvaluationOnlyError(ValueError):
    """An evaluation set was asked for in a training build."""


def evaluation_programs(name: str, path: str | Path | None = None) -> list[Program]:
    """The programs of an evaluation set, each with its benchmark call (`f(<input>)`)."""
    if name != "cruxeval":
        raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}")
    from cwm.eval.cruxeval import load_cruxeval  # the benchmark's one loader

    return [Program(item["code"] + "\n", f"f({item['input']})", f"cruxeval:{item['id']}") for item in load_cruxeval(path)]


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
    """Source with comments, docstrings, annotations, layout and identifier names made canonical.

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
