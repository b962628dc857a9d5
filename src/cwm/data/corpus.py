"""A plain Python source corpus for pre-training on code (the paper pre-trains on code before
mid-training on traces): every parseable, UTF-8 `*.py` file under a directory, as (path, text).

`cwm data build --source code:stdlib --out DIR` stores it with the same shards and manifest as
a trace dataset (kind "code"), and `cwm data pack` tokenizes its `text` column.
"""

from __future__ import annotations

import ast
from typing import Iterator

from cwm.data.harvest import default_root, python_files

MAX_FILE_BYTES = 1_000_000  # generated tables and vendored blobs are not code to learn from


def source_files(spec: str) -> Iterator[tuple[str, str]]:
    """(path relative to the root, text) for each usable file under `spec` ('stdlib' or a path), sorted."""
    root = default_root(spec)
    for path in python_files(root):
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
            ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        yield path.relative_to(root).as_posix(), text
