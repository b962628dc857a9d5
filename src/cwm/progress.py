"""A progress bar on stderr for long verbs (`data build`, `data pack`, `tokenizer train`):

    with Bar("packing", total, "tokens") as bar:
        bar.advance(k)            # or bar.update(completed, total=...) when the total is an estimate

It shows the label, the bar, n/total, the rate over this run in units per second, the elapsed
time and the ETA; `enabled=False` shows nothing. In a terminal it redraws in place; into a pipe
or a file (rich's rule) it writes its final state once, when it ends. Ended by an exception, it
vanishes, so an error message stands alone.
"""

from __future__ import annotations


class Bar:
    def __init__(self, label: str, total: float | None, unit: str, enabled: bool = True, done: int = 0):
        self.label, self.total, self.unit, self.enabled, self.done = label, total, unit, enabled, done

    def __enter__(self) -> "Bar":
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        unit = self.unit

        class Rate(ProgressColumn):
            def render(self, task):  # over this run (a resumed build's earlier work is not counted)
                ran = task.completed - task.fields["resumed"]
                speed = ran / task.elapsed if ran and task.elapsed else None
                if not speed:
                    return Text(f"? {unit}/s")
                return Text(f"{speed:,.1f} {unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{unit.rstrip('s')}")

        self._bar = Progress(
            TextColumn(self.label), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(stderr=True),
        )  # fmt: skip
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, resumed=self.done)
        return self

    def advance(self, k: float = 1) -> None:
        if self.enabled:
            self._bar.update(self._task, advance=k)

    def update(self, completed: float, total: float | None = None) -> None:
        if self.enabled:
            if total is None:
                self._bar.update(self._task, completed=completed)
            else:
                self._bar.update(self._task, completed=completed, total=total)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            if exc[0] is not None:  # an error (or Ctrl-C) ends it: leave its one line alone on stderr
                self._bar.live.transient = True
            self._bar.__exit__(*exc)
