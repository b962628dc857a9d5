"""The tracer's C half (src/cwm/trace/_ctrace.c), imported only where a trace is recorded.

The recorder and the value renderer import it from here; `cwm.trace` itself, the format and
everything that only reads traces (the metrics, the debugger's views, the data reader) do not,
so they work in a source tree that pip did not build. Recording a trace there fails with this
module's one clear line instead of a bare "No module named".
"""

try:
    from cwm.trace import _ctrace
except ImportError as e:  # a source tree that pip did not build
    raise ImportError(
        f"cwm's C tracer is not built ({e}): install cwm with `pip install -e .` (or `bash scripts/setup.sh`), "
        "which compiles src/cwm/trace/_ctrace.c and needs a C compiler and Python's headers"
    ) from e

Tracer = _ctrace.Tracer  # the trace function of a run
starts_with = _ctrace.starts_with  # an identity test of a container's first items
# The contract's names (tests/test_trace_contract.py): how a local changed, what a scope remembers
# of it (a struct sequence with named fields), the event names and format.Frame's fields the C
# side writes.
SAME, CHANGED, REWRITTEN = _ctrace.SAME, _ctrace.CHANGED, _ctrace.REWRITTEN
Tracked = _ctrace.Tracked
EVENTS, FRAME_FIELDS = _ctrace.EVENTS, _ctrace.FRAME_FIELDS
