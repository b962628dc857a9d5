"""Ground-truth execution traces: run a program, record every step, render it in CWM's format.

    from cwm.trace import trace_call, to_cwm_text
    trace = trace_call(source, "f(1, [2, 3])")   # in-process; wrap in sandbox.run_function for untrusted code
    text = to_cwm_text(trace)

The format is imported here; the recorder (and with it the C trace function, cwm.trace.native)
only when one of its names is first used, so reading traces needs no compiled extension.
"""

from typing import TYPE_CHECKING

from cwm.trace.format import (
    CALL,
    EXCEPTION,
    LINE,
    MARKER,
    RETURN,
    Frame,
    ParsedTrace,
    Trace,
    TraceParseError,
    frame_pieces,
    frame_text,
    from_json,
    parse_cwm_pieces,
    parse_cwm_text,
    prompt_pieces,
    prompt_text,
    to_cwm_pieces,
    to_cwm_text,
    to_json,
)  # fmt: skip

__all__ = [
    "CALL", "EXCEPTION", "LINE", "MARKER", "MAX_BYTES", "MAX_EVENTS", "RETURN", "Frame", "ParsedTrace", "Trace",
    "TraceError", "TraceParseError", "frame_pieces", "frame_text", "from_json", "parse_cwm_pieces", "parse_cwm_text",
    "prompt_pieces", "prompt_text", "to_cwm_pieces", "to_cwm_text", "to_json", "trace_call", "trace_entry",
    "trace_script",
]  # fmt: skip

if TYPE_CHECKING:  # what type checkers see; at run time, __getattr__ below
    from cwm.trace.recorder import MAX_BYTES, MAX_EVENTS, TraceError, trace_call, trace_entry, trace_script

_RECORDER = ("MAX_BYTES", "MAX_EVENTS", "TraceError", "trace_call", "trace_entry", "trace_script")


def __getattr__(name: str):
    """The recorder's names, imported on first use (PEP 562)."""
    if name in _RECORDER:
        from cwm.trace import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module 'cwm.trace' has no attribute {name!r}")
