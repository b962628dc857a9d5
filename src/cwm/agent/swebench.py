"""SWE-bench interop: its instance and prediction files, and grading a test log by its rules.

    from cwm.agent import swebench
    tasks = swebench.read_instances("verified.jsonl", repos_dir="clones/")   # -> list[Task]
    swebench.write_predictions("preds.jsonl", [{"instance_id": ..., "model_patch": ...}], "my-model")
    report = swebench.grade_log(log_text, task.FAIL_TO_PASS, task.PASS_TO_PASS)
    report.resolved

The rules are SWE-bench's harness (`swebench/harness/grading.py`, `log_parsers/python.py`):

- A log is read between `>>>>> Start Test Output` and `>>>>> End Test Output`; a log with
  `>>>>> Patch Apply Failed`, `>>>>> Reset Failed`, `>>>>> Tests Errored` or
  `>>>>> Tests Timed Out`, or without both markers, grades as "patch not applied" (unresolved).
  If nothing parses between the markers, the whole log is parsed (as the harness does).
- The pytest parser reads lines `STATUS test_id` (or `test_id STATUS`), STATUS one of PASSED,
  FAILED, ERROR, SKIPPED, XFAIL (a FAILED line's ` - message` is dropped; `SKIPPED [N]` count
  lines are not tests). `pytest -rA` prints these lines in its short summary.
- A FAIL_TO_PASS test succeeds when PASSED or XFAIL; a PASS_TO_PASS test also when SKIPPED
  (maintained). A test missing from the log fails.
- Resolved (RESOLVED_FULL) iff every FAIL_TO_PASS and every PASS_TO_PASS test succeeds;
  RESOLVED_PARTIAL when some but not all FAIL_TO_PASS do and all PASS_TO_PASS do.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwm.agent.task import Task, TaskError, apply_patch, materialize

# The harness's log markers (swebench.harness.constants).
START_TEST_OUTPUT = ">>>>> Start Test Output"
END_TEST_OUTPUT = ">>>>> End Test Output"
APPLY_PATCH_FAIL = ">>>>> Patch Apply Failed"
APPLY_PATCH_PASS = ">>>>> Applied Patch"
RESET_FAILED = ">>>>> Reset Failed"
TESTS_ERROR = ">>>>> Tests Errored"
TESTS_TIMEOUT = ">>>>> Tests Timed Out"
BAD_CODES = (APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT)

STATUSES = ("FAILED", "PASSED", "SKIPPED", "ERROR", "XFAIL")  # TestStatus
RESOLVED_FULL, RESOLVED_PARTIAL, RESOLVED_NO = "RESOLVED_FULL", "RESOLVED_PARTIAL", "RESOLVED_NO"

# Instance fields that SWE-bench's files hold as JSON strings.
_JSON_LIST_FIELDS = ("FAIL_TO_PASS", "PASS_TO_PASS")
# Files of a test patch that are not tests (swebench.harness.constants NON_TEST_EXTS).
_NON_TEST_EXTS = (".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml")

_STATUS = "|".join(STATUSES)
_STATUS_FIRST = re.compile(rf"^({_STATUS})\s+(\S+)")
_TEST_FIRST = re.compile(rf"^(\S+)\s+({_STATUS})(?:\s|$)")
_SKIP_COUNT = re.compile(r"\[\d+\]")


def parse_log_pytest(log: str) -> dict[str, str]:
    """{test id: status} from a pytest log (`-rA` summary lines)."""
    status_map: dict[str, str] = {}
    for line in log.split("\n"):
        m = _STATUS_FIRST.match(line)
        if m:
            status, name = m.groups()
            if status == "FAILED":
                name = line.replace(" - ", " ").split()[1]
            if status == "SKIPPED" and _SKIP_COUNT.match(name):
                continue
            status_map[name] = status
            continue
        m = _TEST_FIRST.match(line)
        if m:
            status_map[m.group(1)] = m.group(2)
    return status_map


def test_passed(case: str, status_map: dict[str, str]) -> bool:
    return status_map.get(case) in ("PASSED", "XFAIL")


def test_maintained(case: str, status_map: dict[str, str]) -> bool:
    return test_passed(case, status_map) or status_map.get(case) == "SKIPPED"


def test_failed(case: str, status_map: dict[str, str]) -> bool:
    return case not in status_map or status_map[case] in ("FAILED", "ERROR", "SKIPPED")


@dataclass
class GradeReport:
    applied: bool  # the log has test output (no bad code; both markers)
    status: str  # RESOLVED_FULL | RESOLVED_PARTIAL | RESOLVED_NO
    tests_status: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    log: str = ""  # the evaluation log graded (evaluate_patch)

    @property
    def resolved(self) -> bool:
        return self.status == RESOLVED_FULL


def tests_report(status_map: dict[str, str], fail_to_pass: list[str], pass_to_pass: list[str]) -> dict:
    report: dict[str, dict[str, list[str]]] = {
        "FAIL_TO_PASS": {"success": [], "failure": []}, "PASS_TO_PASS": {"success": [], "failure": []}}
    for case in fail_to_pass:
        if test_passed(case, status_map):
            report["FAIL_TO_PASS"]["success"].append(case)
        elif test_failed(case, status_map):
            report["FAIL_TO_PASS"]["failure"].append(case)
    for case in pass_to_pass:
        if test_maintained(case, status_map):
            report["PASS_TO_PASS"]["success"].append(case)
        elif test_failed(case, status_map):
            report["PASS_TO_PASS"]["failure"].append(case)
    return report


def _rate(part: dict[str, list[str]]) -> float:
    total = len(part["success"]) + len(part["failure"])
    return 1.0 if total == 0 else len(part["success"]) / total


def resolution_status(report: dict) -> str:
    f2p, p2p = _rate(report["FAIL_TO_PASS"]), _rate(report["PASS_TO_PASS"])
    if f2p == 1 and p2p == 1:
        return RESOLVED_FULL
    if 0 < f2p < 1 and p2p == 1:
        return RESOLVED_PARTIAL
    return RESOLVED_NO


def log_status_map(log: str) -> tuple[dict[str, str], bool]:
    """(status map, whether the log holds test output), as the harness reads an evaluation log."""
    if any(code in log for code in BAD_CODES) or not (START_TEST_OUTPUT in log and END_TEST_OUTPUT in log):
        return {}, False
    inner = log.split(START_TEST_OUTPUT)[1].split(END_TEST_OUTPUT)[0]
    return parse_log_pytest(inner) or parse_log_pytest(log), True


def grade_log(log: str, fail_to_pass: list[str], pass_to_pass: list[str]) -> GradeReport:
    """Grade one evaluation log by SWE-bench's rules (see the module doc)."""
    status_map, applied = log_status_map(log)
    if not applied:
        return GradeReport(False, RESOLVED_NO)
    report = tests_report(status_map, fail_to_pass, pass_to_pass)
    return GradeReport(True, resolution_status(report), report)


