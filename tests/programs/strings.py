# expect: ('  42|3.14|0x1f', ['a', 'b', 'c'], 'Hello, World')
import re
import string


def main():
    formatted = f"{42:>4}|{3.14159:.2f}|{31:#x}"
    parts = re.split(r"[,;]\s*", "a, b;c")
    return formatted, parts, string.capwords("hello, world")
