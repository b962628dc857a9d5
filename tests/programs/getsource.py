# expect: (True, True)
import inspect


class Greeter:
    def hello(self):
        return "hi"


def main():
    return "return \"hi\"" in inspect.getsource(Greeter.hello), inspect.getsource(Greeter).startswith("class Greeter")
