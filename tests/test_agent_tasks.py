"""Agent tasks from real code: mutations, verified generation, the shipped benchmark, SWE-bench interop.

Every test run goes through the sandbox, as the code under test does; the logs graded are real
pytest logs.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cwm.agent import mutate, swebench
from cwm.agent.task import (
    Task,
    TaskError,
    apply_patch,
    diff_files,
    git,
    materialize,
    read_tasks,
    shipped_dir,
    write_tasks,
)  # fmt: skip

CALC = textwrap.dedent('''\
    """A tiny library to break."""


    def clamp(x, lo, hi):
        if x < lo:
            return lo
        if x > hi:
            return hi
        return x


    def mean(xs):
        if not xs:
            raise ValueError("empty")
        return sum(xs) / len(xs)


    def span(a, b):
        return b - a


    def both(a, b):
        return a and b


    def pct(part, whole):
        return round(100 * part / whole, 1)
''')
TEST_CALC = textwrap.dedent('''\
    import pytest
    from calc import both, clamp, mean, pct, span


    def test_clamp_inside():
        assert clamp(5, 0, 10) == 5

    def test_clamp_low():
        assert clamp(-3, 0, 10) == 0

    def test_clamp_high():
        assert clamp(30, 0, 10) == 10

    def test_clamp_edges():
        assert clamp(0, 0, 10) == 0 and clamp(10, 0, 10) == 10

    def test_mean():
        assert mean([1, 2, 3, 6]) == 3

    def test_mean_empty():
        with pytest.raises(ValueError):
            mean([])

    def test_span():
        assert span(2, 7) == 5

    def test_both():
        assert both(1, 2) == 2 and both(0, 2) == 0

    def test_pct():
        assert pct(1, 3) == 33.3
''')


def cwm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cwm", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture
def calc_repo(tmp_path):
    root = tmp_path / "calc-src"
    root.mkdir()
    (root / "calc.py").write_text(CALC)
    (root / "test_calc.py").write_text(TEST_CALC)
    return root


def calc_spec(root: Path, **kw) -> mutate.RepoSpec:
    return mutate.RepoSpec("calc", "0.1", "", [("calc.py", "test_calc.py")], path=str(root), **kw)


# ---------------------------------------------------------------------------------------------
# Mutations


def test_mutations_cover_each_kind_and_compile_and_reverse_exactly(tmp_path):
    found = mutate.mutations(CALC)
    kinds = {m.kind for m in found}
    assert kinds == set(mutate.KINDS)
    by_text = {(m.kind, CALC[m.start:m.end], m.replacement) for m in found}
    assert ("comparison", "<", "<=") in by_text and ("operator", "-", "+") in by_text
    assert ("boolean", "and", "or") in by_text and ("operator", "/", "*") in by_text
    assert ("constant", "100", "101") in by_text and ("swapped_args", "100 * part / whole, 1", "1, 100 * part / whole") in by_text
    assert ("negation", "not xs", "xs") in by_text and ("negation", "x < lo", "not x < lo") in by_text
    assert any(m.kind == "removed_branch" and CALC[m.start:m.end].startswith("    if x > hi:") for m in found)
    assert not any(m.start < CALC.index("def clamp") for m in found), "the module docstring is never mutated"
    for m in found:
        ast.parse(m.apply(CALC))  # every mutant is valid Python
    for m in {m.kind: m for m in found}.values():  # the gold diff undoes the bug diff exactly
        mutant = m.apply(CALC)
        root = tmp_path / f"m{m.start}-{m.kind}"
        root.mkdir()
        (root / "calc.py").write_text(CALC)
        bug = diff_files(root, {"calc.py": CALC}, {"calc.py": mutant})
        gold = diff_files(root, {"calc.py": mutant}, {"calc.py": CALC})
        assert bug.startswith("diff --git a/calc.py b/calc.py\n") and gold.startswith("diff")
        assert apply_patch(root, bug) == (True, "") and (root / "calc.py").read_text() == mutant
        assert apply_patch(root, gold) == (True, "") and (root / "calc.py").read_text() == CALC


def test_swapped_arguments_keep_everything_between_them():
    src = "def f(a, b):\n    return g(a,  b)\n"
    (m,) = [m for m in mutate.mutations(src) if m.kind == "swapped_args"]
    assert m.apply(src) == "def f(a, b):\n    return g(b,  a)\n"


# ---------------------------------------------------------------------------------------------
# Generation, verified in the sandbox


def test_generate_keeps_only_caught_mutants_and_their_gold_patch_resolves(calc_repo, tmp_path):
    res = cwm("agent", "tasks", "--path", str(calc_repo), "--pair", "calc.py:test_calc.py", "--count", "2",
              "--seed", "1", "--out", str(tmp_path / "calc.jsonl"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == f"tasks: 2 -> {tmp_path / 'calc.jsonl'}"
    assert "verified: 2 " in res.stdout and "verified tasks per minute" in res.stdout
    tasks = read_tasks(tmp_path / "calc.jsonl")
    assert [t.repo for t in tasks] == ["calc-src"] * 2 and tasks[0].source == {"kind": "dir", "path": str(calc_repo)}
    assert (calc_repo / "calc.py").read_text() == CALC, "the source directory is never changed"
    baseline = {f"test_calc.py::{n}" for n in ("test_clamp_inside", "test_clamp_low", "test_clamp_high",
                                                "test_clamp_edges", "test_mean", "test_mean_empty", "test_span",
                                                "test_both", "test_pct")}
    for t in tasks:
        assert t.FAIL_TO_PASS and t.PASS_TO_PASS and set(t.FAIL_TO_PASS) | set(t.PASS_TO_PASS) == baseline
        assert not set(t.FAIL_TO_PASS) & set(t.PASS_TO_PASS)
        assert t.patch.startswith("diff --git a/calc.py b/calc.py") and t.bug_patch.startswith("diff")
        assert t.mutation["file"] == "calc.py" and t.mutation["kind"] in mutate.KINDS
        # the issue names the failing tests and how they fail, and never the change
        for test_id in t.FAIL_TO_PASS:
            assert f"`{test_id}`" in t.problem_statement
        changed = [line[1:].strip() for line in t.patch.splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()]
        assert changed and not any(c in t.problem_statement for c in changed), t.problem_statement
        # the materialized repository is the buggy tree, as one commit named by base_commit
        root = materialize(t, tmp_path / t.instance_id)
        assert git(root, "rev-parse", "HEAD").strip() == t.base_commit
        assert (root / "calc.py").read_text() != CALC and not git(root, "status", "--porcelain").strip()
        nothing = swebench.evaluate_patch(t, "")
        assert not nothing.applied and not nothing.resolved
    # graded by SWE-bench's rules through the harness (generation checked the gold patches so too):
    # the gold patch resolves, the other task's fix does not
    assert swebench.evaluate_patch(tasks[0], tasks[0].patch).resolved
    assert not swebench.evaluate_patch(tasks[0], tasks[1].patch).resolved
    with pytest.raises(TaskError, match="base_commit|commit"):
        materialize(Task(**{**tasks[0].to_json(), "base_commit": "0" * 40}), tmp_path / "other")


def test_a_mutant_no_test_catches_is_rejected(tmp_path):
    root = tmp_path / "weak"
    root.mkdir()
    (root / "calc.py").write_text(CALC)
    (root / "test_calc.py").write_text("from calc import clamp\n\ndef test_inside():\n    assert clamp(5, 0, 10) == 5\n")
    stats = mutate.GenStats()
    tasks = mutate.generate(calc_spec(root, tasks=1), seed=0, stats=stats, max_tries=3, verify=False)
    # one test: a mutant that fails it leaves no PASS_TO_PASS; one that does not is not caught
    assert tasks == [] and stats.tried == 3 and set(stats.rejected) <= {"no test fails", "no test still passes"}


# ---------------------------------------------------------------------------------------------
# SWE-bench's grading rules, on real pytest logs


MIXED = textwrap.dedent('''\
    import pytest

    def test_pass():
        assert True

    def test_fail():
        assert 1 + 1 == 3, "arithmetic"

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture")

    def test_error(broken):
        pass

    @pytest.mark.skip(reason="not today")
    def test_skip():
        pass

    @pytest.mark.xfail(reason="known")
    def test_xfail():
        assert False

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        assert n == 1
''')


def test_pytest_log_parsed_and_graded_by_swebench_rules(tmp_path):
    (tmp_path / "test_mixed.py").write_text(MIXED)
    log, status = swebench.run_tests(tmp_path, mutate.TEST_CMD.format(env="", test_file="test_mixed.py"))
    assert status == "exit"
    sm = {k: v for k, v in swebench.log_status_map(log)[0].items() if k.startswith("test_mixed.py")}
    # `SKIPPED [1] test_mixed.py:16: ...` is a count line, not a test id: SWE-bench's parser skips it
    assert sm == {"test_mixed.py::test_pass": "PASSED", "test_mixed.py::test_fail": "FAILED",
                  "test_mixed.py::test_error": "ERROR", "test_mixed.py::test_xfail": "XFAIL",
                  "test_mixed.py::test_param[1]": "PASSED", "test_mixed.py::test_param[2]": "FAILED"}, log
    assert mutate.failure_lines(log)["test_mixed.py::test_fail"].startswith("AssertionError: arithmetic")

    def grade(f2p, p2p, text=log):
        return swebench.grade_log(text, [f"test_mixed.py::{t}" for t in f2p], [f"test_mixed.py::{t}" for t in p2p])

    assert grade(["test_pass", "test_xfail"], ["test_param[1]"]).status == swebench.RESOLVED_FULL
    assert grade(["test_pass", "test_fail"], ["test_pass"]).status == swebench.RESOLVED_PARTIAL
    assert grade(["test_pass"], ["test_error"]).status == swebench.RESOLVED_NO
    assert grade(["test_pass"], ["test_skip"]).status == swebench.RESOLVED_NO  # not in the -rA log: failed
    assert not grade(["test_pass"], [], swebench.TESTS_TIMEOUT + "\n" + log).applied
    assert not grade(["test_pass"], [], log.replace(swebench.END_TEST_OUTPUT, "")).applied
    # pytest -v names skipped tests (`test_id SKIPPED`): a skipped PASS_TO_PASS test is maintained,
    # a skipped FAIL_TO_PASS test is not resolved
    verbose, _ = swebench.run_tests(tmp_path, "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -v "
                                               "-p no:cacheprovider test_mixed.py")
    assert swebench.log_status_map(verbose)[0]["test_mixed.py::test_skip"] == "SKIPPED"
    assert grade(["test_pass"], ["test_skip"], verbose).resolved
    assert not grade(["test_skip"], [], verbose).resolved
    report = grade(["test_fail"], ["test_pass"])
    assert report.tests_status["FAIL_TO_PASS"] == {"success": [], "failure": ["test_mixed.py::test_fail"]}


def test_swebench_instances_predictions_and_a_git_clone(tmp_path):
    """A SWE-bench instance (JSON-string test lists, test_patch) on a local clone, graded here."""
    clone = tmp_path / "repos" / "acme__calc"
    clone.mkdir(parents=True)
    (clone / "calc.py").write_text(CALC.replace("return b - a", "return a - b"))  # the bug at base_commit
    (clone / "test_calc.py").write_text(TEST_CALC.replace("def test_span():\n    assert span(2, 7) == 5\n", ""))
    base = _commit(clone)
    test_patch = diff_files(clone, {"test_calc.py": (clone / "test_calc.py").read_text()},
                            {"test_calc.py": TEST_CALC})
    gold = diff_files(clone, {"calc.py": (clone / "calc.py").read_text()}, {"calc.py": CALC})
    instance = {"repo": "acme/calc", "instance_id": "acme__calc-1", "base_commit": base, "patch": gold,
                "test_patch": test_patch, "problem_statement": "span is negative", "hints_text": "",
                "created_at": "2024-01-01T00:00:00Z", "version": "0.1", "environment_setup_commit": base,
                "FAIL_TO_PASS": json.dumps(["test_calc.py::test_span"]),
                "PASS_TO_PASS": json.dumps(["test_calc.py::test_clamp_low", "test_calc.py::test_mean"])}
    (tmp_path / "instances.jsonl").write_text(json.dumps(instance) + "\n")
    (task,) = swebench.read_instances(tmp_path / "instances.jsonl", repos_dir=tmp_path / "repos")
    assert task.FAIL_TO_PASS == ["test_calc.py::test_span"] and task.test_files == ["test_calc.py"]
    assert task.source == {"kind": "git", "path": str(clone), "commit": base} and task.test_cmd == "pytest -rA test_calc.py"
    task.test_cmd = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 " + task.test_cmd  # this machine's plugins cost seconds a run
    assert swebench.evaluate_patch(task, gold).resolved
    assert not swebench.evaluate_patch(task, "diff --git a/calc.py b/calc.py\n").resolved
    assert swebench.task_to_instance(task)["FAIL_TO_PASS"] == instance["FAIL_TO_PASS"]
    preds = tmp_path / "preds.jsonl"
    swebench.write_predictions(preds, [{"instance_id": task.instance_id, "model_patch": gold}], "cwm-mini")
    assert json.loads(preds.read_text()) == {"instance_id": "acme__calc-1", "model_name_or_path": "cwm-mini",
                                             "model_patch": gold}
    assert swebench.read_predictions(preds)["acme__calc-1"]["model_patch"] == gold
    # the CLI converts instances to tasks
    res = cwm("agent", "tasks", "--swebench", str(tmp_path / "instances.jsonl"), "--repos-dir",
              str(tmp_path / "repos"), "--out", str(tmp_path / "tasks.jsonl"))
    assert res.returncode == 0, res.stderr
    assert read_tasks(tmp_path / "tasks.jsonl")[0].patch == gold
    # the agent loop grades it too: the test patch goes in after the submitted patch
    write_tasks(tmp_path / "one.jsonl", [task])
    res = cwm("agent", "run", "--task", str(tmp_path / "one.jsonl"), "--policy", "oracle", "--quiet", "--out",
              str(tmp_path / "traj.jsonl"))
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "resolved: true", (res.stdout, res.stderr)


def _commit(root: Path) -> str:
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# The shipped benchmark


def test_shipped_benchmark_is_large_varied_pinned_and_reproducible(tmp_path):
    tasks = read_tasks(mutate.shipped_tasks_path())
    assert len(tasks) >= 50 and len({t.repo for t in tasks}) >= 3
    assert len({t.instance_id for t in tasks}) == len(tasks)
    specs = {s.name: s for s in mutate.SHIPPED_REPOS}
    for t in tasks:
        spec = specs[t.repo]
        assert t.source == spec.source and t.test_cmd == spec.test_cmd(t.test_files[0])
        assert t.FAIL_TO_PASS and t.PASS_TO_PASS and t.patch.startswith("diff --git")
        assert (spec.name, spec.version) and any(p[0] == t.mutation["file"] for p in spec.pairs)
    shipped = {p.name for p in shipped_dir().glob("*.tar.gz")}
    assert len(shipped) == len(specs)  # every source ships; nothing to download
    t = tasks[0]
    root = materialize(t, tmp_path / "repo", download=False)  # checks base_commit
    assert git(root, "rev-parse", "HEAD").strip() == t.base_commit


def test_swe_local_oracle_scores_one_and_writes_predictions(tmp_path):
    """The gold patch of one task per repository, through `cwm eval swe-local` (the full run: docs)."""
    tasks, seen = [], set()
    for t in read_tasks(mutate.shipped_tasks_path()):
        if t.repo not in seen:
            seen.add(t.repo)
            tasks.append(t)
    write_tasks(tmp_path / "some.jsonl", tasks)
    res = cwm("eval", "swe-local", "--tasks", str(tmp_path / "some.jsonl"), "--offline", "--out",
              str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.jsonl"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "score: 1.0000"
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["tasks"] == len(tasks) >= 3 and summary["resolved"] == len(tasks)
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["instance_id"] for p in preds] == [t.instance_id for t in tasks]
    assert all(p["model_name_or_path"] == "oracle" and p["model_patch"] == t.patch for p, t in zip(preds, tasks))
    # each result was saved as it finished: the same command again resumes (nothing left to grade)
    again = cwm("eval", "swe-local", "--tasks", str(tmp_path / "some.jsonl"), "--offline", "--out",
                str(tmp_path / "r.json"))
    assert again.returncode == 0 and f"(resuming: {len(tasks)} done)" in again.stderr
    assert again.stdout.splitlines()[-1] == "score: 1.0000" and "resolved (" not in again.stderr
    other = cwm("eval", "swe-local", "--tasks", str(tmp_path / "some.jsonl"), "--offline", "--out",
                str(tmp_path / "r.json"), "--test-timeout", "5")
    assert other.returncode == 2 and "other settings" in other.stderr and "--fresh" in other.stderr


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "calc.py").write_text(CALC)
    for args, says in [
        (["agent", "tasks", "--out", str(tmp_path / "x.jsonl"), "--path", str(tmp_path / "lib"), "--pair",
          "calc.py:test_calc.py"], "no file test_calc.py"),
        (["agent", "tasks", "--out", str(tmp_path / "x.jsonl"), "--path", str(tmp_path / "nowhere"), "--pair",
          "calc.py:test_calc.py"], "no such directory"),
        (["agent", "tasks", "--out", str(tmp_path / "x.jsonl"), "--repo", "toolz"], "NAME==VERSION"),
        (["agent", "tasks", "--out", str(tmp_path / "x.jsonl"), "--repo", "toolz==1.0.0"], "--sha256"),
        (["agent", "tasks", "--out", str(tmp_path / "x.jsonl"), "--repo", "toolz==1.0.0", "--sha256", "a" * 64],
         "--pair"),
        (["eval", "swe-local", "--tasks", str(tmp_path / "missing.jsonl")], "not found"),
        (["eval", "swe-local", "--limit", "0"], "--limit"),
    ]:
        res = cwm(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_shipped_tasks_regenerate_exactly():
    """The documented command remakes the shipped file: the first task of a module, made again.
    (Sites are shuffled per pair in order and tried round-robin, so with the first pair alone the
    first task kept from it is the same.)"""
    spec = mutate.SHIPPED_REPOS[0]
    (again,) = mutate.generate(dataclasses.replace(spec, pairs=spec.pairs[:1]), count=1, seed=0, download=False)
    first = next(t for t in read_tasks(mutate.shipped_tasks_path())
                 if t.repo == spec.name and t.mutation["file"] == spec.pairs[0][0])
    assert again.to_json() == first.to_json()


def test_swe_local_runs_a_policy_through_the_agent_loop(tmp_path):
    """A script policy (the fix applied in bash and submitted, replies of cwm.agent.policy) through
    the agent loop and the workspace: resolved; a script that submits a wrong patch: unresolved."""
    from cwm.agent.policy import oracle_replies

    task = read_tasks(mutate.shipped_tasks_path())[0]
    write_tasks(tmp_path / "one.jsonl", [task])
    buggy = (materialize(task, tmp_path / "repo", download=False) / task.mutation["file"]).read_text()
    no_fix = diff_files(tmp_path / "repo", {task.mutation["file"]: buggy}, {task.mutation["file"]: buggy + "# fixed?\n"})
    for name, patch, score in [("right", task.patch, "1.0000"), ("wrong", no_fix, "0.0000")]:
        (tmp_path / f"{name}.json").write_text(json.dumps(oracle_replies(patch)))
        res = cwm("eval", "swe-local", "--tasks", str(tmp_path / "one.jsonl"), "--policy", str(tmp_path / f"{name}.json"),
                  "--offline", "--out", str(tmp_path / f"{name}-results.json"))
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[-1] == f"score: {score}", (name, res.stdout, res.stderr)
        (row,) = json.loads((tmp_path / f"{name}-results.json").read_text())["results"]
        assert row["exit_status"] == "submitted" and row["patch"].startswith("diff")
    res = cwm("eval", "swe-local", "--tasks", str(tmp_path / "one.jsonl"), "--policy", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "--policy" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_sdists_are_found_by_their_pin_and_a_wrong_pin_is_refused(tmp_path, monkeypatch):
    from cwm.agent.task import sdist_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: only the shipped copies
    for spec in mutate.SHIPPED_REPOS:
        assert sdist_path(spec.name, spec.version, spec.sha256, download=False).parent == shipped_dir()
    spec = mutate.SHIPPED_REPOS[0]
    with pytest.raises(TaskError, match="is not here"):
        sdist_path(spec.name, spec.version, "0" * 64, download=False)
