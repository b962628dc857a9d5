"""The tracer on real programs: sys.settrace semantics, entry points, values, limits."""

import pickle
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwm.trace import CALL, EXCEPTION, LINE, RETURN, TraceError, to_cwm_text, trace_call, trace_entry, trace_script
from cwm.trace.format import outcome, written_locals


def events(trace):
    return [(f.event, f.lineno, f.depth) for f in trace.frames]


def src(text):
    return textwrap.dedent(text).lstrip("\n")


def test_recursion_nests_scopes_and_returns_values():
    t = trace_call(src("""
        def fact(n):
            if n <= 1:
                return 1
            return n * fact(n - 1)
    """), "fact(3)")
    assert t.status == "ok" and t.return_value == "6"
    calls = [(f.depth, f.locals) for f in t.frames if f.event == CALL]
    assert calls == [(0, {"n": "3"}), (1, {"n": "2"}), (2, {"n": "1"})]
    assert [f.value for f in t.frames if f.event == RETURN] == ["1", "2", "6"]


def test_recursion_to_the_limit_is_its_own_status_not_a_tracer_error():
    t = trace_call(src("""
        def down(n):
            return down(n + 1)
    """), "down(0)", max_events=10**6, max_bytes=10**9)
    assert t.status == "recursion" and "recursion limit" in t.error
    calls = [f for f in t.frames if f.event == CALL]
    assert len(calls) > 100 and calls[-1].depth == len(calls) - 1  # the frames before it are kept


def test_library_code_is_stepped_over_but_callbacks_into_the_program_are_traced():
    t = trace_call(src("""
        import json
        def key(x):
            return -x
        def f(xs):
            s = json.dumps(sorted(xs, key=key))
            return s
    """), "f([1, 2])")
    assert t.return_value == "'[2, 1]'"
    assert {f.source.strip() for f in t.frames} == {"def f(xs):", "def key(x):", "return -x", "s = json.dumps(sorted(xs, key=key))", "return s"}
    assert [f.locals for f in t.frames if f.event == CALL][1:] == [{"x": "1"}, {"x": "2"}]


def test_generator_yields_are_returns_and_resumptions_are_calls():
    t = trace_call(src("""
        def gen(n):
            for i in range(n):
                yield i * 10
        def f():
            return list(gen(2))
    """), "f()")
    g = [(f.event, f.lineno, f.value) for f in t.frames if f.depth == 1]
    assert g[0] == (CALL, 1, None)  # fresh call: the def line
    assert (RETURN, 3, "0") in g and (RETURN, 3, "10") in g  # each yield returns its value
    assert g.count((CALL, 3, None)) == 2  # resumed at the yield line, twice (after 0, after 10)
    assert g[-1] == (RETURN, 2, "None")  # exhausted
    assert t.return_value == "[0, 10]"


def test_closures_lambdas_and_comprehensions_are_scopes_without_hidden_iterator():
    t = trace_call(src("""
        def f(k):
            add = lambda x: x + k
            ys = [add(x) for x in range(2)]
            return ys
    """), "f(5)")
    comp = [f for f in t.frames if f.depth == 1 and f.event == LINE]
    assert all(".0" not in f.locals for f in comp)  # the hidden iterator argument is left out
    lam = [f for f in t.frames if f.event == CALL and f.depth == 2]
    assert [f.locals for f in lam] == [{"x": "0", "k": "5"}, {"x": "1", "k": "5"}]  # free variable k shows
    assert t.return_value == "[5, 6]"


def test_methods_and_decorated_functions_call_at_the_def_line():
    t = trace_call(src("""
        import functools
        class Box:
            def __init__(self, v):
                self.v = v
            def get(self):
                return self.v
        @functools.lru_cache(maxsize=None)
        def f(v):
            return Box(v).get()
    """), "f(4)")
    assert t.frames[0].source == "def f(v):\n" and t.frames[0].lineno == 8
    assert [f.source.strip() for f in t.frames if f.event == CALL] == ["def f(v):", "def __init__(self, v):", "def get(self):"]
    assert t.return_value == "4"


