"""`cwm trace FILE.py [--call EXPR | --entry NAME] [--format pretty|cwm|json]`: trace a program.

The program runs in the sandbox (cwm.sandbox), so a hostile one cannot hurt the caller.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the Python program")
    entry = parser.add_mutually_exclusive_group()
    entry.add_argument("--call", metavar="EXPR", help="trace this call of a program function, e.g. 'f(1, [2, 3])'")
    entry.add_argument("--entry", metavar="NAME", help="run the script and trace its first call of function NAME")
    parser.add_argument("--format", choices=("pretty", "cwm", "json"), default="pretty", help="output (default: pretty)")
    parser.add_argument("--stdin", metavar="FILE", help="the program's standard input: a file, or - for this one's "
                        "(default: empty)")
    parser.add_argument("--cwd", metavar="DIR", help="the program's working directory, a read-only view of DIR "
                        "(default: the program file's directory, so it can read the files beside it)")
    parser.add_argument("--max-events", type=int, default=10_000, metavar="N", help="stop after N events (default 10000)")
    parser.add_argument("--max-bytes", type=int, default=1_000_000, metavar="N", help="stop past N bytes of CWM text")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock seconds (default 10)")
    parser.epilog = ("Without --call/--entry: from the line marked `# << START_OF_TRACE`, else the whole script. "
                     "The program runs in the sandbox, as a module (`__main__`; `program` with --call). "
                     "Exit status: 0 the trace is whole and the call returned; 1 the traced call raised "
                     "(status exception; the trace is whole); 3 the trace stopped early (a limit, the timeout, "
                     "the program failed before the entry, ...); 2 a usage or input error.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


EXIT_OK, EXIT_RAISED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


def run(args) -> int:
    import os

    from cwm.sandbox import Limits, run_function
    from cwm.trace.format import OK, RAISED, Trace, to_cwm_text, to_dict
    from cwm.trace.recorder import trace_call, trace_entry, trace_script

    # The program is only read here, never compiled: compiling untrusted source can take gigabytes
    # or overflow the stack, so that happens in the sandbox (a TraceError comes back as one line).
    try:
        with open(args.file, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        return _error(f"cannot read {args.file}: {getattr(e, 'strerror', None) or e}")
    if args.max_events < 1 or args.max_bytes < 1 or args.timeout <= 0:
        return _error("--max-events, --max-bytes and --timeout must be positive")
    stdin = b""
    if args.stdin is not None:
        try:
            if args.stdin == "-":
                stdin = sys.stdin.buffer.read()
            else:
                with open(args.stdin, "rb") as f:
                    stdin = f.read()
        except OSError as e:
            return _error(f"cannot read --stdin {args.stdin}: {e.strerror or e}")
    cwd = args.cwd if args.cwd is not None else os.path.dirname(os.path.abspath(args.file))
    if not os.path.isdir(cwd):
        return _error(f"--cwd {cwd}: not a directory; pass the directory the program should run in")
    options = dict(max_events=args.max_events, max_bytes=args.max_bytes, timeout=args.timeout, filename=args.file)
    if args.call:
        fn, fn_args = trace_call, (source, args.call)
    elif args.entry:
        fn, fn_args = trace_entry, (source, args.entry)
    else:
        fn, fn_args = trace_script, (source,)
    # the tracer stops itself at --timeout with the trace so far; the sandbox kill is the backstop
    result = run_function(fn, *fn_args, limits=Limits(timeout=args.timeout + 5), input=stdin, cwd=cwd, **options)
    if result.status == "error":  # the child raised: a TraceError (say, the call's arguments failed)
        return _error((result.error or "the trace failed").strip().splitlines()[-1].removeprefix("cwm.trace.recorder.TraceError: "))
    if result.ok:
        trace = result.value
    else:
        trace = Trace(source, args.call or args.entry or "<module>", [], result.status, None, result.error)
    if result.stdout:
        print(result.stdout, end="", file=sys.stderr)  # the program's own output, kept off the trace
    if args.format == "cwm":
        sys.stdout.write(to_cwm_text(trace))
    elif args.format == "json":
        data = to_dict(trace)
        print(json.dumps({k: data[k] for k in ("status", "error", "return_value", "entry", "frames")}, indent=1))
    else:
        from cwm.trace.pretty import render_pretty

        render_pretty(trace)
    return {OK: EXIT_OK, RAISED: EXIT_RAISED}.get(trace.status, EXIT_INCOMPLETE)


def _error(message: str) -> int:
    print(f"cwm trace: error: {message}", file=sys.stderr)
    return EXIT_USAGE
