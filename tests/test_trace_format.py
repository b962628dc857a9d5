"""The CWM text and JSON formats: the spec's example byte for byte, pieces, parsing, round trips."""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cwm.trace import (
    CALL,
    EXCEPTION,
    LINE,
    RETURN,
    Frame,
    Trace,
    TraceParseError,
    frame_pieces,
    frame_text,
    from_json,
    parse_cwm_pieces,
    parse_cwm_text,
    prompt_text,
    to_cwm_pieces,
    to_cwm_text,
    to_json,
    trace_call,
)  # fmt: skip
from cwm.trace.format import outcome

SPEC_PROGRAM = "def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    return y\n"
SPEC_TEXT = (
    '<|begin_of_text|><|trace_context_start|>def g(a, b):\n    return a * b\n\ndef f(x):  # << START_OF_TRACE\n'
    '    y = g(x, 2)\n    return y\n<|frame_sep|><|call_sep|>{"x": "3"}<|action_sep|>def f(x):\n'
    '<|frame_sep|><|line_sep|>{"x": ".."}<|action_sep|>    y = g(x, 2)\n'
    '<|frame_sep|><|call_sep|>{"a": "3", "b": "2"}<|action_sep|>def g(a, b):\n'
    '<|frame_sep|><|line_sep|>{"a": "..", "b": ".."}<|action_sep|>    return a * b\n'
    '<|frame_sep|><|return_sep|><|action_sep|>    return a * b\n'
    '<|arg_sep|>"6"<|frame_sep|><|line_sep|>{"x": "3", "y": "6"}<|action_sep|>    return y\n'
    '<|frame_sep|><|return_sep|><|action_sep|>    return y\n'
    '<|arg_sep|>"6"<|frame_sep|><|end_of_text|>'
)


def test_spec_example_is_reproduced_byte_for_byte():
    trace = trace_call(SPEC_PROGRAM, "f(3)")
    assert to_cwm_text(trace) == SPEC_TEXT  # CWM_SPEC §5's example, copied verbatim


def test_pieces_keep_special_spellings_in_values_as_ordinary_text():
    trace = trace_call("def f(s):\n    return s + '<|frame_sep|>'\n", "f('<|end_of_text|>')")
    pieces = to_cwm_pieces(trace)
    assert "".join(t for t, _ in pieces) == to_cwm_text(trace)
    specials = [t for t, special in pieces if special]
    assert specials.count("<|frame_sep|>") == 1 + len(trace.frames) and specials.count("<|end_of_text|>") == 1
    assert all(not special for t, special in pieces if "<|end_of_text|>'" in t or "<|frame_sep|>'" in t)
    parsed = parse_cwm_pieces(pieces)  # pieces are unambiguous where the plain text is not
    assert parsed.error is None and parsed.to_trace(trace.entry) == trace


def test_one_frame_at_a_time_rendering_joins_to_the_whole_text():
    trace = trace_call(SPEC_PROGRAM, "f(3)")
    text = prompt_text(trace.source) + "".join(frame_text(f, trace.frames[:i]) for i, f in enumerate(trace.frames))
    assert text + "<|end_of_text|>" == SPEC_TEXT
    assert frame_pieces(trace.frames[3], trace.frames[:3])[1] == ('{"a": "..", "b": ".."}', False)
    # after g returned, f's next line is written in full: the release's reader stops at a return
    assert frame_pieces(trace.frames[5], trace.frames[:5])[1] == ('{"x": "3", "y": "6"}', False)


def test_parser_resolves_dots_by_scope_and_reports_malformed_output():
    parsed = parse_cwm_text(SPEC_TEXT)
    assert parsed.error is None and parsed.complete
    assert parsed.frames[5].locals == {"x": "3", "y": "6"} and parsed.frames[5].depth == 0
    assert [f.lineno for f in parsed.frames] == [4, 5, 1, 2, 2, 6, 6]
    cut = SPEC_TEXT.index('{"a": "..", "b": ".."}') + 8
    broken = parse_cwm_text(SPEC_TEXT[:cut])  # model output that stopped inside a frame's locals
    assert len(broken.frames) == 3 and broken.problem.frame_index == 3
    assert "not JSON" in broken.error and broken.problem.offset == cut - 8
    unknown = parse_cwm_text(SPEC_TEXT.replace('{"x": "3", "y": "6"}', '{"z": "..", "y": "6"}'))
    assert "'z' is \"..\" but has no earlier value" in unknown.error and len(unknown.frames) == 5
    try:
        unknown.to_trace()
    except TraceParseError as e:
        assert e.frame_index == 5 and len(e.frames) == 5
    else:
        raise AssertionError("to_trace must raise on a malformed text")
    early = parse_cwm_text(SPEC_TEXT.replace("<|frame_sep|><|return_sep|><|action_sep|>    return y\n<|arg_sep|>\"6\"", ""))
    assert "before the entry scope returned" in early.error


def test_incomplete_but_wellformed_prefix_parses_without_error():
    prefix = SPEC_TEXT[: SPEC_TEXT.index("<|call_sep|>{\"a\"")]
    parsed = parse_cwm_text(prefix)
    assert parsed.error is None and not parsed.complete and len(parsed.frames) == 2
    assert parsed.to_trace().status == "incomplete"


# -- round trips on generated traces ------------------------------------------------------------

