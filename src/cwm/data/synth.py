"""A seeded generator of small, diverse, always-terminating Python programs with their inputs.

`generate(seed, n, knobs)` returns n programs; program i depends only on (seed, i, knobs), so a
longer build starts with the same programs as a shorter one. Each program is a function `f`
(plus module-level helpers it calls) and a call with literal arguments. The generator keeps a
typed environment of the variables in scope and writes statements that only use what exists,
so every program parses; loops are bounded by construction (for over finite values, while over
a counter decremented first in the body). Every candidate is then *run* under an event budget
and rejected if it raises or runs too long, so an emitted program is checked, not assumed.

Difficulty knobs (`Knobs`): `length` statements in `f`, `nesting` depth of blocks, `values`
(the size of literals: ints in [-values, values], containers up to min(values, 6) items). A
curriculum builds datasets with growing knobs.
"""

from __future__ import annotations

import random
import re
import sys
import time
import types
from dataclasses import dataclass

from cwm.trace.recorder import PROGRAM

INT, STR, LIST, DICT, SET, TUPLE, BOOL = "int", "str", "list", "dict", "set", "tuple", "bool"
TYPES = (INT, STR, LIST, DICT, SET, TUPLE, BOOL)
_LETTERS = "abcdexyz"


@dataclass(frozen=True)
class Program:
    """A program to trace: module source, the entry call, and where it came from."""

    source: str
    call: str  # an expression such as "f(3, [1, 2])", evaluated in the module's namespace
    origin: str = "synth"


@dataclass(frozen=True)
class Knobs:
    length: int = 6  # statements in the body of f (blocks count as one, their bodies add more)
    nesting: int = 2  # maximum depth of nested if/for/while blocks (a try or a one-line guard adds a level)
    values: int = 10  # literal size: ints in [-values, values], containers up to min(values, 6)
    max_events: int = 2000  # a candidate whose run takes more trace events is rejected

    @classmethod
    def parse(cls, spec: str) -> "Knobs":
        """'length=8,nesting=3,values=50' -> Knobs (unnamed fields keep their defaults)."""
        fields = {}
        for part in filter(None, spec.split(",")):
            key, _, value = part.partition("=")
            if key not in cls.__dataclass_fields__ or not value.isdigit():
                raise ValueError(
                    f"bad synth knob {part!r}: use name=int with names {', '.join(cls.__dataclass_fields__)}"
                )
            fields[key] = int(value)
        return cls(**fields)


def generate(seed: int, n: int, knobs: Knobs = Knobs()) -> list[Program]:
    """n checked programs; program i is a function of (seed, i, knobs) only."""
    return [generate_one(seed, i, knobs) for i in range(n)]


def generate_one(seed: int, index: int, knobs: Knobs = Knobs()) -> Program:
    return generate_compiled(seed, index, knobs)[0]


def generate_compiled(seed: int, index: int, knobs: Knobs = Knobs()) -> tuple[Program, types.CodeType]:
    """Program i, and its module code as the tracer compiles it (the run that checked it compiled
    it already: a tracer in this process may take it instead of compiling it again)."""
    rng = random.Random(f"cwm-synth:{seed}:{index}")
    for _ in range(1000):
        program = _Writer(rng, knobs).program()
        code = compile(program.source, PROGRAM, "exec")
        if _returns_within(code, program.call, knobs.max_events):
            return program, code
    raise RuntimeError(f"synth: no valid program for seed {seed} index {index}; loosen the knobs")


MAX_INT = 2**63  # a candidate whose ints reach this (in magnitude) is rejected: values stay int64-sized
CHECK_SECONDS = 2.0  # CPU seconds a candidate's run-check may take (normal ones take about a millisecond)
_CHECK_EVERY = 16  # events between two looks at the ints and the clock


class _EventBudgetExceeded(BaseException):  # BaseException: generated `except` clauses never catch it
    pass


def runs_within(program: Program, max_events: int, max_seconds: float = CHECK_SECONDS) -> bool:
    """Run the program here (it is our own generated code) and say if it returns within budget."""
    try:
        code = compile(program.source, PROGRAM, "exec")
    except SyntaxError:
        return False
    return _returns_within(code, program.call, max_events, max_seconds)


