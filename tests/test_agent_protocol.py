"""The release's agent protocol, pinned: every text below is a literal copied from the release's
files (facebookresearch/cwm, the path named beside it), and the tools run on a real sandboxed
workspace."""

import pytest

from cwm.agent import protocol as P
from cwm.agent.tools import TOOLS, execute
from cwm.agent.workspace import Workspace

# cwm/rl/envs/prompts.py: CWM_THINKTAG_SYS_PROMPT with the default description, then ENV_PROMPT;
# cwm/rl/envs/envs/swerl_tool.py: SYSTEM_UBUNTU formatted with context_size=131072, max_turns=128,
# session_timeout="120-second" (SWERLConfig defaults).
RELEASE_SYSTEM_HEAD = """You are a helpful AI assistant. You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response

# Environment

You are working in a linux container. The container session is persistent but will restart when encountering errors or after a 120-second session timeout in each turn. You are also constrained by a 131072 total context window limit. You can interact with the container through the following tool interface for at most 128 turns. Here are the specifications:

<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single or multi-line.

"""
RELEASE_PLUGIN_TOOLS = """<tool: edit>
[path]
<<<<<<< SEARCH
[search_lines]
=======
[replacement_lines]
>>>>>>> REPLACE
</tool>
Replaces [search_lines] from [path] with [replacement_lines], where [path] must exist and [search_lines] must uniquely and exactly match one or more consecutive lines from the original file, including indentations and whitespaces.

<tool: create>
[path]
[content]
</tool>
Creates a new file at [path] with [content], where [path] must not exist, but its parent directory must exist.

"""
RELEASE_SYSTEM_TAIL = """<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the specific user request.

REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise continue iterating. You cannot provide a final response before invoking <tool: submit>."""

# cwm/rl/envs/envs/swerl_tool.py: USER_ISSUE_SOLVING with repo_root="/testbed"
RELEASE_USER_BEFORE = """Solve the following issue by implementing the necessary code changes and submitting a patch file:

<issue_description>
"""
RELEASE_USER_AFTER = """
</issue_description>

The [result] argument of <tool: submit> should be the path to a patch file that resolves the issue. This file must be accessible from the current working directory and should contain the end-to-end code changes in git diff format. You can refine and submit your patch multiple times as needed to ensure correctness.

Once you've submitted at least once and are confident in your solution, provide a final response summarizing your work using the following markdown template as a guide. Feel free to adjust the sections as necessary to fit the specific issue and solution:

```markdown
## Issue Summary

Brief description of the issue (bug/feature/enhancement), affected component, and expected outcome.

## Investigation and Reproduction

Steps taken to understand and reproduce the issue: commands executed, test cases run, error messages, debugging approach, and root cause analysis. For features, describe requirement analysis and codebase exploration.

## Solution and Code Changes

High-level approach and rationale for the chosen solution. Specific modifications by file/component, including new functions, classes, or architectural decisions. Explain how changes work together if multiple files are involved.

## Testing and Verification

Description of how you ensure the patch fully resolves the issue, including new tests added (or test changes made) to verify correctness, how you ran existing tests to prevent regressions, and how comprehensive your testing process is (e.g., what edge cases you covered, how you validated correctness across different scenarios).
```

Your primary objective is to ensure patch correctness above all else - thoroughly explore the codebase, think hard, and leverage significant execution to verify correctness by writing comprehensive tests to validate your solution and running existing tests to prevent regressions. Only submit when you are genuinely confident in your patch's correctness.

I've uploaded the corresponding code repository at /testbed and installed all the necessary dependencies. Now, the bash session has started, with the current working directory set to the repo root."""


def test_system_prompt_is_the_release_text():
    assert P.system_prompt() == RELEASE_SYSTEM_HEAD + RELEASE_PLUGIN_TOOLS + RELEASE_SYSTEM_TAIL


def test_system_prompt_without_plugins_offers_bash_and_submit_only():
    # swerl_tool.py: SYSTEM_UBUNTU_NO_PLUGINS
    assert P.system_prompt(plugins=False) == RELEASE_SYSTEM_HEAD + RELEASE_SYSTEM_TAIL
    # the limits are the episode's
    assert "after a 60-second session timeout" in P.system_prompt(session_timeout=60.0)
    assert "at most 10 turns" in P.system_prompt(max_turns=10)


