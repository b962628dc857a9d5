"""The tracer's C half (src/cwm/trace/_ctrace.c), imported only where a trace is recorded.

The recorder and the value renderer import it from here; `cwm.trace` itself, the format and
everything that only reads traces (the metrics, the debugger's views, the data reader) do not,
so they work in a source tree that pip did not build. Recording a trace there fails with this
module's one clear line instead of a bare "No module named".
"""

try:  # the names of its contract with Python (tests/test_trace_contract.py; types: _ctrace.pyi)
    from cwm.trace._ctrace import (
        CHANGED,  # how a local changed since the scope's previous frame
        EVENTS,  # the event names it writes, in its order
        FRAME_FIELDS,  # the format.Frame slots it fills, by name
        REWRITTEN,
        SAME,
        Tracer,  # the trace function of a run
        Tracked,  # what a scope remembers of a local (named fields, not a tuple)
        starts_with,  # an identity test of a container's first items
    )
except ImportError as e:  # a source tree that pip did not build (or built before a change to the C)
    raise ImportError(
        f"cwm's C tracer is not built ({e}): install cwm with `pip install -e .` (or `bash scripts/setup.sh`), "
        "which compiles src/cwm/trace/_ctrace.c and needs a C compiler and Python's headers"
    ) from e

__all__ = ["CHANGED", "EVENTS", "FRAME_FIELDS", "REWRITTEN", "SAME", "Tracer", "Tracked", "starts_with"]
