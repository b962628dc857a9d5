"""The trace data model and its formats: `Trace` ⇄ CWM token text (release format) ⇄ JSON.

A `Frame` holds the *full* locals of its frame (every value a `repr` string); the `".."`
elision of unchanged locals is a property of the text format only, applied when rendering
and resolved when parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Event kinds, as in CPython's sys.settrace.
CALL, LINE, RETURN, EXCEPTION = "call", "line", "return", "exception"
EVENTS = (CALL, LINE, RETURN, EXCEPTION)


@dataclass
class Frame:
    event: str  # one of EVENTS
    lineno: int  # line number in the traced source
    source: str  # the raw source line, indentation and trailing newline included
    locals: dict[str, str] | None = None  # call/line: name -> repr string; None for return/exception
    value: str | None = None  # return/exception: the repr string of the value; None otherwise
    depth: int = 0  # call depth below the entry scope (0 = the entry function's frame)


@dataclass
class Trace:
    source: str  # the context: program text with the `  # << START_OF_TRACE` marker
    entry: str  # what was run: a call expression such as "f(1, [2])", or "<module>"
    frames: list[Frame] = field(default_factory=list)
    status: str = "ok"  # see cwm.trace.recorder for the statuses
    return_value: str | None = None  # repr of the entry's return value
    error: str | None = None  # a human-readable reason when status is not "ok"
