"""The tracer on real programs: sys.settrace semantics, entry points, values, limits."""

import sys
import textwrap

import pytest

from cwm.trace import CALL, EXCEPTION, LINE, RETURN, TraceError, to_cwm_text, trace_call, trace_entry, trace_script
from cwm.trace.format import frame_nbytes, outcome, written_locals


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


def test_byte_accounting_matches_the_rendered_text():
    t = trace_call("def f(s):\n    t = s + 'é\\n<|frame_sep|>'\n    return t\n", "f('x')")
    total = len(to_cwm_text(t).encode()) - len(to_cwm_text(type(t)(t.source, "", [])).encode()) - len("<|end_of_text|>")
    previous = {}
    sizes = []
    for f in t.frames:
        written = written_locals(f, previous.get(f.depth)) if f.event == LINE else f.locals
        if f.locals is not None:
            previous[f.depth] = f.locals
        sizes.append(frame_nbytes(f, written))
    assert sum(sizes) == total


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
