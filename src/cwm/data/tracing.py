"""The dataset builder's tracing, run in a lean process of its own (the trace host).

Each program we did not write is traced in a fresh fork of the sandbox (`run_each`), so that no
program can change the record of another (see `trace_many`). A fork costs in proportion to the process forked (its page tables, and
the pages it touches before it exits), so the process that the sandboxes are forked from should
be small: a build worker holds pyarrow and numpy (building and writing Arrow tables), and its
forks cost ~1.5x those of a process that holds only the tracer. So each process that traces
starts, at its first chunk, one fresh `python` that imports only this module and the tracer
(`TraceHost`); it runs the sandboxes and sends back their results.

The host is ours (it runs no untrusted code itself: that runs in its sandboxes, whose results it
checks as any run_function caller does), so what it sends back is plain pickled data. It dies
with the process that started it (PR_SET_PDEATHSIG, then SIGTERM kills its sandbox on the way
out), ends on EOF, and leaves at once on SIGINT/SIGTERM. If it cannot start or dies, the caller
runs the sandbox itself, as before (same records, slower).

Nothing heavy may be imported here: this module is the whole of the host besides the tracer.
"""

from __future__ import annotations

import marshal
import os
import pickle
import struct
import subprocess
import sys
from typing import Any

_LENGTH = struct.Struct("<Q")


def trace_many(programs: list[tuple[str, str, object]], settings: tuple[int, int, float, bool]) -> list[tuple[dict, str | None]]:
    """Runs inside the sandbox: trace each (source, call, compiled code or None) and render it there,
    once. `settings`: (max_events, max_bytes, timeout, isolate). With `isolate` each program runs
    in a fresh fork of the sandbox (run_each), so that no program can change what the tracer
    records of the next one: for programs we did not write. Programs our own generators wrote
    (synth, real) are not hostile; they share the sandbox's process, which costs ~4x less CPU per
    program than a fork each (docs/data.md).

    Only plain values come back (dict, tuple, str, int), which pickle fast and which the caller's
    restricted unpickler takes; sending Trace objects cost about half as much as tracing them.
    """
    from cwm.sandbox import run_each

    if not settings[3]:
        return [trace_one(program, settings) for program in programs]
    return run_each(lambda program: trace_one(program, settings), programs)


def trace_one(program: tuple[str, str, Any], settings: tuple[int, int, float, bool]) -> tuple[dict, str | None]:
    from cwm.trace import trace_call

    source, call, code = program
    max_events, max_bytes, timeout, _ = settings
    return rendered(trace_call(source, call, max_events=max_events, max_bytes=max_bytes, timeout=timeout, code=code))


def rendered(trace) -> tuple[dict, str | None]:
    """(the record's fields that come from the trace, its CWM text or None if it did not render)."""
    from cwm.data.dataset import frame_row  # light: the host stays lean
    from cwm.trace.format import COMPLETE, to_cwm_text

    fields = {"status": trace.status, "error": trace.error, "return_value": trace.return_value}
    try:
        text = to_cwm_text(trace)
        frames = [frame_row(f) for f in trace.frames] if trace.status in COMPLETE else []
    except Exception as e:  # a tracer bug on one odd program must not stop a million-program build
        fields.update(status="internal_error", error=f"rendering the trace failed: {type(e).__name__}: {e}")
        return fields, None
    fields.update(num_events=len(trace.frames), num_bytes=len(text.encode()))
    if trace.status in COMPLETE:  # a trace to learn from: returned, or left by an exception
        fields.update(context=trace.source, cwm_text=text, frames=frames)
    return fields, text


def sandboxed(programs: list[tuple[str, str, object]], settings: tuple[int, int, float, bool]):
    """One sandbox traces `programs` (a SandboxResult whose value is trace_many's), in the trace
    host where one runs, else in a fork of this process."""
    host = TraceHost.mine()
    if host is not None:
        result = host.run(programs, settings)
        if result is not None:
            return result
    return _sandboxed_here(programs, settings)


def _sandboxed_here(programs, settings):
    import cwm.trace  # noqa: F401  (imported here, so the forked child finds it loaded)
    from cwm.sandbox import Limits, run_function

    # The tracer stops a slow program itself (status "timeout"); the sandbox's limit is the backstop
    # for a hang it cannot see (inside C code). A chunk that needs longer is retried program by
    # program, each with the same limit, so the limit changes how fast, never which records.
    return run_function(trace_many, programs, settings, limits=Limits(timeout=settings[2] + 1))


class TraceHost:
    """The lean process this one sends its chunks to (one per process that traces; see the module doc)."""

    _mine: "TraceHost | None" = None
    _failed_in: int | None = None  # the pid of a process where the host could not start or died

    @classmethod
    def mine(cls) -> "TraceHost | None":
        """This process's host, started on first use (a forked child starts its own)."""
        me = os.getpid()
        if cls._failed_in == me:
            return None
        if cls._mine is None or cls._mine.owner != me:
            try:
                cls._mine = TraceHost()
            except OSError:
                cls._failed_in = me
                return None
        return cls._mine

    @classmethod
    def close_mine(cls) -> None:
        """End this process's host, if it has one (at the end of a build: it holds ~20 MB)."""
        if cls._mine is not None and cls._mine.owner == os.getpid():
            cls._mine.close()
            cls._mine = None

    def __init__(self) -> None:
        self.owner = os.getpid()
        code = f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; from cwm.data.tracing import _serve; _serve({self.owner})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True, env=os.environ.copy())

    def run(self, programs, settings):
        """The host's SandboxResult, or None if the host is gone (the caller then runs it itself)."""
        from cwm.sandbox import SandboxResult

        payload = pickle.dumps(([(s, c, None if code is None else marshal.dumps(code)) for s, c, code in programs], settings),
                               protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(_LENGTH.pack(len(payload)) + payload)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(_LENGTH.size)
            body = self.proc.stdout.read(_LENGTH.unpack(head)[0]) if len(head) == _LENGTH.size else b""
            fields = pickle.loads(body)  # from our own host: plain data it checked already
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, struct.error):
            self.close()
            TraceHost._failed_in = self.owner
            return None
        return SandboxResult(**fields)

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.proc.kill()
        self.proc.wait()


def _serve(parent: int) -> None:
    """The host's life: run each chunk that comes on stdin in a sandbox, send its result to stdout."""
    import ctypes
    import signal

    running = False

    def leave(signum, frame):
        if running:
            raise SystemExit(0)  # unwinds through the sandbox run in progress, which kills its sandbox
        os._exit(0)  # between runs (or shutting down): nothing to unwind, and nothing to print

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the process that started us is gone already
        return
    requests, replies = os.fdopen(0, "rb"), os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing printed by accident can corrupt the replies
    import cwm.sandbox  # noqa: F401
    import cwm.trace  # noqa: F401  (loaded before any fork)

    while True:
        head = requests.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        programs, settings = pickle.loads(requests.read(_LENGTH.unpack(head)[0]))  # from the process that started us
        programs = [(s, c, None if code is None else marshal.loads(code)) for s, c, code in programs]
        running = True
        result = _sandboxed_here(programs, settings)
        running = False
        body = pickle.dumps(result.__dict__, protocol=pickle.HIGHEST_PROTOCOL)
        replies.write(_LENGTH.pack(len(body)) + body)
        replies.flush()
