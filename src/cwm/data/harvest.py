"""Harvest real functions from a directory of Python files and synthesise inputs for them.

`harvest(root, seed)` reads every `*.py` under root (in sorted order), keeps the top-level
functions that are self-contained (they use only their parameters, builtins and other kept
functions of the same module, which come along as helpers) and free of obvious side effects,
and writes calls for them from, in order of trust:

  1. doctest examples that call the function with literal arguments;
  2. the defaults, when every parameter has one;
  3. values picked per parameter from its default, its annotation, literals in the body, its
     name (`n`, `text`, `items`, ...) and a small fuzzing pool, with a rng seeded by (seed, name).

Everything here is static, so the candidate list is a deterministic function of (root, seed).
Whether a candidate *runs* deterministically within the limits is decided when it is traced
(the builder runs harvested programs twice and compares; see cwm.data.build).
"""

from __future__ import annotations

import ast
import builtins
import doctest
import os
import random
import sysconfig
from pathlib import Path

from cwm.data.synth import Program

# Builtins that touch the outside world, or whose results differ from run to run.
UNSAFE_NAMES = frozenset(
    "open input exec eval compile __import__ globals locals vars breakpoint exit quit help id hash "
    "memoryview setattr delattr object type super classmethod staticmethod property".split()
)
_BUILTINS = frozenset(dir(builtins)) - UNSAFE_NAMES
_FORBIDDEN_NODES = (
    ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.Yield, ast.YieldFrom, ast.Await,
    ast.AsyncFunctionDef, ast.ClassDef, ast.With, ast.AsyncWith, ast.AsyncFor,
)  # fmt: skip
_ATTRIBUTE_DENY = frozenset({"system", "remove", "unlink", "rmdir", "write", "kill", "exit", "_exit"})

# Values by type name (annotations) and by parameter name (when unannotated).
_BY_TYPE = {
    "int": ["0", "1", "2", "7", "-3", "10", "100"],
    "float": ["0.0", "0.5", "2.5", "-1.25"],
    "str": ["''", "'a'", "'abc'", "'Hello, World'", "'a,b,c'", "'  spaced  '", "'x1y2'"],
    "bytes": ["b''", "b'abc'", "b'\\x00\\xff'"],
    "bool": ["True", "False"],
    "list": ["[]", "[1, 2, 3]", "[3, 1, 2]", "['a', 'b']"],
    "tuple": ["()", "(1, 2)", "('a', 1)"],
    "dict": ["{}", "{'a': 1, 'b': 2}"],
    "set": ["set()", "{1, 2, 3}"],
}
_NAME_HINTS = [
    (("n", "i", "j", "k", "count", "size", "num", "index", "width", "length", "pos", "level"), "int"),
    (("s", "text", "string", "name", "word", "line", "prefix", "suffix", "sep", "path", "char"), "str"),
    (("items", "values", "seq", "lst", "data", "args", "elements", "nums", "iterable", "list"), "list"),
    (("flag", "strict", "verbose", "reverse"), "bool"),
    (("mapping", "dict", "table", "kwargs", "d"), "dict"),
]


def default_root(spec: str) -> Path:
    """`stdlib` means the standard library installed with this interpreter; anything else is a path."""
    return Path(sysconfig.get_paths()["stdlib"]) if spec == "stdlib" else Path(spec)


MAX_FILE_BYTES = 1_000_000  # larger files (generated tables, vendored blobs) are not code to learn from


def python_files(root: Path) -> list[Path]:
    """Every *.py under root, sorted, skipping test suites and site-packages (not our corpus), and
    anything that leads out of the tree: directories reached through a symlink are not walked
    (their files are reached by their real path, or are outside), and a file that is a symlink is
    kept only if it resolves inside root."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of Python files")
    skip = {"test", "tests", "site-packages", "idlelib", "__pycache__", "lib2to3"}
    real_root = os.path.realpath(root)
    found = []
    for folder, dirs, names in os.walk(root):  # followlinks=False: symlinked directories are listed, not entered
        dirs[:] = [d for d in dirs if d not in skip]
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".py") and (not os.path.islink(path) or _is_inside(os.path.realpath(path), real_root)):
                found.append(Path(path))
    return sorted(found)


def _is_inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def read_sources(root: Path) -> list[tuple[str, str]]:
    """(path relative to root, text) of each of root's python_files that is at most MAX_FILE_BYTES
    and UTF-8; the others are skipped. Only read here: parsing them is for a sandbox (in_sandbox)."""
    sources = []
    for path in python_files(root):
        try:
            if path.stat().st_size <= MAX_FILE_BYTES:
                sources.append((path.relative_to(root).as_posix(), path.read_bytes().decode("utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return sources


def in_sandbox(fn, items: list, batch: int = 64) -> list:
    """[fn(item) for item in items], computed in sandboxes (cwm.sandbox), a batch of items per
    run, because the items are untrusted source: parsing or compiling it can take gigabytes (a
    50 MB file) or overflow the parser's stack, and must not do so in this process. An item whose
    fn raises gives None; a batch whose run fails (memory, time, a crash) is run again in halves,
    so only the item that fails alone gives None and its neighbours keep their results."""
    from cwm.sandbox import run_function

    def each(part):
        results = []
        for item in part:
            try:
                results.append(fn(item))
            except Exception:  # RecursionError, MemoryError, SyntaxError, ...: this item only
                results.append(None)
        return results

    def run(part):
        result = run_function(each, part)
        if result.ok and isinstance(result.value, list) and len(result.value) == len(part):
            return result.value
        if len(part) == 1:
            return [None]
        return run(part[: len(part) // 2]) + run(part[len(part) // 2 :])

    return [value for start in range(0, len(items), batch) for value in run(items[start : start + batch])]


def harvest(root: str | Path, seed: int = 0, calls_per_function: int = 3) -> list[Program]:
    root = default_root(str(root))
    found = in_sandbox(lambda source: _harvest_file(source[0], source[1], seed, calls_per_function), read_sources(root))
    return [Program(*fields) for programs in found if programs for fields in programs]


def _harvest_file(rel: str, text: str, seed: int, calls_per_function: int) -> list[tuple[str, str, str]]:
    """(source, call, origin) of each program harvested from one file (runs in a sandbox)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    programs = []
    for fn, helpers in _self_contained(tree):
        source = "\n\n".join(ast.get_source_segment(text, f) or "" for f in [*helpers, fn]) + "\n"
        rng = random.Random(f"cwm-harvest:{seed}:{rel}:{fn.name}")
        for call in _calls(fn, rng, calls_per_function):
            programs.append((source, call, f"{rel}:{fn.name}"))
    return programs


