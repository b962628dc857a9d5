"""`cwm debug FILE.py [--call EXPR | --entry NAME] [--model DIR | --server URL]`: the neural
debugger at a prompt.

Shows the source with the current line, the predicted frame and its locals, and (when the
program runs in the sandbox) the real frame beside it with the first divergence marked.
Without --call (demo mode) the model predicts the entry call frame itself, as the release's demo.
`--auto` runs to the end without a prompt and prints each predicted step beside the real frame
it stands for, then a summary; `--report FILE.html` writes the predicted trace against the real
one as a self-contained HTML page.

At the prompt, as in pdb: line editing and history (readline; kept in
$XDG_CACHE_HOME/cwm/debug_history, default ~/.cache/cwm), Enter repeats the last command,
Ctrl-C stops the prediction under way (the frames so far stay), Ctrl-D or `q` quits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = """commands:
  s, step          next frame (into calls)
  n, next          next frame, stepping over calls (the model predicts the return value)
  o, out           run until the current function returns
  b, back          drop the last frame
  p, print [VAR]   the current locals, or one of them
  set VAR = EXPR   what-if: give VAR a new value in the current frame and continue from there
  reset            back to the entry call (demo mode: the model predicts it again)
  report FILE      write the HTML report
  q, quit          (also Ctrl-D)
Enter repeats the last command; Ctrl-C stops a prediction under way."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a Python file")
    parser.add_argument("--call", help="the entry call, e.g. 'collatz_steps(6)'; without it (demo mode) the model "
                                       "predicts the call to the function marked `# << START_OF_TRACE`")
    parser.add_argument("--entry", help="demo mode: the function whose call the model predicts (instead of a marker)")
    parser.add_argument("--model", help="local checkpoint directory (default: the shipped cwm-mini)")
    parser.add_argument("--server", help="URL of a server with /completions")
    parser.add_argument("--tokenizer", help="tokenizer files for --server (default: the shipped cwm-mini's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for a local model (default: every core); on a machine busy with other "
                             "work, 1 can be several times faster")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the release's demo uses 0.2-0.6)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-frame-tokens", type=int, default=512, help="token budget for one frame")
    parser.add_argument("--constrain-actions", action="store_true",
                        help="constrained decoding: each predicted action is one of the program's own lines (the model "
                             "still picks which; a local model only)")
    parser.add_argument("--auto", action="store_true", help="step to the end without a prompt, then print a summary")
    parser.add_argument("--max-steps", type=int, default=500, help="--auto stops after this many frames")
    parser.add_argument("--report", help="write an HTML report of the predicted trace against the real one")
    parser.add_argument("--no-real", action="store_true", help="do not run the program for the real trace")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds the real run may take (sandboxed)")


def run(args) -> int:
    from pathlib import Path

    from cwm.backends import CONSTRAINT_NEEDS_LOCAL, BackendError, Sampling, open_backend
    from cwm.debugger.session import Session, prepare
    from cwm.tokenizer.tracetext import ActionLines

    try:
        if args.constrain_actions and args.server:
            raise ValueError(CONSTRAINT_NEEDS_LOCAL)
        program = Path(args.file).read_text()
        context, real, note = prepare(program, args.call, run_real=not args.no_real, timeout=args.timeout,
                                      entry=args.entry)
        backend = open_backend(args.model, args.server, args.tokenizer or args.model, args.device, threads=args.threads)
        sampling = Sampling(temperature=args.temperature, top_p=args.top_p if args.temperature > 0 else 1.0,
                            max_new_tokens=args.max_frame_tokens,
                            constraint=ActionLines(backend.tokenizer, context) if args.constrain_actions else None)
        session = Session(backend, context, real=real, sampling=sampling, predict_entry=args.call is None)
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
    except KeyboardInterrupt:  # outside the prompt (loading, the real run, --auto)
        print("interrupted", file=sys.stderr)
        return 130


def _auto(session, max_steps: int) -> int:
    from rich.console import Console

    from cwm.debugger.view import side_by_side, summary

    for _ in range(max_steps):
        if session.done or session.current.error:
            break
        session.step()
    Console(width=max(Console().width, 120)).print(side_by_side(session))  # predicted beside real
    print(summary(session))
    return 0


def history_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cwm" / "debug_history"


def _line_editing():
    """readline editing and history when the prompt is a terminal; returns what saves the history."""
    if not sys.stdin.isatty():
        return lambda: None
    try:
        import readline
    except ImportError:  # a Python without readline: plain input()
        return lambda: None
    path = history_file()
    try:
        readline.read_history_file(path)
    except OSError:  # the first session, or an unreadable file: start empty
        pass
    readline.set_history_length(1000)

    def save():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError as e:
            print(f"note: history not saved ({e})", file=sys.stderr)

    return save


def _interactive(session) -> int:
    from rich.console import Console

    from cwm.debugger.view import show

    console = Console()
    console.print(show(session))
    save_history = _line_editing()
    try:
        last = ""
        while True:
            try:
                line = input("(cwm) ").strip() or last  # Enter repeats the last command, as in pdb
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:  # at the prompt: a fresh prompt, as pdb does
                print("\n(q or Ctrl-D quits)")
                continue
            if not line:
                continue
            last = line
            before = len(session.steps)
            try:
                if _command(session, line) is False:
                    continue
            except KeyboardInterrupt:  # the prediction under way stops; the session keeps its frames
                print("\ninterrupted: the frames predicted so far are kept")
            except ValueError as e:  # a command the session refuses: say why, keep the session
                print(f"error: {e}")
                continue
            except _Quit:
                return 0
            console.print(show(session, passed=session.steps[before:-1]))
    finally:
        save_history()


class _Quit(Exception):
    pass


def _command(session, line: str) -> bool | None:
    """Run one command; False when there is no new state to show."""
    word, _, rest = line.partition(" ")
    rest = rest.strip()
    if word in ("q", "quit", "exit"):
        raise _Quit
    elif word in ("h", "help", "?"):
        print(HELP)
        return False
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
        return False
    elif word == "set":
        name, eq, value = rest.partition("=")
        if not eq or not name.strip().isidentifier():
            print("usage: set VAR = EXPR")
            return False
        session.set_local(name.strip(), value.strip())
    elif word == "report":
        print(f"report: {_write_report(session, rest or 'cwm-debug-report.html')}")
        return False
    else:
        print(f"unknown command {word!r}\n{HELP}")
        return False
    return None


def _write_report(session, path: str):
    """The report of the session's steps, paired with the real frames as the console pairs them."""
    from cwm.debugger.report import write_report

    steps = session.steps[session.given:]
    real = (session.real or [])[1:]  # the entry call frame is given, not predicted
    pairs = [None if i is None else i - 1 for i in session.real_indexes()[session.given:]]
    edited = next((k for k, s in enumerate(steps) if s.edited), None)
    return write_report(path, session.context, real, [s.frame for s in steps],
                        title="cwm debug: predicted vs real trace", pairs=pairs,
                        raw=[(s.text, s.error) if s.error else None for s in steps], edited_from=edited,
                        missing_tail=session.done)
