"""What the debugger shows: the source around the current line, the predicted frame and the
real one beside it, and the summary printed by `cwm debug --auto`."""

from __future__ import annotations

import re

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from cwm.eval.metrics import action_of, score_trace, state_of
from cwm.trace.format import EXCEPTION, MARKER, RETURN, Frame


def line_number(context: str, frame: Frame | None) -> int | None:
    """The frame's line in the context: its own number, else the first line with its text."""
    if frame is None:
        return None
    if frame.lineno:
        return frame.lineno
    wanted = action_of(frame)[1]
    lines = [line.removesuffix(MARKER) for line in context.splitlines()]
    return lines.index(wanted) + 1 if wanted in lines else None


def describe(frame: Frame | None) -> str:
    if frame is None:
        return "—"
    what = f"= {frame.value}" if frame.event in (RETURN, EXCEPTION) else \
        ", ".join(f"{k}={v}" for k, v in (frame.locals or {}).items())
    return f"{frame.event:<9} {frame.source.strip()}   {what}"


def _passed_row(session, step) -> str:
    """A frame a command went through on its way (a stepped-over call, its predicted return)."""
    if step.frame is None:
        return f"[red]malformed: {escape(step.error or '')}[/]"
    i = next(i for i, s in enumerate(session.steps) if s is step)
    before = session.steps[i - 1].frame if i > 0 else None
    if step.frame.event == RETURN and before is not None and before.event == "call":
        name = re.match(r"\s*(?:async\s+)?def\s+(\w+)", before.source)
        return f"[bold]{escape(name.group(1) if name else 'the call')} returned {escape(str(step.frame.value))}[/]"
    return escape(describe(step.frame))


def show(session, around: int = 6, passed=()):
    """The current step; `passed`: the steps the last command went through before it (`next`
    shows the stepped-over call and the return value the model predicted for it)."""
    step = session.current
    real = session.real_pairs()[-1]
    here = line_number(session.context, step.frame)
    there = line_number(session.context, real)
    lines = session.context.splitlines()
    centre = here or there or 1
    source = Table.grid(padding=(0, 1))
    for n in range(max(1, centre - around), min(len(lines), centre + around) + 1):
        mark = ("→" if n == here else " ") + ("R" if n == there and there != here else " ")
        style = "bold yellow" if n == here else ("green" if n == there else "")
        source.add_row(f"{mark}{n:4d}", f"[{style}]{escape(lines[n - 1])}[/]" if style else escape(lines[n - 1]))
    frames = Table(show_header=True, header_style="bold")
    frames.add_column(f"step {len(session.steps) - 1}")
    frames.add_column("frame")
    for s in list(passed)[-8:]:
        frames.add_row("passed", _passed_row(session, s))
    if step.error:
        frames.add_row("predicted", f"[red]malformed: {escape(step.error)}[/]\n{escape(step.text)}")
    else:
        frames.add_row("predicted", escape(describe(step.frame)) + (" [magenta](edited)[/]" if step.edited else ""))
    if session.real is not None:
        differs = step.frame is None or real is None or action_of(step.frame) != action_of(real) \
            or state_of(step.frame) != state_of(real)
        frames.add_row("real", escape(describe(real)) + (" [red]≠[/]" if differs and not session.edited else ""))
        first = session.first_divergence()
        if first is not None:
            frames.add_row("", f"[red]first divergence at step {first}[/]")
    if session.done:
        frames.add_row("", "[bold]the model ended the trace[/]")
    return Group(source, frames)


def side_by_side(session) -> Table:
    """Every predicted step beside the real frame it stands for (what `cwm debug --auto` shows)."""
    table = Table(show_header=True, header_style="bold", show_lines=False)
    table.add_column("step", justify="right")
    table.add_column("predicted")
    table.add_column("real")
    table.add_column("")
    pairs = session.real_pairs() if session.real is not None else [None] * len(session.steps)
    for i, (step, real) in enumerate(zip(session.steps, pairs)):
        if i < session.given:
            continue
        if step.error:
            table.add_row(str(i), f"[red]malformed: {escape(step.error)}[/]\n{escape(step.text)}", escape(describe(real)), "[red]✗[/]")
            continue
        same = real is not None and action_of(step.frame) == action_of(real) and state_of(step.frame) == state_of(real)
        mark = "" if session.real is None else ("[green]✓[/]" if same else "[red]✗[/]")
        table.add_row(str(i), escape(describe(step.frame)), escape(describe(real)) if session.real is not None else "", mark)
    return table


def summary(session) -> str:
    predicted = [s.frame for s in session.steps[session.given:]]
    malformed = sum(s.error is not None for s in session.steps)
    lines = [f"predicted frames: {len(predicted)} (ended: {'yes' if session.done else 'no'}, malformed: {malformed})"]
    last = next((f for f in reversed(predicted) if f is not None), None)
    predicted_return = last.value if last is not None and last.event == RETURN else None
    if session.real is None:
        lines.append("real trace: not available")
        lines.append(f"return value: predicted {predicted_return}")
        return "\n".join(lines)
    real = session.real[1:]
    score = score_trace([f for f in predicted if f is not None], real, valid=malformed == 0)
    real_return = real[-1].value if real and real[-1].event == RETURN else None
    lines += [
        f"real frames: {len(real)}",
        f"steps matching the real trace: {sum(score.step_ok)}/{score.steps} "
        f"(action {score.action:.3f}, state {score.state:.3f})",
        f"first divergence: {'none' if score.first_divergence is None else f'step {score.first_divergence + 1}'}",
        f"return value: predicted {predicted_return}, real {real_return} "
        f"({'match' if score.output else 'differs'})",
    ]
    return "\n".join(lines)
