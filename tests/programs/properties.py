# expect: (4, 'C', 'made by from_pair', 5)
class Temp:
    def __init__(self, c):
        self._c = c

    @property
    def c(self):
        return self._c

    @c.setter
    def c(self, value):
        self._c = value

    @classmethod
    def from_pair(cls, pair):
        t = cls(sum(pair))
        t.note = "made by from_pair"
        return t

    @staticmethod
    def unit():
        return "C"


def main():
    t = Temp.from_pair((1, 3))
    u = Temp(0)
    u.c = 5
    return t.c, Temp.unit(), t.note, u.c
