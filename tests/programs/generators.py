# expect: ([0, 1, 1, 2, 3, 5], 10, [0, 2, 4])
import itertools


def fibs():
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


def count_up(n):
    total = yield from range(n)
    return total


def main():
    first = list(itertools.islice(fibs(), 6))
    squares = sum(x for x in range(5))
    return first, squares, [x for x in range(5) if x % 2 == 0]
