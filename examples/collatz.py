def next_value(n):
    if n % 2 == 0:
        return n // 2
    return 3 * n + 1


def collatz_steps(n):
    steps = 0
    seen = [n]
    while n != 1:
        n = next_value(n)
        seen.append(n)
        steps += 1
    return steps
