"""Run a program and record its execution as a `Trace`, with CPython's sys.settrace semantics.

Only the program's own code is traced (code objects compiled from its source, `filename`):
the standard library and installed packages are stepped over, and their results show in the
locals of the next line. Calls back into the program (a key function, a callback) are traced.

Entry points:
  trace_call(source, "f(1, [2])")   arguments evaluated untraced, then f traced
  trace_entry(source, "f")          the script runs; its first call of f is traced
  trace_script(source)              from the line marked `# << START_OF_TRACE` (a def line: the
                                    first call of that function; another line: the first call
                                    it makes), else the whole script as the entry scope

Statuses besides "ok" / "exception" (format.py): "event_limit", "size_limit", "timeout" (the
`timeout` passed here; the sandbox has its own, harder one), "tracer_removed" (the program
replaced or removed the trace function), "not_reached" (the entry never ran), "error" (the
program failed before the entry, e.g. at import), "recursion" (the program recursed to Python's
recursion limit, where the tracer has no room left to record), "tracer_error" (a bug here, reported).
This module runs the program in-process: call it inside cwm.sandbox.run_function for
anything untrusted (the CLI and the dataset builder do). The trace function itself is C
(_ctrace.c, which runs on every event); this module prepares a run and reads its outcome.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import inspect
import linecache
import sys
import threading
import time
import types
from collections.abc import Iterator

from cwm.trace.format import (
    END_OF_TEXT,
    EVENTS,
    MARKER,
    UNCHANGED,
    Frame,
    Trace,
    frame_text,
    outcome,
    prompt_text,
    source_lines,
)  # fmt: skip
from cwm.trace.native import Tracer  # the trace function, in C (a clear error where it is not built)
from cwm.trace.tokens import MARKER_RE
from cwm.trace.values import DEFAULT_LIMIT, DEFAULT_REPR_TIMEOUT, ValueRenderer, json_str

PROGRAM = "<program>"
MAX_EVENTS = 10_000
MAX_BYTES = 1_000_000
# Module-level names that are program structure, not state (whole-script traces).
_DEFINITIONS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
# Bytes of a frame's text besides its source line and its locals or value: an empty frame's
# text less its "{}" (no locals) or '""' (the empty value). The C trace function counts the rest.
_FRAME_NBYTES = {event: len(frame_text(Frame(event, 0, "", {}, ""), []).encode()) - 2 for event in EVENTS}
_UNCHANGED_NBYTES = len(json_str(UNCHANGED))


class TraceError(ValueError):
    """A problem with what we were asked to trace (bad source, call or entry), not with its run."""


class _Stop(BaseException):
    """Raised from the trace function to end the run once a limit is hit."""


class _Recorder:
    """One traced run: `run(fn, *args)` sets `frames`, `status`, `return_value` and `error`."""

    def __init__(self, source: str, context: str, filename: str, is_entry, *, max_events: int, max_bytes: int,
                 timeout: float | None, value_limit: int, repr_timeout: float, whole_module: bool = False):
        self.filename = filename
        self.lines = source_lines(source)
        self.is_entry = is_entry  # frame -> bool: does this call start the trace?
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.whole_module = whole_module
        self.values = ValueRenderer(value_limit, repr_timeout, threading.current_thread() is threading.main_thread())
        # the size limit is on the whole text: prompt, frames and <|end_of_text|>
        self.prompt_nbytes = len(prompt_text(context).encode()) + len(END_OF_TEXT)
        self.frames: list[Frame] = []
        self.removed = False
        self.status: str | None = None
        self.return_value: str | None = None
        self.error: str | None = None

    # -- the trace function -------------------------------------------------------------------
    def _tracer(self) -> Tracer:
        """The trace function of this run: a _ctrace.Tracer (in C; it calls back for what is
        decided here: the entry, def lines, the limits, and values it cannot render itself)."""

        def stop(status: str, error: str):
            self.status, self.error = status, error
            tracer.done = True
            raise _Stop

        def check_limits(event_nbytes: int) -> None:
            """Stop the run if recording one more event, of event_nbytes bytes, passes a limit."""
            if len(self.frames) >= self.max_events:
                stop("event_limit", f"the trace passed {self.max_events} events (max_events)")
            if tracer.nbytes + event_nbytes > self.max_bytes:
                stop("size_limit", f"the trace passed {self.max_bytes} bytes (max_bytes)")
            if tracer.deadline and time.monotonic() > tracer.deadline:
                stop("timeout", f"the trace ran past {self.timeout} s")

        # bytes of each event's frame text besides its locals or value, by event and line number
        fixed = {event: [0] + [_FRAME_NBYTES[event] + len(line.encode()) for line in self.lines] for event in EVENTS}
        tracer = Tracer(
            frames=self.frames, source_of=[""] + self.lines, fixed=fixed, frame_type=Frame,
            track=self.values.track, text=self.values.text, definitions=_DEFINITIONS,
            is_entry=self.is_entry, def_line=functools.partial(_def_line, self.lines),
            check_limits=check_limits, filename=self.filename, stop=_Stop, limit=self.values.limit,
            max_events=self.max_events, max_bytes=self.max_bytes, unchanged_len=_UNCHANGED_NBYTES,
            nbytes=self.prompt_nbytes, timeout=self.timeout or 0.0, whole_module=self.whole_module,
        )  # fmt: skip
        return tracer

    # -- running ------------------------------------------------------------------------------
    def run(self, fn, *args) -> None:
        """fn(*args) with this recorder's trace function; sets frames, status, return_value, error."""
        real_settrace = sys.settrace
        tracer = self._tracer()

        def guarded_settrace(func):  # a program that removes our tracer must not look complete
            if func is tracer:
                tracer.install()
                return
            if not tracer.done:  # after the trace has ended, the program may trace as it likes
                self.removed = True
            real_settrace(func)

        with self.values:
            sys.settrace = guarded_settrace
            tracer.install()
            try:
                fn(*args)
            except _Stop:
                pass
            except BaseException as e:  # the program failed outside the entry (at import, say)
                if not tracer.started:
                    self.status, self.error = "error", f"the program raised {type(e).__name__}: {e}"
            finally:
                still_ours = sys.gettrace() is tracer
                displaced = tracer.displaced  # read before our own uninstall; close() stops the watch
                tracer.close()
                real_settrace(None)
                sys.settrace = real_settrace
        failure = tracer.failure
        if failure is not None:  # an exception inside the trace function
            if isinstance(failure, RecursionError):  # the program is at the limit: no room left to record
                self.status = "recursion"
                self.error = f"the program reached the recursion limit ({sys.getrecursionlimit()} frames)"
            else:
                self.status, self.error = "tracer_error", f"the tracer failed: {type(failure).__name__}: {failure}"
        elif tracer.started and (self.removed or displaced):  # events were lost, even if it was put back
            self.status, self.return_value = "tracer_removed", None
            self.error = "the program removed or replaced the trace function (events are missing)"
        elif self.status is None:
            if tracer.completed:
                self.status, self.return_value, self.error = outcome(self.frames)
            elif not tracer.started:
                self.status, self.error = "not_reached", "the entry point never ran"
            elif not still_ours:
                self.status, self.error = "tracer_removed", "the program removed or replaced the trace function"
            else:
                self.status, self.error = "tracer_removed", "the trace function stopped receiving events"


