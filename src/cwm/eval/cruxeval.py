"""CruxEval-O: predict the output of a short function on a given input.

Scored as the benchmark scores it (facebookresearch/cruxeval, evaluation/evaluate_generations.py):
an answer containing the call `f(<input>)` itself is rejected; otherwise
`{code}\\nassert {gold} == {answer}` runs (here in the sandbox) and passes or fails. pass@k uses
the unbiased estimator from the Codex paper.

Two ways to get an answer from a model:
  direct  the benchmark's own few-shot prompt; the answer is the right side of the predicted assertion
  trace   the context is the code plus `def main():  # << START_OF_TRACE` returning `f(<input>)`;
          main's call frame is given, the model predicts the trace, the answer is main's return value
"""

from __future__ import annotations

import numpy as np

# The benchmark's problems and its direct prompt live in the data layer (the data pipeline
# decontaminates against them and packs `io` documents in the prompt's format).
from cwm.data.evalsets import CRUXEVAL as DEFAULT_DATA  # noqa: F401  (eval's API too)
from cwm.data.evalsets import DIRECT_STOP, direct_prompt
from cwm.data.evalsets import load_cruxeval as load_cruxeval  # eval's API too (`as`: re-exported)

DIRECT_STOP_LINE = "\n"  # the end of the answer's line (before [/ANSWER])


def extract_direct_answer(generation: str) -> str:
    """The right side of `assert f(...) == ANSWER`, cut at [/ANSWER] (as the benchmark does)."""
    answer = generation.split(DIRECT_STOP)[0].strip()
    if "==" in answer:
        answer = answer.split("==", 1)[1].strip()
    return answer


def trace_context(code: str, input: str) -> str:
    """The program whose trace answers the problem: main() returns f(<input>)."""
    from cwm.tokenizer.tracetext import entry_context

    return entry_context(code, f"f({input})")


def check_answer(code: str, input: str, gold: str, answer: str | None, timeout_s: float = 3.0) -> bool:
    """The benchmark's check: reject a copy of the call, else run the assertion in the sandbox."""
    if not answer or f"f({input})" in answer:
        return False
    from cwm.sandbox import Limits, run_function  # the model's answer is untrusted code

    program = f"{code}\nassert {gold} == {answer}\n"
    return run_function(_exec_program, program, limits=Limits(timeout=timeout_s)).ok


def _exec_program(program: str) -> None:
    exec(compile(program, "<cruxeval>", "exec"), {"__name__": "__main__"})


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is right) from n samples with c right."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def answer_by_trace(backend, item: dict, sampling, constrain: bool = False) -> tuple[str | None, dict]:
    """Trace mode: predict main()'s trace up to main's return frame; the answer is its value.
    constrain: every action is one of the program's lines (eval.traces.action_lines)."""
    from cwm.eval.metrics import output_of
    from cwm.eval.traces import Case, action_lines, predict_free
    from cwm.tokenizer.tracetext import entry_frame

    context = trace_context(item["code"], item["input"])
    if constrain:
        sampling = action_lines(backend, context, sampling)
    prediction = predict_free(backend, Case(item["id"], context, [entry_frame(context)]), sampling, to_entry_return=True)
    top = [f for f in prediction.frames if f.depth == 0]  # main's own frames
    answer = output_of(top)
    return answer, {"error": prediction.error, "reason": prediction.reason, "frames": len(prediction.frames),
                    "malformed": prediction.malformed}


def answer_directly(backend, item: dict, sampling) -> tuple[str | None, dict]:
    """Direct mode: the benchmark's prompt; the answer line ends the generation (the assertion is
    one line: stopping at its newline ends it as soon as it is complete)."""
    from cwm.backends import TooLong, encode_prompt, fit

    prompt = direct_prompt(item["code"], item["input"])
    try:
        if backend.tokenizer is not None:
            sampling = fit(backend, len(encode_prompt(backend.tokenizer, prompt)), sampling)
    except TooLong as e:
        return None, {"generation": "", "reason": str(e)}
    out = backend.complete(prompt, stop=[DIRECT_STOP_LINE], sampling=sampling)
    return extract_direct_answer(out.text), {"generation": out.text, "reason": None}


# Default new tokens per answer; a generation stops as soon as its answer is complete. Measured with
# the tour's 4,096-token BPE: a direct answer line is at most 106 tokens (median 22); the real
# trace after main's call frame is 271 tokens at the median, 1,179 at p90 (first 400 problems).
MAX_NEW_TOKENS = {"direct": 256, "trace": 1024}


def run_cruxeval(backend, items: list[dict], mode: str, samples: int, sampling, log=None, constrain: bool = False) -> dict:
    """Answer each problem `samples` times and score as the benchmark does (`constrain`: trace
    mode's actions, see answer_by_trace). With a log
    (cwm.eval.run.ResultsLog), each problem is written as it is done, and problems already in the
    log are not asked again."""
    from dataclasses import replace

    from cwm.eval.run import items_to_do, progress

    if mode not in MAX_NEW_TOKENS:
        raise ValueError(f"unknown CruxEval mode {mode!r}; choose direct or trace")

    def answer(backend, item, sampling):
        if mode == "trace":
            return answer_by_trace(backend, item, sampling, constrain)
        return answer_directly(backend, item, sampling)

    done, todo = items_to_do(items, log, key=lambda item: item["id"])
    fresh = {}
    for item in progress(todo, f"cruxeval ({mode})", done=len(done)):
        tries = []
        for s in range(samples):
            seeded = replace(sampling, seed=None if sampling.seed is None else sampling.seed + s)
            got, detail = answer(backend, item, seeded)
            ok = check_answer(item["code"], item["input"], item["output"], got)
            tries.append({"answer": got, "correct": ok, **detail})
        fresh[item["id"]] = result = {"id": item["id"], "gold": item["output"], "samples": tries,
                                      "correct": sum(t["correct"] for t in tries),
                                      "failed": all(t["reason"] is not None for t in tries)}
        if log is not None:
            log.add(result)
    results = [fresh.get(item["id"]) or log.done[str(item["id"])] for item in items]
    ks = sorted({1, samples})
    n = len(results)
    aggregates = {f"pass@{k}": sum(pass_at_k(samples, r["correct"], k) for r in results) / n if n else 0.0 for k in ks}
    aggregates["problems"] = n
    aggregates["failed"] = sum(r["failed"] for r in results)  # prompts that did not fit the context
    return {"task": "cruxeval", "mode": mode, "constrained": constrain, "headline": "pass@1", "aggregates": aggregates,
            "items": results}
