"""A plain Python source corpus for pre-training on code (the paper pre-trains on code before
mid-training on traces): every parseable, UTF-8 `*.py` file under a directory, as (path, text).

`cwm data build --source code:stdlib --out DIR` stores it with the same shards and manifest as
a trace dataset (kind "code"), and `cwm data pack` tokenizes its `text` column.
"""

from __future__ import annotations

import ast

from cwm.data.harvest import default_root, in_sandbox, read_sources


def source_files(spec: str) -> list[tuple[str, str]]:
    """(path relative to the root, text) for each usable file under `spec` ('stdlib' or a path),
    sorted: at most MAX_FILE_BYTES, UTF-8, and parseable (checked in a sandbox: an untrusted file
    is never parsed in this process)."""
    sources = read_sources(default_root(spec))
    parses = in_sandbox(lambda source: _parses(source[1]), sources)
    return [source for source, ok in zip(sources, parses) if ok is True]


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True
