# expect: '{"name": "a", "tags": ["x"]}'
import json
from dataclasses import asdict, dataclass


@dataclass
class Item:
    name: str
    tags: list


def main():
    return json.dumps(asdict(Item("a", ["x"])))
