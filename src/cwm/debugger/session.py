"""The neural debugger: a model predicts a program's execution one frame at a time.

A session holds a program context and the frames so far. Each command asks the backend for the
next frame (stopping at <|frame_sep|>), sometimes forcing how that frame starts, as the
release's demo does (demos/cwmdbg.py):

  step   next frame; after a call frame, force a line frame (step into)
  next   next frame; if it is a call, force <|return_sep|>: the model predicts the callee's
         return value without its body (step over), then the caller's next frame
  out    continue, stepping over calls, until the current function returns, then one more frame
         (the release's demo stops at the first return, which may be a stepped-over callee's)
  back   drop the last frame
  reset  back to the entry call frame
  set    what-if: give a local of the current frame a new value; later frames follow from it

Two ways in:
  --call EXPR   the entry is wrapped as CruxEval's trace mode does: the context is the program
                plus `def main():  # << START_OF_TRACE` returning the call, and main's call
                frame is given, so the model never has to guess the inputs. When the program can
                run (in the sandbox), the real trace is kept beside the predicted one and each
                predicted frame is paired with its real counterpart.
  demo mode     (no --call) the program as it is, its entry `def` marked, as the release's demo
                takes it: the model predicts the first call frame itself, arguments included
                (a forced <|call_sep|> right after the context); `reset` samples it again.
A frame is complete when its tokens end with <|frame_sep|> (whatever the server's
finish_reason says). Malformed model output becomes a frame marked malformed, never an exception.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from cwm.backends import Backend, Sampling, TooLong, fit
from cwm.eval.metrics import action_of, follow_real, state_of  # eval's public scoring API
from cwm.tokenizer import tracetext
from cwm.tokenizer.tracetext import ENTRY, MARKER, entry_context, entry_frame
from cwm.trace.format import CALL, FRAME_SEP, LINE, RETURN, Frame


@dataclass
class Step:
    """One predicted frame: parsed (or None when malformed), with the exact tokens behind it."""

    frame: Frame | None
    ids: list[int]  # the frame's tokens as they stand in the prompt, ending with <|frame_sep|>
    text: str
    error: str | None = None  # why the text is not a frame
    edited: bool = False  # changed by the user (what-if)


@dataclass
class Session:
    backend: Backend
    context: str  # the program with its entry marked (see `prepare`)
    real: list[Frame] | None = None  # the real trace, when the program could be run
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_new_tokens=512))
    steps: list[Step] = field(default_factory=list)
    done: bool = False  # the model ended the trace (<|end_of_text|>)
    predict_entry: bool = False  # demo mode: the model predicts the entry call frame too

    def __post_init__(self):
        self.tok = self.backend.tokenizer
        self.context_ids = tracetext.context_ids(self.tok, self.context)
        self.reset()

    # --- commands ---------------------------------------------------------------------------

    def reset(self) -> Step:
        self.done = False
        if self.predict_entry:  # the release's demo: the model writes the call frame, arguments included
            self.steps = []
            return self._predict(CALL)
        first = self.real[0] if self.real else entry_frame(self.context)
        ids = tracetext.frames_ids(self.tok, self.context, [first])[0]
        self.steps = [Step(first, ids, self.tok.decode(ids))]
        return self.current

    def step(self) -> Step:
        if not self._can_continue():
            return self.current
        return self._predict(LINE if self._current_event() == CALL else None)

    def next(self) -> Step:
        if not self._can_continue():
            return self.current
        self._predict()
        if self._current_event() == CALL and not self.done:
            self._predict(RETURN)
            if not self.done and self.current.error is None:
                self._predict()
        return self.current

    def out(self, max_steps: int = 1000) -> Step:
        if not self._can_continue():
            return self.current
        if self._current_event() == CALL:  # just entered a function: leave it at once
            self._predict(RETURN)
            return self._predict() if not self.done and self.current.error is None else self.current
        for _ in range(max_steps):
            if self.done or self.current.error:
                break
            self._predict()
            if self._current_event() == CALL and not self.done:
                self._predict(RETURN)  # a callee: its return value without its body; keep going
            elif self._current_event() == RETURN:  # the current function returned
                if not self.done:
                    self._predict()
                break
        return self.current

    def back(self) -> Step:
        if len(self.steps) > 1 or (self.predict_entry and self.current.error):
            self.steps.pop()
        self.done = False
        if not self.steps:  # demo mode, a malformed entry frame dropped: predict it again
            return self.reset()
        return self.current

    def set_local(self, name: str, value: str) -> Step:
        """What-if: the current frame's local `name` now holds `value` (a Python expression)."""
        frame = self.current.frame
        if frame is None or frame.event not in (CALL, LINE):
            raise ValueError("what-if needs a call or line frame as the current frame; use `back` first")
        try:
            ast.parse(value, mode="eval")
        except SyntaxError as e:
            raise ValueError(f"{value!r} is not a Python expression ({e.msg})") from None
        edited = Frame(frame.event, frame.lineno, frame.source, {**(frame.locals or {}), name: value},
                       frame.value, frame.depth)
        before = [s.frame for s in self.steps[:-1]]
        if any(f is None for f in before):
            raise ValueError("what-if needs the steps before it to be frames; use `back` to the last good one first")
        ids = tracetext.frames_ids(self.tok, self.context, [f for f in before if f is not None] + [edited])[-1]
        self.steps[-1] = Step(edited, ids, self.tok.decode(ids), edited=True)
        self.done = False
        return self.current

    # --- state ------------------------------------------------------------------------------

    @property
    def current(self) -> Step:
        return self.steps[-1]

    def locals(self) -> dict[str, str]:
        """Resolved locals at the current frame (a return/exception frame shows its scope's last)."""
        for step in reversed(self.steps):
            if step.frame is not None and step.frame.event in (CALL, LINE):
                return dict(step.frame.locals or {})
        return {}

    @property
    def given(self) -> int:
        """How many leading steps were given rather than predicted (the entry call frame, or none)."""
        return 0 if self.predict_entry else 1

    @property
    def edited(self) -> bool:
        return any(s.edited for s in self.steps)

    def frames(self) -> list[Frame | None]:
        return [s.frame for s in self.steps]

    def real_indexes(self) -> list[int | None]:
        """For each step, the index of the real frame it stands for (None: none, or no real trace).

        Steps follow the real trace frame by frame, except that a return forced right after a call
        (a step over) stands for that call's own return (`follow_real`). The console and the HTML
        report both pair frames with this."""
        if self.real is None:
            return [None] * len(self.steps)
        events = [s.frame.event if s.frame else None for s in self.steps]
        return [i if i < len(self.real) else None for i in follow_real(self.real, events)]

    def real_pairs(self) -> list[Frame | None]:
        """For each predicted step, the real frame at the same point of the execution (or None)."""
        real = self.real or []  # no real trace: every index is None
        return [None if i is None else real[i] for i in self.real_indexes()]

    def first_divergence(self) -> int | None:
        """The first step whose prediction differs from its real frame (None if none or no real trace)."""
        if self.real is None:
            return None
        for i, (step, real) in enumerate(zip(self.steps, self.real_pairs())):
            if step.edited:
                return None  # after a what-if edit, the real run is no longer the reference
            if step.frame is None or real is None or action_of(step.frame) != action_of(real) \
                    or state_of(step.frame) != state_of(real):
                return i
        return None

    # --- one prediction ---------------------------------------------------------------------

    def _current_event(self) -> str | None:
        return self.current.frame.event if self.current.frame else None

    def _can_continue(self) -> bool:
        if self.current.error:
            raise ValueError("the current frame is malformed; `back` drops it, `reset` starts over")
        return not self.done

    def prompt(self, forced: str | None = None) -> list[int]:
        """What the next prediction is asked with: context, frames so far, a forced event token."""
        forced_ids = [self.tok.special_id(f"<|{forced}_sep|>")] if forced else []
        return self.context_ids + [t for s in self.steps for t in s.ids] + forced_ids

    def _predict(self, forced: str | None = None) -> Step:
        forced_ids = [self.tok.special_id(f"<|{forced}_sep|>")] if forced else []
        before = self.prompt()
        try:  # a long trace fills the model's context: a step that says so, the frames so far kept
            sampling = fit(self.backend, len(before) + len(forced_ids), self.sampling)
        except TooLong as e:
            step = Step(None, forced_ids + [self.tok.frame_sep_id], "", error=f"no room left in the model's context: {e}")
            self.steps.append(step)
            return step
        completion = self.backend.complete(before + forced_ids, stop=[FRAME_SEP], sampling=sampling)
        generated = completion.tokens
        if self.tok.frame_sep_id in generated:  # a server that ignored the stop: one frame only
            generated = generated[:generated.index(self.tok.frame_sep_id) + 1]
        tokens = forced_ids + generated
        if self.steps and (generated[:1] == [self.tok.eos_id] or (not generated and not forced)):
            self.done = True
            return self.current
        frames, error = tracetext.parse_frames(self.tok, before, tokens)
        # complete = ends with <|frame_sep|>; the server's finish_reason is not read (fgserve: "length")
        if frames and error is None and tokens[-1:] == [self.tok.frame_sep_id]:
            step = Step(frames[0], tokens, self.tok.decode(tokens))
        else:
            if error is None or len(generated) >= sampling.max_new_tokens:  # cut off: the budget is why
                end = " (the end of the model's context)" if sampling.max_new_tokens < self.sampling.max_new_tokens else ""
                error = f"no <|frame_sep|> within {sampling.max_new_tokens} tokens{end}"
            if tokens[-1:] != [self.tok.frame_sep_id]:
                tokens = tokens + [self.tok.frame_sep_id]  # keep the prompt's frames delimited
            step = Step(None, tokens, self.tok.decode(tokens), error=error)
        self.steps.append(step)
        return step