def _returns_within(code: types.CodeType, call: str, max_events: int, max_seconds: float = CHECK_SECONDS) -> bool:
    """Whether the call returns, without raising, within max_events trace events, with every int
    below MAX_INT, and within max_seconds of CPU time.

    The bounds are checked every _CHECK_EVERY events. Ints are bounded because a loop that squares
    (`[i * j for i, j in zip(xs, xs)]`) doubles their size at each turn while spending only a few
    events: without the bound a 60-event program computes for hours. With it every step is cheap,
    so the clock, a backstop, never decides in practice and the programs kept stay a function of
    the seed. The budget exception can be raised where Python cannot propagate it (a generator
    closed as it is freed): Python then prints it and turns tracing off; the hook below swallows
    it and turns tracing back on, so the run still stops at its next event.
    """
    namespace: dict = {}
    events, over = 0, False
    deadline = time.thread_time() + max_seconds

    def count(frame, event, arg):
        nonlocal events, over
        events += 1
        if over or events > max_events or (events % _CHECK_EVERY == 0 and (_has_big_int(frame, namespace) or time.thread_time() > deadline)):
            over = True
            raise _EventBudgetExceeded
        return count

    def unraisable(info):
        if isinstance(info.exc_value, _EventBudgetExceeded):
            sys.settrace(count)
        else:
            previous_hook(info)

    previous, previous_hook = sys.gettrace(), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        exec(code, namespace)
        sys.settrace(count)
        try:
            eval(call, namespace)
        finally:
            sys.settrace(previous)
    except (Exception, _EventBudgetExceeded, RecursionError):
        return False
    finally:
        sys.unraisablehook = previous_hook
    return not over


def _has_big_int(frame, namespace: dict) -> bool:
    """Whether a frame of the program (this one and its callers) holds an int >= MAX_INT in magnitude,
    alone or in a container (the generator's values are ints, strs and flat containers of them)."""
    while frame is not None and frame.f_globals is namespace:
        for value in frame.f_locals.values():
            kind = type(value)
            if kind is int:
                if not -MAX_INT < value < MAX_INT:
                    return True
            elif kind is list or kind is tuple or kind is set or kind is dict:
                for item in value.values() if kind is dict else value:
                    if type(item) is int and not -MAX_INT < item < MAX_INT:
                        return True
        frame = frame.f_back
    return False


def _is_operation(text: str) -> bool:
    """Whether an expression needs parentheses as an operand. The templates write every operator
    (+, <, and, not, in, if-else) between spaces and no other space outside brackets and quotes,
    so a top-level space means an operation (cheaper than parsing, which generation would pay
    thousands of times per program)."""
    depth, quote = 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == " " and depth == 0:
            return True
    return False


