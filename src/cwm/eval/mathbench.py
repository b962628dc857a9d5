"""Math tasks of `cwm eval`: MATH-500, AIME (reasoning mode, cwm.eval.reasoning).

As the release's math env (cwm/rl/envs/envs/math_think_dialog.py, registered as
math_cwmthinktag_env:64k: direct prompt, non-strict parsing):
- user prompt: PROMPT_MATH = "{problem}\\n\\nWrap your answer in $\\boxed{}$.";
- the answer is the text after the one `</think>`; it must not start with
  "[your external response]"; in it, exactly one `$\\boxed{...}$` (the release's regex, lazy up to
  the first `}$`); the answer is that `\\boxed{...}`;
- correct if either comparer says equal (the release's `pass` = ours_pass or math_verify_pass):
  `normalize` + `same_value` here (the release's cwm/exec/math normalisation, in short: the
  Minerva substitutions, units and \\text{} removed, \\frac / \\sqrt shorthands, a/b, "x = ",
  then equal text, equal numbers, or intervals / tuples compared element by element with the
  same brackets), or math-verify (gold wrapped in \\boxed{}, both parsed with its LaTeX and
  expression extraction, `verify(gold, answer)`).
The comparison runs in the sandbox (sympy parses the model's text; a hostile answer can hang it):
30 s per sample.
"""

from __future__ import annotations

import re
from pathlib import Path

PROMPT_MATH = "{problem}\n\nWrap your answer in $\\boxed{{}}$."
FORMAT_ECHO = "[your external response]"
_BOXED = re.compile(r".*?\$(\\boxed{.*?})\$", re.DOTALL)
COMPARE_TIMEOUT = 30.0


def extract_boxed(answer: str) -> str | None:
    """The one `$\\boxed{...}$` of the answer (the release's non-strict parsing); None otherwise."""
    if answer.strip().startswith(FORMAT_ECHO):
        return None
    found = _BOXED.findall(answer)
    return found[0].strip() if len(found) == 1 else None


def load_math(path: str | Path | None, limit: int | None = None, name: str = "math") -> list[dict]:
    """Problems with `problem` and `answer` from the hub datasets' own files (HuggingFaceH4/MATH-500
    test.jsonl; HuggingFaceH4/aime_2024, yentinglin/aime_2025 parquet or jsonl; the release's
    download_math.py output), a file or a directory of them, in order."""
    from cwm.eval.codegen import _read_rows, data_files

    if path is None:
        raise FileNotFoundError(f"{name} is not shipped: give --data with the dataset's file or directory "
                                "(HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024, yentinglin/aime_2025)")
    items = []
    for file in data_files(path):
        for number, row in enumerate(_read_rows(file), start=1):
            problem = row.get("problem", row.get("question"))
            if problem is None or row.get("answer") is None:
                raise ValueError(f"{file}:{number}: not a math problem row (needs 'problem' and 'answer')")
            key = row.get("task_id") or row.get("unique_id") or row.get("id")
            key = str(key) if key is not None else f"{file.name}/{number - 1}"
            items.append({"id": key, "problem": str(problem), "answer": str(row["answer"])})
            if limit is not None and len(items) >= limit:
                return items
    return items


# ---- our normalisation (after Minerva, Lewkowycz et al. 2022, and the release's additions) -------

_SUBSTITUTIONS = [("an ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
                  ("\\{", "{"), ("\\}", "}"), ("\\[", "["), ("\\]", "]")]
_REMOVED = ["\\left", "\\right", "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km",
            "units", "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
            "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
            "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}",
            "^\\circ", "^{\\circ}", "°", "\\;", ",\\!", "{,}", '"', "\\dots", "\\displaystyle"]


def boxed_content(text: str) -> str:
    """What the last \\boxed{...} holds (braces matched); the text itself when there is none."""
    start = text.rfind("\\boxed")
    if start < 0:
        return text
    rest = text[start + len("\\boxed"):].lstrip()
    if not rest.startswith("{"):
        return rest.split("$")[0].strip()
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return rest[1:i].strip()
    return rest[1:].strip()


def _fix_fracs(s: str) -> str:
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)  # \frac1{72}
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)  # \frac{1}2


