"""The trace-prediction plumbing shared by the evaluations and the debugger.

Prompts are token ids built by cwm.tokenizer.prompts (from cwm.trace.format's rendering), and
model output is read back with cwm.trace.format's tolerant parser; this module only joins them
up for "these frames so far, then the model's tokens", and builds the `main()` entry wrapper
that CruxEval's trace mode and the debugger share.
"""

from __future__ import annotations

import ast

from cwm.trace.format import CALL, Frame, Trace

ENTRY = "main"
MARKER = "  # << START_OF_TRACE"


def context_ids(tok, context: str) -> list[int]:
    """<|begin_of_text|><|trace_context_start|>{context}<|frame_sep|>"""
    from cwm.tokenizer.prompts import trace_prompt_ids

    return trace_prompt_ids(tok, context)


def frames_ids(tok, context: str, frames: list[Frame]) -> list[list[int]]:
    """Each frame's ids (with `".."` for locals unchanged in its scope), ending with <|frame_sep|>."""
    from cwm.tokenizer.prompts import trace_frames_ids

    return trace_frames_ids(tok, Trace(source=context, entry=f"{ENTRY}()", frames=list(frames)))


def parse_frames(tok, context: str, before: list[Frame], tokens: list[int]) -> tuple[list[Frame], str | None]:
    """The frames in `tokens` (model output that follows the frames `before`), with `".."` resolved
    through the earlier frames. Returns (the frames read, None) or (those read up to the
    problem, a description of where the text stopped being a trace)."""
    from cwm.trace.format import parse_cwm_text

    prefix = context_ids(tok, context) + [t for ids in frames_ids(tok, context, before) for t in ids]
    parsed = parse_cwm_text(tok.decode(prefix + list(tokens)))
    return parsed.frames[len(before):], parsed.error


def context_of(cwm_text: str) -> str:
    """The context (program with marker) of a rendered trace."""
    from cwm.trace.format import parse_cwm_text

    return parse_cwm_text(cwm_text).source


def entry_context(program: str, call: str) -> str:
    """The program plus `def main():  # << START_OF_TRACE` returning `call`: a trace context."""
    try:
        ast.parse(call, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"the call {call!r} is not a Python expression ({e.msg})") from None
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        raise ValueError(f"the program does not parse: line {e.lineno}: {e.msg}") from None
    if any(isinstance(n, ast.FunctionDef) and n.name == ENTRY for n in ast.walk(tree)):
        raise ValueError(f"the program defines {ENTRY}(), which is the trace's entry here; rename it")
    return f"{program.rstrip()}\n\ndef {ENTRY}():{MARKER}\n    return {call}\n"


def entry_frame(context: str) -> Frame:
    """main's call frame: no arguments, so it is known without running anything."""
    lineno = context.splitlines().index(f"def {ENTRY}():{MARKER}") + 1
    return Frame(CALL, lineno, f"def {ENTRY}():\n", {})
