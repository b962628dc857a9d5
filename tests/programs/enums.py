# expect: ('GREEN', 2, [<Color.RED: 1>, <Color.GREEN: 2>], <Perm.R|W: 6>)
import enum


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Perm(enum.Flag):
    R = 4
    W = 2


def main():
    c = Color(2)
    return c.name, c.value, list(Color), Perm.R | Perm.W