def normalize(answer: str) -> str:
    """A final answer in a canonical text form (no \\boxed, units, \\text, spaces, \\left...)."""
    s = boxed_content(answer)
    s = s.split("=")[-1]
    for old, new in _SUBSTITUTIONS:
        s = s.replace(old, new)
    for gone in _REMOVED:
        s = s.replace(gone, "")
    for command in ("text", "textbf", "mathrm", "mathbf", "overline"):
        s = re.sub(r"\\" + command + r"\{(.*?)\}", r"\1", s)
    s = s.replace("$", "").replace("\n", "").replace("\\!", "").replace("\\%", "").replace("%", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("cfrac", "frac")
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    s = re.sub(r"(?<![\w.])(-?\d+)/(-?\d+)(?![\w.])", r"\\frac{\1}{\2}", s)
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    if re.fullmatch(r"\([a-zA-Z]\)", s):
        s = s[1]
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.")
    return s


def _number(s: str) -> float | None:
    """The value of a plain number, \\frac{a}{b} of numbers, or -\\frac{a}{b}; None otherwise."""
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    try:
        if m:
            value = float(m.group(2)) / float(m.group(3))
            return -value if m.group(1) else value
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _split_top(s: str) -> tuple[str, list[str]]:
    """'(1,2]' -> ('(]', ['1', '2']); commas inside inner brackets do not split."""
    brackets = ""
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        brackets, s = s[0] + s[-1], s[1:-1]
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return brackets, parts + [cur]


def _same_scalar(a: str, b: str) -> bool:
    if a == b:
        return bool(a)
    x, y = _number(a), _number(b)
    return x is not None and y is not None and abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y))


def same_value(answer: str, gold: str) -> bool:
    """Our comparer: normalised text equal, numbers equal, or element-wise for tuples/intervals."""
    a, b = normalize(answer), normalize(gold)
    if _same_scalar(a, b):
        return True
    (ba, pa), (bb, pb) = _split_top(a), _split_top(b)
    if len(pa) != len(pb) or len(pa) < 2 or ba != bb:
        return False
    return all(_same_scalar(x.strip(), y.strip()) for x, y in zip(pa, pb))


def math_verify_equal(answer: str, gold: str) -> bool:
    """math-verify's judgement, as the release calls it: gold as \\boxed{gold}, answer as given."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    want, got = parse("\\boxed{" + gold + "}", extraction_config=config), parse(answer, extraction_config=config)
    return bool(want) and bool(got) and bool(verify(want, got))


def _compare(answer: str, gold: str) -> tuple[bool, bool]:
    try:
        ours = same_value(answer, gold)
    except Exception:  # noqa: BLE001 - odd text is simply not equal
        ours = False
    try:
        theirs = math_verify_equal(answer, gold)
    except Exception:  # noqa: BLE001
        theirs = False
    return ours, theirs


def compare(answer: str, gold: str, timeout_s: float = COMPARE_TIMEOUT) -> tuple[bool, str]:
    """(correct, why), judged in the sandbox (a fork of this process: math-verify is loaded first)."""
    import math_verify  # noqa: F401 - imported here so the sandbox child need not

    from cwm.sandbox import Limits, run_function

    got = run_function(_compare, answer, gold, limits=Limits(timeout=timeout_s, cpu_seconds=int(timeout_s) + 1))
    if not got.ok:
        return False, f"comparison {got.status}: {(got.error or '')[-200:]}"
    ours, theirs = got.value
    return ours or theirs, f"ours {'=' if ours else '!='}, math-verify {'=' if theirs else '!='}"


class MathTask:
    def __init__(self, name: str = "math"):
        self.name = name

    def key(self, item):
        return item["id"]

    def prompt(self, item):
        return PROMPT_MATH.format(problem=item["problem"])

    def gold(self, item):
        return item["answer"]

    def extract(self, answer):
        return extract_boxed(answer)

    def score(self, item, answer):
        return compare(answer, item["answer"])
