"""Direct-mode output prediction on a trace dataset's programs (the trace ablation's metric).

    items = heldout_items("runs/mini/data/heldout", limit=200)
    direct_accuracy(LocalBackend.from_dir(ckpt), items)   # {"accuracy": ..., "correct": ..., ...}

Each returning program of the dataset becomes a problem: its function and call (a program entered
through main() gives the function main wraps, `cwm.data.pack.io_pair`), asked with CruxEval's
direct prompt (`cwm.data.pack.io_prompt`, the prompt an `io` training document starts with). The
greedy answer is the right side of the predicted assertion; it is right when CruxEval's check
passes (`cruxeval.check_answer`: `assert <real output repr> == <answer>` after the function, run
in the sandbox; an answer that copies the call is wrong).
"""

from __future__ import annotations

from pathlib import Path

from cwm.backends import Sampling
from cwm.data.build import read_manifest, read_shard
from cwm.data.pack import io_pair, io_prompt
from cwm.eval.cruxeval import DIRECT_STOP_LINE, check_answer, extract_direct_answer

MAX_NEW_TOKENS = 80  # an answer is one line: `assert <call> == <output>` is at most 75 tokens on the held-out set


def heldout_items(dataset: str | Path, limit: int | None = 200) -> list[dict]:
    """The first `limit` returning programs of a trace dataset, in record order, as
    {id, code, call, output}."""
    dataset = Path(dataset)
    items = []
    for name in sorted(read_manifest(dataset)["shards"]):
        for row in sorted(read_shard(dataset / name).to_pylist(), key=lambda r: r["index"]):
            pair = io_pair(row)
            if pair is not None:
                items.append({"id": row["id"], "code": pair[0], "call": pair[1], "output": pair[2]})
            if limit is not None and len(items) >= limit:
                return items
    return items


def is_correct(item: dict, answer: str | None) -> bool:
    """CruxEval's check for a call of any name: a copy of the call is wrong, else the assertion runs."""
    if not answer or item["call"] in answer:
        return False
    return check_answer(item["code"], item["call"], item["output"], answer)


def predict(backend, item: dict, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The greedy answer to one problem (the answer line, cut at its end)."""
    prompt = io_prompt(item["code"], item["call"])
    out = backend.complete(prompt, stop=[DIRECT_STOP_LINE], sampling=Sampling(temperature=0.0, max_new_tokens=max_new_tokens))
    return extract_direct_answer(out.text)


def direct_accuracy(backend, items: list[dict], answers: list[str] | None = None) -> dict:
    """Greedy direct-mode accuracy over the items (or of given answers: a baseline)."""
    if answers is None:
        answers = [predict(backend, item) for item in items]
    correct = [is_correct(item, answer) for item, answer in zip(items, answers)]
    n = len(items)
    return {"accuracy": sum(correct) / n if n else 0.0, "correct": sum(correct), "problems": n,
            "answers": [{"id": i["id"], "gold": i["output"], "answer": a, "correct": c} for i, a, c in zip(items, answers, correct)]}
