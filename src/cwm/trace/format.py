"""The trace data model and its formats: `Trace` ⇄ CWM token text (release format) ⇄ JSON.

A `Frame` holds the *full* locals of its frame (every value a `repr` string); the `".."`
elision of unchanged locals is a property of the text format only, applied when rendering
and resolved when parsing. The rules (docs/trace-format.md):

- scopes follow sys.settrace: `call` opens one, `return` closes it (a generator's `yield` is a
  return, its resumption a new call); `line` and `exception` happen inside the open one;
- a call frame writes every local in full; a line frame writes `".."` for a local whose text
  equals the previous frame of its scope, unless the recorder saw the value change in a part
  its truncated text does not show (`Frame.rewritten`), or the frame before it was a return
  frame (then every local is written in full: the release's reader cannot look past a return);
- `<|end_of_text|>` follows the last frame once the entry scope has been left.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str  # == json.dumps(str), in C
from typing import NoReturn

from cwm.trace.tokens import (  # the format's spelled constants live there; re-exported here
    ACTION_SEP,
    ARG_SEP,
    BEGIN_OF_TEXT,
    CALL,
    END_OF_TEXT,
    EVENT_SEP,
    EVENTS,
    EXCEPTION,
    FRAME_SEP,
    LINE,
    MARKER,
    RETURN,
    SEP_EVENT,
    SPECIALS,
    TRACE_CONTEXT_START,
    UNCHANGED,
)  # fmt: skip

# Trace statuses. Complete traces ("ok", "exception") end with <|end_of_text|>; the others were
# stopped and say why; the sandbox adds its own ("timeout", "memory", "crash", ...).
OK = "ok"  # the entry scope returned
RAISED = "exception"  # the entry scope was left by an exception (Trace.error holds it)
COMPLETE = (OK, RAISED)


@dataclass(slots=True)
class Frame:
    event: str  # one of EVENTS
    lineno: int  # line number in the traced source (0: not found in it, e.g. in model output)
    source: str  # the raw source line, indentation and trailing newline included
    locals: dict[str, str] | None = None  # call/line: name -> repr string; None for return/exception
    value: str | None = None  # return/exception: the repr string of the value; None otherwise
    depth: int = 0  # call depth below the entry scope (0 = the entry function's frame)
    # Line frames: locals whose (truncated) text equals the previous frame of the scope although
    # the value changed beyond it; the text format writes them in full instead of "..".
    rewritten: tuple[str, ...] = ()


@dataclass
class Trace:
    source: str  # the context: program text with the `  # << START_OF_TRACE` marker
    entry: str  # what was run: a call expression such as "f(1, [2])", or "<module>"
    frames: list[Frame] = field(default_factory=list)
    status: str = "ok"  # see the statuses above and cwm.trace.recorder
    return_value: str | None = None  # repr of the entry's return value
    error: str | None = None  # a human-readable reason when status is not "ok"

    @property
    def complete(self) -> bool:
        return self.status in COMPLETE


def outcome(frames: list[Frame]) -> tuple[str, str | None, str | None]:
    """(status, return_value, error) of frames whose entry scope has returned.

    A scope left by an exception shows, as in sys.settrace, an exception frame directly
    followed by its return frame (whose value is "None").
    """
    last = frames[-1]
    if len(frames) > 1 and frames[-2].event == EXCEPTION and frames[-2].depth == last.depth:
        return RAISED, None, frames[-2].value
    return OK, last.value, None


# ---------------------------------------------------------------------------------------------
# Trace -> CWM text


def prompt_pieces(source: str) -> list[tuple[str, bool]]:
    """`<|begin_of_text|><|trace_context_start|>{SOURCE}<|frame_sep|>` as (text, is_special)."""
    return [(BEGIN_OF_TEXT, True), (TRACE_CONTEXT_START, True), (source, False), (FRAME_SEP, True)]


def prompt_text(source: str) -> str:
    return "".join(text for text, _ in prompt_pieces(source))


def locals_json(written: dict[str, str]) -> str:
    """json.dumps(written) with the default separators, for a dict of str -> str (faster)."""
    return "{" + ", ".join(f"{_json_str(k)}: {_json_str(v)}" for k, v in written.items()) + "}"


def written_locals(frame: Frame, previous: dict[str, str] | None) -> dict[str, str]:
    """The locals as the text writes them: `".."` where unchanged since `previous` (same scope)."""
    if frame.event == CALL or previous is None:
        return dict(frame.locals or {})
    keep = frame.rewritten
    return {
        k: UNCHANGED if previous.get(k) == v and k not in keep else v
        for k, v in (frame.locals or {}).items()
    }


def _frame_pieces(frame: Frame, written: dict[str, str] | None) -> list[tuple[str, bool]]:
    if frame.event not in EVENT_SEP:
        raise ValueError(f"frame event {frame.event!r} is not one of {', '.join(EVENTS)}")
    pieces = [(EVENT_SEP[frame.event], True)]
    if frame.event in (CALL, LINE):
        pieces += [(locals_json(written or {}), False), (ACTION_SEP, True), (frame.source, False)]
    else:
        pieces += [(ACTION_SEP, True), (frame.source, False), (ARG_SEP, True), (json.dumps(frame.value), False)]
    pieces.append((FRAME_SEP, True))
    return pieces


class _Scopes:
    """The stack of open scopes' latest full locals, replayed frame by frame.

    The release's reader resolves `".."` by walking back and stops at the first call or return
    frame, so the first line frame after a return frame (a callee came back) is written in full.
    """

    def __init__(self) -> None:
        self.stack: list[dict[str, str]] = []
        self.after_return = False

    def written(self, frame: Frame) -> dict[str, str] | None:
        """Advance past `frame`; return its locals as written (None for return/exception)."""
        if frame.event == CALL:
            self.stack.append(frame.locals or {})
            self.after_return = False
            return dict(frame.locals or {})
        if frame.event == LINE:
            previous = None if self.after_return or not self.stack else self.stack[-1]
            written = written_locals(frame, previous)
            if self.stack:
                self.stack[-1] = frame.locals or {}
            self.after_return = False
            return written
        if frame.event == RETURN:
            self.after_return = True
            if self.stack:
                self.stack.pop()
        return None


def to_cwm_pieces(trace: Trace) -> list[tuple[str, bool]]:
    """The trace as (text, is_special) pieces; `to_cwm_text` is their join.

    Ordinary text (source, locals, values) is never a special token, even if it contains one's
    spelling: a tokenizer encodes the pieces separately.
    """
    pieces = prompt_pieces(trace.source)
    scopes = _Scopes()
    for frame in trace.frames:
        pieces += _frame_pieces(frame, scopes.written(frame))
    if trace.complete and trace.frames:
        pieces.append((END_OF_TEXT, True))
    return pieces


def to_cwm_text(trace: Trace) -> str:
    return "".join(text for text, _ in to_cwm_pieces(trace))


def frame_pieces(frame: Frame, previous: list[Frame]) -> list[tuple[str, bool]]:
    """One frame's pieces (ending with <|frame_sep|>), given the frames of the trace before it."""
    scopes = _Scopes()
    for f in previous:
        scopes.written(f)
    return _frame_pieces(frame, scopes.written(frame))


