# expect: ([('a', 3), ('b', 2)], {'x': [1, 2]}, deque([3, 2, 1]), 'a')
from collections import Counter, OrderedDict, defaultdict, deque


def main():
    counts = Counter("abacab").most_common(2)
    groups = defaultdict(list)
    for k, v in [("x", 1), ("x", 2)]:
        groups[k].append(v)
    d = deque()
    for i in (1, 2, 3):
        d.appendleft(i)
    od = OrderedDict(b=1, a=2)
    od.move_to_end("b")
    return counts, dict(groups), d, next(iter(od))
