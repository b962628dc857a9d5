"""CruxEval-O: the benchmark's prompt, answer extraction and scoring (answers run in the sandbox)."""

import json

import pytest

from cwm.backends import Completion, Sampling
from cwm.eval.cruxeval import (
    DEFAULT_DATA,
    check_answer,
    direct_prompt,
    extract_direct_answer,
    load_cruxeval,
    pass_at_k,
    run_cruxeval,
)

DATA = DEFAULT_DATA  # the copy inside the package


def test_loads_the_benchmark():
    items = load_cruxeval(DATA)
    assert len(items) == 800 and items[0]["id"] == "sample_0"
    assert len(load_cruxeval(DATA, limit=3)) == 3


def test_the_benchmark_ships_inside_the_package_with_its_licence():
    assert load_cruxeval() == load_cruxeval(DATA)  # no path: the packaged copy
    assert DATA.parent.name == "data" and DATA.parent.parent.name == "cwm"  # cwm.data: the data layer
    assert "MIT License" in (DATA.parent / "CRUXEVAL_LICENSE").read_text()


def test_a_missing_or_broken_data_file_says_what(tmp_path):
    with pytest.raises(FileNotFoundError, match="packaged copy"):
        load_cruxeval(tmp_path / "nope.jsonl")
    good = {"code": "def f(x):\n    return x", "input": "1", "output": "1", "id": "a"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(good) + "\n[1]\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: not a JSON object"):
        load_cruxeval(tmp_path / "bad.jsonl")


def test_direct_prompt_and_extraction():
    item = load_cruxeval(DATA, limit=1)[0]
    prompt = direct_prompt(item["code"], item["input"])
    assert prompt.endswith(f"{item['code']}\nassert f({item['input']}) == ??\n[/PYTHON]\n[ANSWER]\n")
    assert extract_direct_answer("assert f([1]) == [(4, 1)]\n[/ANSWER]\n[PYTHON]") == "[(4, 1)]"
    assert extract_direct_answer(" 'abc' ") == "'abc'"


def test_scoring_is_semantic_and_rejects_the_call_itself():
    item = load_cruxeval(DATA, limit=1)[0]  # output [(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]
    code, inp, gold = item["code"], item["input"], item["output"]
    assert check_answer(code, inp, gold, gold)
    assert check_answer(code, inp, gold, "[(4,1)]*4 + [(2,3)]*2")  # same value, other spelling
    assert not check_answer(code, inp, gold, "[(4, 1)]")
    assert not check_answer(code, inp, gold, f"f({inp})")  # would pass if run: the benchmark rejects it
    assert not check_answer(code, inp, gold, "")
    assert not check_answer(code, inp, gold, "(")  # a syntax error is a wrong answer, not a crash


class AnsweringModel:
    """Stands in for a capable model (which this machine cannot run): it writes the given answer
    in the benchmark's format, and sees exactly the prompt the runner builds."""

    tokenizer = None

    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def complete(self, prompt, stop=(), sampling=Sampling()):
        self.prompts.append((prompt, tuple(stop), sampling))
        call = prompt.rsplit("assert ", 1)[1].split(" == ??")[0]
        text = f"assert {call} == {self.answers[len(self.prompts) - 1]}\n[/ANSWER]"
        return Completion([], text, "stop")


def test_direct_mode_pass_at_1_and_pass_at_k():
    items = load_cruxeval(DATA, limit=2)
    # Problem 0: both samples right. Problem 1: one of two right (the other copies the call).
    model = AnsweringModel([items[0]["output"], items[0]["output"], items[1]["output"], f"f({items[1]['input']})"])
    results = run_cruxeval(model, items, "direct", samples=2, sampling=Sampling(temperature=0.2, seed=5))
    assert [r["correct"] for r in results["items"]] == [2, 1]
    assert results["aggregates"]["pass@1"] == pytest.approx((1 + 0.5) / 2)
    assert results["aggregates"]["pass@2"] == pytest.approx((1 + pass_at_k(2, 1, 2)) / 2) == 1.0
    assert [p[2].seed for p in model.prompts] == [5, 6, 5, 6] and model.prompts[0][1] == ("\n",)
    json.dumps(results)  # the results are plain JSON
