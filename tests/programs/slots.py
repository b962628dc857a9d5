# expect: (3, 'AttributeError')
class Vec:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


def main():
    v = Vec(1, 2)
    try:
        v.z = 3
    except AttributeError as e:
        err = type(e).__name__
    return v.x + v.y, err
