"""The tracer's C/Python contract, and the one home of the trace format's spelled constants.

The C trace function (_ctrace.c) exports what it and the Python side must agree on; these tests
hold the two equal, check that the contract is by name (a reordering on either side fails here),
and that the byte count the C side keeps for the size limit is the rendered text's, frame by frame.
"""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

import cwm
from cwm.tokenizer import specials
from cwm.trace import _ctrace, format, tokens, values
from cwm.trace.format import END_OF_TEXT, Frame, frame_text, prompt_text, to_cwm_text
from cwm.trace.recorder import trace_call

SRC = Path(cwm.__file__).parent


def test_the_c_module_exports_the_constants_it_writes_and_python_agrees():
    assert _ctrace.EVENTS == tokens.EVENTS == format.EVENTS == ("call", "line", "return", "exception")
    assert _ctrace.FRAME_FIELDS == tuple(f.name for f in dataclasses.fields(Frame))
    # how a local changed: defined once, in C; values.py uses the C module's
    assert (values.SAME, values.CHANGED, values.REWRITTEN) == (_ctrace.SAME, _ctrace.CHANGED, _ctrace.REWRITTEN)
    assert len({_ctrace.SAME, _ctrace.CHANGED, _ctrace.REWRITTEN}) == 3
    assert values.Tracked is _ctrace.Tracked
    # the frames the C side writes carry the format's very event strings
    t = trace_call("def f(x):\n    if x:\n        raise ValueError(x)\n    return x\n\ndef g():\n    try:\n        f(1)\n"
                   "    except ValueError:\n        return f(0)\n", "g()")
    assert {f.event for f in t.frames} == set(tokens.EVENTS) and t.status == "ok"


def test_what_a_scope_remembers_has_named_fields():
    fields = {"value": [1], "items": None, "text": "[1]", "nbytes": 5, "fingerprint": None, "how": values.SAME}
    assert _ctrace.Tracked.__match_args__ == tuple(fields)
    made = _ctrace.Tracked(**dict(reversed(fields.items())))  # by keyword, in any order
    assert {name: getattr(made, name) for name in fields} == fields
    assert _ctrace.Tracked(*fields.values()).text == "[1]"
    with pytest.raises(ValueError, match="how must be SAME, CHANGED or REWRITTEN"):
        _ctrace.Tracked(**{**fields, "how": 3})
    with pytest.raises(TypeError, match="missing its argument how"):
        _ctrace.Tracked(**{k: v for k, v in fields.items() if k != "how"})
    with pytest.raises(TypeError, match="text must be a str"):
        _ctrace.Tracked(**{**fields, "text": b"[1]"})
    r = values.ValueRenderer(limit=10)
    xs = [1, 2]
    first = r.track(xs, None)
    assert (first.value, first.items, first.text, first.nbytes, first.how) == (xs, [1, 2], "[1, 2]", 8, values.CHANGED)
    xs.append(3)
    grown = r.track(xs, first)
    assert (grown.text, grown.items, grown.how) == ("[1, 2, 3]", [1, 2, 3], values.CHANGED)


def test_the_c_side_refuses_a_positional_tuple_from_python(monkeypatch):
    """A tuple (as the contract used to be) instead of a Tracked is a clear tracer error, not
    a silently misread field."""
    track = values.ValueRenderer.track

    def as_tuple(self, value, seen):
        t = track(self, value, seen)
        return (t.value, t.items, t.text, t.nbytes, t.fingerprint, t.how)

    monkeypatch.setattr(values.ValueRenderer, "track", as_tuple)
    t = trace_call("def f():\n    xs = [[1], {2: 3}]\n    return len(xs)\n", "f()")
    assert t.status == "tracer_error" and "track must return a _ctrace.Tracked, not tuple" in t.error


def test_a_tracked_value_is_not_a_tuple():
    """Nothing reads a Tracked by position: it has no positions."""
    made = values.ValueRenderer(10).track([1, 2], None)
    assert not isinstance(made, tuple)
    with pytest.raises(TypeError):
        made[0]


