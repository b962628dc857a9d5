# expect: 'ran as __main__'
import sys


def main():
    return f"ran as {__name__}" if sys.modules[__name__].main is main else "not registered"


if __name__ == "__main__":
    main()
