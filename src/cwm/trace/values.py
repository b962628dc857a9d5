"""Values as bounded `repr` strings, and a fingerprint that sees changes the text cannot show.

The rule (docs/trace-format.md): a value's text is its exact `repr()` when that has at most
`limit` characters, else the first `limit` characters of that repr followed by "...". The
prefix is built by walking builtin containers and slicing strings, so rendering costs
O(limit), never O(size). A truncated value also gets a fingerprint of the *whole* value (a hash
of its pickle, C speed), so a change hidden in the elided part still counts as a change.

A user-defined `__repr__` (or `__reduce__`, used by the fingerprint) runs under a wall-clock
timer; when it raises or runs too long its text is a marker such as
`<repr of Foo raised ValueError: boom>` or `<repr of Foo timed out>`.

A tracer asks for the text of every local on every line, and most locals did not change, so
`ValueRenderer.track` returns what to remember of a local (a `Tracked`) and the recorder
re-renders only what it cannot prove unchanged: a number or a short string is tracked by the C
trace function itself (_ctrace.c, the one fast path); a stable value (builtin immutable all the way down) that is the same
object has the same text; a list or dict of scalars keeps a shallow copy, and while it holds
the very same objects in the same order (an identity check, C speed, no user code: never `==`,
as 1 == 1.0 == True) it has the same text; one that only grew at its end extends its text
instead of rendering it again. Their fingerprints are taken only when a comparison needs one.
Everything else is rendered (and, when truncated, fingerprinted) on every line, as before.
"""

from __future__ import annotations

import hashlib
import pickle
import signal
from collections import Counter, OrderedDict, defaultdict, deque
from itertools import islice
from json.encoder import encode_basestring_ascii as json_str  # == json.dumps(str), in C
from typing import Any

# The C trace function's side of the contract (by name): how a local changed, what a scope
# remembers of it, and an identity test of a list's or dict's items.
from cwm.trace.native import CHANGED, REWRITTEN, SAME, Tracked, starts_with

DEFAULT_LIMIT = 1000  # characters of repr kept per value
DEFAULT_REPR_TIMEOUT = 0.1  # seconds a user-defined __repr__ may run
ELLIPSIS = "..."

# Types whose repr is short (or sliced by us) and can run no user code.
_ATOMS = frozenset({int, float, complex, bool, type(None), type(Ellipsis), range})


# Builtin immutable scalars: their repr, ==, hash and pickle run no user code, and an object of
# one of these types has the same repr for as long as it lives.
SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None)})
_STABLE_ATOMS = SCALARS | {type(Ellipsis), range}
_STABLE_KINDS = _STABLE_ATOMS | {tuple, frozenset}
MAX_SNAPSHOT = 100_000  # items; a bigger list or dict is rendered (and fingerprinted) on every change check

# How a local changed since the scope's previous frame (Tracked.how): SAME, CHANGED, or
# REWRITTEN (the same truncated text, but the value changed); the C module defines them.

# What a scope remembers of a local is a Tracked (the C module's type, built by keyword; one is
# built per change, read per line), with named fields:
# value: the object itself when identity vouches for its text, else UNKEPT (never a program's
#   object): a stable value (is_stable), or a list or dict of scalars while it holds the objects
#   of `items`, its shallow copy (else items is None);
# text, and nbytes: the length of the text as a JSON string (the bytes it takes in a trace);
# fingerprint: None when the text is not truncated; else a digest of the whole value, UNPICKLABLE,
#   or LATER (a stable value or a snapshot still gives it: taken only when a comparison needs it);
# how: SAME, CHANGED or REWRITTEN, against what the scope remembered before.
UNKEPT = object()
UNPICKLABLE = object()
LATER = object()


def _grew(value, items) -> bool:
    """Did this list or dict only gain items at its end since its snapshot `items`?"""
    return len(value) > len(items) and starts_with(value, items)


def is_stable(value) -> bool:
    """Can this value never change (builtin immutable all the way down)?"""
    t = type(value)
    if t in _STABLE_ATOMS:
        return True
    if t is not tuple and t is not frozenset:
        return False
    kinds = set(map(type, value))
    if kinds <= SCALARS:
        return True
    try:
        return kinds <= _STABLE_KINDS and all(map(is_stable, value))
    except RecursionError:  # nested too deep to check: treat as changing
        return False


def holds_scalars(value) -> bool:
    """Are this list's items (or this dict's keys and values) all SCALARS?"""
    if type(value) is dict:
        return set(map(type, value)) <= SCALARS and set(map(type, value.values())) <= SCALARS
    return set(map(type, value)) <= SCALARS


