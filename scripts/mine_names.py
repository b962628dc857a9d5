"""Mine realistic identifiers from the standard library's sources into src/cwm/data/names.txt.

    .venv/bin/python scripts/mine_names.py            # rewrites src/cwm/data/names.txt

The `real` data source (cwm.data.realistic) names its functions, parameters, variables, classes
and attributes with these. The list is shipped, so a build never depends on the Python version
that runs it; this script is how it was made (rerun it to refresh it, and commit the result).

Kept: snake_case names of 2-16 ASCII letters/digits/underscores, no leading underscore, no
keyword or builtin (a variable named `len` would break the code around it), seen in at least
MIN_FILES files (1 for classes, which few files share), the most frequent first, at most LIMIT per kind. Kinds:
  func   names of top-level and nested functions
  param  parameter names (not self/cls)
  var    local variables (assigned, loop targets) inside functions
  attr   attribute names set as self.NAME inside classes
  cls    CamelCase class names (1-3 words)
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
import sysconfig
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "cwm" / "data" / "names.txt"
LIMIT = {"func": 600, "param": 500, "var": 700, "attr": 400, "cls": 250}
MIN_FILES = {"func": 3, "param": 3, "var": 3, "attr": 3, "cls": 1}
SNAKE = re.compile(r"^[a-z][a-z0-9_]{1,15}$")
CAMEL = re.compile(r"^(?:[A-Z][a-z]{1,9}){1,3}$")
EXCLUDED = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | {
    "self", "cls", "main", "f", "args", "kwargs", "kw", "kwds", "os", "sys", "re", "np", "string", "copy",
    "time", "math", "random", "types", "io", "json", "ast", "socket", "select", "signal", "errno", "io",
}  # fmt: skip


def mine(root: Path) -> dict[str, Counter]:
    """kind -> Counter of name -> number of files it appears in."""
    found = {kind: Counter() for kind in LIMIT}
    for path in sorted(root.rglob("*.py")):
        # tests, vendored and generated code, and the ~120 codec modules (their getregentry/encode/decode
        # would top every list) do not count
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "encodings") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        seen = {kind: set() for kind in LIMIT}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                seen["cls"].add(node.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seen["func"].add(node.name)
                seen["param"].update(a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs)
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                        seen["var"].add(inner.id)
                    elif (isinstance(inner, ast.Attribute) and isinstance(inner.ctx, ast.Store)
                          and isinstance(inner.value, ast.Name) and inner.value.id == "self"):
                        seen["attr"].add(inner.attr)
        for kind, names in seen.items():
            pattern = CAMEL if kind == "cls" else SNAKE
            found[kind].update(n for n in names if pattern.match(n) and n not in EXCLUDED and "__" not in n)
    return found


def main() -> None:
    found = mine(Path(sysconfig.get_paths()["stdlib"]))
    lines = ["# Identifiers mined from the Python standard library by scripts/mine_names.py: KIND NAME."]
    for kind, limit in LIMIT.items():
        ranked = sorted((n for n, c in found[kind].items() if c >= MIN_FILES[kind]), key=lambda n: (-found[kind][n], n))
        lines += [f"{kind} {name}" for name in ranked[:limit]]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} {sum(1 for l in lines if l.startswith(k + ' '))}" for k in LIMIT))


if __name__ == "__main__":
    main()
