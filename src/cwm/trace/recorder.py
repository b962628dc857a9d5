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
This module runs the program in-process: call it inside cwm.trace.sandbox.run_function for
anything untrusted (the CLI and the dataset builder do).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import sys
import threading
import time
import types

from cwm.trace.format import (
    CALL, END_OF_TEXT, EXCEPTION, LINE, MARKER, RETURN, UNCHANGED, Frame, Trace, frame_nbytes, outcome, prompt_text,
    source_lines,
)  # fmt: skip
from cwm.trace.values import (
    DEFAULT_LIMIT, DEFAULT_REPR_TIMEOUT, QUICK, QUICK_INT, REWRITTEN, ValueRenderer, json_str, same_items,
)  # fmt: skip

PROGRAM = "<program>"
MAX_EVENTS = 10_000
MAX_BYTES = 1_000_000
_MARKER_RE = re.compile(r"[ \t]*#[ \t]*<<[ \t]*START_OF_TRACE[ \t]*$")
# Module-level names that are program structure, not state (whole-script traces).
_DEFINITIONS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
# Bytes of a frame's text besides its source line and its locals or value (see frame_nbytes).
_FRAME_NBYTES = {event: frame_nbytes(Frame(event, 0, "", {}, ""), {}) - 2 for event in (CALL, LINE, RETURN, EXCEPTION)}
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
        self.ours: dict[types.CodeType, int] = {}  # code -> its def line, or -1 if not ours
        self.frames: list[Frame] = []
        self.started = self.completed = self.removed = False
        self.status: str | None = None
        self.return_value: str | None = None
        self.error: str | None = None

    # -- the sys.settrace callbacks -----------------------------------------------------------
    def _trace_function(self):
        """The global trace function (on_call, which gives each frame of ours on_event as its
        local one): closures over the run.

        They run on every event of the program, so they keep their state in closure variables
        (quicker to reach than attributes), render only the locals that changed (values.track),
        and count the bytes of each frame's text as they go instead of rendering it.
        """
        frames, lines, ours = self.frames, self.lines, self.ours
        record = frames.append
        track, render, limit = self.values.track, self.values.render, self.values.limit
        max_events, max_bytes, whole_module = self.max_events, self.max_bytes, self.whole_module
        source_of = [""] + lines  # by line number
        # bytes of each event's frame text besides its locals or value, by event and line number
        fixed = {event: [0] + [n + len(line.encode()) for line in lines] for event, n in _FRAME_NBYTES.items()}
        line_fixed = fixed[LINE]
        # Per open scope, [what it remembers of each local (values.track), the bytes its locals take
        # when all are written ".." (the sum of len('"name": "..", ') over them, less 2 for "{}",
        # to which a frame adds the extra bytes of the locals it writes in full), whether it is a
        # whole script's module].
        scopes: list[list] = []
        depth = -1  # of the open scope below the entry's (len(scopes) - 1)
        nbytes = self.prompt_nbytes  # of the text so far
        deadline = None  # time.monotonic() past which the trace stops, when there is a timeout
        done = False

        def stop(status: str, error: str):
            nonlocal done
            self.status, self.error, done = status, error, True
            raise _Stop

        def fail(e: Exception):
            if isinstance(e, RecursionError):  # the program is at the limit: no room left to record
                stop("recursion", f"the program reached the recursion limit ({sys.getrecursionlimit()} frames)")
            stop("tracer_error", f"the tracer failed: {type(e).__name__}: {e}")

        def check_limits(event_nbytes: int) -> None:
            """Stop the run if recording one more event, of event_nbytes bytes, passes a limit."""
            if len(frames) >= max_events:
                stop("event_limit", f"the trace passed {max_events} events (max_events)")
            if nbytes + event_nbytes > max_bytes:
                stop("size_limit", f"the trace passed {max_bytes} bytes (max_bytes)")
            if deadline is not None and time.monotonic() > deadline:
                stop("timeout", f"the trace ran past {self.timeout} s")

        def module_state(namespace: dict) -> list:
            """A whole script's module-level (name, value) pairs that are state, not definitions."""
            return [(k, v) for k, v in namespace.items() if not (k[:2] == "__" or isinstance(v, _DEFINITIONS))]

        def on_call(frame, event, arg):
            """The global trace function: CPython calls it for every new frame."""
            nonlocal deadline, nbytes, depth
            if done:
                return None
            code = frame.f_code
            def_line = ours.get(code)
            if def_line is None:
                def_line = ours[code] = self._def_line(code)
            if def_line < 0:
                return None  # library code: stepped over
            if not self.started:
                if not self.is_entry(frame):
                    return None
                self.started = True
                if self.timeout:
                    deadline = time.monotonic() + self.timeout
            try:
                lineno = frame.f_lineno
                if lineno in (0, code.co_firstlineno):  # a fresh call (not a generator resuming)
                    lineno = def_line
                # A new scope: every local is written in full.
                seen_of, texts, unchanged_nbytes, size = {}, {}, 0, fixed[CALL][lineno]
                is_module = whole_module and code.co_name == "<module>"
                for name, value in module_state(frame.f_locals) if is_module else frame.f_locals.items():
                    if name[0] == ".":  # a comprehension's hidden iterator argument (.0)
                        continue
                    seen_of[name] = seen = track(value, None)[0]
                    texts[name] = seen[2]
                    unchanged_nbytes += len(json_str(name)) + 4 + _UNCHANGED_NBYTES
                    size += seen[3] - _UNCHANGED_NBYTES
                size += unchanged_nbytes if texts else 2  # "{}"
                if len(frames) >= max_events or nbytes + size > max_bytes or deadline is not None:
                    check_limits(size)
                scopes.append([seen_of, unchanged_nbytes, is_module])
                depth += 1
                nbytes += size
                record(Frame(CALL, lineno, source_of[lineno], texts, None, depth))
            except Exception as e:  # (_Stop is a BaseException: it passes)
                fail(e)
            return on_event

        def on_event(frame, event, arg):
            """The local trace function of the program's frames."""
            nonlocal done, nbytes, depth
            if done:
                return None
            try:
                lineno = frame.f_lineno
                if event == "line":
                    # The hot path. Most locals did not change since the scope's previous frame:
                    # they keep their text and are written ".." (values.track says when it is safe).
                    scope = scopes[-1]
                    seen_of = scope[0]
                    texts = {}
                    size = line_fixed[lineno]
                    rewritten = ()
                    for name, value in module_state(frame.f_locals) if scope[2] else frame.f_locals.items():
                        seen = seen_of.get(name)
                        if seen is not None and seen[0] is value and (seen[1] is None or same_items(value, seen[1])):
                            texts[name] = seen[2]
                            continue
                        t = type(value)
                        if seen is not None and (t is int and -QUICK_INT < value < QUICK_INT or t in QUICK):
                            text = repr(value)  # a number: values.track's first case, inlined (hot)
                            if len(text) <= limit:
                                seen_of[name] = (value, None, text, len(text) + 2, None)
                                texts[name] = text
                                if text != seen[2]:
                                    size += len(text) + 2 - _UNCHANGED_NBYTES
                                continue
                        if name[0] == ".":
                            continue
                        if seen is None:
                            scope[1] += len(json_str(name)) + 4 + _UNCHANGED_NBYTES
                        seen, how = track(value, seen)
                        seen_of[name] = seen
                        texts[name] = seen[2]
                        if how:  # CHANGED or REWRITTEN: written in full
                            size += seen[3] - _UNCHANGED_NBYTES
                            if how == REWRITTEN:
                                rewritten += (name,)
                    if len(seen_of) != len(texts):  # deleted locals
                        for gone in seen_of.keys() - texts.keys():
                            del seen_of[gone]
                            scope[1] -= len(json_str(gone)) + 4 + _UNCHANGED_NBYTES
                    size += scope[1] if texts else 2  # "{}"
                    if len(frames) >= max_events or nbytes + size > max_bytes or deadline is not None:
                        check_limits(size)
                    nbytes += size
                    record(Frame(LINE, lineno, source_of[lineno], texts, None, depth, rewritten))
                    return on_event
                if event == RETURN or event == EXCEPTION:
                    value = arg if event == RETURN else arg[1]
                    t = type(value)
                    if t is int and -QUICK_INT < value < QUICK_INT or t in QUICK:
                        text = repr(value)  # a number (as above)
                        if len(text) > limit:
                            text = render(value)[0]
                    else:
                        text = render(value)[0]
                    size = fixed[event][lineno] + len(json_str(text))
                    if len(frames) >= max_events or nbytes + size > max_bytes or deadline is not None:
                        check_limits(size)
                    nbytes += size
                    record(Frame(event, lineno, source_of[lineno], None, text, depth))
                    if event == RETURN:
                        scopes.pop()
                        depth -= 1
                        if not scopes:  # the entry scope is left: the trace is complete
                            done = self.completed = True
                            self.real_settrace(None)  # nothing more to see: run the rest at full speed
            except Exception as e:  # (_Stop is a BaseException: it passes)
                fail(e)
            return on_event

        return on_call

    def _def_line(self, code) -> int:
        if code.co_filename != self.filename:
            return -1
        n = code.co_firstlineno
        if self.lines[n - 1].lstrip().startswith("@"):  # decorators: the call's action is the def line
            while n < len(self.lines) and not self.lines[n - 1].lstrip().startswith(("def ", "async def ")):
                n += 1
        return n

    # -- running ------------------------------------------------------------------------------
    def run(self, fn, *args) -> None:
        """fn(*args) with this recorder's trace functions; sets frames, status, return_value, error."""
        real_settrace = self.real_settrace = sys.settrace
        on_call = self._trace_function()

        def guarded_settrace(func):  # a program that removes our tracer must not look complete
            if func is not on_call:
                self.removed = True
            real_settrace(func)

        with self.values:
            sys.settrace = guarded_settrace
            real_settrace(on_call)
            try:
                fn(*args)
            except _Stop:
                pass
            except BaseException as e:  # the program failed outside the entry (at import, say)
                if not self.started:
                    self.status, self.error = "error", f"the program raised {type(e).__name__}: {e}"
            finally:
                still_ours = sys.gettrace() is on_call
                real_settrace(None)
                sys.settrace = real_settrace
        if self.status is None:
            if self.completed:
                self.status, self.return_value, self.error = outcome(self.frames)
            elif not self.started:
                self.status, self.error = "not_reached", "the entry point never ran"
            elif self.removed or not still_ours:
                self.status, self.error = "tracer_removed", "the program removed or replaced the trace function"
            else:
                self.status, self.error = "tracer_removed", "the trace function stopped receiving events"


