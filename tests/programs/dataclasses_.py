# expect: (Point(x=1, y=2), True, [Point(x=0, y=5), Point(x=1, y=2)])
from dataclasses import dataclass, field, replace


@dataclass(order=True)
class Point:
    x: int
    y: int = 0


@dataclass(frozen=True)
class Box:
    items: list = field(default_factory=list)


def main():
    p = Point(1, 2)
    q = replace(p, x=0, y=5)
    return p, Box() == Box(), sorted([p, q])
