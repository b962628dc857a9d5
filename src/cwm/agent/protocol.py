"""The release's SWE agent protocol, byte for byte: prompts, reasoning check, tool-call parse,
observations and format-error messages.

Every text here is the release's (facebookresearch/cwm): a model trained on those bytes is off its
distribution with any other. Sources: `cwm/rl/envs/envs/swerl_tool.py` (system environment, the
issue prompt, observation and budget blocks, submission feedback, the episode's limits),
`cwm/rl/envs/prompts.py` (system prompt and `<think>` tags, here through
`cwm.tokenizer.prompts.system_prompt`), `cwm/rl/swerl/default_tools.py` (the tool-call parse),
`cwm/rl/envs/dialog.py` + `cwm/rl/envs/utils/dialogs.py` (truncation with `[...]`).

One episode, as the release runs it (`swerl_tool_env:think_tag:modal:eval`):

    [system_prompt(), user_prompt(issue)] + assistant turn opened with "<think>\\n"
    each reply: answer = reasoning_answer(reply)        # exactly one </think>, else FormatError
                name, args = parse_tool_call(answer)     # exactly one <tool: name>...</tool>
                feedback = cwm.agent.tools.execute(ws, name, args).feedback
                message  = {"role": "tool", "name": name, "content": observation(...)}
    a FormatError / NoSuchToolError becomes a *user* message: format_error_message(e)

Decisions, where the release's files say more than AGENT_SPEC.md:
- Tool outputs keep their trailing newline. The release's session strips one only when asked
  (session.py `sanitize`), and its backend asks not to (modal_backend.py `_run_bash`:
  `sanitize=False`), so the model saw "hello\n" in `<output>\nhello\n\n</output>`, and a submitted
  patch keeps its last newline (a stripped patch would not apply).
- The first user message is cut as a whole (swerl_tool.py truncates the formatted message, from
  the left), so an issue past 8192 tokens loses the prompt's first lines before the issue's.
- Token counts (budget, truncation) encode the role, "\n\n" and the body apart and add the three
  header/end specials, as the release's CWMInstructTokenizer.encode_message does; with the
  release's tokenizer the numbers are the release's, with another they are that tokenizer's.
"""

from __future__ import annotations

import re
from typing import Protocol

from cwm.tokenizer.prompts import THINK_END, THINK_START
from cwm.tokenizer.prompts import system_prompt as _cwm_system_prompt

# The episode's limits (SWERLConfig in swerl_tool.py).
CONTEXT_SIZE = 131072  # total tokens of the episode: prompt, replies, observations
MAX_TURNS = 128
SESSION_TIMEOUT = 120.0  # seconds a bash command may run before its session is restarted
MAX_PROMPT_TOKENS = 8192  # the first user message, cut from the left
MAX_OBSERVATION_TOKENS = 32768  # a tool result or format-error message, cut from the right
MAX_ACTION_TOKENS = 65536  # one reply
REPO_ROOT = "/testbed"
ABBREV = "[...]"  # marks where a message was cut (dialog.py)
ASSISTANT_PREFIX = THINK_START  # every assistant turn starts with "<think>\n"

# swerl_tool.py: SYSTEM_UBUNTU
SYSTEM_UBUNTU = """
You are working in a linux container. The container session is persistent but will restart when encountering errors or after a {session_timeout} session timeout in each turn. You are also constrained by a {context_size} total context window limit. You can interact with the container through the following tool interface for at most {max_turns} turns. Here are the specifications:

<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single or multi-line.

<tool: edit>
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

<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the specific user request.

REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise continue iterating. You cannot provide a final response before invoking <tool: submit>.
""".strip()

# swerl_tool.py: SYSTEM_UBUNTU_NO_PLUGINS (bash and submit only)
SYSTEM_UBUNTU_NO_PLUGINS = """
You are working in a linux container. The container session is persistent but will restart when encountering errors or after a {session_timeout} session timeout in each turn. You are also constrained by a {context_size} total context window limit. You can interact with the container through the following tool interface for at most {max_turns} turns. Here are the specifications:

<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single or multi-line.

<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the specific user request.

REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise continue iterating. You cannot provide a final response before invoking <tool: submit>.
""".strip()

# swerl_tool.py: USER_ISSUE_SOLVING
USER_ISSUE_SOLVING = """
Solve the following issue by implementing the necessary code changes and submitting a patch file:

<issue_description>
{issue}
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

I've uploaded the corresponding code repository at {repo_root} and installed all the necessary dependencies. Now, the bash session has started, with the current working directory set to the repo root.
""".strip()

