"""The `edit` tool, run inside the workspace by the agent's bash session (stdin: the tool's input).

The same behaviour and texts as the release's plugin (cwm/rl/swerl/plugins/edit.py): one
SEARCH/REPLACE block, the search text must occur exactly once (checked with a "\\n" prefix, so a
match starts at a line start), and the feedback shows the edited lines with 8 lines around them.
Standalone on purpose: it runs with the workspace's Python, outside the cwm package.
"""

import os
import re
import sys

BLOCK = re.compile(r"(.*)\n<<<<<<< SEARCH\n([\s\S]*?)\n=======\n([\s\S]*?)\n>>>>>>> REPLACE")
PARSE_ERROR = """Failed to parse the edit tool call. Make sure it has the following format:

<tool: edit>
[path]
<<<<<<< SEARCH
[search_lines]
=======
[replacement_lines]
>>>>>>> REPLACE
</tool>"""
SNIPPET_LINES = 8


def starts(text, needle):
    """Every index where needle starts in text (overlapping ones too)."""
    found, at = [], text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def edit(command):
    blocks = BLOCK.findall(command)
    if not blocks:
        return False, PARSE_ERROR
    if len(blocks) > 1:
        return False, f"Only one search/replace block is allowed. Got: {len(blocks)}."
    path, search, replacement = blocks[0]
    if not os.path.exists(path):
        return False, f"The path {path} does not exist. Please provide a valid path."
    with open(path) as f:
        content = "\n" + f.read()
    search = "\n" + search
    hits = starts(content, search)
    if not hits:
        message = f"No replacement was performed, the search lines did not appear verbatim in {path}."
        first_line = search[1:].split("\n", 1)[0]
        if first_line.lstrip() in content:
            message += (" The search lines must exactly match one or more consecutive lines from the file, "
                        "with indentations preserved.")
        return False, message
    if len(hits) > 1:
        lines = [n + 1 for n, at in enumerate(starts(content, "\n")) if content.startswith(search, at)]
        return False, (f"No replacement was performed. Multiple occurrences of the search text in lines {lines} of "
                       f"{path}. Please ensure it is unique.")
    replacement = "\n" + replacement
    new_content = content.replace(search, replacement)[1:]
    with open(path, "w") as f:
        f.write(new_content)
    line = content.count("\n", 0, hits[0]) + 1
    total = new_content.count("\n") + 1
    first = max(1, line - SNIPPET_LINES)
    last = line + SNIPPET_LINES + replacement.count("\n") - 1
    snippet = "\n".join(f"{i:6}\t{text}" for i, text in enumerate(new_content.split("\n")[first - 1:last], start=first))
    return True, (f"File {path} has been successfully updated at line {line} and now contains {total} lines. "
                  f"The surrounding lines after the edit are shown below:\n{snippet}\n"
                  "Review the changes and make sure they are as expected.")


if __name__ == "__main__":
    ok, feedback = edit(sys.stdin.read())
    print(feedback)
    sys.exit(0 if ok else 1)
