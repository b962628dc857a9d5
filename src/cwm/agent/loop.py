"""The agent loop: one episode of the release's SWE agent, top to bottom.

    trajectory = run_episode(task, policy, workspace, Limits())

As the release's environment runs it (`swerl_tool_env:think_tag:modal:eval`,
cwm/rl/envs/envs/swerl_tool.py; the texts are cwm.agent.protocol's):

1. the chat opens with [system, user]: the system prompt with its `# Environment` section (the
   tools and the limits), the issue prompt; the assistant turn opens with `<think>\\n`;
2. each reply of the policy counts one turn and its tokens; past the token budget, or at the
   last turn, the episode ends there (the reply is not acted on, as in the release);
3. the reply must hold exactly one `</think>` and, after it, exactly one tool call; a reply that
   breaks this gets a *user* message `FormatError: ...` (or `NoSuchToolError: ...`) and the
   episode goes on; but once a patch has been submitted, a reply with one `</think>` and no tool
   call is the final answer: the episode ends;
4. the tool runs in the workspace (cwm.agent.tools); its feedback comes back as a `tool: NAME`
   message, the `<output>` block and the `<budget>` block (turns and tokens left);
5. a successful `submit` records the patch (the last one counts) and shows it back.

Then the patch is graded when the task names tests (FAIL_TO_PASS / PASS_TO_PASS): the workspace
is reset to the task's repository, the patch applied, the task's test command run in the
workspace's sandbox, and its log read with SWE-bench's rules (cwm.agent.swebench).

Decisions (docs/agent.md): the patch is the last *submitted* one, never the workspace's diff
(that is kept in the trajectory as `diff`, for reading); a patch submitted before the budget ran
out is still graded (the release's RL reward is -1 there; `exit_status` tells the two apart).
Tokens are counted with the policy's tokenizer (a model directory's, or the one given to a chat
policy), else the shipped cwm-mini's: an estimate for another model's tokenizer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from cwm.agent import protocol
from cwm.agent.policy import THINK_START, PolicyError
from cwm.agent.trajectory import Trajectory


@dataclass(frozen=True)
class Limits:
    max_turns: int = protocol.MAX_TURNS  # 128
    max_tokens: int = protocol.CONTEXT_SIZE  # 131072: prompt, replies and observations together
    session_timeout: float = protocol.SESSION_TIMEOUT  # seconds per bash command
    plugins: bool = True  # edit and create besides bash and submit
    grade: bool = True  # run the task's tests on the patch
    test_timeout: float = 900.0  # seconds for the task's test command

    def __post_init__(self):
        if self.max_turns < 1 or self.max_tokens < 1 or self.session_timeout <= 0 or self.test_timeout <= 0:
            raise ValueError(f"bad limits {self}: turns and tokens must be >= 1, timeouts > 0")


def run_episode(task, policy: Callable[[list[dict]], str], workspace, limits: Limits = Limits(),
                tokenizer=None, on_message: Callable[[dict], None] | None = None,
                stop: threading.Event | None = None) -> Trajectory:
    """Run one episode of `policy` on `task` in `workspace` (reset by the caller; not closed here).

    task: a cwm.agent.task.Task (problem_statement; FAIL_TO_PASS, PASS_TO_PASS and test_cmd to
    grade). on_message(message) sees each message as it is added (a live view). `stop`, once set,
    ends the episode before its next reply (exit_status "interrupted", not graded)."""
    from cwm.agent.tools import execute

    tok = tokenizer or getattr(policy, "tokenizer", None) or _shipped_tokenizer()
    start = time.monotonic()
    messages: list[dict] = []

    def add(role: str, content: str) -> int:
        message = {"role": role, "content": content}
        messages.append(message)
        if on_message is not None:
            on_message(message)
        return protocol.message_tokens(content, role, tok)

    # The prompt: <|begin_of_text|>, system, user, then the open assistant header and "<think>\n".
    used = 1 + add("system", protocol.system_prompt(limits.plugins, limits.max_tokens, limits.max_turns,
                                                    limits.session_timeout))
    used += add("user", protocol.user_prompt(task.problem_statement, tok))
    used += _open_turn_tokens(tok)

    turn, patch, exit_status, why = 0, "", "", ""
    while not exit_status:
        if stop is not None and stop.is_set():
            exit_status, why = "interrupted", f"stopped before turn {turn + 1}"
            break
        try:
            reply = policy(messages)
        except PolicyError as e:
            exit_status, why = "policy_error", str(e)
            break
        turn += 1
        used += len(tok.encode(reply)) + 1  # the reply and its end-of-turn token
        add("assistant", THINK_START + reply)
        if used > limits.max_tokens:
            exit_status, why = "max_tokens", f"context size exceeded: {used} > {limits.max_tokens}"
            break
        if turn >= limits.max_turns:
            exit_status, why = "max_turns", f"max turns reached ({limits.max_turns})"
            break

        try:
            answer = protocol.reasoning_answer(reply)
        except protocol.FormatError as e:
            used += _user_error(add, e, tok)
            continue
        try:
            name, args = protocol.parse_tool_call(answer)
            result = execute(workspace, name, args, plugins=limits.plugins)
        except (protocol.FormatError, protocol.NoSuchToolError) as e:
            if protocol.ends_episode(answer, submitted=bool(patch)):
                exit_status = "submitted"
                break
            used += _user_error(add, e, tok)
            continue
        except Exception as e:  # the workspace broke (not the agent's doing): end, say why
            exit_status, why = "workspace_error", f"{type(e).__name__}: {e}"
            break

        feedback = result.feedback
        if name == "submit" and result.patch is not None:
            patch = result.patch
        body = protocol.observation(feedback, name, turn, used, tok, limits.max_tokens, limits.max_turns)
        used += add(f"tool: {name}", body) + _open_turn_tokens(tok)

    trajectory = Trajectory(
        instance_id=task.instance_id, messages=messages, exit_status=exit_status, patch=patch, turns=turn,
        tokens=used, policy=getattr(policy, "name", type(policy).__name__), message=why,
    )
    try:
        trajectory.diff = workspace.diff()
    except Exception as e:  # a dead workspace has no diff; the episode's record still stands
        trajectory.message = (trajectory.message + "; " if trajectory.message else "") + f"no diff: {e}"
    if exit_status == "interrupted":
        pass
    elif limits.grade and patch and (task.FAIL_TO_PASS or task.PASS_TO_PASS):
        try:
            trajectory.resolved, trajectory.tests = grade(task, workspace, patch, limits.test_timeout)
        except Exception as e:  # the workspace broke while grading: the episode stays ungraded
            trajectory.message = (trajectory.message + "; " if trajectory.message else "") + f"grading failed: {e}"
    elif limits.grade and (task.FAIL_TO_PASS or task.PASS_TO_PASS):
        trajectory.resolved = False  # nothing submitted: not resolved (SWE-bench: an empty patch fails)
    trajectory.seconds = round(time.monotonic() - start, 3)
    return trajectory


def _user_error(add, error: Exception, tok) -> int:
    """A format error answered as the release's eval mode does: a user message, then a new turn."""
    return add("user", protocol.format_error_message(error, tok)) + _open_turn_tokens(tok)


