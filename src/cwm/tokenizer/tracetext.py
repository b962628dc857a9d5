"""The trace-prediction plumbing shared by the data pipeline, the evaluations and the debugger.

It lives in the tokenizer layer (below data, eval and the debugger, above cwm.trace) because it
turns traces into token ids and model tokens back into frames; see "Layers" in README.md.

Prompts are token ids built by cwm.tokenizer.prompts (from cwm.trace.format's rendering), and
model output is read back with cwm.trace.format's tolerant parser; this module only joins them
up for "these frames so far, then the model's tokens", and builds the `main()` entry wrapper
that CruxEval's trace mode and the debugger share.
"""

from __future__ import annotations

import ast

from cwm.trace.format import CALL, MARKER, Frame, Trace, source_lines

ENTRY = "main"


def context_ids(tok, context: str) -> list[int]:
    """<|begin_of_text|><|trace_context_start|>{context}<|frame_sep|>"""
    from cwm.tokenizer.prompts import trace_prompt_ids

    return trace_prompt_ids(tok, context)


def frames_ids(tok, context: str, frames: list[Frame]) -> list[list[int]]:
    """Each frame's ids (with `".."` for locals unchanged in its scope), ending with <|frame_sep|>."""
    from cwm.tokenizer.prompts import trace_frames_ids

    return trace_frames_ids(tok, Trace(source=context, entry=f"{ENTRY}()", frames=list(frames)))


def parse_frames(tok, prompt: list[int], tokens: list[int]) -> tuple[list[Frame], str | None]:
    """The frames in `tokens`, model output that continues `prompt` (a context and whole frames).

    The prompt is parsed with them, so `".."` resolves through exactly what the model saw.
    Returns (the new frames, None), or (the new frames read before the problem, where the text
    stopped being a trace)."""
    from cwm.trace.format import parse_cwm_pieces

    before = prompt.count(tok.frame_sep_id) - 1  # frames in the prompt; the first sep ends the context
    parsed = parse_cwm_pieces(pieces(tok, list(prompt) + list(tokens)))
    if len(parsed.frames) < before:
        raise ValueError(f"the prompt itself does not parse as a trace: {parsed.error}")
    return parsed.frames[before:], parsed.error


def pieces(tok, ids: list[int]) -> list[tuple[str, bool]]:
    """Token ids as (text, is_special) pieces: a value that merely spells a special token stays text."""
    out: list[tuple[str, bool]] = []
    run: list[int] = []
    for t in ids:
        if tok.is_special(t):
            if run:
                out.append((tok.decode(run), False))
                run = []
            out.append((tok.decode([t]), True))
        else:
            run.append(t)
    if run:
        out.append((tok.decode(run), False))
    return out


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


class ActionLines:
    """Constrained decoding of actions: the allowed next tokens after `<|action_sep|>`.

    A frame's action is always one of the traced program's own lines (`source_lines`), so after
    `<|action_sep|>` only the token sequences of those lines, as a trace holds them, may follow
    until one is complete; everywhere else any token may. The model still picks the line (and its
    argmax among the lines that remain); it can no longer misspell one. Given as
    `Sampling(constraint=ActionLines(tok, context))`; it reads only the generated tokens, so the
    prompt must end between frames (every prompt of the evaluations and the debugger does).
    """

    def __init__(self, tok, context: str):
        self.action_sep = tok.action_sep_id
        self.lines: dict[int, dict] = {}  # a trie of token ids; a line's last node is empty
        for line in set(source_lines(context)):
            node = self.lines
            for t in tok.encode(line):
                node = node.setdefault(t, {})

    def __call__(self, tokens: list[int]) -> list[int] | None:
        """The ids allowed after `tokens` (generated so far), or None for any."""
        start = len(tokens) - 1
        while start >= 0 and tokens[start] != self.action_sep:
            start -= 1
        if start < 0:
            return None
        node = self.lines
        for t in tokens[start + 1 :]:
            if t not in node:  # past a complete line (or off the program: a prompt that was not)
                return None
            node = node[t]
        return list(node) or None
