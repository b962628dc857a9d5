"""Direct-mode output prediction on a trace dataset's programs (the trace ablation's metric).

    items = heldout_items("runs/mini/data/heldout", limit=200)
    direct_accuracy(LocalBackend.from_dir(ckpt), items)   # {"accuracy": ..., "correct": ..., ...}

Each returning program of the dataset becomes a problem: its function and call (a program entered
through main() gives the function main wraps, `cwm.data.pack.io_pair`), asked with the problem part
of CruxEval's direct prompt (`cwm.data.pack.io_prompt`, what an `io` training document starts
with). The greedy answer is the right side of the predicted assertion (`predict`: the prompt goes
on to `assert <call> ==`, and an answer may be at most 8 tokens longer than the real one). It is
right when CruxEval's check passes (`cruxeval.check_answer`: `assert <real output repr> ==
<answer>` after the function, run in the sandbox; an answer that copies the call is wrong).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cwm.data.dataset import rows
from cwm.data.pack import io_pair, io_prompt
from cwm.eval.cruxeval import DIRECT_STOP_LINE, check_answer, extract_direct_answer


def heldout_items(dataset: str | Path, limit: int | None = 200) -> list[dict]:
    """The first `limit` returning programs of a trace dataset, in record order, as
    {id, code, call, output}."""
    items = []
    for row in rows(dataset):
        pair = io_pair(row)
        if pair is not None:
            items.append({"id": row["id"], "code": pair[0], "call": pair[1], "output": pair[2]})
        if limit is not None and len(items) >= limit:
            break
    return items


def is_correct(item: dict, answer: str | None) -> bool:
    """CruxEval's check for a call of any name: a copy of the call is wrong, else the assertion runs."""
    if not answer or item["call"] in answer:
        return False
    return check_answer(item["code"], item["call"], item["output"], answer)


def answer_budget(tok, item: dict) -> int:
    """New tokens allowed for an answer: the real one's tokens and 8 more (a longer answer is not
    the output; the cap keeps a model that never ends its line from costing 100+ tokens a problem)."""
    return len(tok.encode(f" {item['output']}\n")) + 8


def predict(backend, items: list[dict], batch: int = 50) -> list[str]:
    """Greedy answers of a local model (cwm.backends.LocalBackend), `batch` problems at a time.
    The prompt goes on to `assert <call> ==` (the answer's copy of the call is given: what is
    measured is the output), encoded as an io document is; the answer is what the model writes
    up to the end of its line, within `answer_budget` tokens."""
    from cwm.model import generate

    tok = backend.tokenizer
    prompts = [[tok.bos_id, *tok.encode(io_prompt(i["code"], i["call"])), *tok.encode(f"assert {i['call']} ==")] for i in items]
    budgets = [answer_budget(tok, i) for i in items]
    answers = [""] * len(items)
    order = sorted(range(len(items)), key=lambda k: len(prompts[k]))  # similar lengths share a batch
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        with torch.no_grad():
            outs = generate(backend.model, [prompts[k] for k in rows], max(budgets[k] for k in rows), temperature=0.0)
        for k, out in zip(rows, outs):
            text = tok.decode(out[:budgets[k]]).split(DIRECT_STOP_LINE)[0]
            answers[k] = extract_direct_answer(f"assert {items[k]['call']} ==" + text)
    return answers


def direct_accuracy(backend, items: list[dict], answers: list[str] | None = None) -> dict:
    """Greedy direct-mode accuracy over the items (or of given answers: a baseline)."""
    if answers is None:
        answers = predict(backend, items)
    correct = [is_correct(item, answer) for item, answer in zip(items, answers)]
    n = len(items)
    return {"accuracy": sum(correct) / n if n else 0.0, "correct": sum(correct), "problems": n,
            "answers": [{"id": i["id"], "gold": i["output"], "answer": a, "correct": c} for i, a, c in zip(items, answers, correct)]}
