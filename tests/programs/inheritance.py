# expect: ['C', 'A', 'B', 'Base']
class Base:
    def names(self):
        return ["Base"]


class A(Base):
    def names(self):
        return ["A"] + super().names()


class B(Base):
    def names(self):
        return ["B"] + super().names()


class C(A, B):
    def names(self):
        return ["C"] + super().names()


def main():
    return C().names()
