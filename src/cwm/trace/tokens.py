"""The trace format's spelled constants, in one place: event names, the context's marker, the
`".."` of unchanged locals, and the special-token strings a trace is written with.

Everything else imports them from here: the format (format.py), the recorder, the tokenizer's
special-token table (cwm.tokenizer.specials), evaluation and the debugger. The C trace function
(_ctrace.c) writes the event names itself; it exports them (`_ctrace.EVENTS`), and
tests/test_trace_contract.py holds the two equal. This module imports only `re`.
"""

from __future__ import annotations

import re

# Event kinds, as in CPython's sys.settrace.
CALL, LINE, RETURN, EXCEPTION = "call", "line", "return", "exception"
EVENTS = (CALL, LINE, RETURN, EXCEPTION)

# A trace's context marks the entry point's line by ending it with MARKER. A program given to
# the tracer or the debugger may mark it in a looser spelling: MARKER_RE finds (and removes) any
# (re.MULTILINE: `$` is each line's end).
MARKER_NAME = "START_OF_TRACE"
MARKER = f"  # << {MARKER_NAME}"
MARKER_RE = re.compile(rf"[ \t]*#[ \t]*<<[ \t]*{MARKER_NAME}[ \t]*$", re.MULTILINE)
UNCHANGED = ".."  # a line frame's text for a local unchanged since the previous frame of its scope

# The release's special tokens a trace is written with (cwm.tokenizer.specials holds the id table).
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"  # also ends a trace
TRACE_CONTEXT_START = "<|trace_context_start|>"
FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
ARG_SEP = "<|arg_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
RETURN_SEP = "<|return_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"

EVENT_SEP = {CALL: CALL_SEP, LINE: LINE_SEP, RETURN: RETURN_SEP, EXCEPTION: EXCEPTION_SEP}
SEP_EVENT = {sep: event for event, sep in EVENT_SEP.items()}
SPECIALS = frozenset({BEGIN_OF_TEXT, END_OF_TEXT, TRACE_CONTEXT_START, FRAME_SEP, ACTION_SEP, ARG_SEP, *SEP_EVENT})