def test_caught_exception_then_uncaught_exception():
    t = trace_call(src("""
        def g(x):
            return 1 // x
        def f(x):
            try:
                g(0)
            except ZeroDivisionError as e:
                x = -x
            return g(x * 0)
    """), "f(2)")
    exc = [(f.depth, f.lineno, f.value) for f in t.frames if f.event == EXCEPTION]
    zde = "ZeroDivisionError('integer division or modulo by zero')"
    assert exc == [(1, 2, zde), (0, 5, zde), (1, 2, zde), (0, 8, zde)]
    assert t.status == "exception" and t.error == zde and t.return_value is None
    assert (t.frames[-2].event, t.frames[-1].event, t.frames[-1].value) == (EXCEPTION, RETURN, "None")
    assert to_cwm_text(t).endswith("<|end_of_text|>")  # complete: the entry scope was left


def test_locals_are_the_state_before_each_line_and_deleted_names_disappear():
    t = trace_call(src("""
        def f():
            a = 1
            del a
            return 2
    """), "f()")
    lines = [f.locals for f in t.frames if f.event == LINE]
    assert lines == [{}, {"a": "1"}, {}]


def test_entry_by_name_marker_on_def_and_marker_on_a_module_line():
    program = src("""
        def sq(x):
            return x * x
        def main():
            return sq(3) + 1
        print(sq(2))
        main()
    """)
    by_name = trace_entry(program, "main")
    assert by_name.return_value == "10" and by_name.frames[0].source == "def main():\n"
    assert "def main():  # << START_OF_TRACE\n" in by_name.source
    marked = trace_script(program.replace("def main():", "def main():  # << START_OF_TRACE"))
    assert to_cwm_text(marked) == to_cwm_text(by_name)
    line = trace_script(program.replace("print(sq(2))", "print(sq(2))  # << START_OF_TRACE"))
    assert line.entry == "print(sq(2))" and line.return_value == "4" and line.frames[0].locals == {"x": "2"}


def test_whole_script_records_module_state_but_not_definitions():
    t = trace_script("import os\ndef f():\n    return 1\nx = f()\ny = [x]\n")
    assert t.entry == "<module>" and t.status == "ok"
    assert [f.locals for f in t.frames if f.event == LINE and f.depth == 0] == [{}, {}, {}, {"x": "1"}]


def test_a_program_removing_the_tracer_is_reported():
    t = trace_call(src("""
        import sys
        def f():
            a = 1
            sys.settrace(None)
            b = 2
            return a + b
    """), "f()")
    assert t.status == "tracer_removed" and "removed" in t.error
    assert not to_cwm_text(t).endswith("<|end_of_text|>")


def test_event_limit_size_limit_and_timeout_stop_with_a_status():
    loop = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i\n    return s\n"
    t = trace_call(loop, "f(10**6)", max_events=50)
    assert t.status == "event_limit" and len(t.frames) == 50 and "50" in t.error
    t = trace_call(loop, "f(10**6)", max_bytes=2000)
    assert t.status == "size_limit" and 1900 < len(to_cwm_text(t).encode()) + len("<|end_of_text|>") <= 2000
    t = trace_call("def f():\n    while True:\n        pass\n", "f()", timeout=0.2, max_events=10**9, max_bytes=10**12)
    assert t.status == "timeout" and len(t.frames) > 10


def test_growing_list_is_truncated_but_changes_in_the_hidden_part_are_written():
    t = trace_call(src("""
        def f(n):
            xs = list(range(n))
            xs[-1] = -1
            xs[-1] = -1
            return len(xs)
    """), "f(3000)", value_limit=50)
    line = [f for f in t.frames if f.event == LINE]
    assert line[1].locals["xs"].endswith("...") and len(line[1].locals["xs"]) == 53
    assert line[2].rewritten == ("xs",)  # same text, but the value changed where the text is cut
    assert line[3].rewritten == ()  # assigning the same value again is no change
    text = to_cwm_text(t)
    assert text.count('"xs": "..') == 1