def _fingerprint_of(value, items, fingerprint):
    """The digest of a tracked value as it was when tracked (taken now if it was LATER)."""
    if fingerprint is LATER:  # builtin data only: pickled without the timer
        return _digest(_pickle(value if items is None else items))
    return fingerprint


class _Timeout(BaseException):
    """Raised by the SIGALRM handler inside a user-defined __repr__ that ran too long."""


class ValueRenderer:
    """Renders values as bounded repr strings; one per traced run.

    `guard_user_code` arms a SIGALRM timer around user-defined methods; it needs the main
    thread (signals), so the recorder turns it off elsewhere.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, repr_timeout: float = DEFAULT_REPR_TIMEOUT, guard_user_code: bool = True):
        if limit < 1:
            raise ValueError(f"value limit must be at least 1 character, got {limit}")
        self.limit = limit
        self.repr_timeout = repr_timeout
        self.guard_user_code = guard_user_code
        self._in_user_code = False
        self._old_handler: Any = None

    # -- the timer around user code ---------------------------------------------------------
    def __enter__(self) -> "ValueRenderer":
        if self.guard_user_code:
            self._old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
        return self

    def __exit__(self, *exc) -> None:
        if self.guard_user_code:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler)

    def _on_alarm(self, signum, frame) -> None:
        if self._in_user_code:  # a late alarm outside user code is ignored
            raise _Timeout

    def _user_call(self, what: str, fn, value):
        """Call fn(value) (user code); return (result, None) or (None, marker text)."""
        name = type(value).__name__
        armed = self.guard_user_code
        if armed:
            # re-fires every timeout, so a repr that swallows one exception still stops
            signal.setitimer(signal.ITIMER_REAL, self.repr_timeout, self.repr_timeout)
        self._in_user_code = True
        try:
            return fn(value), None
        except _Timeout:
            return None, f"<{what} of {name} timed out>"
        except BaseException as e:  # SystemExit or KeyboardInterrupt from a repr, too
            return None, f"<{what} of {name} raised {type(e).__name__}: {_first_line(e)}>"
        finally:
            self._in_user_code = False
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)

    # -- text ---------------------------------------------------------------------------------
    def render(self, value) -> tuple[str, bool]:
        """(text, truncated): the exact repr, or its first `limit` characters + "..."."""
        t = type(value)
        if t in _SHORT or (t is str and len(value) <= self.limit) or (t is int and value.bit_length() < 256):
            text = repr(value)  # the common case, in C
            if len(text) <= self.limit:
                return text, False
        elif (t is list or t is tuple) and len(value) <= 32 and _simple(value, self.limit):
            text = repr(value)  # a small container of numbers and short strings, in C
            if len(text) <= self.limit:
                return text, False
        elif t is dict and len(value) <= 32 and _simple(value, self.limit) and _simple(value.values(), self.limit):
            text = repr(value)
            if len(text) <= self.limit:
                return text, False
        parts: list[str] = []
        left = self._walk(value, parts, self.limit + 1, set())
        text = "".join(parts)
        if left > 0:
            return text, False
        return text[: self.limit] + ELLIPSIS, True

    def fingerprint(self, value):
        """A digest of the whole value, or UNPICKLABLE (then: always changed)."""
        data, failed = self._user_call("pickle", _pickle, value)
        if failed:
            return UNPICKLABLE
        return _digest(data)

    # -- change tracking ----------------------------------------------------------------------
    def track(self, value, seen: Tracked | None) -> Tracked:
        """Render a local whose scope last remembered it as `seen` (None: new): what to remember
        of it now, with `how` it changed (SAME, CHANGED or REWRITTEN).

        The caller (the C trace function, _ctrace.c) first tries the free case itself: the value
        is `seen.value` and, if `seen.items` is a snapshot, still holds its very items means SAME,
        with the text `seen.text`; and it tracks a number or a short string itself.
        """
        t = type(value)
        kept, items = UNKEPT, None
        if (t is list or t is dict) and len(value) <= MAX_SNAPSHOT:
            if seen is not None and seen.value is value and _grew(value, seen.items):
                grown = self._extend(value, seen)  # xs.append(x), d[new_key] = x: look at the new items only
                if grown is not None:
                    return grown
            if len(value) <= 32 and _simple(value, self.limit) and (t is list or _simple(value.values(), self.limit)):
                text = repr(value)  # a few numbers or short strings, in C (as render does)
                if len(text) <= self.limit:
                    how = CHANGED if seen is None or seen.text != text else SAME
                    return Tracked(value=value, items=value.copy(), text=text, nbytes=len(json_str(text)),
                                   fingerprint=None, how=how)
            if holds_scalars(value):
                kept, items = value, value.copy()
        elif is_stable(value):
            kept = value
        text, truncated = self.render(value)
        fingerprint = None
        if truncated:  # a value that may change under us is fingerprinted now
            fingerprint = LATER if kept is not UNKEPT else self.fingerprint(value)
        how = CHANGED
        if seen is not None and seen.text == text:
            how = SAME
            if truncated:  # the same text: did the value change where the text is cut?
                fingerprint = _fingerprint_of(kept, items, fingerprint)
                if fingerprint is UNPICKLABLE or fingerprint != _fingerprint_of(seen.value, seen.items, seen.fingerprint):
                    how = REWRITTEN
        return Tracked(value=kept, items=items, text=text, nbytes=len(json_str(text)), fingerprint=fingerprint, how=how)

    def text(self, value) -> str:
        """The value's text alone (a return value: no scope remembers it)."""
        return self.render(value)[0]

    def _extend(self, value, seen: Tracked) -> Tracked | None:
        """What to remember of a list or dict of scalars that grew at its end, or None to render it."""
        n = len(seen.items)
        is_list = type(value) is list
        tail = value[n:] if is_list else dict(islice(value.items(), n, None))
        if seen.fingerprint is not None:  # truncated: the text shows old items only, and stays
            if not holds_scalars(tail):
                return None
            return Tracked(value=value, items=value.copy(), text=seen.text, nbytes=seen.nbytes, fingerprint=LATER,
                           how=REWRITTEN)
        if not (_simple(tail, self.limit) and (is_list or _simple(tail.values(), self.limit))):
            return None  # not only numbers, or only short strings: render it all
        # repr(old + tail) is repr(old) with the tail's items before its closing bracket
        text = seen.text[:-1] + (", " if n else "") + repr(tail)[1:-1] + ("]" if is_list else "}")
        truncated = len(text) > self.limit
        if truncated:
            text = text[: self.limit] + ELLIPSIS
        how = REWRITTEN if text == seen.text else CHANGED
        return Tracked(value=value, items=value.copy(), text=text, nbytes=len(json_str(text)),
                       fingerprint=LATER if truncated else None, how=how)

    def _walk(self, v, out: list[str], budget: int, active: set[int]) -> int:
        """Append the repr of v to out until budget characters are written; return budget left."""
        t = type(v)
        if t in _ATOMS:
            if t is int and v.bit_length() > 3.33 * budget + 64:
                # only its leading digits would show: render them without a huge conversion
                return _emit(out, _int_prefix(v, budget), budget)
            return _emit(out, repr(v), budget)
        if t is str or t is bytes:
            return _emit(out, _sliced_repr(v, budget), budget)
        if t in (list, tuple, set, frozenset, dict, deque, defaultdict, OrderedDict, Counter):
            if id(v) in active:  # a container inside itself: CPython writes [...] / {...}
                return _emit(out, _RECURSION[t], budget)
            active.add(id(v))
            try:
                return self._walk_container(t, v, out, budget, active)
            finally:
                active.discard(id(v))
        # Anything else may run user code, even with a C-level repr (a list subclass holding
        # user objects, an exception with user arguments): always under the timer.
        text, failed = self._user_call("repr", repr, v)
        return _emit(out, failed or _as_text(text, v), budget)

    def _walk_container(self, t, v, out, budget, active) -> int:
        if t is list:
            return self._items(v, "[", "]", out, budget, active)
        if t is tuple:
            if len(v) == 1:
                return self._items(v, "(", ",)", out, budget, active)
            return self._items(v, "(", ")", out, budget, active)
        if t is set or t is frozenset:
            if not v:
                return _emit(out, f"{t.__name__}()", budget)
            if t is set:
                return self._items(v, "{", "}", out, budget, active)
            return self._items(v, "frozenset({", "})", out, budget, active)
        if t is dict:
            return self._pairs(v, "{", "}", out, budget, active)
        if t is deque:
            close = "])" if v.maxlen is None else f"], maxlen={v.maxlen})"
            return self._items(v, "deque([", close, out, budget, active)
        if t is defaultdict:
            budget = _emit(out, "defaultdict(", budget)
            if budget > 0:
                budget = self._walk(v.default_factory, out, budget, active)
            return self._pairs(v, ", {", "})", out, budget, active) if budget > 0 else budget
        if t is OrderedDict:  # 3.11: OrderedDict([('a', 1)])
            if not v:
                return _emit(out, "OrderedDict()", budget)
            return self._items(list(v.items()), "OrderedDict([", "])", out, budget, active)
        # Counter (3.11): Counter({...}) in most_common order
        if not v:
            return _emit(out, "Counter()", budget)
        try:
            d = dict(v.most_common())
        except TypeError:
            d = dict(v)
        return self._pairs(d, "Counter({", "})", out, budget, active)

    def _items(self, items, open_, close, out, budget, active) -> int:
        budget = _emit(out, open_, budget)
        # Fast path: items that are numbers or short strings are written by C's repr, a chunk at
        # a time, each chunk sized from the characters per item seen so far, until the budget is spent.
        if type(items) in (list, tuple):
            done, chunk = 0, 16
            while done < len(items) and budget > 0:
                head = items[done : done + chunk]
                if not _simple(head, budget):
                    break
                text = repr(list(head) if type(head) is tuple else head)[1:-1]
                budget = _emit(out, text if done == 0 else ", " + text, budget)
                done += len(head)
                chunk = int(budget / (len(text) / len(head) + 2) * 1.1) + 4
            else:
                return _emit(out, close, budget) if budget > 0 else budget
            items = items[done:]
            if done:
                budget = _emit(out, ", ", budget)
        first = True
        for x in items:
            if budget <= 0:
                return budget
            if not first:
                budget = _emit(out, ", ", budget)
            first = False
            budget = self._walk(x, out, budget, active)
        return _emit(out, close, budget) if budget > 0 else budget

    def _pairs(self, d, open_, close, out, budget, active) -> int:
        budget = _emit(out, open_, budget)
        if len(d) <= budget // 6 + 1 and _simple(d, budget) and _simple(d.values(), budget):
            budget = _emit(out, dict.__repr__(d)[1:-1], budget)  # fast path, as in _items
            return _emit(out, close, budget) if budget > 0 else budget
        first = True
        for k, x in d.items():
            if budget <= 0:
                return budget
            if not first:
                budget = _emit(out, ", ", budget)
            first = False
            budget = self._walk(k, out, budget, active)
            if budget > 0:
                budget = _emit(out, ": ", budget)
                budget = self._walk(x, out, budget, active)
        return _emit(out, close, budget) if budget > 0 else budget