class _Writer:
    """Writes one random program. `env` maps variable names in scope to their type."""

    def __init__(self, rng: random.Random, knobs: Knobs):
        self.rng, self.knobs = rng, knobs
        self.helpers: list[str] = []  # module-level functions, each a source block
        self.counter = 0
        self.returns: str | None = None  # the return type of the helper being written (f: any)

    # -- names and literals ------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def literal(self, t: str) -> str:
        r, v = self.rng, self.knobs.values
        size = lambda: r.randint(0, min(v, 6))  # noqa: E731
        if t == INT:
            return str(r.randint(-v, v))
        if t == STR:
            return repr("".join(r.choice(_LETTERS + " ") for _ in range(size())))
        if t == LIST:
            return repr([r.randint(-v, v) for _ in range(size())])
        if t == DICT:
            return repr({r.choice(_LETTERS): r.randint(-v, v) for _ in range(size())})
        if t == SET:
            return repr({r.randint(-v, v) for _ in range(size())} or set())
        if t == TUPLE:
            return repr(tuple(r.randint(-v, v) for _ in range(r.randint(1, 3))))
        return r.choice(["True", "False"])

    def key(self) -> str:
        return repr(self.rng.choice(_LETTERS))

    # -- expressions of a given type -----------------------------------------------------------
    def var(self, env: dict, t: str) -> str | None:
        names = [name for name, typ in env.items() if typ == t]
        return self.rng.choice(names) if names else None

    def expr(self, env: dict, t: str, depth: int = 0) -> str:
        """An expression of type t over the variables in env (a literal when nothing fits)."""
        r = self.rng
        if depth >= 2 or r.random() < 0.25:
            return self.leaf(env, t)
        sub = lambda typ: self.expr(env, typ, depth + 1)  # noqa: E731
        leaf = lambda typ: self.leaf(env, typ)  # noqa: E731
        small = lambda: str(r.randint(2, 5))  # noqa: E731
        options = {
            INT: [
                lambda: f"{sub(INT)} + {sub(INT)}",
                lambda: f"{sub(INT)} - {sub(INT)}",
                lambda: f"{sub(INT)} * {small()}",
                lambda: f"{sub(INT)} // {small()}",
                lambda: f"{sub(INT)} % {small()}",
                lambda: f"abs({sub(INT)})",
                lambda: f"max({sub(INT)}, {sub(INT)})",
                lambda: f"min({sub(INT)}, {sub(INT)})",
                lambda: f"len({sub(r.choice([STR, LIST, DICT, SET]))})",
                lambda: f"sum({sub(LIST)})",
                lambda: f"{sub(STR)}.count({self.key()})",
                lambda: f"{sub(DICT)}.get({self.key()}, {sub(INT)})",
                lambda: f"({sub(INT)} if {sub(BOOL)} else {sub(INT)})",
            ],
            BOOL: [
                lambda: f"{sub(INT)} {r.choice(['<', '<=', '>', '>=', '==', '!='])} {sub(INT)}",
                lambda: f"{sub(INT)} in {sub(r.choice([LIST, SET, TUPLE]))}",
                lambda: f"{self.key()} in {sub(r.choice([DICT, STR]))}",
                lambda: f"not {sub(BOOL)}",
                lambda: f"{sub(BOOL)} and {sub(BOOL)}",
                lambda: f"({sub(BOOL)} or {sub(BOOL)})",
                lambda: f"{sub(INT)} % 2 == 0",
                lambda: f"{sub(STR)}.{r.choice(['isalpha', 'islower', 'isspace'])}()",
                lambda: f"{sub(STR)}.startswith({self.key()})",
                lambda: f"all(x > {sub(INT)} for x in {sub(LIST)})",
                lambda: f"any(x % 3 == 0 for x in {sub(LIST)})",
            ],
            STR: [
                lambda: f"{sub(STR)}.{r.choice(['upper', 'lower', 'strip', 'title', 'swapcase'])}()",
                lambda: f"{sub(STR)}.replace({self.key()}, {self.key()})",
                lambda: f"{sub(STR)}[::-1]",
                lambda: f"{sub(STR)}[{r.randint(0, 2)}:{r.randint(2, 5)}]",
                lambda: f"{sub(STR)} + {self.literal(STR)}",
                lambda: f"str({sub(INT)})",
                lambda: f"'-'.join(str(x) for x in {sub(LIST)})",
                lambda: f"' '.join(sorted({sub(STR)}.split()))",
                lambda: f'f"{{{leaf(INT)}}}:{{{leaf(STR)}}}"',  # leaves quote with ' only
            ],
            LIST: [
                lambda: f"sorted({sub(r.choice([LIST, SET]))})",
                lambda: f"sorted({sub(LIST)}, key=lambda x: (x % 3, -x))",
                lambda: f"{sub(LIST)}[{r.randint(0, 2)}:]",
                lambda: f"{sub(LIST)}[::-1]",
                lambda: f"{sub(LIST)}[::2]",
                lambda: f"[x * {small()} for x in {sub(LIST)}]",
                lambda: f"[x for x in {sub(LIST)} if x > {sub(INT)}]",
                lambda: f"{sub(LIST)} + [{sub(INT)}]",
                lambda: f"list({sub(DICT)}.values())",
                lambda: f"[len(w) for w in {sub(STR)}.split()]",
                lambda: f"[i * j for i, j in zip({sub(LIST)}, {sub(LIST)})]",
            ],
            DICT: [
                lambda: f"{{k: v * {small()} for k, v in {sub(DICT)}.items()}}",
                lambda: f"{{k: v for k, v in {sub(DICT)}.items() if v > {sub(INT)}}}",
                lambda: f"dict(zip({sub(STR)}, {sub(LIST)}))",
                lambda: f"{{**{sub(DICT)}, {self.key()}: {sub(INT)}}}",
            ],
            SET: [
                lambda: f"set({sub(LIST)})",
                lambda: f"{sub(SET)} | {{{sub(INT)}}}",
                lambda: f"{sub(SET)} & set({sub(LIST)})",
                lambda: f"{sub(SET)} - {sub(SET)}",
                lambda: f"{{x % {small()} for x in {sub(LIST)}}}",
            ],
            TUPLE: [
                lambda: f"({sub(INT)}, {sub(INT)})",
                lambda: f"tuple({sub(LIST)})",
                lambda: f"tuple(sorted({sub(SET)}))",
                lambda: f"divmod({sub(INT)}, {small()})",
                lambda: f"{sub(TUPLE)}[:2]",
            ],
        }
        text = r.choice(options[t])()
        if depth > 0 and _is_operation(text):
            text = f"({text})"  # an operand of a larger expression: keep its precedence
        return text

    def leaf(self, env: dict, t: str) -> str:
        """Mostly a variable of type t (programs should compute on their state), else a literal."""
        name = self.var(env, t)
        if name and self.rng.random() < 0.8:
            return name
        if t == BOOL and (n := self.var(env, INT)):  # a condition on the state, not `if True:`
            return f"{n} {self.rng.choice(['<', '>', '=='])} {self.literal(INT)}"
        return self.literal(t)

    # -- statements ------------------------------------------------------------------------------
    def block(self, env: dict, frozen: set, depth: int, count: int) -> list[str]:
        """`count` statements at one level; the names they bind are added to env."""
        lines: list[str] = []
        for _ in range(count):
            lines += self.statement(env, frozen, depth)
        return lines or ["pass"]

    def body(self, env: dict, frozen: set, depth: int) -> list[str]:
        """An indented block; names first bound inside it may not exist after it, so it gets a copy."""
        return ["    " + line for line in self.block(dict(env), frozen, depth + 1, self.rng.randint(1, 3))]

    def statement(self, env: dict, frozen: set, depth: int) -> list[str]:
        kinds = ["assign"] * 4 + ["mutate"] * 2 + ["early_return", "try", "helper", "recursion"]
        if depth < self.knobs.nesting:
            kinds += ["if", "if", "for", "for", "while"]
        if "loop" in frozen:
            kinds += ["break_continue"]
        return getattr(self, "stmt_" + self.rng.choice(kinds))(env, frozen, depth)

    def target(self, env: dict, frozen: set, t: str) -> str:
        """An existing variable of type t to overwrite, or a fresh one (bound in env)."""
        existing = [n for n, typ in env.items() if typ == t and n not in frozen]
        if existing and self.rng.random() < 0.5:
            return self.rng.choice(existing)
        name = self.fresh({INT: "n", STR: "s", LIST: "xs", DICT: "d", SET: "seen", TUPLE: "t", BOOL: "ok"}[t])
        env[name] = t
        return name

    def stmt_assign(self, env, frozen, depth):
        # Expressions are written before their targets are bound, so they never read an unbound name.
        t = self.rng.choice(TYPES)
        value = self.expr(env, t)
        if t == TUPLE and self.rng.random() < 0.3:  # tuple unpacking
            value = f"divmod({self.expr(env, INT)}, {self.rng.randint(2, 5)})"
            return [f"{self.target(env, frozen, INT)}, {self.target(env, frozen, INT)} = {value}"]
        return [f"{self.target(env, frozen, t)} = {value}"]

    def stmt_mutate(self, env, frozen, depth):
        r = self.rng
        choices = []
        env = {name: t for name, t in env.items() if name not in frozen}
        if n := self.var(env, INT):
            choices.append(f"{n} {r.choice(['+=', '-='])} {self.expr(env, INT)}")
        if xs := self.var(env, LIST):
            choices += [f"{xs}.append({self.expr(env, INT)})", f"{xs}.sort()", f"{xs}.reverse()"]
            choices.append(f"if {xs}:\n    {xs}.pop()")
        if d := self.var(env, DICT):
            choices.append(f"{d}[{self.key()}] = {d}.get({self.key()}, 0) + {self.expr(env, INT)}")
        if s := self.var(env, SET):
            choices += [f"{s}.add({self.expr(env, INT)})", f"{s}.discard({self.expr(env, INT)})"]
        if not choices:
            return self.stmt_assign(env, frozen, depth)
        return r.choice(choices).split("\n")

    def stmt_if(self, env, frozen, depth):
        lines = [f"if {self.expr(env, BOOL)}:", *self.body(env, frozen, depth)]
        if self.rng.random() < 0.4:
            lines += [f"elif {self.expr(env, BOOL)}:", *self.body(env, frozen, depth)]
        if self.rng.random() < 0.6:
            lines += ["else:", *self.body(env, frozen, depth)]
        return lines

    def stmt_for(self, env, frozen, depth):
        r = self.rng
        name = self.fresh("i")
        kind = r.choice([INT, LIST, STR, DICT, SET])
        inner = dict(env)
        if kind == INT:
            head = f"for {name} in range({r.randint(1, min(self.knobs.values, 8))}):"
            inner[name] = INT
        elif kind == DICT:
            value = self.fresh("v")
            head = f"for {name}, {value} in {self.expr(env, DICT)}.items():"
            inner[name], inner[value] = STR, INT
            frozen = frozen | {value}
        else:
            head = f"for {name} in {self.expr(env, kind)}:"
            inner[name] = STR if kind == STR else INT
        # Containers named in the loop head are not mutated in the body (no list growing forever).
        return [head, *self.body(inner, frozen | set(re.findall(r"[a-z]+\d+", head)) | {"loop"}, depth)]

    def stmt_while(self, env, frozen, depth):
        counter = self.fresh("k")
        env[counter] = INT
        # The counter is decremented first and never written by the body: the loop always ends.
        head = [f"{counter} = {self.rng.randint(1, min(self.knobs.values, 8))}", f"while {counter} > 0:"]
        return head + [f"    {counter} -= 1", *self.body(env, frozen | {counter, "loop"}, depth)]

    def stmt_break_continue(self, env, frozen, depth):
        return [f"if {self.expr(env, BOOL)}:", f"    {self.rng.choice(['break', 'continue'])}"]

    def stmt_early_return(self, env, frozen, depth):
        t = self.returns or self.rng.choice(TYPES)  # a helper's callers expect its one type
        return [f"if {self.expr(env, BOOL)}:", f"    return {self.expr(env, t)}"]

    def stmt_try(self, env, frozen, depth):
        r = self.rng
        risky, error = r.choice(
            [
                (f"{{n}} = {self.expr(env, INT, 1)} // {self.expr(env, INT, 1)}", "ZeroDivisionError"),
                (f"{{n}} = {self.expr(env, LIST, 1)}[{self.expr(env, INT)}]", "IndexError"),
                (f"{{n}} = {self.expr(env, DICT, 1)}[{self.key()}]", "KeyError"),
                (f"{{n}} = int({self.expr(env, STR)})", "ValueError"),
                (f"if {self.expr(env, BOOL)}:\n        raise ValueError({self.literal(STR)})\n    {{n}} = 1", "ValueError"),
            ]
        )
        n = self.target(env, frozen, INT)
        risky = risky.replace("{n}", n)
        lines = ["try:", *("    " + line.strip() if i == 0 else line for i, line in enumerate(risky.split("\n")))]
        if r.random() < 0.5:
            lines += [f"except {error} as err:", f"    {n} = len(str(err))"]
        else:
            lines += [f"except ({error}, TypeError):", f"    {n} = {self.literal(INT)}"]
        if r.random() < 0.3:
            lines += ["finally:", f"    {self.target(env, frozen, BOOL)} = True"]
        return lines

    def stmt_helper(self, env, frozen, depth):
        r = self.rng
        name = self.fresh("helper")
        params = [(self.fresh("p"), r.choice(TYPES)) for _ in range(r.randint(1, 2))]
        local = dict(params)
        result_type = r.choice(TYPES)
        outer_returns, self.returns = self.returns, result_type
        inner = self.block(local, set(), self.knobs.nesting, r.randint(1, 3))  # flat helper body
        self.returns = outer_returns
        source = [f"def {name}({', '.join(p for p, _ in params)}):", *("    " + x for x in inner)]
        source.append(f"    return {self.expr(local, result_type)}")
        self.helpers.append("\n".join(source))
        args = ", ".join(self.expr(env, t) for _, t in params)
        return [f"{self.target(env, frozen, result_type)} = {name}({args})"]

    def stmt_recursion(self, env, frozen, depth):
        r = self.rng
        name = self.fresh("rec")
        shape = r.randrange(3)
        if shape == 0:  # accumulate down to a base case
            source = f"def {name}(n, acc):\n    if n <= 0:\n        return acc\n    return {name}(n - 1, acc + n)"
            call, t = f"{name}(abs({self.expr(env, INT)}) % 7, {self.expr(env, INT)})", INT
        elif shape == 1:  # structural recursion over a list
            source = f"def {name}(items):\n    if not items:\n        return 0\n    return items[0] + {name}(items[1:])"
            call, t = f"{name}({self.expr(env, LIST)})", INT
        else:  # two recursive calls (a tiny tree)
            source = f"def {name}(n):\n    if n < 2:\n        return n\n    return {name}(n - 1) + {name}(n - 2)"
            call, t = f"{name}(abs({self.expr(env, INT)}) % 6)", INT
        self.helpers.append(source)
        return [f"{self.target(env, frozen, t)} = {call}"]

    # -- the whole program ----------------------------------------------------------------------
    def program(self) -> Program:
        r = self.rng
        params = [(self.fresh("a"), r.choice(TYPES)) for _ in range(r.randint(1, 3))]
        env = dict(params)
        body = self.block(env, set(), 0, self.knobs.length)  # env now holds the top-level names too
        result = self.expr(env, r.choice(TYPES))
        if r.random() < 0.4:
            result = f"{result}, {self.expr(env, r.choice(TYPES))}"
        f = [f"def f({', '.join(p for p, _ in params)}):", *("    " + x for x in body), f"    return {result}"]
        source = "\n\n".join([*self.helpers, "\n".join(f)]) + "\n"
        call = f"f({', '.join(self.literal(t) for _, t in params)})"
        return Program(source=source, call=call)