def test_user_prompt_is_the_release_text():
    assert P.user_prompt("Fix add().") == RELEASE_USER_BEFORE + "Fix add()." + RELEASE_USER_AFTER
    assert P.user_prompt("x", repo_root="/repo").endswith("repository at /repo and installed all the necessary "
                                                          "dependencies. Now, the bash session has started, with "
                                                          "the current working directory set to the repo root.")
    # swerl_tool.py: HINT_PROMPT appended to the issue after a blank line
    hinted = P.user_prompt("Fix add().  \n", test_patch="diff --git a/t b/t")
    assert ("<issue_description>\nFix add().\n\nHere is a test patch that demonstrates the expected behavior. Your "
            "submitted patch needs to pass these tests to be considered correct:\n\n```diff\ndiff --git a/t b/t\n"
            "```\n</issue_description>") in hinted


def test_a_long_user_prompt_is_cut_from_the_left_with_the_release_marker(tok):
    issue = "\n".join(f"line {i}: the parser drops the last token" for i in range(4000))
    full = P.user_prompt(issue)
    cut = P.user_prompt(issue, tokenizer=tok, max_tokens=2000)
    assert cut.startswith("[...]") and cut.endswith(RELEASE_USER_AFTER)
    assert P.message_tokens(cut, "user", tok) <= 2000
    assert P.message_tokens(cut, "user", tok) >= 1990  # as much as fits is kept
    assert full.endswith(cut[len("[...]"):])  # the end of the message, whole
    assert P.user_prompt("short", tokenizer=tok) == P.user_prompt("short")  # under the limit: untouched


def test_message_tokens_counts_the_header_and_end_as_the_release_encodes_them(tok):
    # <|start_header_id|>user<|end_header_id|>\n\n{body}<|eot_id|>: 3 specials + role + "\n\n" + body
    ids, _ = __import__("cwm.tokenizer.prompts", fromlist=["chat_ids"]).chat_ids(
        tok, [{"role": "user", "content": "hello world"}], add_generation_prompt=False)
    assert P.message_tokens("hello world", "user", tok) == len(ids) - 1  # less <|begin_of_text|>


def test_one_think_end_is_required():
    assert P.reasoning_answer("I look.\n</think>\n<tool: bash>\nls\n</tool>") == "\n<tool: bash>\nls\n</tool>"
    # swerl_tool.py: FormatError(f"Expected exactly one thinking end token, got {num_ending_tokens}")
    for reply, n in [("no end", 0), ("a</think>b</think>c", 2)]:
        with pytest.raises(P.FormatError) as e:
            P.reasoning_answer(reply)
        assert str(e.value) == f"Expected exactly one thinking end token, got {n}"


def test_tool_call_parse_and_its_errors():
    # default_tools.py: TOOL_CALL_REGEX and parse_tool_calls' messages
    assert P.TOOL_CALL_REGEX == r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>"
    assert P.parse_tool_call("Let me look.\n<tool: bash>\nls -la\ncat x\n</tool>\n") == ("bash", "ls -la\ncat x")
    assert P.parse_action("think</think>\n<tool: submit>\np.diff\n</tool>") == ("submit", "p.diff")
    cases = {
        "<tool: bash>\nls\n</tool>\n<tool: edit>\nx\n</tool>":
            "Expected one tool call, but found 2: bash, edit. Ensure only one <tool:...></tool> block is present "
            "in the response.",
        "<tool: bash>\nls\n</tool> and </tool>":
            "Mismatch in tool tag counts: found 1 tool calls via regex, but counted 1 opening tags and 2 closing tags.",
        "<tool: bash>ls</tool>":
            "Mismatch in tool tag counts: found 0 tool calls via regex, but counted 1 opening tags and 1 closing tags.",
        "Just an answer.": "No tool calls found",
        "<tool: bash>\n  \n</tool>":
            "Tool 'bash' requires non-empty arguments, but received empty or whitespace-only input.",
    }
    for answer, message in cases.items():
        with pytest.raises(P.FormatError) as e:
            P.parse_tool_call(answer)
        assert str(e.value) == message, answer


def test_format_errors_become_user_messages(tok):
    # swerl_tool.py: feedback = f"{type(e).__name__}: {str(e)}" in a user message
    assert P.format_error_message(P.FormatError("No tool calls found")) == "FormatError: No tool calls found"
    assert P.format_error_message(P.NoSuchToolError("Tool 'python' not found.")) == \
        "NoSuchToolError: Tool 'python' not found."
    long = P.format_error_message(P.FormatError("x " * 5000), tokenizer=tok, max_tokens=100)
    assert long.startswith("FormatError: x x") and long.endswith("[...]")