def test_user_reprs_that_raise_or_hang_become_marked_values():
    t = trace_call(src("""
        class Bad:
            def __repr__(self):
                raise RuntimeError("no")
        class Hang:
            def __repr__(self):
                while True:
                    pass
        def f():
            b = Bad()
            h = Hang()
            return 1
    """), "f()", repr_timeout=0.05)
    assert t.status == "ok"
    last = [f for f in t.frames if f.event == LINE][-1].locals
    assert last == {"b": "<repr of Bad raised RuntimeError: no>", "h": "<repr of Hang timed out>"}


def test_bad_requests_raise_trace_error():
    with pytest.raises(TraceError, match="syntax error"):
        trace_call("def f(:\n", "f()")
    with pytest.raises(TraceError, match="no function 'g'"):
        trace_call("def f():\n    pass\n", "g()")
    with pytest.raises(TraceError, match="generator"):
        trace_call("def g():\n    yield 1\n", "g()")
    with pytest.raises(TraceError, match="NameError"):
        trace_call("def f(x):\n    pass\n", "f(nope)")
    with pytest.raises(TraceError, match="by name"):
        trace_call("def f(x):\n    pass\n", "1 + 2")


def test_tracing_leaves_no_trace_function_behind():
    before = sys.gettrace()
    trace_call("def f():\n    return 1\n", "f()")
    assert sys.gettrace() is before
    status, value, error = outcome(trace_call("def f():\n    return 1\n", "f()").frames)
    assert (status, value, error) == ("ok", "1", None)


# ---------------------------------------------------------------------------------------------
# Change tracking: the recorder skips re-rendering locals it can prove unchanged (values.track).
# Each test checks the written locals against brute force: every local's full repr and pickle,
# taken on every line by a plain sys.settrace tracer over the same function.


def brute_force_written(source: str, call: str, limit: int) -> list[dict[str, str]]:
    """The locals each line frame of the entry should write, from full reprs and pickles."""
    ns: dict = {}
    exec(compile(source, "<brute>", "exec"), ns)
    fn = ns[call.split("(")[0]]
    snapshots = []

    def tracer(frame, event, arg):
        if frame.f_code is not fn.__code__:
            return None
        if event == LINE:
            snapshots.append({k: (repr(v), pickle.dumps(v)) for k, v in frame.f_locals.items()})
        return tracer

    sys.settrace(tracer)
    try:
        eval(call, ns)
    finally:
        sys.settrace(None)
    written, previous = [], {}
    for snap in snapshots:
        row = {}
        for name, (full, data) in snap.items():
            text = full if len(full) <= limit else full[:limit] + "..."
            same = name in previous and previous[name][0] == text and (len(full) <= limit or previous[name][1] == data)
            row[name] = ".." if same else text
        written.append(row)
        texts = {name: previous[name][0] if row[name] == ".." else row[name] for name in row}
        previous = {name: (texts[name], data) for name, (_, data) in snap.items()}
    return written


def our_written(trace) -> list[dict[str, str]]:
    rows, previous = [], None
    for f in trace.frames:
        if f.depth == 0 and f.event in (CALL, LINE):
            if f.event == LINE:
                rows.append(written_locals(f, previous))
            previous = f.locals
    return rows


def check_against_brute_force(body: str, limit: int, args: str = "") -> None:
    source = "def f():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n    return 0\n"
    trace = trace_call(source, f"f({args})", value_limit=limit)
    assert trace.status == "ok", trace.error
    assert our_written(trace) == brute_force_written(source, f"f({args})", limit)