# ---------------------------------------------------------------------------------------------
# Entry points


def trace_call(source: str, call: str, *, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES,
               timeout: float | None = None, value_limit: int = DEFAULT_LIMIT,
               repr_timeout: float = DEFAULT_REPR_TIMEOUT, filename: str = PROGRAM) -> Trace:
    """Run the program's module code, evaluate the call's arguments (untraced), trace the call.

    `call` names a function of the program: "f(1, [2, 3])", "f(*xs, key=2)".
    """
    clean, code, expr, node, target = _prepare_call(source, call, filename)
    context = _with_marker(clean, node.lineno)
    ns = {"__name__": "program", "__builtins__": builtins}
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
    fn = ns[node.name]
    rec = _Recorder(clean, context, filename, lambda frame: frame.f_code is target, max_events=max_events,
                    max_bytes=max_bytes, timeout=timeout, value_limit=value_limit, repr_timeout=repr_timeout)
    rec.run(lambda: fn(*args, **kwargs))
    return _trace(rec, context, call)


def trace_entry(source: str, name: str, **options) -> Trace:
    """Run the program as a script and trace its first call of the function `name`.

    Options as for trace_call (max_events, max_bytes, timeout, value_limit, repr_timeout, filename).
    """
    clean, code, node, target = _prepare_entry(source, name, options.get("filename", PROGRAM))
    return _run_script(clean, code, _with_marker(clean, node.lineno), name, lambda frame: frame.f_code is target, **options)