def frame_text(frame: Frame, previous: list[Frame]) -> str:
    return "".join(text for text, _ in frame_pieces(frame, previous))


# ---------------------------------------------------------------------------------------------
# CWM text -> Trace (tolerant: model output may break anywhere)


class TraceParseError(ValueError):
    """The text stopped being a trace at character `offset`, in frame number `frame_index`."""

    def __init__(self, message: str, offset: int, frame_index: int, frames: list[Frame]):
        super().__init__(f"{message} (at character {offset}, frame {frame_index})")
        self.offset = offset
        self.frame_index = frame_index
        self.frames = frames  # the frames parsed before the problem


@dataclass
class ParsedTrace:
    source: str  # the context ("" when even the prompt did not parse)
    frames: list[Frame]  # every frame read before the problem, ".." resolved
    complete: bool = False  # <|end_of_text|> closed the entry scope
    problem: TraceParseError | None = None

    @property
    def error(self) -> str | None:
        return None if self.problem is None else str(self.problem)

    def to_trace(self, entry: str = "") -> Trace:
        """The parsed Trace; raises the TraceParseError if the text was malformed."""
        if self.problem is not None:
            raise self.problem
        if not self.complete:
            return Trace(self.source, entry, self.frames, status="incomplete",
                         error="the text ends before <|end_of_text|>")
        status, value, error = outcome(self.frames)
        return Trace(self.source, entry, self.frames, status=status, return_value=value, error=error)