def _free_names(fn: ast.FunctionDef) -> set[str] | None:
    """Names fn reads but never binds; None when fn uses a construct we do not harvest."""
    bound = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    loaded = set()
    for node in ast.walk(fn):
        if isinstance(node, _FORBIDDEN_NODES) or (node is not fn and isinstance(node, ast.FunctionDef)):
            return None
        if isinstance(node, ast.Attribute) and (node.attr in _ATTRIBUTE_DENY or node.attr.startswith("__")):
            return None
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)  # lambda parameters
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def _self_contained(tree: ast.Module) -> list[tuple[ast.FunctionDef, list[ast.FunctionDef]]]:
    """(function, helpers it needs) for each harvestable top-level function of a module."""
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.decorator_list}
    free = {name: _free_names(fn) for name, fn in functions.items()}
    result = []
    for name, fn in functions.items():
        needed, todo, ok = [], [name], True
        while todo and ok:
            current = todo.pop()
            names = free[current]
            if names is None:
                ok = False
                break
            for other in sorted(names - _BUILTINS):
                if other not in functions:
                    ok = False
                elif other != name and functions[other] not in needed:
                    needed.append(functions[other])
                    todo.append(other)
        if ok and not name.startswith("_test"):
            result.append((fn, needed))
    return result


def _calls(fn: ast.FunctionDef, rng: random.Random, limit: int) -> list[str]:
    args = fn.args  # *args and **kwargs are left empty
    params = args.posonlyargs + args.args
    defaults = [None] * (len(params) - len(args.defaults)) + list(args.defaults)
    calls = []
    calls += _doctest_calls(fn)
    if all(d is not None for d in defaults):
        calls.append(f"{fn.name}()")
    literals = _body_literals(fn)
    for _ in range(limit * 3):
        values = [_value(p, d, literals, rng) for p, d in zip(params, defaults)]
        values += [f"{a.arg}={_value(a, None, literals, rng)}" for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
        calls.append(f"{fn.name}({', '.join(values)})")
    return list(dict.fromkeys(calls))[:limit]  # unique, first (most trusted) kept


def _doctest_calls(fn: ast.FunctionDef) -> list[str]:
    doc = ast.get_docstring(fn) or ""
    calls = []
    try:
        examples = doctest.DocTestParser().get_examples(doc)
    except ValueError:  # a docstring that is not valid doctest (inconsistent indentation): no examples
        return calls
    for example in examples:
        try:
            node = ast.parse(example.source.strip(), mode="eval").body
        except SyntaxError:
            continue
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == fn.name
            and all(_is_literal(a) for a in node.args) and all(_is_literal(k.value) for k in node.keywords)
        ):  # fmt: skip
            calls.append(ast.unparse(node))
    return calls


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _body_literals(fn: ast.FunctionDef) -> dict[str, list[str]]:
    pool: dict[str, list[str]] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Constant) and type(node.value) in (int, str) and len(repr(node.value)) < 40:
            pool.setdefault(type(node.value).__name__, []).append(repr(node.value))
    return pool


def _type_name(annotation: ast.AST | None) -> str | None:
    """'int' for `int`, 'list' for `list[int]` / `List[int]`, the first member of `X | None`."""
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # "int" as a string
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(annotation, ast.BinOp):  # X | None
        return _type_name(annotation.left)
    if isinstance(annotation, ast.Subscript):
        outer = _type_name(annotation.value)
        if outer == "optional":
            return _type_name(annotation.slice)
        return outer
    if isinstance(annotation, ast.Name):
        return annotation.id.lower()
    if isinstance(annotation, ast.Attribute):
        return annotation.attr.lower()
    return None


def _value(param: ast.arg, default: ast.AST | None, literals: dict[str, list[str]], rng: random.Random) -> str:
    if default is not None and _is_literal(default):
        if rng.random() < 0.5:
            return ast.unparse(default)
        kind = type(ast.literal_eval(default)).__name__  # the default's type is the best hint
    else:
        kind = _type_name(param.annotation)
    if kind not in _BY_TYPE:
        kind = next((k for names, k in _NAME_HINTS if param.arg.lower() in names), None)
    if kind not in _BY_TYPE:
        kind = rng.choice(["int", "str", "list"])
    pool = _BY_TYPE[kind] + literals.get(kind, [])
    return rng.choice(pool)
