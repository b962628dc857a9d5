# expect: ([1, 2, 3], 10)
def counter():
    n = 0

    def step():
        nonlocal n
        n += 1
        return n

    return step


def main():
    step = counter()
    adders = [lambda x, k=k: x + k for k in range(5)]
    return [step() for _ in range(3)], sum(f(0) for f in adders)
