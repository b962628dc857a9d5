"""The `create` tool, run inside the workspace by the agent's bash session (stdin: the tool's input
through a here-document, so one trailing newline is dropped). The same behaviour and texts as the
release's plugin (cwm/rl/swerl/plugins/create.py): the first line is the path, the rest the content;
an existing path is refused. Standalone on purpose: it runs with the workspace's Python.
"""

import os
import sys


def create(command):
    path, _, content = command.partition("\n")
    if os.path.exists(path):
        return False, f"{path} already exists. Cannot create a new file at an existing path."
    if path == "":
        return False, "Path is empty. Please provide a valid path."
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        return False, f"File creation failed. The parent directory {parent} does not exist."
    with open(path, "w") as f:
        f.write(content)
    lines = content.count("\n") + 1
    return True, f"File created successfully at: {path} ({lines} lines)."


if __name__ == "__main__":
    command = sys.stdin.read()
    command = command.removesuffix("\n")
    ok, feedback = create(command)
    print(feedback)
    sys.exit(0 if ok else 1)
