# expect: (Pair(a=1, b='x'), 1, {'a': 1, 'b': 'x'}, Pair(a=2, b='x'))
import typing
from collections import namedtuple

Old = namedtuple("Old", "a b")


class Pair(typing.NamedTuple):
    a: int
    b: str = "x"


def main():
    p = Pair(1)
    return p, Old(1, 2).a, p._asdict(), p._replace(a=2)