# ---------------------------------------------------------------------------------------------
# Entry points


def trace_call(source: str, call: str, *, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES,
               timeout: float | None = None, value_limit: int = DEFAULT_LIMIT,
               repr_timeout: float = DEFAULT_REPR_TIMEOUT, filename: str = PROGRAM,
               code: types.CodeType | None = None) -> Trace:
    """Run the program's module code, evaluate the call's arguments (untraced), trace the call.

    `call` names a function of the program: "f(1, [2, 3])", "f(*xs, key=2)". `code`: the source
    compiled already, `compile(source, filename, "exec")`, if the caller has it (saves compiling).
    """
    clean, code, expr, target = _prepare_call(source, call, filename, code)
    context = _with_marker(clean, _def_line(source_lines(clean), target))
    with _registered_module("program", clean, filename) as ns:
        return _trace_call(clean, code, call, expr, target, context, ns, max_events=max_events, max_bytes=max_bytes,
                           timeout=timeout, value_limit=value_limit, repr_timeout=repr_timeout, filename=filename)


def _trace_call(clean, code, call, expr, target, context, ns, *, max_events, max_bytes, timeout, value_limit,
                repr_timeout, filename) -> Trace:
    try:
        exec(code, ns)
    except BaseException as e:
        return Trace(context, call, [], "error", None, f"the program raised {type(e).__name__}: {e} while defining its functions")
    capture = ast.Expression(ast.Call(ast.Name("__cwm_arguments__", ast.Load()), expr.args, expr.keywords))
    ns["__cwm_arguments__"] = lambda *a, **k: (a, k)
    try:
        args, kwargs = eval(compile(ast.fix_missing_locations(capture), "<call>", "eval"), ns)
    except Exception as e:
        raise TraceError(f"evaluating the arguments of {call!r} raised {type(e).__name__}: {e}") from None
    del ns["__cwm_arguments__"]
    fn = ns.get(target.co_name)  # the function, or what its decorators made of it
    if not callable(fn):
        return Trace(context, call, [], "error", None, f"running the program left {target.co_name!r} unbound (a def under a false if?)")
    rec = _Recorder(clean, context, filename, lambda frame: frame.f_code is target, max_events=max_events,
                    max_bytes=max_bytes, timeout=timeout, value_limit=value_limit, repr_timeout=repr_timeout)
    rec.run(lambda: fn(*args, **kwargs))
    return _trace(rec, context, call)


