"""Bug-fix tasks from real code (SWE-smith style): mutate a package's source, keep what its tests catch.

    cwm agent tasks --out tasks.jsonl                   # the shipped benchmark's recipe
    cwm agent tasks --repo toolz==1.0.0 --sha256 H --pair toolz/dicttoolz.py:toolz/tests/test_dicttoolz.py ...

For each (module, test file) pair of a repository (a pure-Python sdist from the package registry,
pinned by name, version and sha256): run the test file on the pristine tree in the sandbox (its
PASSED tests are the candidates), then for mutation sites drawn with a seeded RNG: change one
spot of the module with `ast` (an operator, a comparison, a boolean operator, a constant, a
negated condition, a removed `if` branch, two swapped arguments), run the test file again in the
sandbox and keep the mutant only if FAIL_TO_PASS (passed before, not now) has >= 1 test and
PASS_TO_PASS (passed before and now) has >= 1 test (the file still imports and runs). The gold
patch is the reverse of the mutation; the issue text names the failing tests and their error
lines, never the change. With verify (default) each kept task is then graded through the same
path `cwm eval swe-local` uses: materialized, gold patch applied, tests run, SWE-bench's rules:
it must resolve, and the buggy tree must not.

Every test run is untrusted code and goes through cwm.sandbox.run_command.
"""

from __future__ import annotations

import ast
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwm.agent import swebench
from cwm.agent.task import (
    Task,
    TaskError,
    commit_tree,
    diff_files,
    git,
    materialize,
    pristine_tree,
)

# The command that runs one test file: no plugins (fast, and what the packages' tests need),
# no bytecode or cache files written into the repository (they would show up in a diff).
TEST_CMD = ("COLUMNS=200 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONDONTWRITEBYTECODE=1 {env}python -m pytest -rA "
            "-p no:cacheprovider --tb=short {test_file}")


@dataclass
class RepoSpec:
    """A pinned pure-Python sdist and the (module, test file) pairs to mutate and test."""

    name: str
    version: str
    sha256: str
    pairs: list[tuple[str, str]]
    env: str = ""  # shell assignments before python, e.g. "PYTHONPATH=src"
    tasks: int = 16  # how many verified tasks to make from it
    path: str | None = None  # a local directory instead of the sdist (sha256 then unused)

    @property
    def source(self) -> dict[str, str]:
        if self.path:
            return {"kind": "dir", "path": str(Path(self.path).resolve())}
        return {"kind": "pypi", "name": self.name, "version": self.version, "sha256": self.sha256}

    def test_cmd(self, test_file: str) -> str:
        return TEST_CMD.format(env=f"{self.env} " if self.env else "", test_file=test_file)


# The shipped benchmark (src/cwm/agent/data/swe_local.jsonl): `cwm agent tasks --out FILE` remakes it.
SHIPPED_REPOS = [
    RepoSpec("toolz", "1.0.0", "2c86e3d9a04798ac556793bced838816296a2f085017664e4995cb40a1047a02", [
        ("toolz/dicttoolz.py", "toolz/tests/test_dicttoolz.py"),
        ("toolz/itertoolz.py", "toolz/tests/test_itertoolz.py"),
        ("toolz/functoolz.py", "toolz/tests/test_functoolz.py"),
    ]),
    RepoSpec("cachetools", "8.0.2", "30ac523adfc118b51d2b2e7bad8a0ddb31370dfe2700c7f10ca224f36ccf81e0", [
        ("src/cachetools/__init__.py", "tests/test_lru.py"),
        ("src/cachetools/__init__.py", "tests/test_lfu.py"),
        ("src/cachetools/__init__.py", "tests/test_ttl.py"),
        ("src/cachetools/keys.py", "tests/test_keys.py"),
    ], env="PYTHONPATH=src"),
    RepoSpec("boltons", "26.2.0", "d39cfd15c1a1c3bd4d705c82252fa9edb8e4f5e8cc039f8e39afac7b1b47e92c", [
        ("boltons/strutils.py", "tests/test_strutils.py"),
        ("boltons/iterutils.py", "tests/test_iterutils.py"),
        ("boltons/listutils.py", "tests/test_listutils.py"),
        ("boltons/mathutils.py", "tests/test_mathutils.py"),
    ]),
    RepoSpec("inflection", "0.5.1", "1a29730d366e996aaacffb2f1f1cb9593dc38e2ddd30c91250c6dde09ea9b417", [
        ("inflection/__init__.py", "test_inflection.py"),
    ], tasks=10),
]


