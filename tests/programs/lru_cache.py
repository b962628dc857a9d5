# expect: (832040, 31)
import functools


@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def main():
    return fib(30), fib.cache_info().currsize