def trace_script(source: str, **options) -> Trace:
    """Trace from the line marked `# << START_OF_TRACE` if there is one, else the whole script."""
    clean, code, marked, node, target = _prepare_script(source, options.get("filename", PROGRAM))
    if marked is None:
        return _run_script(clean, code, clean, "<module>", lambda frame: frame.f_code is code, whole_module=True, **options)
    context = _with_marker(clean, marked)
    if node is not None:
        return _run_script(clean, code, context, node.name, lambda frame: frame.f_code is target, **options)

    def first_call_of_marked_line(frame) -> bool:
        caller = frame.f_back
        return caller is not None and caller.f_code is code and caller.f_lineno == marked

    entry = source_lines(clean)[marked - 1].strip()
    return _run_script(clean, code, context, entry, first_call_of_marked_line, **options)


def check(source: str, *, call: str | None = None, entry: str | None = None, filename: str = PROGRAM) -> None:
    """The checks trace_call / trace_entry / trace_script make before running anything: raise
    TraceError for a syntax error, a bad call expression, a missing function, a misplaced marker."""
    if call is not None:
        _prepare_call(source, call, filename)
    elif entry is not None:
        _prepare_entry(source, entry, filename)
    else:
        _prepare_script(source, filename)


def _prepare_call(source, call, filename):
    clean, _ = _strip_marker(source)
    tree, code = _compile(clean, filename)
    try:
        expr = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as e:
        raise TraceError(f"the call {call!r} is not a Python expression: {e.msg}") from None
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
        raise TraceError(f"the call {call!r} must call a function of the program by name, like f(1, [2, 3])")
    node = _find_def(tree, expr.func.id, top_level=True)
    return clean, code, expr, node, _entry_code(code, node)


