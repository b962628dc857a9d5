"""Ground-truth execution traces: run a program, record every step, render it in CWM's format.

    from cwm.trace import trace_call, to_cwm_text
    trace = trace_call(source, "f(1, [2, 3])")   # in-process; wrap in sandbox.run_function for untrusted code
    text = to_cwm_text(trace)
"""

try:
    from cwm.trace import _ctrace  # noqa: F401  (the trace function, in C)
except ImportError as e:  # a source tree that pip did not build
    raise ImportError(
        f"cwm's C tracer is not built ({e}): install cwm with `pip install -e .` (or `bash scripts/setup.sh`), "
        "which compiles src/cwm/trace/_ctrace.c and needs a C compiler and Python's headers"
    ) from e
from cwm.trace.format import (
    CALL, EXCEPTION, LINE, MARKER, RETURN, Frame, ParsedTrace, Trace, TraceParseError, frame_pieces, frame_text,
    from_json, parse_cwm_pieces, parse_cwm_text, prompt_pieces, prompt_text, to_cwm_pieces, to_cwm_text, to_json,
)  # fmt: skip
from cwm.trace.recorder import MAX_BYTES, MAX_EVENTS, TraceError, trace_call, trace_entry, trace_script

__all__ = [
    "CALL", "EXCEPTION", "LINE", "MARKER", "MAX_BYTES", "MAX_EVENTS", "RETURN", "Frame", "ParsedTrace", "Trace",
    "TraceError", "TraceParseError", "frame_pieces", "frame_text", "from_json", "parse_cwm_pieces", "parse_cwm_text",
    "prompt_pieces", "prompt_text", "to_cwm_pieces", "to_cwm_text", "to_json", "trace_call", "trace_entry",
    "trace_script",
]  # fmt: skip