# ---------------------------------------------------------------------------------------------
# Mutations: each is one edit of a span of the source (ast gives the positions)


@dataclass
class Mutation:
    kind: str
    line: int  # 1-based line of the change
    start: int  # character offsets into the source
    end: int
    replacement: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end:]


_BINOPS = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "//"), ast.FloorDiv: ("//", "*"),
           ast.Div: ("/", "*"), ast.Mod: ("%", "//"), ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"),
           ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<")}
_CMPOPS = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
           ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"),
           ast.In: ("in", "not in"), ast.NotIn: ("not in", "in")}
_BOOLOPS = {ast.And: ("and", "or"), ast.Or: ("or", "and")}
KINDS = ("operator", "comparison", "boolean", "constant", "negation", "removed_branch", "swapped_args")


class _Offsets:
    """ast (line, UTF-8 column) positions as character offsets into the source."""

    def __init__(self, source: str):
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def __call__(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col].decode(errors="replace"))

    def span(self, node: Any) -> tuple[int, int]:  # an ast.expr or ast.stmt: positions known
        return self(node.lineno, node.col_offset), self(node.end_lineno, node.end_col_offset)


def _one_line(*nodes: Any) -> bool:
    return all(n.lineno == n.end_lineno for n in nodes) and len({n.lineno for n in nodes}) == 1


def _token_between(source: str, left: Any, right: Any, off: _Offsets, token: str) -> tuple[int, int] | None:
    """The span of `token` in the gap between two operands, if the gap holds only it (and parens)."""
    start, end = off(left.end_lineno, left.end_col_offset), off(right.lineno, right.col_offset)
    gap = source[start:end]
    if re.sub(r"[\s()]", "", gap) != token.replace(" ", ""):
        return None
    m = re.search(r"\s+".join(re.escape(t) for t in token.split()), gap)
    return (start + m.start(), start + m.end()) if m else None


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def mutations(source: str) -> list[Mutation]:
    """Every single-spot mutation of the code inside functions of `source`, in source order."""
    tree = ast.parse(source)
    off = _Offsets(source)
    out: list[Mutation] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body_nodes = [n for stmt in fn.body for n in ast.walk(stmt)]
        docstring = ast.get_docstring(fn, clean=False) is not None and fn.body[0]
        for node in body_nodes:
            out.extend(_node_mutations(source, node, off, docstring))
    unique = {(m.start, m.end, m.replacement): m for m in out}
    return sorted(unique.values(), key=lambda m: (m.start, m.end, m.replacement))


def _node_mutations(source: str, node: ast.AST, off: _Offsets, docstring) -> Iterator[Mutation]:
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS and _one_line(node):
        old, new = _BINOPS[type(node.op)]
        if not (_is_str(node.left) or _is_str(node.right)):  # no string concatenation or % formatting
            span = _token_between(source, node.left, node.right, off, old)
            if span:
                yield Mutation("operator", node.lineno, *span, new)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS and _one_line(node):
        old, new = _CMPOPS[type(node.ops[0])]
        span = _token_between(source, node.left, node.comparators[0], off, old)
        if span:
            yield Mutation("comparison", node.lineno, *span, new)
    elif isinstance(node, ast.BoolOp) and len(node.values) == 2 and _one_line(node):
        old, new = _BOOLOPS[type(node.op)]
        span = _token_between(source, node.values[0], node.values[1], off, old)
        if span:
            yield Mutation("boolean", node.lineno, *span, new)
    elif isinstance(node, ast.Constant) and node is not docstring and _one_line(node):
        start, end = off.span(node)
        if isinstance(node.value, bool):
            yield Mutation("constant", node.lineno, start, end, str(not node.value))
        elif isinstance(node.value, int) and source[start:end].isdigit():
            yield Mutation("constant", node.lineno, start, end, str(node.value + 1))
    elif isinstance(node, (ast.If, ast.While)) and _one_line(node.test):
        start, end = off.span(node.test)
        text = source[start:end]
        if isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not):
            inner_start, inner_end = off.span(node.test.operand)
            yield Mutation("negation", node.lineno, start, end, source[inner_start:inner_end])
        else:
            simple = isinstance(node.test, (ast.Name, ast.Attribute, ast.Call, ast.Compare, ast.Subscript))
            yield Mutation("negation", node.lineno, start, end, f"not {text}" if simple else f"not ({text})")
        if isinstance(node, ast.If) and not node.orelse:
            yield from _removed_branch(source, node, off)
    elif isinstance(node, ast.Call) and len(node.args) >= 2 and _one_line(node.args[0], node.args[1]):
        a, b = node.args[0], node.args[1]
        if not any(isinstance(x, ast.Starred) for x in (a, b)):
            (a0, a1), (b0, b1) = off.span(a), off.span(b)
            ta, tb = source[a0:a1], source[b0:b1]
            if ta != tb:
                yield Mutation("swapped_args", a.lineno, a0, b1, tb + source[a1:b0] + ta)