def trace_entry(source: str, name: str, **options) -> Trace:
    """Run the program as a script and trace its first call of the function `name`.

    Options as for trace_call (max_events, max_bytes, timeout, value_limit, repr_timeout, filename).
    """
    clean, code, target = _prepare_entry(source, name, options.get("filename", PROGRAM))
    context = _with_marker(clean, _def_line(source_lines(clean), target))
    return _run_script(clean, code, context, name, lambda frame: frame.f_code is target, **options)


def trace_script(source: str, **options) -> Trace:
    """Trace from the line marked `# << START_OF_TRACE` if there is one, else the whole script."""
    clean, code, marked, target = _prepare_script(source, options.get("filename", PROGRAM))
    if marked is None:
        return _run_script(clean, code, clean, "<module>", lambda frame: frame.f_code is code, whole_module=True, **options)
    context = _with_marker(clean, marked)
    if target is not None:
        return _run_script(clean, code, context, target.co_name, lambda frame: frame.f_code is target, **options)

    def first_call_of_marked_line(frame) -> bool:
        caller = frame.f_back
        return caller is not None and caller.f_code is code and caller.f_lineno == marked

    entry = source_lines(clean)[marked - 1].strip()
    return _run_script(clean, code, context, entry, first_call_of_marked_line, **options)


def _prepare_call(source, call, filename, code=None):
    clean, _ = _strip_marker(source)  # (the marker is a comment: the code is the same)
    if code is None:
        code = _compile(clean, filename)
    elif code.co_filename != filename:
        raise TraceError(f"the code given was compiled as {code.co_filename!r}, not as {filename!r}")
    try:
        expr = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as e:
        raise TraceError(f"the call {call!r} is not a Python expression: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise TraceError(f"the call {call[:80]!r} cannot be parsed: {type(e).__name__}") from None
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
        raise TraceError(f"the call {call!r} must call a function of the program by name, like f(1, [2, 3])")
    return clean, code, expr, _find_function(code, expr.func.id, top_level=True)


def _prepare_entry(source, name, filename):
    clean, _ = _strip_marker(source)
    code = _compile(clean, filename)
    return clean, code, _find_function(code, name, top_level=False)


def _prepare_script(source, filename):
    clean, marked = _strip_marker(source)
    code = _compile(clean, filename)
    if marked is None:
        return clean, code, None, None
    lines = source_lines(clean)
    for function in _functions(code):
        if _def_line(lines, function) == marked:
            return clean, code, marked, _checked_entry(function)
    if not any(stmt.lineno == marked for stmt in ast.parse(clean, filename).body):
        raise TraceError(f"line {marked}: the START_OF_TRACE marker must end a def line or a module-level statement")
    return clean, code, marked, None


def _run_script(clean, code, context, entry, is_entry, *, max_events=MAX_EVENTS, max_bytes=MAX_BYTES, timeout=None,
                value_limit=DEFAULT_LIMIT, repr_timeout=DEFAULT_REPR_TIMEOUT, filename=PROGRAM, whole_module=False) -> Trace:
    rec = _Recorder(clean, context, filename, is_entry, max_events=max_events, max_bytes=max_bytes, timeout=timeout,
                    value_limit=value_limit, repr_timeout=repr_timeout, whole_module=whole_module)
    with _registered_module("__main__", clean, filename) as ns:
        rec.run(exec, code, ns)
    return _trace(rec, context, entry)


@contextlib.contextmanager
def _registered_module(name: str, source: str, filename: str) -> Iterator[dict]:
    """The namespace of the program as a module registered under `name` for the run, as `python`
    runs a script: in sys.modules (so dataclasses, enums, typing.get_type_hints and pickle find
    its classes), with __file__, and its source in linecache (so inspect.getsource finds it).
    Whatever was registered before is put back afterwards."""
    module = types.ModuleType(name)
    module.__file__ = filename
    vars(module)["__builtins__"] = builtins
    saved_module = sys.modules.get(name)
    saved_lines = linecache.cache.get(filename)
    sys.modules[name] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)  # mtime None: kept
    try:
        yield module.__dict__
    finally:
        if saved_module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved_module
        if saved_lines is None:
            linecache.cache.pop(filename, None)
        else:
            linecache.cache[filename] = saved_lines


