# expect: (True, True, 'Node(3)')
import pickle
from dataclasses import dataclass


@dataclass
class Node:
    value: int
    children: list

    def __repr__(self):
        return f"Node({self.value})"


class Plain:
    def __init__(self, n):
        self.n = n


def main():
    tree = Node(3, [Node(1, []), Node(2, [])])
    back = pickle.loads(pickle.dumps(tree))
    plain = pickle.loads(pickle.dumps(Plain(5)))
    return back == tree, plain.n == 5, repr(back)