# swerl_tool.py: HINT_PROMPT (test_patch_hint; off in the release's eval configs)
HINT_PROMPT = """
Here is a test patch that demonstrates the expected behavior. Your submitted patch needs to pass these tests to be considered correct:

```diff
{test_patch}
```
""".strip()

# swerl_tool.py: FEEDBACK_OUTPUT_PROMPT, BUDGET_NOTICE_TEMPLATE, SUBMISSION_FEEDBACK_PROMPT
FEEDBACK_OUTPUT_PROMPT = """
<output>
{feedback}
</output>
""".strip()

BUDGET_NOTICE_TEMPLATE = """
<budget>
* Remaining turns: {remaining_turns}
* Remaining tokens: {remaining_tokens}
</budget>
""".strip()

SUBMISSION_FEEDBACK_PROMPT = """
The following patch content is marked as your final submission:

<submission>
{pred_patch}
</submission>

Review the patch content and ensure it correctly resolves the issue. If necessary, you can continue refining the patch and submit an updated version.
""".strip()

# default_tools.py
TOOL_CALL_REGEX = r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>"
_TOOL_CALL = re.compile(TOOL_CALL_REGEX, re.DOTALL)


class FormatError(Exception):
    """The reply breaks the format (reasoning end, tool-call tags); shown to the model as
    `FormatError: {message}` in a user message (cwm/rl/swerl/errors.py)."""


class NoSuchToolError(Exception):
    """The reply calls a tool the episode does not offer: `NoSuchToolError: Tool 'x' not found.`"""


class TextTokenizer(Protocol):
    """What the budget and truncation need: cwm.tokenizer.Tokenizer, or any with encode/decode."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def environment(plugins: bool = True, context_size: int = CONTEXT_SIZE, max_turns: int = MAX_TURNS,
                session_timeout: float = SESSION_TIMEOUT) -> str:
    """The system prompt's "# Environment" section: the tools (bash, edit, create, submit; without
    plugins bash and submit) and the episode's limits."""
    template = SYSTEM_UBUNTU if plugins else SYSTEM_UBUNTU_NO_PLUGINS
    return template.format(context_size=context_size, max_turns=max_turns,
                           session_timeout=f"{int(session_timeout)}-second")


def system_prompt(plugins: bool = True, context_size: int = CONTEXT_SIZE, max_turns: int = MAX_TURNS,
                  session_timeout: float = SESSION_TIMEOUT) -> str:
    """The release's agent system prompt: get_cwm_sys_prompt(think=True, use_think_tag=True,
    environment=SYSTEM_UBUNTU...) (the reasoning format, then "# Environment")."""
    return _cwm_system_prompt(reasoning=True,
                              environment=environment(plugins, context_size, max_turns, session_timeout))


def user_prompt(issue: str, tokenizer: TextTokenizer | None = None, repo_root: str = REPO_ROOT,
                max_tokens: int = MAX_PROMPT_TOKENS, test_patch: str | None = None) -> str:
    """The first user message: USER_ISSUE_SOLVING with the issue and the repository's path.

    As the release does, the whole message (header and end token counted) is cut from the left to
    `max_tokens` with `[...]` in front when a `tokenizer` is given (without one, nothing is cut);
    so an overlong issue loses the prompt's opening lines and the issue's start, never the
    instructions at the end. `test_patch`: the release's optional hint, appended to the issue."""
    if test_patch is not None:
        issue = issue.rstrip() + "\n\n" + HINT_PROMPT.format(test_patch=test_patch)
    text = USER_ISSUE_SOLVING.format(issue=issue, repo_root=repo_root)
    return truncate(text, "user", tokenizer, max_tokens, where="left") if tokenizer else text


def message_tokens(body: str, role: str, tokenizer: TextTokenizer) -> int:
    """Tokens of one chat message as the release counts it (CWMInstructTokenizer.encode_message):
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{body}<|eot_id|>, each text encoded alone."""
    return 3 + len(tokenizer.encode(role)) + len(tokenizer.encode("\n\n")) + len(tokenizer.encode(body))


def truncate(body: str, role: str, tokenizer: TextTokenizer, max_tokens: int, where: str = "left") -> str:
    """The release's maybe_truncate_message: if the message passes max_tokens, keep the body's
    last (where="left") or first ("right") tokens that fit with `[...]` before or after them."""
    if message_tokens(body, role, tokenizer) <= max_tokens:
        return body
    ids = tokenizer.encode(body)
    abbrev = tokenizer.encode(ABBREV)
    keep = max(0, max_tokens - (message_tokens(body, role, tokenizer) - len(ids)) - len(abbrev))
    cut = abbrev + ids[len(ids) - keep:] if where == "left" else ids[:keep] + abbrev
    return tokenizer.decode(cut)