# the marker spaced as the context writes it (any blanks around it)
_ANY_MARKER = re.compile(rf"[ \t]*{re.escape(MARKER.strip())}[ \t]*$", re.MULTILINE)


def mark_entry(program: str, entry: str | None = None) -> str:
    """The program as the release's demo takes it, its entry's `def` line ending with the marker.

    With `entry`, that function's `def` line gets the marker (the program must not mark another);
    without, the program must already mark exactly one line."""
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        raise ValueError(f"the program does not parse: line {e.lineno}: {e.msg}") from None
    marked = [n for n, line in enumerate(program.splitlines(), 1) if _ANY_MARKER.search(line)]
    if entry is None:
        if len(marked) != 1:
            raise ValueError(
                "the program marks no entry (end its entry's def line with `  # << START_OF_TRACE`, or pass "
                "--entry NAME or --call EXPR)" if not marked else
                f"the program marks {len(marked)} entries (lines {', '.join(map(str, marked))}); keep one"
            )
        return program
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry]
    if not defs:
        raise ValueError(f"the program defines no function {entry!r} (--entry)")
    if marked:
        raise ValueError(f"the program already marks an entry at line {marked[0]}; drop the marker or --entry")
    lines = program.splitlines(keepends=True)
    n = defs[0].lineno - 1
    lines[n] = lines[n].rstrip("\r\n") + MARKER + "\n"
    return "".join(lines)