def _open_turn_tokens(tok) -> int:
    """<|start_header_id|>assistant<|end_header_id|>\\n\\n<think>\\n: what opens each assistant turn."""
    return protocol.message_tokens(THINK_START, "assistant", tok) - 1  # no <|eot_id|> yet


def grade(task, workspace, patch: str, timeout: float) -> tuple[bool, dict]:
    """(resolved, SWE-bench's tests report): the workspace reset to the task's repository, the
    patch applied, the task's test command run there, its log graded by SWE-bench's rules
    (cwm.agent.swebench.grade_log: every FAIL_TO_PASS and PASS_TO_PASS test must pass)."""
    from cwm.agent import swebench

    workspace.reset()
    code, why = workspace.run("git apply --whitespace=nowarn -", timeout=120,
                              input=patch if patch.endswith("\n") else patch + "\n")
    if code != 0:
        return False, {"error": f"the patch does not apply: {why.strip()}"}
    if task.test_patch:  # a SWE-bench instance's tests come with the grading, after the patch
        code, why = workspace.run("git apply --whitespace=nowarn -", timeout=120, input=task.test_patch)
        if code != 0:
            return False, {"error": f"the test patch does not apply: {why.strip()}"}
    _, output = workspace.run(task.test_cmd, timeout=timeout)
    log = f"{swebench.APPLY_PATCH_PASS}\n{swebench.START_TEST_OUTPUT}\n{output}\n{swebench.END_TEST_OUTPUT}\n"
    report = swebench.grade_log(log, task.FAIL_TO_PASS, task.PASS_TO_PASS)
    return report.resolved, report.tests_status


_TOKENIZER = None


def _shipped_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from cwm.models import default_model
        from cwm.tokenizer import load_tokenizer

        _TOKENIZER = load_tokenizer(default_model())
    return _TOKENIZER