def _removed_branch(source: str, node: ast.If, off: _Offsets) -> Iterator[Mutation]:
    """Delete a whole `if` statement (no else) that shares its block with other statements."""
    last = node.end_lineno or node.lineno
    start, end = off(node.lineno, 0), off(last, 0) + len(off.lines[last - 1])
    if source[start:off(node.lineno, node.col_offset)].strip():
        return  # something before the `if` on its line
    yield Mutation("removed_branch", node.lineno, start, end, "")


def _valid(source: str, m: Mutation) -> bool:
    """The mutant compiles and differs from the original in its AST."""
    try:
        return ast.dump(ast.parse(m.apply(source))) != ast.dump(ast.parse(source))
    except SyntaxError:
        return False


# ---------------------------------------------------------------------------------------------
# Running tests (in the sandbox)


def passed_tests(status_map: dict[str, str]) -> set[str]:
    """Tests that PASSED, less ids the SWE-bench parser cannot carry (a space cut them short)."""
    return {t for t, s in status_map.items() if s == "PASSED" and ("[" not in t or t.endswith("]"))}


def failure_lines(log: str) -> dict[str, str]:
    """{test id: the first line of its error} from pytest's short summary (`FAILED id - msg`)."""
    out = {}
    for line in log.splitlines():
        m = re.match(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", line)
        if m:
            out[m.group(2)] = re.sub(r"0x[0-9a-fA-F]+", "0x...", (m.group(3) or "").strip())  # no run-to-run noise
    return out


def issue_text(spec_name: str, version: str, test_cmd: str, f2p: list[str], errors: dict[str, str]) -> str:
    shown = f2p[:5]
    lines = [f"Some tests of {spec_name} {version} fail", "",
             f"Running the tests with `{test_cmd}` at the repository root, {len(f2p)} test(s) fail:", ""]
    for t in shown:
        why = errors.get(t) or "fails"
        if len(why) > 240:
            why = why[:240] + " ..."
        lines.append(f"- `{t}`: {why}")
    if len(f2p) > len(shown):
        lines.append(f"- ... and {len(f2p) - len(shown)} more")
    lines += ["", ("These tests are right and must pass. Find the bug in the library code and fix it; "
              "do not change the tests.")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass
class GenStats:
    tried: int = 0  # mutants whose tests ran
    kept: int = 0  # FAIL_TO_PASS >= 1 and PASS_TO_PASS >= 1
    verified: int = 0  # and the gold patch resolves through the eval path (or verify off: = kept)
    seconds: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


def _instance_id(spec: RepoSpec, module: str, m: Mutation) -> str:
    stem = Path(module).stem if Path(module).stem != "__init__" else Path(module).parent.name
    return f"{spec.name}-{spec.version}__{stem}-L{m.line}-{m.kind}-{m.start}"


def generate(spec: RepoSpec, count: int | None = None, seed: int = 0, verify: bool = True,
             download: bool = True, max_tries: int | None = None, timeout: float = 60.0,
             log: Callable[[str], None] = lambda s: None, stats: GenStats | None = None) -> list[Task]:
    """Up to `count` (default spec.tasks) verified tasks from one repository; deterministic for a seed
    (given the same test outcomes). Sites are drawn round-robin over the pairs."""
    count = spec.tasks if count is None else count
    stats = stats if stats is not None else GenStats()
    rng = random.Random(f"{spec.name}=={spec.version}:{seed}")
    t0 = time.monotonic()
    tasks: list[Task] = []
    with tempfile.TemporaryDirectory(prefix="cwm-mutate-") as tmp:
        root = pristine_tree(spec.source, Path(tmp) / "repo", download)
        commit_tree(root)  # a scratch repository: `git status` tells what a test run left behind
        queues, baselines = [], {}
        for module, test_file in spec.pairs:
            for p in (module, test_file):
                if not (root / p).is_file():
                    raise TaskError(f"{spec.name}=={spec.version}: no file {p} in its source; fix the pair")
            if test_file not in baselines:
                base_log, status = swebench.run_tests(root, spec.test_cmd(test_file), timeout)
                _clean(root)
                passed = passed_tests(swebench.log_status_map(base_log)[0])
                if status not in ("ok", "exit") or not passed:  # tests failing here are left out
                    raise TaskError(f"{spec.name}: no test passes with `{spec.test_cmd(test_file)}` on the "
                                    f"pristine tree ({status}); pick another test file (or --env)")
                baselines[test_file] = passed
                log(f"{spec.name}: {test_file}: {len(passed)} tests pass on the pristine tree")
            source = (root / module).read_text()
            sites = [m for m in mutations(source) if _valid(source, m)]
            rng.shuffle(sites)
            queues.append((module, test_file, source, sites))
        limit = max_tries if max_tries is not None else 12 * count
        tries, seen = 0, set()
        while len(tasks) < count and tries < limit and any(q[3] for q in queues):
            for module, test_file, source, sites in queues:
                if len(tasks) >= count or tries >= limit or not sites:
                    continue
                m = sites.pop()
                if (module, m.start, m.end, m.replacement) in seen:  # the same module under another test file
                    continue
                seen.add((module, m.start, m.end, m.replacement))
                tries += 1
                task = _try_mutant(spec, root, module, test_file, source, m, baselines[test_file], stats, timeout)
                if task is not None and verify and not _verify(task, download, timeout):
                    stats.reject("not verified")
                    task = None
                if task is not None:
                    stats.verified += 1
                    tasks.append(task)
                    log(f"  kept {task.instance_id} (FAIL_TO_PASS {len(task.FAIL_TO_PASS)}, "
                        f"PASS_TO_PASS {len(task.PASS_TO_PASS)})")
    stats.seconds += time.monotonic() - t0
    return tasks


def _clean(root: Path) -> None:
    """Put the scratch repository back to its commit (whatever a test run wrote)."""
    if git(root, "status", "--porcelain").strip():
        git(root, "checkout", "-q", "--", ".")
        git(root, "clean", "-q", "-fdx")


def _try_mutant(spec: RepoSpec, root: Path, module: str, test_file: str, source: str, m: Mutation,
                baseline: set[str], stats: GenStats, timeout: float) -> Task | None:
    mutant = m.apply(source)
    test_cmd = spec.test_cmd(test_file)
    (root / module).write_text(mutant)
    try:
        run_log, status = swebench.run_tests(root, test_cmd, timeout)
    finally:
        (root / module).write_text(source)
        _clean(root)
    stats.tried += 1
    if status not in ("ok", "exit"):  # a timeout, a limit, a failed start: no verdict
        stats.reject(f"run {status}")
        return None
    status_map, _ = swebench.log_status_map(run_log)
    now = passed_tests(status_map)
    f2p, p2p = sorted(baseline - now), sorted(baseline & now)
    if not f2p:
        stats.reject("no test fails")
        return None
    if not p2p:
        stats.reject("no test still passes")
        return None
    stats.kept += 1
    bug = diff_files(root, {module: source}, {module: mutant})
    gold = diff_files(root, {module: mutant}, {module: source})
    text = issue_text(spec.name, spec.version, test_cmd, f2p, failure_lines(run_log))
    task = Task(instance_id=_instance_id(spec, module, m), repo=spec.name, base_commit="", problem_statement=text,
                patch=gold, FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p, source=spec.source, bug_patch=bug,
                test_cmd=test_cmd, test_files=[test_file], version=spec.version,
                mutation={"kind": m.kind, "file": module, "line": m.line})
    with tempfile.TemporaryDirectory(prefix="cwm-task-") as tmp:
        task.base_commit = git(materialize(task, Path(tmp) / "repo", check=False), "rev-parse", "HEAD").strip()
    return task


def _verify(task: Task, download: bool, timeout: float) -> bool:
    """The gold patch resolves the task through the eval path (materialize, apply, test, grade)."""
    return swebench.evaluate_patch(task, task.patch, download=download, timeout=timeout).resolved


# ---------------------------------------------------------------------------------------------
# `cwm agent tasks`


def shipped_tasks_path() -> Path:
    """The shipped local benchmark (`cwm eval swe-local`)."""
    return Path(__file__).with_name("data") / "swe_local.jsonl"


def add_arguments(p) -> None:
    p.description = (
        "Make verified bug-fix tasks from real Python packages (pinned sdists): one ast mutation of a module, "
        "its test file run before and after in the sandbox; kept when FAIL_TO_PASS >= 1 and PASS_TO_PASS >= 1 "
        "and the gold patch resolves it. Without --repo: the shipped benchmark's recipe (remakes "
        "src/cwm/agent/data/swe_local.jsonl). With --swebench: convert SWE-bench instances instead.")
    p.add_argument("--out", required=True, help="task JSONL to write")
    p.add_argument("--repo", help="NAME==VERSION of a pure-Python sdist on the package registry (with --sha256, --pair)")
    p.add_argument("--sha256", help="the sdist's sha256 (pins it)")
    p.add_argument("--path", help="a local repository directory instead of --repo (with --pair)")
    p.add_argument("--pair", action="append", default=[], metavar="MODULE:TEST_FILE",
                   help="a module to mutate and the test file that checks it, paths inside the sdist (repeatable)")
    p.add_argument("--env", default="", help="shell assignments for the test command, e.g. PYTHONPATH=src")
    p.add_argument("--count", type=int, default=None, help="tasks per repository (default: the recipe's, or 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tries", type=int, default=None, help="mutants to test per repository (default 12 x count)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per test run (default 60)")
    p.add_argument("--no-verify", action="store_true", help="skip grading each kept task's gold patch")
    p.add_argument("--offline", action="store_true", help="never download: shipped or cached sdists only")
    p.add_argument("--swebench", metavar="FILE", help="convert SWE-bench instances (.jsonl/.json) to tasks")
    p.add_argument("--repos-dir", default=".", help="with --swebench: where the clones are (<owner>__<name>)")
    p.add_argument("--swebench-out", metavar="FILE", help="also write the tasks as SWE-bench instances")


def run(args) -> int:
    import sys

    from cwm.agent import swebench as swb
    from cwm.agent.task import write_tasks

    try:
        if args.swebench:
            tasks = swb.read_instances(args.swebench, args.repos_dir)
            stats = None
        else:
            specs = _specs(args)
            tasks, stats = [], GenStats()
            for spec in specs:
                made = generate(spec, args.count, seed=args.seed, verify=not args.no_verify, download=not args.offline,
                                max_tries=args.max_tries, timeout=args.timeout, stats=stats,
                                log=lambda s: print(s, file=sys.stderr, flush=True))
                if len(made) < (args.count or spec.tasks):
                    print(f"{spec.name}: only {len(made)} tasks after {stats.tried} mutants in all", file=sys.stderr)
                tasks += made
    except TaskError as e:
        print(f"cwm agent tasks: {e}", file=sys.stderr)
        return 2
    write_tasks(args.out, tasks)
    if args.swebench_out:
        swb.write_instances(args.swebench_out, tasks)
    if stats is not None:
        minutes = stats.seconds / 60
        print(f"mutants tested: {stats.tried}, kept: {stats.kept}, verified: {stats.verified} "
              f"({stats.verified / max(stats.tried, 1):.1%} of those tested); rejected: {stats.rejected}")
        print(f"time: {stats.seconds:.0f} s, {stats.verified / max(minutes, 1e-9):.1f} verified tasks per minute")
    print(f"tasks: {len(tasks)} -> {args.out}")
    return 0


def _specs(args) -> list[RepoSpec]:
    if args.repo and args.path:
        raise TaskError("give --repo NAME==VERSION or --path DIR, not both")
    if not args.repo and not args.path:
        if args.pair or args.sha256:
            raise TaskError("--pair and --sha256 go with --repo NAME==VERSION (or --pair with --path DIR)")
        return SHIPPED_REPOS
    if args.path:
        if not Path(args.path).is_dir():
            raise TaskError(f"--path {args.path}: no such directory")
        name, version, sha256 = Path(args.path).resolve().name, "local", ""
    else:
        name, sep, version = args.repo.partition("==")
        if not sep or not name or not version:
            raise TaskError(f"--repo {args.repo!r}: write it as NAME==VERSION (a pinned sdist)")
        sha256 = args.sha256 or ""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise TaskError("--repo needs --sha256 with the sdist's 64 hex digits (pip hash FILE prints it)")
    pairs = []
    for pair in args.pair:
        module, sep, test_file = pair.partition(":")
        if not sep or not module.endswith(".py") or not test_file.endswith(".py"):
            raise TaskError(f"--pair {pair!r}: write it as MODULE.py:TEST_FILE.py (paths inside the sdist)")
        pairs.append((module, test_file))
    if not pairs:
        raise TaskError("give at least one --pair MODULE.py:TEST_FILE.py")
    return [RepoSpec(name, version, sha256, pairs, env=args.env, tasks=args.count or 10, path=args.path)]
