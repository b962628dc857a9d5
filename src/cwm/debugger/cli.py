"""`cwm debug FILE.py --call EXPR [--model DIR | --server URL]`: the neural debugger at a prompt.

Shows the source with the current line, the predicted frame and its locals, and (when the
program runs in the sandbox) the real frame beside it with the first divergence marked.
`--auto` runs to the end without a prompt and prints a summary; `--report FILE.html` writes the
predicted trace against the real one as a self-contained HTML page.
"""

from __future__ import annotations

import argparse
import sys

HELP = """commands:
  s, step          next frame (into calls)
  n, next          next frame, stepping over calls (the model predicts the return value)
  o, out           run until the current function returns
  b, back          drop the last frame
  p, print [VAR]   the current locals, or one of them
  set VAR = EXPR   what-if: give VAR a new value in the current frame and continue from there
  reset            back to the entry call
  report FILE      write the HTML report
  q, quit"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a Python file")
    parser.add_argument("--call", required=True, help="the entry call, e.g. 'collatz_steps(6)'")
    parser.add_argument("--model", help="local checkpoint directory")
    parser.add_argument("--server", help="URL of a server with /completions")
    parser.add_argument("--tokenizer", help="tokenizer files (needed with --server)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the release's demo uses 0.2-0.6)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-frame-tokens", type=int, default=512, help="token budget for one frame")
    parser.add_argument("--auto", action="store_true", help="step to the end without a prompt, then print a summary")
    parser.add_argument("--max-steps", type=int, default=500, help="--auto stops after this many frames")
    parser.add_argument("--report", help="write an HTML report of the predicted trace against the real one")
    parser.add_argument("--no-real", action="store_true", help="do not run the program for the real trace")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds the real run may take (sandboxed)")


def run(args) -> int:
    from pathlib import Path

    from cwm.backends import BackendError, Sampling, open_backend
    from cwm.debugger.session import Session, prepare

    try:
        program = Path(args.file).read_text()
        context, real, note = prepare(program, args.call, run_real=not args.no_real, timeout=args.timeout)
        backend = open_backend(args.model, args.server, args.tokenizer or args.model, args.device)
        sampling = Sampling(temperature=args.temperature, top_p=args.top_p if args.temperature > 0 else 1.0,
                            max_new_tokens=args.max_frame_tokens)
        session = Session(backend, context, real=real, sampling=sampling)
        if note:
            print(note)
        if args.auto:
            code = _auto(session, args.max_steps)
        else:
            code = _interactive(session)
        if args.report:
            print(f"report: {_write_report(session, args.report)}")
        return code
    except (OSError, ValueError, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _auto(session, max_steps: int) -> int:
    from cwm.debugger.view import summary

    for _ in range(max_steps):
        if session.done or session.current.error:
            break
        session.step()
    print(summary(session))
    return 0


def _interactive(session) -> int:
    from rich.console import Console

    from cwm.debugger.view import show

    console = Console()
    console.print(show(session))
    while True:
        try:
            line = input("(cwm) ").strip()
        except EOFError:
            return 0
        word, _, rest = line.partition(" ")
        try:
            if word in ("q", "quit", "exit"):
                return 0
            elif word in ("h", "help", "?", ""):
                print(HELP)
                continue
            elif word in ("s", "step"):
                session.step()
            elif word in ("n", "next"):
                session.next()
            elif word in ("o", "out"):
                session.out()
            elif word in ("b", "back"):
                session.back()
            elif word == "reset":
                session.reset()
            elif word in ("p", "print"):
                values = session.locals()
                if rest and rest not in values:
                    print(f"no local {rest!r} here; locals: {', '.join(values) or '(none)'}")
                else:
                    print(values[rest] if rest else values)
                continue
            elif word == "set":
                name, eq, value = rest.partition("=")
                if not eq or not name.strip().isidentifier():
                    print("usage: set VAR = EXPR")
                    continue
                session.set_local(name.strip(), value.strip())
            elif word == "report":
                print(f"report: {_write_report(session, rest or 'cwm-debug-report.html')}")
                continue
            else:
                print(f"unknown command {word!r}\n{HELP}")
                continue
        except ValueError as e:  # a what-if the session refuses: say why, keep the session
            print(f"error: {e}")
            continue
        console.print(show(session))


def _write_report(session, path: str):
    from cwm.debugger.report import write_report

    predicted = [f for f in session.frames()[1:] if f is not None]
    real = (session.real or [])[1:]
    valid = all(s.error is None for s in session.steps)
    return write_report(path, session.context, real, predicted, title="cwm debug: predicted vs real trace",
                        valid=valid)
