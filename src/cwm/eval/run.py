"""What every evaluation run shares: the results file, progress. (The context budget checked
before each generation is `cwm.backends.fit`: a prompt that does not fit raises `TooLong`, which
the runners record as that item's failure, its `reason`, never as a crash.)

- `ResultsLog`: the items of a run as JSON lines (a header line with the run's settings, then one
  line per item, flushed as each is done). Opened again with the same settings it resumes: the
  items already there are not evaluated again. Other settings are refused, unless `fresh`.
- `progress`: a rich progress bar on stderr with n/total, rate and ETA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, TextIO


class ResultsLog:
    """One JSON line per finished item, appended and flushed at once (a killed run loses at most
    the item it was on). The first line holds the run's settings; `done` maps the ids already
    there to their items."""

    def __init__(self, path: str | Path, settings: dict, fresh: bool = False):
        self.path = Path(path)
        self.settings = settings
        self.done: dict[str, dict] = {}
        self._file: TextIO | None = None  # opened at the first item: a run that fails before any leaves no file
        if self.path.exists() and not fresh:
            self._read()

    def _read(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
            header = json.loads(lines[0])["settings"] if lines else None
        except (ValueError, KeyError, TypeError):
            header = None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path} is not a results file of `cwm eval`; give another --out, or --fresh to overwrite it")
        differ = sorted(k for k in set(header) | set(self.settings) if header.get(k) != self.settings.get(k))
        if differ:
            what = ", ".join(f"{k}: {header.get(k)!r} there, {self.settings.get(k)!r} now" for k in differ)
            raise ValueError(f"{self.path} holds a run with other settings ({what}); "
                             f"give another --out, or --fresh to start over")
        for line in lines[1:]:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # the line a killed run was writing
            if isinstance(item, dict) and "id" in item:
                self.done[str(item["id"])] = item

    def add(self, item: dict) -> None:
        if self._file is None:  # rewritten whole first: a torn last line goes
            lines = [json.dumps({"settings": self.settings})] + [json.dumps(done) for done in self.done.values()]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in lines))
            os.replace(tmp, self.path)
            self._file = self.path.open("a")
        self.done[str(item["id"])] = item
        self._file.write(json.dumps(item) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def progress(items: list, description: str, done: int = 0) -> Iterator:
    """Iterate `items` with a progress bar on stderr (cwm.progress.Bar): n/total (counting `done`
    resumed items), items per second over this run (or seconds per item), elapsed and ETA."""
    from cwm.progress import Bar

    with Bar(description, done + len(items), "items", done=done) as bar:
        for item in items:
            yield item
            bar.advance()


def items_to_do(items: Iterable, log: ResultsLog | None, key) -> tuple[list, list]:
    """(the items the log already holds, the rest), each in order."""
    if log is None:
        return [], list(items)
    done, todo = [], []
    for item in items:
        (done if str(key(item)) in log.done else todo).append(item)
    return done, todo
