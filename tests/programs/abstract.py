# expect: ('TypeError', 12.0)
import abc


class Shape(abc.ABC):
    @abc.abstractmethod
    def area(self) -> float: ...


class Rect(Shape):
    def __init__(self, w, h):
        self.w, self.h = w, h

    def area(self):
        return float(self.w * self.h)


def main():
    try:
        Shape()
    except TypeError as e:
        name = type(e).__name__
    return name, Rect(3, 4).area()