def test_observation_has_the_output_and_budget_blocks(tok):
    # swerl_tool.py: FEEDBACK_OUTPUT_PROMPT + "\n\n" + BUDGET_NOTICE_TEMPLATE
    assert P.observation("hello", "bash", step=1, used_tokens=1000) == (
        "<output>\nhello\n</output>\n\n<budget>\n* Remaining turns: 127\n* Remaining tokens: 130072\n</budget>")
    # with a tokenizer the release subtracts its estimate of this message, made with the unfilled template
    body = P.observation("hello", "bash", step=3, used_tokens=1000, tokenizer=tok)
    estimate = P.message_tokens("<output>\nhello\n</output>\n\n<budget>\n* Remaining turns: {remaining_turns}\n"
                                "* Remaining tokens: {remaining_tokens}\n</budget>", "tool: bash", tok)
    assert body.endswith(f"* Remaining turns: 125\n* Remaining tokens: {131072 - 1000 - estimate}\n</budget>")
    # cut from the right at max_tokens (the budget goes first, as in the release)
    cut = P.observation("y " * 5000, "bash", step=1, used_tokens=0, tokenizer=tok, max_tokens=300)
    assert cut.startswith("<output>\ny y") and cut.endswith("[...]")
    assert P.message_tokens(cut, "tool: bash", tok) <= 300


def test_submission_feedback_is_the_release_text():
    # swerl_tool.py: SUBMISSION_FEEDBACK_PROMPT
    assert P.submission_feedback("diff --git a/x b/x\n") == (
        "The following patch content is marked as your final submission:\n\n<submission>\ndiff --git a/x b/x\n\n"
        "</submission>\n\nReview the patch content and ensure it correctly resolves the issue. If necessary, you "
        "can continue refining the patch and submit an updated version.")


def test_limits_are_the_releases():
    # swerl_tool.py: SWERLConfig
    assert (P.CONTEXT_SIZE, P.MAX_TURNS, P.SESSION_TIMEOUT) == (131072, 128, 120.0)
    assert (P.MAX_PROMPT_TOKENS, P.MAX_OBSERVATION_TOKENS, P.MAX_ACTION_TOKENS) == (8192, 32768, 65536)
    assert P.ASSISTANT_PREFIX == "<think>\n" and P.REPO_ROOT == "/testbed"


# ---- the tools, on a real workspace --------------------------------------------------------------

SOURCE = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    src = tmp_path_factory.mktemp("repo")
    (src / "calc.py").write_text(SOURCE)
    (src / "long.py").write_text("".join(f"x{i} = {i}\n" for i in range(1, 31)))
    with Workspace.create(src) as w:
        yield w


@pytest.fixture
def fresh(ws):
    ws.reset()
    return ws


def block(path, search, replace):
    return f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def test_edit_success_shows_the_lines_around_the_edit(fresh):
    # plugins/edit.py: the success message, snippet lines f"{i:6}\t{line}", 8 lines around
    r = execute(fresh, "edit", block("long.py", "x15 = 15\nx16 = 16", "x15 = 150\nx16 = 160\nx16b = 161"))
    assert r.success
    snippet = "\n".join(f"{i:6}\t{line}" for i, line in enumerate(
        [f"x{i} = {i}" for i in range(7, 15)] + ["x15 = 150", "x16 = 160", "x16b = 161"]
        + [f"x{i} = {i}" for i in range(17, 25)], start=7))
    assert r.feedback == ("File long.py has been successfully updated at line 15 and now contains 32 lines. "
                          f"The surrounding lines after the edit are shown below:\n{snippet}\n"
                          "Review the changes and make sure they are as expected.\n")
    assert fresh.read_text("long.py").splitlines()[14:17] == ["x15 = 150", "x16 = 160", "x16b = 161"]