def test_a_list_mutated_in_place_every_line_is_written_whenever_it_changed():
    check_against_brute_force("""
        xs = [3, 1, 2]
        xs.sort()
        xs.sort()
        xs[0] = 1
        xs[0] = True
        xs[0] = 1.0
        xs[1] = -0.0
        xs[1] = 0.0
        xs.reverse()
        xs.append(4)
        xs.pop()
        xs = list(xs)
    """, limit=1000)


def test_a_nested_list_or_a_list_in_a_dict_mutated_inside_is_written():
    check_against_brute_force("""
        grid = [[0, 0], [0, 0]]
        grid[0][1] = 5
        grid[0][1] = 5
        d = {"a": [1], "b": 2}
        d["a"].append(2)
        d["b"] += 1
        d["b"] += 0
        t = (1, [2])
        t[1].append(3)
    """, limit=1000)


def test_equal_but_different_objects_are_unchanged_and_lookalikes_are_changed():
    check_against_brute_force("""
        x = 1000
        x = x + 0
        y = [1, 2]
        y = [1, 2]
        z = {1: 'a'}
        z = {True: 'a'}
        w = [1]
        w = None
        v = 'a' * 3
        v = 'aaa'
    """, limit=1000)


def test_changes_beyond_the_truncated_text_are_written_and_no_others():
    check_against_brute_force("""
        xs = list(range(30))
        xs.append(30)
        xs[-1] = -1
        xs[-1] = -1
        xs = list(xs)
        xs[-1] = True
        xs += [1]
        d = dict.fromkeys(range(20), 0)
        d[19] = 1
        d[19] = 1
        d[20] = 2
        s = 'x' * 50
        s = s[:-1] + 'y'
        s = s[:-1] + 'y'
        big = 10 ** 40
        big += 1
        nested = [list(range(10)), [0]]
        nested[-1].append(1)
    """, limit=20)


MUTATIONS = [
    "xs.append({v})", "xs[{i} % len(xs)] = {v}", "xs.insert(0, {v})", "if len(xs) > 1: xs.pop(0)", "xs.reverse()",
    "xs.sort(key=repr)", "xs = list(xs)", "xs[0] = [xs[0]]", "if type(xs[0]) is list: xs[0].append({v})",
    "d[{i}] = {v}", "d.pop({i}, None)", "d = dict(d)", "s = s[:-1] + repr({v})[-1]", "t = (t[0], {v})",
]  # fmt: skip
VALUES = ["0", "1", "7", "True", "1.0", "-0.0", "0.0", "10**30", "'a'", "\"'\"", "300"]  # 1 == True == 1.0, 0.0 == -0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=12),
       st.lists(st.sampled_from(VALUES), min_size=12, max_size=12), st.integers(0, 5), st.sampled_from([8, 25, 1000]))
def test_random_mutations_are_written_exactly_when_they_change(ops, values, i, limit):
    body = "xs = [0, 1, 2]\nd = {}\ns = 'abc' * 10\nt = (1, 2)\n"
    body += "\n".join(op.format(v=v, i=i + k) for k, (op, v) in enumerate(zip(ops, values)))
    check_against_brute_force(body, limit=limit)


def test_user_eq_of_list_items_is_never_called_to_check_for_changes():
    t = trace_call(src("""
        class Item:
            def __init__(self, log):
                self.log = log
            def __eq__(self, other):
                self.log.append("eq")
                return True
            __hash__ = object.__hash__
            def __repr__(self):
                return "Item"
        def f(log):
            xs = [1, 2]
            xs[0] = Item(log)
            n = 0
            n = 1
            return log.count("eq")
    """), "f([])")
    assert t.return_value == "0"  # every line was rendered before this count ran
    texts = [f.locals.get("xs") for f in t.frames if f.event == LINE and f.depth == 0]
    assert texts == [None, "[1, 2]", "[Item, 2]", "[Item, 2]", "[Item, 2]"]