# ---------------------------------------------------------------------------------------------
# The local harness: a patch on a fresh copy of the task's repository, its tests in the sandbox


def run_tests(root: str | os.PathLike, test_cmd: str, timeout: float = 60.0) -> tuple[str, str]:
    """Run test_cmd at root in the sandbox (untrusted code: never in this process).

    Returns (an evaluation log with the harness's markers, the sandbox's status)."""
    from cwm.sandbox import Limits, run_command

    limits = Limits(timeout=timeout, cpu_seconds=int(timeout) + 5, memory_bytes=4 << 30, max_processes=64,
                    max_output_bytes=8 << 20, max_disk_bytes=256 << 20)
    res = run_command(test_cmd, cwd=root, limits=limits)
    body = res.stdout + res.stderr
    if res.status == "timeout":
        return f"{TESTS_TIMEOUT}\n{body}", res.status
    return f"{START_TEST_OUTPUT}\n{body}\n{END_TEST_OUTPUT}\n", res.status


def evaluate_patch(task: Task, patch: str, download: bool = True, timeout: float = 60.0,
                   workdir: str | os.PathLike | None = None) -> GradeReport:
    """Grade a candidate patch as the harness does: a fresh copy of the buggy repository, the
    patch applied (an empty or failing patch: unresolved), the test patch applied, the test
    command run in the sandbox, the log graded by SWE-bench's rules."""
    with tempfile.TemporaryDirectory(prefix="cwm-eval-", dir=workdir) as tmp:
        root = materialize(task, os.path.join(tmp, "repo"), download=download)
        ok, why = apply_patch(root, patch) if patch and patch.strip() else (False, "the patch is empty")
        if not ok:
            return GradeReport(False, RESOLVED_NO, log=f"{APPLY_PATCH_FAIL}\n{why}\n")
        if task.test_patch:
            ok, why = apply_patch(root, task.test_patch)
            if not ok:
                return GradeReport(False, RESOLVED_NO, log=f"{APPLY_PATCH_FAIL}\ntest patch: {why}\n")
        log, _ = run_tests(root, task.test_cmd, timeout)
    report = grade_log(f"{APPLY_PATCH_PASS}\n{log}", task.FAIL_TO_PASS, task.PASS_TO_PASS)
    report.log = f"{APPLY_PATCH_PASS}\n{log}"
    return report