_RECURSION: dict[type, str] = {
    list: "[...]", tuple: "(...)", dict: "{...}", set: "set(...)", frozenset: "frozenset(...)",
    deque: "[...]", defaultdict: "{...}", OrderedDict: "...", Counter: "...",
}


_SHORT = frozenset({float, complex, bool, type(None), type(Ellipsis), range})  # reprs of a few dozen characters
_NUMBERS = frozenset({int, float, bool, type(None)})
_BIG_INT = 2**255


def _simple(items, budget: int) -> bool:
    """Only small ints, floats, bools, None and strings of bounded total length (C-speed checks)."""
    types_ = set(map(type, items))
    if types_ <= _NUMBERS:
        if int not in types_:
            return True
        ints = items if len(types_) == 1 else [x for x in items if type(x) is int]
        return -_BIG_INT < min(ints) and max(ints) < _BIG_INT  # no huge int to convert
    if types_ == {str}:
        return sum(map(len, items)) <= 4 * budget
    return False


def _emit(out: list[str], s: str, budget: int) -> int:
    if len(s) > budget:
        s = s[:budget]
    out.append(s)
    return budget - len(s)


def _pickle(value) -> bytes:
    return pickle.dumps(value, protocol=5)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()
    return text[0][:200] if text else ""


def _as_text(text, value) -> str:
    if isinstance(text, str):
        return text
    return f"<repr of {type(value).__name__} returned {type(text).__name__}, not str>"


def _sliced_repr(s: str | bytes, budget: int) -> str:
    """A prefix (at least `budget` characters when that long) of repr(s), in O(budget)."""
    if len(s) <= budget:
        return repr(s)
    # repr picks double quotes iff the text has ' and no ": decide on the whole string, then
    # force that choice on the slice by appending the other quote character and dropping it.
    if isinstance(s, bytes):
        double = b"'" in s and b'"' not in s
        text = repr(s[: budget + 1] + (b"'" if double else b'"'))
    else:
        double = "'" in s and '"' not in s
        text = repr(s[: budget + 1] + ("'" if double else '"'))
    return text[:-2]


def _int_prefix(v: int, budget: int) -> str:
    """The leading characters of repr(v) for a huge int, without converting all its digits."""
    digits = int(v.bit_length() * 0.30102999566398) + 1  # >= number of decimal digits - 1
    drop = max(0, digits - budget - 10)
    head = abs(v) // (10**drop)  # leading >= budget digits; the exact prefix of str(abs(v))
    return ("-" if v < 0 else "") + str(head)
