"""Trace metrics: a predicted trace (a list of Frames) scored against the real one.

The release's four metrics (CWM paper, Table 9), per trace:
  valid   the predicted text parsed into frames without error
  action  same event and same source line, per step
  state   same resolved locals (call/line) or same value (return/exception), per step
  output  same final return value

Steps are compared two ways: by position (step i against step i) and by sequence alignment
(difflib over the actions), so one skipped or extra step does not zero everything after it.
Both divide by the longer of the two traces: a trace is perfect only if it has every step and
no extra ones. See docs/eval.md for the decisions.

This module is the evaluation's public scoring API: the neural debugger scores and aligns its
predictions with it too (the one import it makes from cwm.eval; see "Layers" in README.md).
It needs only cwm.trace.format, so it imports without the compiled tracer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from cwm.trace.format import CALL, EXCEPTION, MARKER, RETURN, Frame


def action_of(frame: Frame) -> tuple[str, str]:
    """What the step does: its event and its source line (marker and trailing newline ignored)."""
    line = frame.source.rstrip("\n").removesuffix(MARKER)
    return frame.event, line


def state_of(frame: Frame):
    """What the step knows: resolved locals for call/line frames, the value for return/exception."""
    if frame.event in (RETURN, EXCEPTION):
        return frame.value
    return dict(frame.locals or {})


def output_of(frames: list[Frame]) -> str | None:
    """The entry's return value: the value of the last frame when it is a return, else None."""
    if frames and frames[-1].event == RETURN:
        return frames[-1].value
    return None


@dataclass
class TraceScore:
    steps: int  # max(len(real), len(predicted)): the denominator of the per-step rates
    valid: float  # 1.0 or 0.0; teacher-forced: the fraction of frames that parsed
    output: bool
    action: float  # by position
    state: float
    action_aligned: float  # by sequence alignment
    state_aligned: float
    first_divergence: int | None  # first step index (position) that differs; None if none
    step_ok: list[bool] = field(default_factory=list)  # by position: action and state both right

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _rate(hits: int, steps: int) -> float:
    return hits / steps if steps else 1.0


def score_trace(predicted: list[Frame], real: list[Frame], valid: float = True) -> TraceScore:
    steps = max(len(real), len(predicted))
    pairs = list(zip(predicted, real))
    action_hits = [action_of(p) == action_of(r) for p, r in pairs]
    state_hits = [state_of(p) == state_of(r) for p, r in pairs]
    step_ok = [a and s for a, s in zip(action_hits, state_hits)] + [False] * (steps - len(pairs))
    first_divergence = next((i for i, ok in enumerate(step_ok) if not ok), None)

    # Alignment: the longest matching blocks of actions; aligned pairs then compare states.
    matcher = difflib.SequenceMatcher(
        None, [action_of(f) for f in real], [action_of(f) for f in predicted], autojunk=False
    )
    aligned = [(i, j) for block in matcher.get_matching_blocks() for i, j in
               zip(range(block.a, block.a + block.size), range(block.b, block.b + block.size))]
    aligned_states = sum(state_of(real[i]) == state_of(predicted[j]) for i, j in aligned)

    return TraceScore(
        steps=steps,
        valid=valid,
        output=output_of(predicted) is not None and output_of(predicted) == output_of(real),
        action=_rate(sum(action_hits), steps),
        state=_rate(sum(state_hits), steps),
        action_aligned=_rate(len(aligned), steps),
        state_aligned=_rate(aligned_states, steps),
        first_divergence=first_divergence,
        step_ok=step_ok,
    )


METRICS = ("valid", "action", "state", "output", "action_aligned", "state_aligned")


def aggregate(scores: list[TraceScore]) -> dict:
    """Means over traces (each trace weighs the same), plus accuracy by step index."""
    n = len(scores)
    out: dict = {name: (sum(float(getattr(s, name)) for s in scores) / n if n else 0.0) for name in METRICS}
    out["traces"] = n
    diverged = [s.first_divergence for s in scores if s.first_divergence is not None]
    out["diverged"] = len(diverged)
    out["mean_first_divergence"] = sum(diverged) / len(diverged) if diverged else None
    longest = max((len(s.step_ok) for s in scores), default=0)
    by_step = []
    for i in range(longest):
        at_i = [s.step_ok[i] for s in scores if i < len(s.step_ok)]
        by_step.append(sum(at_i) / len(at_i))
    out["accuracy_by_step"] = by_step
    return out


def matching_return(frames: list[Frame], call: int) -> int | None:
    """Index of the return frame that ends the call at index `call`."""
    depth = frames[call].depth
    return next((j for j in range(call + 1, len(frames))
                 if frames[j].event == RETURN and frames[j].depth == depth), None)


def follow_real(real: list[Frame], events: list[str | None]) -> list[int]:
    """Which real frame each of a sequence of frames (given by their events) stands for.

    Frames follow the real trace one by one, except that a return right after a call, where the
    real trace goes into the callee's body, stands for that call's own return: the debugger's
    step over (`next`), which forces <|return_sep|> after a predicted call. An index past the
    end means the real trace has ended.
    """
    out: list[int] = []
    r = 0
    for event in events:
        prev = out[-1] if out else None
        if (event == RETURN and prev is not None and prev < len(real) and real[prev].event == CALL
                and r < len(real) and real[r].event != RETURN):
            ret = matching_return(real, prev)
            r = ret if ret is not None else r
        out.append(r)
        r += 1
    return out