def _prepare_entry(source, name, filename):
    clean, _ = _strip_marker(source)
    tree, code = _compile(clean, filename)
    node = _find_def(tree, name, top_level=False)
    return clean, code, node, _entry_code(code, node)


def _prepare_script(source, filename):
    clean, marked = _strip_marker(source)
    tree, code = _compile(clean, filename)
    if marked is None:
        return clean, code, None, None, None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno == marked:
            return clean, code, marked, node, _entry_code(code, node)
    if not any(stmt.lineno == marked for stmt in tree.body):
        raise TraceError(f"line {marked}: the START_OF_TRACE marker must end a def line or a module-level statement")
    return clean, code, marked, None, None


def _run_script(clean, code, context, entry, is_entry, *, max_events=MAX_EVENTS, max_bytes=MAX_BYTES, timeout=None,
                value_limit=DEFAULT_LIMIT, repr_timeout=DEFAULT_REPR_TIMEOUT, filename=PROGRAM, whole_module=False) -> Trace:
    rec = _Recorder(clean, context, filename, is_entry, max_events=max_events, max_bytes=max_bytes, timeout=timeout,
                    value_limit=value_limit, repr_timeout=repr_timeout, whole_module=whole_module)
    rec.run(exec, code, {"__name__": "__main__", "__builtins__": builtins})
    return _trace(rec, context, entry)


def _trace(rec: _Recorder, context: str, entry: str) -> Trace:
    return Trace(context, entry, rec.frames, rec.status, rec.return_value, rec.error)


def _compile(source: str, filename: str):
    try:
        tree = ast.parse(source, filename)
        return tree, compile(tree, filename, "exec")
    except SyntaxError as e:
        raise TraceError(f"{filename}:{e.lineno}: syntax error: {e.msg}") from None
    except ValueError as e:  # e.g. a NUL byte in the source
        raise TraceError(f"{filename}: cannot compile: {e}") from None


def _strip_marker(source: str) -> tuple[str, int | None]:
    """(source without START_OF_TRACE markers, the marked line number or None)."""
    lines = source.split("\n")
    marked = [n for n, line in enumerate(lines, start=1) if _MARKER_RE.search(line)]
    if len(marked) > 1:
        raise TraceError(f"the START_OF_TRACE marker is on several lines ({', '.join(map(str, marked))}); keep one")
    if not marked:
        return source, None
    lines[marked[0] - 1] = _MARKER_RE.sub("", lines[marked[0] - 1])
    return "\n".join(lines), marked[0]


def _with_marker(source: str, lineno: int) -> str:
    lines = source.split("\n")
    lines[lineno - 1] = lines[lineno - 1].rstrip() + MARKER
    return "\n".join(lines)


def _find_def(tree: ast.Module, name: str, *, top_level: bool) -> ast.FunctionDef:
    nodes = tree.body if top_level else list(ast.walk(tree))
    found = [n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    if not found:
        where = "at module level" if top_level else "anywhere"
        raise TraceError(f"the program defines no function {name!r} {where}")
    return found[-1] if top_level else found[0]  # top level: the last definition is the one bound


def _entry_code(module_code: types.CodeType, node: ast.FunctionDef) -> types.CodeType:
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    stack = [module_code]
    while stack:
        code = stack.pop()
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                if c.co_name == node.name and c.co_firstlineno == first:
                    if c.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR):
                        raise TraceError(
                            f"{node.name!r} is a generator or async function: its body runs only when iterated "
                            f"or awaited; trace a function that consumes it, e.g. def main(): return list({node.name}(...))"
                        )
                    return c
                stack.append(c)
    raise TraceError(f"cannot find the code of {node.name!r}")  # unreachable for a parsed def