def reasoning_answer(reply: str, end: str = THINK_END) -> str:
    """The action part of a reply: the text after its one `</think>`. Raises FormatError unless
    the reply holds exactly one (the reply itself starts inside the "<think>\\n" prefix)."""
    count = reply.count(end)
    if count != 1:
        raise FormatError(f"Expected exactly one thinking end token, got {count}")
    return reply.split(end, 1)[1]


def parse_tool_calls(answer: str, ensure_nonempty_args: bool = True, one_and_only: bool = True) -> list[tuple[str, str]]:
    """[(tool name, arguments)] of `<tool: NAME>\\nARGS\\n</tool>` blocks, with the release's checks
    and FormatError texts (default_tools.parse_tool_calls)."""
    calls: list[tuple[str, str]] = _TOOL_CALL.findall(answer)
    if one_and_only and len(calls) > 1:
        names = ", ".join(name for name, _ in calls)
        raise FormatError(f"Expected one tool call, but found {len(calls)}: {names}. "
                          "Ensure only one <tool:...></tool> block is present in the response.")
    opening, closing = answer.count("<tool:"), answer.count("</tool>")
    if len(calls) != opening or len(calls) != closing:
        raise FormatError(f"Mismatch in tool tag counts: found {len(calls)} tool calls via regex, "
                          f"but counted {opening} opening tags and {closing} closing tags.")
    if not calls:
        raise FormatError("No tool calls found")
    out = []
    for name, args in calls:
        name = name.strip()
        if ensure_nonempty_args and args.strip() == "":
            raise FormatError(f"Tool '{name}' requires non-empty arguments, but received empty or "
                              "whitespace-only input.")
        out.append((name, args))
    return out


def parse_tool_call(answer: str) -> tuple[str, str]:
    """The one (tool name, arguments) of an answer; FormatError otherwise."""
    return parse_tool_calls(answer)[0]


def parse_action(reply: str, think: bool = True) -> tuple[str, str]:
    """reasoning_answer then parse_tool_call, as one step of the release's env does."""
    return parse_tool_call(reasoning_answer(reply) if think else reply)


def format_error_message(error: Exception, tokenizer: TextTokenizer | None = None,
                         max_tokens: int = MAX_OBSERVATION_TOKENS) -> str:
    """The *user* message that answers a FormatError / NoSuchToolError in eval mode:
    "{type}: {message}", cut from the right to max_tokens (with a tokenizer)."""
    text = f"{type(error).__name__}: {error}"
    return truncate(text, "user", tokenizer, max_tokens, where="right") if tokenizer else text


def observation(feedback: str, tool: str, step: int, used_tokens: int, tokenizer: TextTokenizer | None = None,
                context_size: int = CONTEXT_SIZE, max_turns: int = MAX_TURNS,
                max_tokens: int = MAX_OBSERVATION_TOKENS) -> str:
    """The body of the tool message (role "tool: {tool}") after step `step` (1 for the first reply):
    the feedback in <output>, then the <budget> block, cut from the right to max_tokens.

    used_tokens: every token of the episode so far (prompt, replies, earlier observations), as the
    release's state.num_tokens. Remaining tokens subtract an estimate of this message, made as the
    release makes it: the message with the unfilled budget template, at most max_tokens. Without
    a tokenizer the estimate is 0 and nothing is cut."""
    output = FEEDBACK_OUTPUT_PROMPT.format(feedback=feedback)
    estimate = 0
    if tokenizer is not None:
        estimate = min(message_tokens(output + "\n\n" + BUDGET_NOTICE_TEMPLATE, f"tool: {tool}", tokenizer),
                       max_tokens)
    budget = BUDGET_NOTICE_TEMPLATE.format(remaining_turns=max_turns - step,
                                           remaining_tokens=context_size - used_tokens - estimate)
    body = f"{output}\n\n{budget}"
    return truncate(body, f"tool: {tool}", tokenizer, max_tokens, where="right") if tokenizer else body


def submission_feedback(patch: str) -> str:
    """What the model sees after a successful submit (SUBMISSION_FEEDBACK_PROMPT)."""
    return SUBMISSION_FEEDBACK_PROMPT.format(pred_patch=patch)


def ends_episode(answer: str, submitted: bool, strict_format: bool = False) -> bool:
    """After a successful submit, a reply without a valid tool call (one `</think>` checked by the
    caller) is the final response: the episode ends and the last patch is graded. With
    strict_format (the release's training mode) it must hold a markdown "##" heading."""
    return submitted and (not strict_format or "##" in answer)
