# expect: ('bad value: 7', 'ValueError', True)
class AppError(Exception):
    def __init__(self, value):
        super().__init__(f"bad value: {value}")
        self.value = value


def check(v):
    if v > 5:
        raise AppError(v)


def main():
    try:
        check(7)
    except AppError as e:
        message = str(e)
    try:
        try:
            int("x")
        except ValueError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        cause = type(e.__cause__).__name__
    return message, cause, isinstance(AppError(1), Exception)
