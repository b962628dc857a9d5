"""The C trace function's interface (src/cwm/trace/_ctrace.c), for type checkers and readers.

tests/test_trace_contract.py holds this file to the built module (names, Tracked's fields in
order, Tracer's keywords).
"""

from collections.abc import Callable
from typing import Any, Final

EVENTS: Final[tuple[str, ...]]  # the event names it writes, in its order (== cwm.trace.tokens.EVENTS)
FRAME_FIELDS: Final[tuple[str, ...]]  # the format.Frame slots it fills, by name
SAME: Final[int]  # how a local changed since the scope's previous frame
CHANGED: Final[int]
REWRITTEN: Final[int]  # the same (truncated) text, but the value changed

class Tracked:
    """What a scope remembers of a local (see values.py): named fields, read-only."""

    __match_args__: Final[tuple[str, ...]]
    def __new__(cls, value: Any, items: Any, text: str, nbytes: int, fingerprint: Any, how: int) -> Tracked: ...
    @property
    def value(self) -> Any: ...
    @property
    def items(self) -> Any: ...
    @property
    def text(self) -> str: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def fingerprint(self) -> Any: ...
    @property
    def how(self) -> int: ...

def starts_with(value: object, items: object, /) -> bool: ...

class Tracer:
    """The trace function of one recording (see recorder.py)."""

    def __init__(
        self,
        *,
        frames: list[Any],
        source_of: list[str],
        fixed: dict[str, list[int]],
        frame_type: type,
        track: Callable[[Any, Tracked | None], Tracked],
        text: Callable[[Any], str],
        definitions: tuple[type, ...],
        is_entry: Callable[[Any], Any],
        def_line: Callable[[Any], int],
        check_limits: Callable[[int], None],
        filename: str,
        stop: type[BaseException],
        limit: int,
        max_events: int,
        max_bytes: int,
        unchanged_len: int,
        nbytes: int,
        timeout: float,
        whole_module: bool,
    ) -> None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def deadline(self) -> float: ...
    @property
    def started(self) -> bool: ...
    @property
    def completed(self) -> bool: ...
    done: bool
    @property
    def failure(self) -> BaseException | None: ...
    @property
    def displaced(self) -> bool: ...
    def install(self) -> None: ...
    def close(self) -> None: ...
