# expect: ['enter', 'body', 'exit', 'suppressed']
import contextlib

log = []


@contextlib.contextmanager
def tagged():
    log.append("enter")
    try:
        yield
    finally:
        log.append("exit")


def main():
    with tagged():
        log.append("body")
    with contextlib.suppress(KeyError):
        {}["missing"]
    log.append("suppressed")
    return log
