"""The agent loop end to end: real repositories in the sandboxed workspace, real tests graded,
scripted and model policies, trajectories packed as training data, collect killed and resumed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwm.agent import protocol
from cwm.agent.collect import CollectParams, collect, run_one
from cwm.agent.loop import Limits
from cwm.agent.policy import ChatPolicy, LocalPolicy, PolicyError, ScriptedPolicy, open_policy, oracle_policy
from cwm.agent.task import Task, diff_files, git, materialize, write_tasks
from cwm.agent.trajectory import Trajectory, read_trajectories, sft_records, write_jsonl

CWM = [sys.executable, "-m", "cwm"]
# pytest without the plugins of this environment (hypothesis alone costs seconds to import)
PYTEST = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -p no:cacheprovider"

CALC = '''def add(a, b):
    return a + b


def clamp(x, lo, hi):
    """x limited to [lo, hi]."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
'''
BUGGY = CALC.replace("    if x > hi:\n        return hi\n", "    if x > hi:\n        return lo\n")
TESTS = '''from calc import add, clamp


def test_add():
    assert add(2, 3) == 5


def test_clamp_low():
    assert clamp(-5, 0, 10) == 0


def test_clamp_high():
    assert clamp(50, 0, 10) == 10
'''
ISSUE = "clamp(50, 0, 10) returns 0 instead of 10: values above the range come back as the low bound."


def make_task(root: Path, name: str = "calc-1") -> Task:
    """A real bug-fix task: a pristine directory, the mutation, the gold fix, pytest -rA as the grader."""
    pristine = root / f"{name}-src"
    (pristine / "tests").mkdir(parents=True)
    (pristine / "calc.py").write_text(CALC)
    (pristine / "tests" / "test_calc.py").write_text(TESTS)
    bug = diff_files(pristine, {"calc.py": CALC}, {"calc.py": BUGGY})
    fix = diff_files(pristine, {"calc.py": BUGGY}, {"calc.py": CALC})
    task = Task(instance_id=name, repo="calc", base_commit="", problem_statement=ISSUE, patch=fix,
                FAIL_TO_PASS=["tests/test_calc.py::test_clamp_high"],
                PASS_TO_PASS=["tests/test_calc.py::test_add", "tests/test_calc.py::test_clamp_low"],
                source={"kind": "dir", "path": str(pristine)}, bug_patch=bug,
                test_cmd=f"{PYTEST} -rA tests/test_calc.py")
    task.base_commit = git(materialize(task, root / f"{name}-check", check=False), "rev-parse", "HEAD").strip()
    return task


def fix_by_hand() -> list[str]:
    """The replies of an agent that reads the code, fixes it with edit, checks, and submits."""
    return [
        "Look at the code first.\n</think>\n<tool: bash>\ngrep -n 'return lo' calc.py\n</tool>",
        "The second `return lo` is the bug.\n</think>\n<tool: edit>\ncalc.py\n<<<<<<< SEARCH\n    if x > hi:\n"
        "        return lo\n=======\n    if x > hi:\n        return hi\n>>>>>>> REPLACE\n</tool>",
        f"Run the tests.\n</think>\n<tool: bash>\n{PYTEST} -q tests 2>&1 | tail -1 | cut -d' ' -f1-2\n</tool>",
        "Write the patch.\n</think>\n<tool: bash>\ngit diff > /tmp/fix.patch; wc -l < /tmp/fix.patch\n</tool>",
        "Submit it.\n</think>\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\n## Issue Summary\n\nclamp returned lo above the range; it returns hi now.",
    ]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def mini():
    """The shipped cwm-mini, loaded once for the tests that generate with it."""
    from cwm.backends import LocalBackend
    from cwm.models import default_model

    return LocalBackend.from_dir(default_model())


def test_scripted_fix_resolves_a_real_task(task):
    t = run_one(task, ScriptedPolicy(fix_by_hand()))
    assert (t.exit_status, t.turns, t.resolved) == ("submitted", 6, True), t.message
    assert t.tests["FAIL_TO_PASS"]["success"] == task.FAIL_TO_PASS
    assert t.patch.startswith("diff --git a/calc.py b/calc.py") and "+        return hi" in t.patch
    assert t.patch in t.diff  # the workspace's own diff at the end (with the agent's __pycache__)
    roles = [m["role"] for m in t.messages]
    assert roles == ["system", "user", *["assistant", "tool: bash", "assistant", "tool: edit", "assistant", "tool: bash",
                     "assistant", "tool: bash", "assistant", "tool: submit"], "assistant"]
    assert t.messages[0]["content"] == protocol.system_prompt()
    assert t.messages[1]["content"].startswith(protocol.USER_ISSUE_SOLVING.split("{issue}")[0] + ISSUE)
    assert all(m["content"].startswith("<think>\n") for m in t.messages if m["role"] == "assistant")
    grep = t.messages[3]["content"]
    assert grep.startswith("<output>\n8:        return lo\n10:        return lo\n")
    assert "\n</output>\n\n<budget>\n* Remaining turns: 127\n* Remaining tokens: " in grep
    assert "3 passed" in t.messages[7]["content"]
    submitted = t.messages[11]["content"]
    assert submitted.startswith("<output>\n" + protocol.submission_feedback(t.patch).split("\n<submission>")[0])
    # the budget counts down: turns by one, tokens by what the chat grew
    left = [int(m["content"].rsplit("Remaining tokens: ", 1)[1].split("\n")[0]) for m in t.messages if m["role"].startswith("tool")]
    assert left == sorted(left, reverse=True) and 131072 - left[0] < 4000 and t.tokens < 131072


def test_oracle_resolves_and_a_wrong_fix_does_not(task, tmp_path):
    assert run_one(task, oracle_policy(task)).resolved is True
    wrong = fix_by_hand()
    wrong[1] = wrong[1].replace("        return hi\n>>>>>>> REPLACE", "        return hi - 1\n>>>>>>> REPLACE")
    t = run_one(task, ScriptedPolicy(wrong))
    assert (t.exit_status, t.resolved) == ("submitted", False)
    assert t.tests["FAIL_TO_PASS"]["failure"] == task.FAIL_TO_PASS


def test_format_errors_are_user_messages_and_budgets_end_episodes(task):
    replies = [
        "no end of thought <tool: bash>\nls\n</tool>",  # no </think>
        "a\n</think>\nb\n</think>\n<tool: bash>\nls\n</tool>",  # two
        "ok\n</think>\nI think the answer is 42.",  # no tool call, nothing submitted yet: not an end
        "ok\n</think>\n<tool: python>\nprint(1)\n</tool>",  # no such tool
        "ok\n</think>\n<tool: bash>\nls\n</tool>\n<tool: bash>\npwd\n</tool>",  # two calls
        "ok\n</think>\n<tool: bash>\necho still here\n</tool>",
    ]
    t = run_one(task, ScriptedPolicy(replies), limits=Limits(max_turns=6))
    users = [m["content"] for m in t.messages[2:] if m["role"] == "user"]
    assert users == [
        "FormatError: Expected exactly one thinking end token, got 0",
        "FormatError: Expected exactly one thinking end token, got 2",
        "FormatError: No tool calls found",
        "NoSuchToolError: Tool 'python' not found.",
        "FormatError: Expected one tool call, but found 2: bash, bash. Ensure only one <tool:...></tool> block "
        "is present in the response.",
    ]
    # the sixth reply is the last turn: the episode ends there, the reply not acted on (the release)
    assert (t.exit_status, t.turns, t.messages[-1]["role"]) == ("max_turns", 6, "assistant")
    assert (t.patch, t.resolved) == ("", False)

    t = run_one(task, ScriptedPolicy(fix_by_hand()), limits=Limits(max_tokens=1800))
    assert t.exit_status == "max_tokens" and t.tokens > 1800 and t.resolved is False

    t = run_one(task, ScriptedPolicy(fix_by_hand()[:2]))
    assert (t.exit_status, t.turns) == ("policy_error", 2) and "no reply left" in t.message
    assert t.diff.startswith("diff --git a/calc.py")  # the edit happened; nothing was submitted
    assert t.resolved is False


def test_trajectories_pack_with_the_loss_mask(task, tmp_path):
    from cwm.data.pack import PackInput, pack
    from cwm.data.packed import PackedDataset
    from cwm.models import default_model
    from cwm.tokenizer import load_tokenizer
    from cwm.tokenizer.prompts import chat_ids

    good = run_one(task, ScriptedPolicy(["x\n</think>\nnot a call", *fix_by_hand()]))
    assert good.resolved and good.messages[3] == {"role": "user", "content": "FormatError: No tool calls found"}
    bad = run_one(task, ScriptedPolicy(fix_by_hand()[:1]))
    records = sft_records([good, good, bad])  # deduplicated; the unresolved one left out
    assert len(records) == 1 and records[0]["instance_id"] == task.instance_id
    weights = [(m["role"], m["weight"]) for m in records[0]["messages"]]
    assert weights[:6] == [("system", 0), ("user", 0), ("assistant", 0), ("user", 0), ("assistant", 1), ("tool: bash", 0)]
    assert len(sft_records([good, bad], resolved_only=False)) == 2
    learned = sft_records([good], observations="bash")[0]["messages"]
    assert {m["role"]: m["weight"] for m in learned if m["role"].startswith("tool")} == {
        "tool: bash": 1, "tool: edit": 0, "tool: submit": 0}

    tok = load_tokenizer(default_model())
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, records)
    meta = pack([PackInput.parse(f"agent={path}")], tok, tmp_path / "packed", seq_len=8192)
    assert meta["documents"] == {"agent": 1}
    ids, mask = chat_ids(tok, records[0]["messages"], add_generation_prompt=False)
    data = PackedDataset(tmp_path / "packed")
    row = data[0]
    assert list(row["tokens"][: len(ids)]) == ids and list(row["loss_mask"][: len(ids)]) == mask
    # learned: exactly the good assistant turns' tokens (with their <|eot_id|>), nothing else
    text = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "## Issue Summary" in text and "git diff > /tmp/fix.patch" in text
    assert "not a call" not in text and "<budget>" not in text and "Solve the following issue" not in text


def test_local_model_goes_through_the_loop(task, mini):
    """The shipped cwm-mini (2048-token context, trained on traces) writes replies; it solves
    nothing, but every reply is checked, answered and counted, and a seed repeats an episode."""
    policy = LocalPolicy(mini, max_new_tokens=24, temperature=1.0, seed=0)
    t = run_one(task, policy, limits=Limits(max_turns=2))
    assert t.exit_status == "max_turns" and t.turns == 2 and t.resolved is False
    assistant = [m for m in t.messages if m["role"] == "assistant"]
    assert len(assistant) == 2 and all(len(m["content"]) > len("<think>\n") for m in assistant)
    # a reply of an untrained agent is a format error: answered as the release does
    assert t.messages[3]["role"] == "user" and t.messages[3]["content"].startswith("FormatError: ")
    policy = LocalPolicy(mini, max_new_tokens=24, temperature=1.0, seed=0)
    assert policy(t.messages[:2]) == t.messages[2]["content"].removeprefix("<think>\n")


def test_chat_policy_against_a_loopback_server(task):
    """ChatPolicy sends the chat as docs/serve.md says and joins a split reply back."""
    import threading

    import uvicorn
    from fastapi import FastAPI, Request

    from conftest import free_port, wait_until_healthy

    script = iter(["I keep thinking", *fix_by_hand()])  # first a thought never closed
    app, received = FastAPI(), []

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        received.append(body)
        reasoning, _, content = next(script).partition("\n</think>\n")  # as the servers split it
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                      "reasoning_content": reasoning}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}")
        t = run_one(task, ChatPolicy(f"http://127.0.0.1:{port}", seed=3))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert (t.exit_status, t.resolved) == ("submitted", True)
    last = received[-1]
    assert last["reasoning"] == {"enabled": True} and last["seed"] == 3 and "tools" not in last
    roles = [m["role"] for m in last["messages"]]
    assert roles[:6] == ["system", "user", "assistant", "user", "assistant", "tool"]
    # all reasoning, no content: no `</think>` is made up for it
    assert last["messages"][3]["content"] == "FormatError: Expected exactly one thinking end token, got 0"
    tool = last["messages"][5]
    assert tool["name"] == "bash" and tool["tool_call_id"].startswith("bash-") and len(tool["tool_call_id"]) == 37
    assert last["messages"][4]["content"] == "<think>\n" + fix_by_hand()[0]  # the whole text the model wrote

    with pytest.raises(PolicyError, match="cannot reach"):
        ChatPolicy(f"http://127.0.0.1:{free_port()}")([{"role": "user", "content": "hi"}])


def test_collect_resumes_after_kill_9(tmp_path):
    """Four episodes in two workers, killed with SIGKILL midway, rerun: every episode once, and the
    same records as an uninterrupted run."""
    tasks = [make_task(tmp_path, f"calc-{i}") for i in range(2)]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    slow = fix_by_hand()
    slow[0] = slow[0].replace("grep -n", "sleep 0.7; grep -n")
    (tmp_path / "script.json").write_text(json.dumps(slow))
    cmd = [*CWM, "agent", "collect", "--tasks", str(tmp_path / "tasks.jsonl"), "--policy", str(tmp_path / "script.json"),
           "--attempts", "2", "--workers", "2", "--sft", str(tmp_path / "sft.jsonl")]
    killed = subprocess.Popen([*cmd, "--out", str(tmp_path / "a")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    episodes = tmp_path / "a" / "episodes"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(episodes.glob("0*.json"))) < 2:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = len(list(episodes.glob("0*.json")))
    assert 2 <= before < 4 and not (tmp_path / "a" / "trajectories.jsonl").exists()

    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == "resolved: 4/4"
    ran = [line for line in resumed.stderr.splitlines() if line.startswith("[")]
    assert len(ran) == 4 - before  # only the missing episodes ran
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    def essence(path):
        return [(t.instance_id, t.messages, t.patch, t.resolved, t.exit_status) for t in read_trajectories(path)]

    a, b = essence(tmp_path / "a" / "trajectories.jsonl"), essence(tmp_path / "b" / "trajectories.jsonl")
    assert a == b and [x[0] for x in a] == ["calc-0", "calc-0", "calc-1", "calc-1"]
    # the four chats are the same text (the tasks differ in name only): one SFT record
    assert len((tmp_path / "sft.jsonl").read_text().splitlines()) == 1

    other = subprocess.run([*cmd[:-2], "--attempts", "3", "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert other.returncode == 2 and "other parameters" in other.stderr


def test_cli_run_and_its_errors(task, tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", [task])
    (tmp_path / "script.json").write_text(json.dumps(fix_by_hand()))
    out = tmp_path / "t.jsonl"
    res = subprocess.run([*CWM, "agent", "run", "--task", str(tmp_path / "tasks.jsonl"), "--policy", "oracle",
                          "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "resolved: true"
    [t] = read_trajectories(out)
    assert t.policy == "oracle" and t.resolved

    # a repository and an issue, no tests: ungraded; the messages stream to stderr
    repo = Path(task.source["path"]).with_name(f"{task.instance_id}-check")  # the buggy tree
    res = subprocess.run([*CWM, "agent", "run", "--repo", str(repo), "--issue", ISSUE, "--policy",
                          str(tmp_path / "script.json"), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "not graded" and "--- tool: edit ---" in res.stderr
    assert read_trajectories(out)[0].patch.startswith("diff --git")

    for args, words in [
        (["--policy", "oracle"], "give --task FILE"),
        (["--repo", str(repo), "--policy", "oracle", "--issue", "x"], "the oracle policy needs one"),
        (["--task", str(tmp_path / "none.jsonl"), "--policy", "oracle"], "not found"),
        (["--task", str(tmp_path / "tasks.jsonl"), "--policy", str(tmp_path / "nothing")], "not `oracle`"),
        (["--task", str(tmp_path / "tasks.jsonl"), "--policy", "oracle", "--max-turns", "0"], "bad limits"),
    ]:
        res = subprocess.run([*CWM, "agent", "run", *args], capture_output=True, text=True)
        assert res.returncode == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)


def test_open_policy_reads_scripts_and_trajectories(task, tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["a\n</think>\nb"]))
    assert open_policy(str(tmp_path / "list.json"))([]) == "a\n</think>\nb"
    t = run_one(task, ScriptedPolicy(fix_by_hand()))
    write_jsonl(tmp_path / "traj.jsonl", [t.to_json()])
    replay = open_policy(str(tmp_path / "traj.jsonl"))
    assert list(replay.replies) == fix_by_hand()  # a trajectory replays its assistant turns
    assert Trajectory.from_json(json.loads(json.dumps(t.to_json()))) == t
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PolicyError, match="not a script"):
        open_policy(str(tmp_path / "bad.json"))


def test_collect_does_not_save_episodes_without_replies(task, tmp_path):
    """An episode the policy could not answer (a server down) is not recorded as done: a rerun retries it."""
    from cwm.agent.collect import CollectError

    (tmp_path / "short.json").write_text(json.dumps(fix_by_hand()[:1]))
    with pytest.raises(CollectError, match="got no reply from the policy.*rerun the same command"):
        collect([task], tmp_path / "out", CollectParams(policy=str(tmp_path / "short.json"), limits=Limits(grade=False)))
    assert list((tmp_path / "out" / "episodes").iterdir()) == []
    assert not (tmp_path / "out" / "trajectories.jsonl").exists()


def test_chat_policy_through_cwm_serve(task, mini):
    """The project's own chat endpoint serving the shipped cwm-mini: the mechanics, end to end."""
    from conftest import serving

    with serving(mini, model_name="cwm-mini") as url:
        t = run_one(task, ChatPolicy(url, max_tokens=24, temperature=1.0, seed=0), limits=Limits(max_turns=2))
    assert (t.exit_status, t.turns, t.resolved) == ("max_turns", 2, False), t.message
    replies = [m["content"] for m in t.messages if m["role"] == "assistant"]
    assert len(replies) == 2 and all(r.startswith("<think>\n") and len(r) > len("<think>\n") for r in replies)


def test_collect_ctrl_c_ends_running_episodes_at_their_next_turn(task, tmp_path):
    """Ctrl-C: the episodes running end before their next reply (not saved), and collect leaves."""
    write_tasks(tmp_path / "tasks.jsonl", [task])
    (tmp_path / "slow.json").write_text(json.dumps(["wait\n</think>\n<tool: bash>\nsleep 4\n</tool>"] * 10))
    proc = subprocess.Popen([*CWM, "agent", "collect", "--tasks", str(tmp_path / "tasks.jsonl"), "--policy",
                             str(tmp_path / "slow.json"), "--attempts", "2", "--workers", "2", "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # the episodes are in their first sleeps by now (ten of them would take 40 s)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "cwm agent: interrupted", err
    assert time.monotonic() - start < 30
    assert list((tmp_path / "out" / "episodes").glob("*.json")) == []