def test_the_type_stub_names_what_the_c_module_exports():
    stub = ast.parse((SRC / "trace" / "_ctrace.pyi").read_text())
    top = {n.target.id for n in stub.body if isinstance(n, ast.AnnAssign)}
    top |= {n.name for n in stub.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert top == {name for name in dir(_ctrace) if not name.startswith("_")}
    classes = {n.name: n for n in stub.body if isinstance(n, ast.ClassDef)}
    tracked = [n.name for n in classes["Tracked"].body if isinstance(n, ast.FunctionDef) and n.name != "__new__"]
    assert tuple(tracked) == _ctrace.Tracked.__match_args__
    new = next(n for n in classes["Tracked"].body if isinstance(n, ast.FunctionDef) and n.name == "__new__")
    assert tuple(a.arg for a in new.args.args[1:]) == _ctrace.Tracked.__match_args__
    members = {n.name if isinstance(n, ast.FunctionDef) else n.target.id for n in classes["Tracer"].body
               if isinstance(n, (ast.FunctionDef, ast.AnnAssign))} - {"__init__"}
    assert members == {name for name in dir(_ctrace.Tracer) if not name.startswith("_")}


PROGRAMS = {
    "calls, non-ASCII text, a local written in full after a return": (
        "def g(x):\n    return x * 2\n\ndef f(s):\n    t = s + 'é\\n<|frame_sep|>'\n    u = g(len(t))\n"
        "    xs = [t] * 3\n    del u\n    return xs\n", "f('x')", {}),
    "truncated values, a change hidden where the text is cut, an exception": (
        "def f(n):\n    xs = list(range(n))\n    xs[-1] = -1\n    xs.append(7)\n    d = {i: str(i) for i in xs}\n"
        "    try:\n        d[99]\n    except KeyError as e:\n        err = e\n    return d\n", "f(40)", {"value_limit": 12}),
    "a whole script: module scope, definitions left out": (
        "import math\n\nclass P:\n    pass\n\ndef sq(v):\n    return v * v\n\nr = [sq(i) for i in range(3)]\n"
        "total = math.fsum(r)\n", None, {}),
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_the_size_limit_counts_each_frame_exactly_as_it_is_written(name):
    """The C side counts every frame's bytes without writing it: with a budget of exactly the text
    through frame k (and <|end_of_text|>), frames 0..k are recorded; one byte less stops before k."""
    source, call, options = PROGRAMS[name]

    def run(max_bytes):
        if call is None:
            from cwm.trace.recorder import trace_script

            return trace_script(source, max_bytes=max_bytes, **options)
        return trace_call(source, call, max_bytes=max_bytes, **options)

    full = run(10**9)
    assert full.status == "ok" and len(full.frames) > 5
    total = len(prompt_text(full.source).encode()) + len(END_OF_TEXT)
    budgets = []
    for k, frame in enumerate(full.frames):
        total += len(frame_text(frame, full.frames[:k]).encode())
        budgets.append(total)
    assert total == len(to_cwm_text(full).encode())
    for k, budget in enumerate(budgets):
        assert len(run(budget).frames) == k + 1, f"frame {k}"
        cut = run(budget - 1)
        assert len(cut.frames) == k and cut.status == "size_limit", f"frame {k}"


def _spelled_constants(path: Path):
    """The string constants of a module that are not docstrings, with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def _spells_a_trace_constant(text: str) -> bool:
    if text.strip() in tokens.SPECIALS or text == tokens.MARKER:
        return True
    if tokens.MARKER_NAME not in text:  # a pattern for the marker?
        return False
    try:
        return re.search(text, tokens.MARKER) is not None
    except re.error:  # prose that mentions the marker
        return False


def test_the_trace_constants_are_spelled_in_one_place():
    """Code uses cwm.trace.tokens' names for the trace's special tokens and marker (messages
    and docstrings may mention them)."""
    home = SRC / "trace" / "tokens.py"
    spelled = [
        f"{path.relative_to(SRC)}:{line}: {text!r}"
        for path in sorted(SRC.rglob("*.py")) if path != home
        for line, text in _spelled_constants(path) if _spells_a_trace_constant(text)
    ]  # fmt: skip
    assert spelled == []
    for name in ("BEGIN_OF_TEXT", "END_OF_TEXT", "TRACE_CONTEXT_START", "FRAME_SEP", "ACTION_SEP", "ARG_SEP",
                 "CALL_SEP", "LINE_SEP", "RETURN_SEP", "EXCEPTION_SEP"):
        assert getattr(specials, name) is getattr(tokens, name), name
    assert tokens.SPECIALS <= set(specials.SPECIAL_TOKENS)