def test_size_accounting_is_exact_at_the_byte_limit():
    program = src("""
        def f(n):
            xs, d, s = [], {}, ''
            for i in range(n):
                xs.append(i * 1000)
                d[str(i)] = [i]
                s += 'é"'
            return len(xs)
    """)
    full = trace_call(program, "f(40)", value_limit=60)
    total = len(to_cwm_text(full).encode())
    assert trace_call(program, "f(40)", value_limit=60, max_bytes=total).status == "ok"
    cut = trace_call(program, "f(40)", value_limit=60, max_bytes=total - 1)
    assert cut.status == "size_limit" and cut.frames == full.frames[:-1]


# ---------------------------------------------------------------------------------------------
# The trace function is C (_ctrace.c): its byte counting, its references, its re-installation.


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=40), st.sampled_from([3, 12, 1000]))
def test_byte_accounting_is_exact_for_any_string(s, limit):
    program = "def f(s):\n    t = s[::-1]\n    u = [s]\n    return t\n"
    call = f"f({s!r})"
    full = trace_call(program, call, value_limit=limit)
    total = len(to_cwm_text(full).encode())
    assert trace_call(program, call, value_limit=limit, max_bytes=total).status == "ok"
    assert trace_call(program, call, value_limit=limit, max_bytes=total - 1).status == "size_limit"


def test_the_tracer_keeps_no_reference_to_the_programs_objects():
    import gc
    import tracemalloc

    program = src("""
        class LeakProbe:
            pass
        def f(n):
            probe, xs, total = LeakProbe(), [], 0
            for i in range(n):
                xs.append(str(i) * 3)
                total += len(xs[-1])
            return probe
    """)

    def run():
        assert trace_call(program, "f(50)").status == "ok"

    for _ in range(20):
        run()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(100):
        run()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert not [o for o in gc.get_objects() if type(o).__name__ == "LeakProbe"]  # nor its frames
    # 100 traces of ~150 frames each: a reference leaked per event would keep over 1 MB
    assert grown < 200_000, grown


def test_a_program_that_reinstalls_the_current_trace_function_stays_traced():
    t = trace_call(src("""
        import sys
        def f():
            sys.settrace(sys.gettrace())
            x = 1
            return x
    """), "f()")
    assert t.status == "ok" and [f.lineno for f in t.frames if f.event == LINE] == [3, 4, 5]


def test_a_whole_script_with_keys_that_are_not_names_in_its_namespace():
    t = trace_script("x = 1\nglobals()[1] = 2\nglobals()[''] = 3\ny = x + 1\n")
    assert t.status == "ok" and [f.locals for f in t.frames if f.event == LINE][-1] == {"x": "1"}


def test_a_class_body_whose_namespace_is_not_a_dict_shows_its_names():
    t = trace_call(src("""
        class Namespace:
            def __init__(self):
                self.d = {}
            def __setitem__(self, k, v):
                self.d[k] = v
            def __getitem__(self, k):
                return self.d[k]
            def keys(self):
                return self.d.keys()
        class Meta(type):
            @classmethod
            def __prepare__(mcs, name, bases):
                return Namespace()
            def __new__(mcs, name, bases, ns):
                return super().__new__(mcs, name, bases, dict(ns.d))
        def f():
            class C(metaclass=Meta):
                a = 1
                b = a + 1
            return C.b
    """), "f()")
    body = [f.locals for f in t.frames if f.event == LINE and f.lineno == 19]  # b = a + 1, in the class body
    assert t.status == "ok" and t.return_value == "2" and body[0]["a"] == "1"