def prepare(program: str, call: str | None, run_real: bool = True, timeout: float = 10.0,
            entry: str | None = None) -> tuple[str, list[Frame] | None, str | None]:
    """The session's context and, if the program runs (in the sandbox), its real trace.

    Without `call` (demo mode) the context is the program with its entry marked (`mark_entry`)
    and there is no real trace: the model chooses the arguments.
    Returns (context, real frames or None, a note for the user or None).
    """
    if call is None:
        context = mark_entry(program, entry)
        return context, None, "note: the model predicts the entry call, arguments included (demo mode); no real trace"
    if entry is not None:
        raise ValueError("give --call EXPR (the inputs are yours) or --entry NAME (the model chooses them), not both")
    context = entry_context(_ANY_MARKER.sub("", program), call)  # one entry: main
    if not run_real:
        return context, None, None
    from cwm.sandbox import Limits, run_function
    from cwm.trace import trace_call

    result = run_function(trace_call, context.replace(MARKER, ""), f"{ENTRY}()", limits=Limits(timeout=timeout))
    if not result.ok:
        return context, None, f"note: the real program could not be traced ({result.status}: {result.error}); predictions only"
    trace = result.value
    note = None if trace.status == "ok" else f"note: the real run ended with {trace.status}: {trace.error}"
    return context, trace.frames or None, note