LINES = [f"    line_{i} = {i}\n" for i in range(8)]
SOURCE = "def f(x):  # << START_OF_TRACE\n" + "".join(LINES)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
names = st.sampled_from(["x", "y", "zz", "é", "<|frame_sep|>"])


@st.composite
def traces(draw):
    """Well-formed traces: balanced call/return with line and exception frames in between."""
    frames, open_locals = [], []

    def call():
        loc = draw(st.dictionaries(names, texts.filter(lambda v: v != ".."), max_size=3))
        frames.append(Frame(CALL, 1, "def f(x):\n", loc, None, len(open_locals)))
        open_locals.append(loc)

    call()
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from([CALL, LINE, LINE, RETURN, EXCEPTION]))
        if kind == CALL and len(open_locals) < 4:
            call()
        elif kind == LINE:
            n = draw(st.integers(0, 7))
            prev = open_locals[-1]
            loc = {k: draw(st.sampled_from([v, v + "!"])) for k, v in prev.items() if draw(st.booleans())}
            loc.update(draw(st.dictionaries(names, texts.filter(lambda v: v != ".."), max_size=2)))
            same = [k for k, v in loc.items() if prev.get(k) == v]
            rewritten = tuple(k for k in same if draw(st.booleans()))  # changed beyond a truncated text
            if [f.event for f in frames if f.event != EXCEPTION][-1] == RETURN:
                rewritten = ()  # the first line after a return writes every local in full anyway
            frames.append(Frame(LINE, n + 2, LINES[n], loc, None, len(open_locals) - 1, rewritten))
            open_locals[-1] = loc
        elif kind == EXCEPTION:
            n = draw(st.integers(0, 7))
            frames.append(Frame(EXCEPTION, n + 2, LINES[n], None, draw(texts), len(open_locals) - 1))
        elif kind == RETURN and len(open_locals) > 1:
            frames.append(Frame(RETURN, 2, LINES[0], None, draw(texts), len(open_locals) - 1))
            open_locals.pop()
    while open_locals:
        frames.append(Frame(RETURN, 2, LINES[0], None, draw(texts), len(open_locals) - 1))
        open_locals.pop()
    trace = Trace(SOURCE, "", frames)
    trace.status, trace.return_value, trace.error = outcome(frames)  # as the parser reads them
    return trace


@settings(max_examples=100, deadline=None)
@given(traces())
def test_trace_to_text_to_trace_round_trips(trace):
    pieces = to_cwm_pieces(trace)
    assert parse_cwm_pieces(pieces).to_trace() == trace
    if not any("<|" in t for t, special in pieces if not special):
        assert parse_cwm_text(to_cwm_text(trace)).to_trace() == trace


@settings(max_examples=100, deadline=None)
@given(traces(), st.sampled_from(["ok", "event_limit", "timeout"]))
def test_trace_to_json_to_trace_round_trips(trace, status):
    trace.status = status
    assert from_json(to_json(trace)) == trace


def _release_reader_locals(pieces: list[tuple[str, bool]]) -> list[dict[str, str] | None]:
    """Each frame's locals as the release's demo (demos/cwmdbg.py) resolves `".."`: walk back
    frame by frame, take the first value that is not `".."`, stop at a call or return frame.
    None where it cannot resolve a name."""
    import json

    frames: list[tuple[str, dict]] = []  # (event separator, written locals)
    text = [t for t, _ in pieces]
    for i, (t, special) in enumerate(pieces):
        if special and t in ("<|call_sep|>", "<|line_sep|>"):
            frames.append((t, json.loads(text[i + 1])))
        elif special and t in ("<|return_sep|>", "<|exception_sep|>"):
            frames.append((t, {}))
    resolved = []
    for i, (sep, written) in enumerate(frames):
        if sep not in ("<|call_sep|>", "<|line_sep|>"):
            resolved.append({})
            continue
        out = dict(written)
        for k, v in written.items():
            j = i - 1
            while v == ".." and j >= 0:
                v = frames[j][1].get(k, "..")
                if frames[j][0] in ("<|call_sep|>", "<|return_sep|>"):
                    break
                j -= 1
            out[k] = v
        resolved.append(None if ".." in out.values() else out)
    return resolved


def test_the_release_reader_resolves_every_frame():
    """CWM_SPEC §5: the release's reader stops its walk for `".."` at a call or return frame,
    so every frame we write must resolve within that walk (nested calls, exceptions raised
    through callees, generators, comprehensions)."""
    from cwm.data import synth

    programs = [(p.source, p.call) for p in synth.generate(3, 60)]
    programs += [
        ("def g(n):\n    if n < 0:\n        raise ValueError(n)\n    return n * 2\n\n"
         "def f(xs):\n    total = 0\n    for x in xs:\n        try:\n            total += g(x)\n"
         "        except ValueError:\n            total -= 1\n    return total\n", "f([1, -2, 3])"),
        ("def gen(n):\n    for i in range(n):\n        yield i * i\n\n"
         "def f(n):\n    out = [v + 1 for v in gen(n)]\n    return sum(out)\n", "f(4)"),
        (Path(__file__).resolve().parents[1].joinpath("examples", "collatz.py").read_text(), "collatz_steps(6)"),
    ]
    checked = 0
    for source, call in programs:
        trace = trace_call(source, call)
        resolved = _release_reader_locals(to_cwm_pieces(trace))
        for frame, got in zip(trace.frames, resolved):
            if frame.event in (CALL, LINE):
                assert got == frame.locals, (call, frame)
                checked += 1
    assert checked > 500
