# expect: ([[1, 2], [3]], [[1, 2, 9], [3]], True)
import copy


class Holder:
    def __init__(self, items):
        self.items = items


def main():
    h = Holder([[1, 2], [3]])
    deep = copy.deepcopy(h)
    shallow = copy.copy(h)
    shallow.items[0].append(9)
    return deep.items, h.items, type(deep) is Holder