def test_edit_errors_are_the_release_texts(fresh):
    # plugins/edit.py: PARSE_ERROR and the error messages (printed: one newline after each)
    cases = [
        ("calc.py\nno block here",
         ("Failed to parse the edit tool call. Make sure it has the following format:\n\n<tool: edit>\n[path]\n"
          "<<<<<<< SEARCH\n[search_lines]\n=======\n[replacement_lines]\n>>>>>>> REPLACE\n</tool>\n")),
        (block("calc.py", "a", "b") + "\n" + block("calc.py", "c", "d"),
         "Only one search/replace block is allowed. Got: 2.\n"),
        (block("missing.py", "a", "b"), "The path missing.py does not exist. Please provide a valid path.\n"),
        (block("calc.py", "    return a * b", "x"),
         "No replacement was performed, the search lines did not appear verbatim in calc.py.\n"),
        (block("calc.py", "  return a - b", "x"),
         ("No replacement was performed, the search lines did not appear verbatim in calc.py. The search lines must "
          "exactly match one or more consecutive lines from the file, with indentations preserved.\n")),
        (block("calc.py", "    return a - b", "x"),
         ("No replacement was performed. Multiple occurrences of the search text in lines [2, 6] of calc.py. "
          "Please ensure it is unique.\n")),
        # the "\n" prefix: a match must start at a line start ("eturn" is inside a line)
        (block("calc.py", "eturn a - b\n\n\ndef sub", "x"),
         ("No replacement was performed, the search lines did not appear verbatim in calc.py. The search lines must "
          "exactly match one or more consecutive lines from the file, with indentations preserved.\n")),
    ]
    for args, feedback in cases:
        r = execute(fresh, "edit", args)
        assert (r.success, r.feedback) == (False, feedback), args
    assert fresh.read_text("calc.py") == SOURCE


def test_create_texts(fresh):
    # plugins/create.py
    r = execute(fresh, "create", "pkg_new.py\nimport os\n\nprint(os.sep)")
    assert (r.success, r.feedback) == (True, "File created successfully at: pkg_new.py (3 lines).\n")
    assert fresh.read_text("pkg_new.py") == "import os\n\nprint(os.sep)"
    assert execute(fresh, "create", "calc.py\nx").feedback == \
        "calc.py already exists. Cannot create a new file at an existing path.\n"
    assert execute(fresh, "create", "nodir/x.py\nx").feedback == \
        "File creation failed. The parent directory /testbed/nodir does not exist.\n"
    # relative to the session's current directory, as the release's plugins run in it
    fresh.bash("mkdir sub && cd sub")
    assert execute(fresh, "create", "here.py").feedback == "File created successfully at: here.py (1 lines).\n"
    assert fresh.exists("sub/here.py")


def test_submit_texts(fresh):
    # tools.py: submit_diff_file
    fresh.bash("echo '' > empty.diff; echo 'not a diff' > bad.diff; sed -i s/a-b/a+b/ calc.py")
    assert execute(fresh, "submit", "nope.diff").feedback == \
        "Failed to submit nope.diff. Make sure it exists and is readable."
    assert execute(fresh, "submit", "empty.diff").feedback == "Failed to submit empty.diff. It is an empty file."
    assert execute(fresh, "submit", "bad.diff").feedback == "Failed to submit bad.diff. It is not a valid diff file."
    execute(fresh, "edit", block("calc.py", "def add(a, b):\n    return a - b", "def add(a, b):\n    return a + b"))
    fresh.bash("git diff > /tmp/fix.diff")
    r = execute(fresh, "submit", "  /tmp/fix.diff \n")
    assert r.success
    assert r.patch == fresh.bash("cat /tmp/fix.diff") and r.patch.startswith("diff --git a/calc.py b/calc.py\n")
    assert r.patch.endswith("+    return a + b\n \n \n def sub(a, b):\n")  # nothing stripped
    assert r.feedback == P.submission_feedback(r.patch)


def test_unknown_tool_and_no_plugins(fresh):
    assert TOOLS == ("bash", "edit", "create", "submit")
    with pytest.raises(P.NoSuchToolError) as e:
        execute(fresh, "python", "print(1)")
    assert str(e.value) == "Tool 'python' not found."  # tools.py: apply_tool
    with pytest.raises(P.NoSuchToolError):
        execute(fresh, "edit", block("calc.py", "a", "b"), plugins=False)


def test_bash_output_is_returned_as_the_session_gives_it(fresh):
    # session.py read with sanitize=False by the release's backend: nothing stripped, stderr merged
    assert execute(fresh, "bash", "echo out; echo err >&2").feedback == "out\nerr\n"
    assert execute(fresh, "bash", "printf abc").feedback == "abc"
    assert execute(fresh, "bash", "false").feedback == ""  # the exit code is not shown