def _trace(rec: _Recorder, context: str, entry: str) -> Trace:
    assert rec.status is not None  # run() always sets it
    return Trace(context, entry, rec.frames, rec.status, rec.return_value, rec.error)


def _compile(source: str, filename: str) -> types.CodeType:
    try:
        return compile(source, filename, "exec")  # straight to bytecode: no Python-level AST (~2x faster)
    except SyntaxError as e:
        raise TraceError(f"{filename}:{e.lineno}: syntax error: {e.msg}") from None
    except ValueError as e:  # e.g. a NUL byte in the source
        raise TraceError(f"{filename}: cannot compile: {e}") from None
    except RecursionError:
        raise TraceError(f"{filename}: cannot compile: the code nests too deeply") from None
    except MemoryError:
        raise TraceError(f"{filename}: cannot compile: out of memory (the program is too large)") from None


def _strip_marker(source: str) -> tuple[str, int | None]:
    """(source without START_OF_TRACE markers, the marked line number or None)."""
    lines = source.split("\n")
    marked = [n for n, line in enumerate(lines, start=1) if MARKER_RE.search(line)]
    if len(marked) > 1:
        raise TraceError(f"the START_OF_TRACE marker is on several lines ({', '.join(map(str, marked))}); keep one")
    if not marked:
        return source, None
    lines[marked[0] - 1] = MARKER_RE.sub("", lines[marked[0] - 1])
    return "\n".join(lines), marked[0]


def _with_marker(source: str, lineno: int) -> str:
    lines = source.split("\n")
    lines[lineno - 1] = lines[lineno - 1].rstrip() + MARKER
    return "\n".join(lines)


def _functions(module_code: types.CodeType, *, top_level: bool = False) -> Iterator[types.CodeType]:
    """The code of the program's functions (def and async def), breadth-first from module level:
    each nesting level in source order. Class bodies are searched, not yielded; comprehensions
    and lambdas are neither."""
    level = [module_code]
    while level:
        nested = [c for code in level for c in code.co_consts if isinstance(c, types.CodeType)]
        yield from (c for c in nested if c.co_flags & inspect.CO_OPTIMIZED and c.co_name[0] != "<")
        level = [] if top_level else nested


def _find_function(module_code: types.CodeType, name: str, *, top_level: bool) -> types.CodeType:
    """The function `name`: at module level the last def (the one bound), else the first found."""
    found = [c for c in _functions(module_code, top_level=top_level) if c.co_name == name]
    if not found:
        where = "at module level" if top_level else "anywhere"
        raise TraceError(f"the program defines no function {name!r} {where}")
    return _checked_entry(found[-1] if top_level else found[0])


def _checked_entry(code: types.CodeType) -> types.CodeType:
    if code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR):
        raise TraceError(
            f"{code.co_name!r} is a generator or async function: its body runs only when iterated "
            f"or awaited; trace a function that consumes it, e.g. def main(): return list({code.co_name}(...))"
        )
    return code


def _def_line(lines: list[str], code: types.CodeType) -> int:
    """The line a call of this function shows: its def line, decorators skipped."""
    n = code.co_firstlineno
    if lines[n - 1].lstrip().startswith("@"):
        while n < len(lines) and not lines[n - 1].lstrip().startswith(("def ", "async def ")):
            n += 1
    return n
