"""A readable view of a trace: one row per step, source line, and what changed (via rich)."""

from __future__ import annotations

from cwm.trace.format import CALL, EXCEPTION, LINE, RETURN, UNCHANGED, Trace, _Scopes

_STYLE = {CALL: "cyan", LINE: "", RETURN: "green", EXCEPTION: "red"}


def render_pretty(trace: Trace, console=None) -> None:
    """Print the trace: step number, event, line number, the line (indented by call depth), and
    the locals that changed (bold) or the returned / raised value."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(title=f"trace of {trace.entry}", show_lines=False, box=None, pad_edge=False)
    for name in ("step", "event", "line", "source", "changes"):
        table.add_column(name, justify="right" if name in ("step", "line") else "left", overflow="fold")
    scopes = _Scopes()
    for step, frame in enumerate(trace.frames, start=1):
        written = scopes.written(frame)
        if frame.event in (CALL, LINE):
            changes = Text(", ").join(
                Text(f"{k} = {v}", style="bold yellow" if frame.event == LINE else "")
                for k, v in (written or {}).items() if v != UNCHANGED
            )
        else:
            changes = Text(("-> " if frame.event == RETURN else "raises ") + (frame.value or ""), style=_STYLE[frame.event])
        source = "  " * frame.depth + frame.source.strip()
        table.add_row(str(step), Text(frame.event, style=_STYLE[frame.event]), str(frame.lineno), Text(source), changes)
    console.print(table)
    style = "green" if trace.status == "ok" else "red"
    summary = f"status: {trace.status}"
    if trace.return_value is not None:
        summary += f"   returned: {trace.return_value}"
    if trace.error:
        summary += f"   {trace.error}"
    console.print(Text(summary, style=style))