@pytest.mark.parametrize("program, call", [
    ("def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    z = [g(i, y) for i in range(x)]\n    return y, z\n", "f(3)"),
    ("def g(n):\n    if n < 0:\n        raise ValueError(n)\n    return 'v' * n\n\n"
     "def f(xs):\n    out = []\n    for x in xs:\n        try:\n            out.append(g(x))\n"
     "        except ValueError:\n            out.append(None)\n    return out\n", "f([1, -2, 3])"),
])
def test_size_accounting_is_exact_when_callees_return(program, call):
    """The first line frame after a return is written in full (the `".."` rule): the C tracer's
    byte count must follow it exactly."""
    full = trace_call(program, call)
    total = len(to_cwm_text(full).encode())
    assert trace_call(program, call, max_bytes=total).status == "ok"
    assert trace_call(program, call, max_bytes=total - 1).status == "size_limit"


# ---------------------------------------------------------------------------------------------
# A trace function removed at any point (issue 12, point 7)

REMOVERS = {
    "C API": "ctypes.pythonapi.PyEval_SetTrace(None, None)",
    "sys.settrace": "sys.settrace(None)",
    "the real settrace behind the guard": "sys.settrace.__closure__[0].cell_contents(None)",  # the recorder's wrapper
    "another function": "sys.settrace(lambda *a: None)",
}


@pytest.mark.parametrize("how", list(REMOVERS))
def test_a_trace_function_removed_and_put_back_is_not_ok(how):
    from cwm.sandbox import run_function

    program = src(f"""
        import ctypes, sys
        def f():
            t = sys.gettrace()
            {REMOVERS[how]}
            hidden = 1
            sys.settrace(t)
            return hidden + 1
    """)
    for trace in (trace_call(program, "f()"), run_function(trace_call, program, "f()").value):
        assert trace.status == "tracer_removed" and "events are missing" in trace.error
        assert trace.return_value is None and not to_cwm_text(trace).endswith("<|end_of_text|>")


def test_settrace_after_the_entry_returned_does_not_spoil_the_trace():
    t = trace_script(src("""
        import ctypes, sys
        def f():
            return 1
        f()  # << START_OF_TRACE
        ctypes.pythonapi.PyEval_SetTrace(None, None)
        sys.settrace(None)
    """))
    assert t.status == "ok" and t.return_value == "1"


def test_source_that_cannot_be_compiled_is_a_trace_error():
    deep = "+".join(["1"] * 100_000)  # parses, but nests too deeply for the compiler (RecursionError)
    with pytest.raises(TraceError, match="cannot compile: the code nests too deeply"):
        trace_call(f"x = {deep}\ndef f():\n    return 1\n", "f()")
    with pytest.raises(TraceError, match="cannot be parsed"):
        trace_call("def f(x):\n    return x\n", f"f({deep})")


# ---------------------------------------------------------------------------------------------
# The program runs as a registered module, as `python` runs it (issue 12, point 6)

PROGRAMS = sorted((Path(__file__).parent / "programs").glob("*.py"))


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_a_corpus_of_ordinary_programs_traces_ok(path):
    from cwm.sandbox import run_function

    source = path.read_text()
    expected = source.splitlines()[0].removeprefix("# expect: ")
    if 'if __name__ == "__main__":' in source:  # run as a script: its first call of main()
        res = run_function(trace_entry, source, "main", filename=str(path))
    else:
        res = run_function(trace_call, source, "main()", filename=str(path))
    assert res.ok, res.error
    assert (res.value.status, res.value.error, res.value.return_value) == ("ok", None, expected)


def test_the_program_module_is_registered_only_during_the_run():
    before = sys.modules.get("__main__")
    t = trace_call(src("""
        import sys
        from dataclasses import dataclass
        @dataclass
        class P:
            x: int
        def f():
            return sys.modules[__name__].P is P, __name__
    """), "f()", filename="<prog>")
    assert t.status == "ok" and t.return_value == "(True, 'program')"
    t = trace_script("import sys\nname = __name__\nmain = sys.modules['__main__'].__dict__ is globals()\npass\n")
    assert t.status == "ok" and t.frames[-2].locals == {"name": "'__main__'", "main": "True"}
    assert "program" not in sys.modules and sys.modules.get("__main__") is before
