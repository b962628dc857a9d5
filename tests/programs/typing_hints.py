# expect: ({'xs': list[int], 'return': typing.Optional[int]}, 3)
import typing
from typing import Optional


def largest(xs: list[int]) -> Optional[int]:
    return max(xs) if xs else None


def main():
    return typing.get_type_hints(largest), largest([1, 3, 2])
