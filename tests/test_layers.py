"""The package's layers point only down, and no two packages import each other.

Every module under src/cwm is parsed (no import is run): each import statement, at module level
or inside a function, names a module of cwm or not. A module of cwm may import its own package,
and the layers below its own:

    base       cwm (the package's __init__), cwm.progress
    trace      the tracer and the trace format
    sandbox    running untrusted code
    tokenizer  token ids, prompts, the trace text a model reads and writes
    model      the network, generation, checkpoints; cwm.models (the shipped checkpoint)
    data       program sources, the dataset builder and reader, packing
    train      the trainer
    backends   one interface to a model (local or HTTP), cwm.backends
    apps       eval, debugger, agent, serve: siblings, which import each other only through
               the public modules in PUBLIC
    entry      cwm.cli and cwm.__main__: the command line dispatch

A package's command line (`cwm.<package>.cli`, `..._cli`) is an entry point: it sits in the apps
layer, so it may import any layer below the apps (`cwm trace` runs programs in the sandbox).
README.md ("Layers") states the rule; a new package must be given its layer here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = {
    "cwm": 0, "cwm.progress": 0,
    "cwm.trace": 1,
    "cwm.sandbox": 2,
    "cwm.tokenizer": 3,
    "cwm.model": 4, "cwm.models": 4,
    "cwm.data": 5,
    "cwm.train": 6,
    "cwm.backends": 7,
    "cwm.eval": 8, "cwm.debugger": 8, "cwm.agent": 8, "cwm.serve": 8,
    "cwm.cli": 9, "cwm.__main__": 9,
}  # fmt: skip
APPS = 8

# Modules of an app that other apps may import, each with its reason.
PUBLIC = {
    "cwm.eval.metrics": "the trace metrics: the debugger scores and aligns its predictions as the evaluation does",
    "cwm.agent.bench": "the local SWE benchmark's tasks and a policy's run on them: `cwm eval swe-local`",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: Path
    line: int
    target: str  # the module of cwm imported


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> list[Import]:
    """Every import of a module of cwm by a module under root/cwm (ast only: nothing is imported)."""
    modules = {module_name(p, root): p for p in sorted((root / "cwm").rglob("*.py"))}
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from a import b`: b is the module a.b if there is one, else a name in a
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                targets = [node.args[0].value]
            else:
                continue
            found += [Import(name, path, node.lineno, t) for t in dict.fromkeys(targets) if t.split(".")[0] == "cwm"]
    return found


def unit(module: str) -> str:
    """The layered unit of a module: its entry in LAYERS (the longest prefix that has one)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise KeyError(module)


def is_entry_point(module: str) -> bool:
    last = module.rpartition(".")[2]
    return unit(module) not in ("cwm.cli", "cwm.__main__") and (last == "cli" or last.endswith("_cli"))


def layer(module: str) -> int:
    return APPS if is_entry_point(module) else LAYERS[unit(module)]


def violations(found: list[Import]) -> list[str]:
    out = []
    for imp in found:
        if unit(imp.module) == unit(imp.target):
            continue  # within a package
        here, there = layer(imp.module), LAYERS[unit(imp.target)]
        where = f"{imp.path.relative_to(imp.path.parents[len(imp.module.split('.'))])}:{imp.line}"
        if there > here:
            out.append(f"{where}: {imp.module} (layer {here}) imports {imp.target} (layer {there}), a higher layer")
        elif there == here == APPS and imp.target not in PUBLIC:
            out.append(f"{where}: {imp.module} imports {imp.target}, a sibling's module at its own layer "
                       f"(apps import each other only through {sorted(PUBLIC)})")
    return out


def package_cycles(found: list[Import]) -> list[list[str]]:
    """Cycles in the graph of imports between units (packages and top-level modules)."""
    edges: dict[str, set[str]] = {}
    for imp in found:
        a, b = unit(imp.module), unit(imp.target)
        if a != b and not is_entry_point(imp.module):
            edges.setdefault(a, set()).add(b)
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