# ---------------------------------------------------------------------------------------------
# Files


def test_directives(test_patch: str) -> list[str]:
    """The test files a test patch touches (what SWE-bench's pytest command runs)."""
    files = re.findall(r"^diff --git a/.* b/(.*)$", test_patch, re.MULTILINE)
    return [f for f in files if not any(f.endswith(ext) for ext in _NON_TEST_EXTS)]


def instance_to_task(obj: dict[str, Any], repos_dir: str | os.PathLike | None = None, where: str = "") -> Task:
    """A SWE-bench instance as a Task: its repository comes from a local clone
    `repos_dir/<owner>__<name>` at base_commit; its tests run as `pytest -rA <test_patch files>`."""
    missing = [k for k in ("instance_id", "repo", "base_commit", "problem_statement", "patch",
                           "FAIL_TO_PASS", "PASS_TO_PASS") if k not in obj]
    if missing:
        raise TaskError(f"{where or 'instance'}: not a SWE-bench instance, missing {', '.join(missing)}")
    lists = {k: json.loads(obj[k]) if isinstance(obj[k], str) else list(obj[k]) for k in _JSON_LIST_FIELDS}
    clone = Path(repos_dir or ".") / obj["repo"].replace("/", "__")
    files = test_directives(obj.get("test_patch", ""))
    return Task(
        instance_id=obj["instance_id"], repo=obj["repo"], base_commit=obj["base_commit"],
        problem_statement=obj["problem_statement"], patch=obj["patch"],
        FAIL_TO_PASS=lists["FAIL_TO_PASS"], PASS_TO_PASS=lists["PASS_TO_PASS"],
        source={"kind": "git", "path": str(clone), "commit": obj["base_commit"]}, bug_patch="",
        test_cmd="pytest -rA " + " ".join(files), test_files=files, test_patch=obj.get("test_patch", ""),
        version=str(obj.get("version", "")), created_at=obj.get("created_at", ""),
        hints_text=obj.get("hints_text", ""))


def task_to_instance(task: Task) -> dict[str, Any]:
    """A Task in SWE-bench's instance shape (test lists as JSON strings, as its files hold them)."""
    return {
        "instance_id": task.instance_id, "repo": task.repo, "base_commit": task.base_commit,
        "patch": task.patch, "test_patch": task.test_patch, "problem_statement": task.problem_statement,
        "hints_text": task.hints_text, "created_at": task.created_at, "version": task.version,
        "FAIL_TO_PASS": json.dumps(task.FAIL_TO_PASS), "PASS_TO_PASS": json.dumps(task.PASS_TO_PASS),
        "environment_setup_commit": task.base_commit,
    }


def _jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path} not found; pass a JSONL file")
    if path.suffix == ".json":  # the harness also takes one JSON list
        data = json.loads(path.read_text())
        return list(enumerate(data if isinstance(data, list) else [data], 1))
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def read_instances(path: str | os.PathLike, repos_dir: str | os.PathLike | None = None) -> list[Task]:
    """SWE-bench instances (.jsonl, or a .json list) as Tasks."""
    return [instance_to_task(obj, repos_dir, f"{path}:{n}") for n, obj in _jsonl(path)]


def write_instances(path: str | os.PathLike, tasks: Iterable[Task]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(task_to_instance(t)) + "\n" for t in tasks)


def write_predictions(path: str | os.PathLike, predictions: Iterable[dict[str, Any]], model: str) -> None:
    """Predictions JSONL as the harness reads them: instance_id, model_name_or_path, model_patch."""
    with open(path, "w") as f:
        for p in predictions:
            row = {"instance_id": p["instance_id"], "model_name_or_path": p.get("model_name_or_path", model),
                   "model_patch": p.get("model_patch") or ""}
            f.write(json.dumps(row) + "\n")


def read_predictions(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{instance_id: prediction}; a prediction without instance_id or model_patch is an error."""
    out = {}
    for n, obj in _jsonl(path):
        if "instance_id" not in obj or "model_patch" not in obj:
            raise TaskError(f"{path}:{n}: a prediction needs instance_id and model_patch")
        out[obj["instance_id"]] = obj
    return out