def split_specials(text: str) -> list[tuple[str, bool]]:
    """Plain text -> pieces, taking every spelling of a trace special token as the token."""
    pieces: list[tuple[str, bool]] = []
    start = i = 0
    while (i := text.find("<|", i)) != -1:
        end = text.find("|>", i)
        if end != -1 and text[i : end + 2] in SPECIALS:
            if i > start:
                pieces.append((text[start:i], False))
            pieces.append((text[i : end + 2], True))
            start = i = end + 2
        else:
            i += 2
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


def parse_cwm_text(text: str) -> ParsedTrace:
    """Read CWM text (e.g. decoded model output) back into frames; never raises.

    Plain text cannot tell a special token from a value that spells one; when that matters,
    parse the tokenizer's pieces with `parse_cwm_pieces`.
    """
    return parse_cwm_pieces(split_specials(text))


def parse_cwm_pieces(pieces: list[tuple[str, bool]]) -> ParsedTrace:
    return _Parser(pieces).parse()


class _Parser:
    def __init__(self, pieces: list[tuple[str, bool]]):
        self.pieces = [p for p in pieces if p[0]]
        self.i = 0
        self.offset = 0  # character offset of pieces[i] in the joined text
        self.frames: list[Frame] = []
        self.source = ""

    def parse(self) -> ParsedTrace:
        try:
            self._parse()
        except TraceParseError as e:
            return ParsedTrace(self.source, self.frames, False, e)
        return ParsedTrace(self.source, self.frames, self.complete)

    def fail(self, message: str) -> NoReturn:
        raise TraceParseError(message, self.offset, len(self.frames), list(self.frames))

    def peek(self) -> tuple[str, bool] | None:
        return self.pieces[self.i] if self.i < len(self.pieces) else None

    def take(self) -> tuple[str, bool]:
        piece = self.peek()
        if piece is None:
            self.fail("the text ends in the middle of a frame")
        self.i += 1
        self.offset += len(piece[0])
        return piece

    def expect(self, special: str) -> None:
        piece = self.peek()
        if piece != (special, True):
            got = "the end of the text" if piece is None else repr(piece[0][:40])
            self.fail(f"expected {special}, got {got}")
        self.take()

    def text(self) -> str:
        """Ordinary text up to the next special token (possibly empty)."""
        piece = self.peek()
        if piece is None or piece[1]:
            return ""
        return self.take()[0]

    def _parse(self) -> None:
        self.complete = False
        self.expect(BEGIN_OF_TEXT)
        self.expect(TRACE_CONTEXT_START)
        self.source = self.text()
        self.expect(FRAME_SEP)
        lines = _LineIndex(self.source)
        scopes: list[dict[str, str]] = []
        last_line: list[int] = []  # lineno of each open scope's latest frame
        while (piece := self.peek()) is not None:
            if piece == (END_OF_TEXT, True):
                if scopes or not self.frames:
                    self.fail("<|end_of_text|> before the entry scope returned")
                self.take()
                self.complete = True
                if self.peek() is not None:
                    self.fail("text after <|end_of_text|>")
                return
            if self.frames and not scopes:
                self.fail("a frame after the entry scope returned (expected <|end_of_text|>)")
            text, special = self.take()
            if not special or text not in SEP_EVENT:
                self.fail(f"expected an event token (<|call_sep|>, <|line_sep|>, ...), got {text[:40]!r}")
            event = SEP_EVENT[text]
            if event != CALL and not scopes:
                self.fail(f"a {event} frame outside any call")
            frame = self._frame(event, scopes, lines, last_line)
            self.frames.append(frame)

    def _frame(self, event, scopes, lines, last_line) -> Frame:
        depth = len(scopes) - (event != CALL)
        locals_, rewritten, value = None, (), None
        if event in (CALL, LINE):
            written = self._json(self.text(), dict, "locals")
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in written.items()):
                self.fail("locals must map names to strings")
            if event == CALL:
                if UNCHANGED in written.values():
                    self.fail('".." in a call frame: a new scope has no earlier values')
                locals_ = written
            else:
                prev = scopes[-1]
                locals_ = {}
                for k, v in written.items():
                    if v == UNCHANGED:
                        if k not in prev:
                            self.fail(f'local {k!r} is ".." but has no earlier value in its scope')
                        v = prev[k]
                    locals_[k] = v
                if not self._after_return():  # after a return every local is written in full
                    rewritten = tuple(k for k, v in written.items() if v != UNCHANGED and prev.get(k) == v)
        self.expect(ACTION_SEP)
        action = self.text()
        if event in (RETURN, EXCEPTION):
            self.expect(ARG_SEP)
            value = self._json(self.text(), str, "value")
        if self.peek() is not None:  # model output may stop just before its final <|frame_sep|>
            self.expect(FRAME_SEP)
        near = last_line[-1] if last_line and event != CALL else 0
        lineno = lines.find(action, near)
        if event == CALL:
            scopes.append(locals_)
            last_line.append(lineno)
        elif event == LINE:
            scopes[-1] = locals_
            last_line[-1] = lineno
        elif event == RETURN:
            scopes.pop()
            last_line.pop()
        return Frame(event, lineno, action, locals_, value, depth, rewritten)

    def _after_return(self) -> bool:
        """Whether the last frame before this one, exception frames aside, was a return frame."""
        for frame in reversed(self.frames):
            if frame.event != EXCEPTION:
                return frame.event == RETURN
        return False

    def _json(self, text: str, kind: type, what: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            self.offset -= len(text)
            self.fail(f"the {what} is not JSON ({e.msg} at character {e.pos} of {text[:60]!r})")
        if not isinstance(value, kind):
            self.fail(f"the {what} must be a JSON {'object' if kind is dict else 'string'}, got {text[:60]!r}")
        return value


class _LineIndex:
    """Action text -> line number: the first matching line at or after `near`, else the first."""

    def __init__(self, source: str):
        self.where: dict[str, list[int]] = {}
        for n, line in enumerate(source_lines(source), start=1):
            self.where.setdefault(line, []).append(n)

    def find(self, action: str, near: int) -> int:
        found = self.where.get(action if action.endswith("\n") else action + "\n")
        if not found:
            return 0
        k = bisect.bisect_left(found, near)
        return found[k] if k < len(found) else found[0]


def source_lines(source: str) -> list[str]:
    """The program's lines as action text: marker removed, each ending with a newline."""
    lines = source.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.replace(MARKER, "") + "\n" for line in lines]


# ---------------------------------------------------------------------------------------------
# Trace <-> JSON


def to_dict(trace: Trace) -> dict:
    out = dataclasses.asdict(trace)
    for f in out["frames"]:
        f["rewritten"] = list(f["rewritten"])
    return out


def from_dict(data: dict) -> Trace:
    fields = {f.name for f in dataclasses.fields(Frame)}
    try:
        frames = [Frame(**{k: v for k, v in f.items() if k in fields}) for f in data.get("frames", [])]
        for f in frames:
            f.rewritten = tuple(f.rewritten)
        return Trace(data["source"], data.get("entry", ""), frames, data.get("status", OK),
                     data.get("return_value"), data.get("error"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a trace JSON object ({type(e).__name__}: {e})") from None


def to_json(trace: Trace, indent: int | None = None) -> str:
    return json.dumps(to_dict(trace), indent=indent)


def from_json(text: str) -> Trace:
    return from_dict(json.loads(text))
