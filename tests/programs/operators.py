# expect: (Money(5), True, 3, [Money(1), Money(2)])
import functools


@functools.total_ordering
class Money:
    def __init__(self, cents):
        self.cents = cents

    def __add__(self, other):
        return Money(self.cents + other.cents)

    def __eq__(self, other):
        return self.cents == other.cents

    def __lt__(self, other):
        return self.cents < other.cents

    def __len__(self):
        return 3

    def __repr__(self):
        return f"Money({self.cents})"


def main():
    return Money(2) + Money(3), Money(1) <= Money(1), len(Money(0)), sorted([Money(2), Money(1)])