# ---------------------------------------------------------------------------------------------
# The package


def test_every_module_has_a_layer():
    names = {module_name(p, SRC) for p in (SRC / "cwm").rglob("*.py")}
    unknown = []
    for name in sorted(names):
        try:
            unit(name)
        except KeyError:
            unknown.append(name)
    assert not unknown, f"modules in no layer (give their package one in tests/test_layers.py LAYERS): {unknown}"


@pytest.fixture(scope="module")
def found() -> list[Import]:
    return imports(SRC)


def test_every_import_points_down(found):
    problems = violations(found)
    assert not problems, "imports against the layers (README.md, Layers):\n" + "\n".join(problems)


def test_no_import_cycles_between_packages(found):
    cycles = package_cycles(found)
    assert not cycles, "packages that import each other: " + "; ".join(" -> ".join(c) for c in cycles)


def test_public_modules_exist():
    names = {module_name(p, SRC) for p in (SRC / "cwm").rglob("*.py")}
    assert set(PUBLIC) <= names, f"PUBLIC names modules that are gone: {sorted(set(PUBLIC) - names)}"


# ---------------------------------------------------------------------------------------------
# The checker itself, on a made-up package: it must see what it is meant to see


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "cwm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checker_sees_upward_sibling_and_cyclic_imports(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "trace/__init__.py": "from cwm.trace import format\n",
        "trace/format.py": "",
        "trace/cli.py": "from cwm.sandbox import run\n",  # an entry point: allowed
        "sandbox/__init__.py": "from ..trace.format import x\n",  # relative, down: allowed
        "data/__init__.py": "",
        "data/build.py": "import json\n\ndef f():\n    from cwm.eval import cruxeval  # up, in a function\n",
        "eval/__init__.py": "",
        "eval/cruxeval.py": "from cwm.data import build\n",
        "eval/metrics.py": "",
        "debugger/__init__.py": "",
        "debugger/view.py": "from cwm.eval.metrics import score\nfrom cwm.eval import cruxeval\n",
        "model/__init__.py": "import importlib\nimportlib.import_module('cwm.train.trainer')\n",
        "train/__init__.py": "",
        "train/trainer.py": "",
    })  # fmt: skip
    problems = violations(imports(root))
    assert len(problems) == 3, problems
    assert "data/build.py:4: cwm.data.build (layer 5) imports cwm.eval.cruxeval (layer 8)" in problems[0]
    assert "debugger/view.py:2: cwm.debugger.view imports cwm.eval.cruxeval, a sibling's module" in problems[1]
    assert "cwm.model (layer 4) imports cwm.train.trainer (layer 6)" in problems[2]
    assert package_cycles(imports(root)) == [["cwm.data", "cwm.eval", "cwm.data"]]


# ---------------------------------------------------------------------------------------------
# Reading traces needs no compiled tracer

_BLOCK_C = """
import importlib.abc, sys

class Unbuilt(importlib.abc.MetaPathFinder):  # as if pip had not compiled _ctrace.c
    def find_spec(self, name, path=None, target=None):
        if name == "cwm.trace._ctrace":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Unbuilt())
"""


def _without_c(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_C + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def test_eval_metrics_imports_without_the_c_tracer():
    run = _without_c("""
        import cwm.eval.metrics, cwm.trace, cwm.trace.format
        from cwm.trace import Frame
        frames = [Frame("call", 1, "def f():\\n", {}), Frame("return", 2, "    return 1\\n", None, "1")]
        print(cwm.eval.metrics.score_trace(frames, frames).state, "cwm.trace._ctrace" in sys.modules)
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1.0", "False"]


@pytest.mark.parametrize("code", ["from cwm.trace import trace_call", "import cwm.trace.recorder"])
def test_tracing_without_the_c_tracer_says_how_to_build_it(code):
    run = _without_c(code)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("ImportError: cwm's C tracer is not built"), run.stderr
    assert "pip install -e ." in run.stderr
