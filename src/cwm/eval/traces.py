"""Trace prediction: a backend predicts a program's trace; the metrics score it against the real one.

The entry call frame (frame 0, which carries the inputs) is always given; predictions start at
frame 1. Two modes:
  teacher-forced  each frame k is predicted from the real frames before it (one request per frame)
  free-running    the model writes the whole rest of the trace from its own frames (one request,
                  until <|end_of_text|>)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cwm.backends import Backend, Sampling, TooLong, fit
from cwm.eval.metrics import TraceScore, score_trace
from cwm.eval.run import ResultsLog, items_to_do, progress
from cwm.tokenizer import tracetext
from cwm.trace.format import FRAME_SEP, RETURN, Frame

MODES = ("teacher", "free")
INVALID = Frame(event="invalid", lineno=0, source="")  # stands in for an unparsable prediction


@dataclass
class Case:
    id: str
    context: str  # program text with the START_OF_TRACE marker
    frames: list[Frame]  # the real trace


@dataclass
class Prediction:
    frames: list[Frame]  # predicted frames 1.. (INVALID where a teacher-forced frame did not parse)
    valid: float  # free: 1.0 or 0.0; teacher-forced: the fraction of frames that parsed
    error: str | None = None  # the first parse error (or why nothing was predicted)
    text: str = ""  # the model's raw output (free-running)
    malformed: list[dict] = field(default_factory=list)  # {"step": k, "text": raw output} per frame that did not parse
    reason: str | None = None  # set when (part of) the case could not be asked: its prompt did not fit the context


def failed(reason: str) -> Prediction:
    """Nothing predicted (the prompt does not fit): every step counts as wrong."""
    return Prediction([], 0.0, reason, reason=reason)


def predict_free(backend: Backend, case: Case, sampling: Sampling, to_entry_return: bool = False) -> Prediction:
    """The rest of the trace in one request, from the entry's call frame. With `to_entry_return`
    (all CruxEval's trace mode needs) it goes a frame at a time and stops at the entry's own
    return frame, or at the first frame that does not parse (no answer can follow it)."""
    tok = backend.tokenizer
    given = case.frames[:1]
    prompt = tracetext.context_ids(tok, case.context) + tracetext.frames_ids(tok, case.context, given)[0]
    try:
        budget = fit(backend, len(prompt), sampling)
    except TooLong as e:
        return failed(str(e))
    capped = " (the end of the context)" if budget.max_new_tokens < sampling.max_new_tokens else ""
    if to_entry_return:
        tokens, frames, error, returned = _generate_to_entry_return(backend, prompt, budget)
        if error is None and not returned and tokens[-1:] == [tok.eos_id]:
            error = "the trace ended before the entry returned"
        elif error is None and not returned:
            error = f"the entry did not return within {budget.max_new_tokens} tokens{capped}"
    else:
        tokens = backend.complete(prompt, stop=[], sampling=budget).tokens
        frames, error = tracetext.parse_frames(tok, prompt, tokens)
        if error is None and tokens[-1:] != [tok.eos_id]:
            error = f"the trace did not end with <|end_of_text|> within {budget.max_new_tokens} tokens{capped}"
    malformed = []
    if error is not None:  # the raw output of the frame where the text stopped being a trace
        raw = _frame_texts(tok, tokens)
        if len(frames) < len(raw):
            malformed.append({"step": len(frames) + 1, "text": raw[len(frames)]})
    return Prediction(frames, float(error is None), error, tok.decode(tokens), malformed)


def _generate_to_entry_return(backend: Backend, prompt: list[int], sampling: Sampling):
    """One request per frame (stop at <|frame_sep|>) until the entry's return frame (depth 0) is
    complete, a frame does not parse, the model ends the text, or the budget runs out.
    Returns (tokens, frames, the parse error, whether the entry returned)."""
    tok = backend.tokenizer
    tokens: list[int] = []
    frames, error = [], None
    while len(tokens) < sampling.max_new_tokens:
        left = dataclasses.replace(sampling, max_new_tokens=sampling.max_new_tokens - len(tokens))
        out = backend.complete(prompt + tokens, stop=[FRAME_SEP], sampling=left).tokens
        tokens += out
        frames, error = tracetext.parse_frames(tok, prompt, tokens)
        if error is not None or out[-1:] != [tok.frame_sep_id]:
            break  # malformed, the model ended the text, or the budget ran out
        if frames and frames[-1].event == RETURN and frames[-1].depth == 0:
            return tokens, frames, None, True
    return tokens, frames, error, False


def _frame_texts(tok, tokens: list[int]) -> list[str]:
    """The generated tokens cut after each <|frame_sep|>, decoded: one text per frame."""
    texts, current = [], []
    for t in tokens:
        current.append(t)
        if t == tok.frame_sep_id:
            texts.append(tok.decode(current))
            current = []
    if current:
        texts.append(tok.decode(current))
    return texts


def predict_teacher_forced(backend: Backend, case: Case, sampling: Sampling) -> Prediction:
    """Each frame from the real ones before it. A step whose prompt does not fit the context is not
    asked (it counts as wrong, and so do the later ones, whose prompts are longer still)."""
    tok = backend.tokenizer
    context = tracetext.context_ids(tok, case.context)
    real_ids = tracetext.frames_ids(tok, case.context, case.frames)
    frames, first_error, parsed, malformed, reason = [], None, 0, [], None
    for k in range(1, len(case.frames)):
        prompt = context + [t for ids in real_ids[:k] for t in ids]
        try:
            budget = fit(backend, len(prompt), sampling)
        except TooLong as e:
            if k == 1:
                return failed(str(e))
            reason = f"steps {k}-{len(case.frames) - 1} not asked: {e}"
            first_error = first_error or reason
            frames += [INVALID] * (len(case.frames) - k)
            break
        out = backend.complete(prompt, stop=[FRAME_SEP], sampling=budget)
        got, error = tracetext.parse_frames(tok, prompt, out.tokens)
        # complete = ends with <|frame_sep|> (the release's fgserve answers "length" for every choice)
        if error is None and (len(got) != 1 or out.tokens[-1:] != [tok.frame_sep_id]):
            error = f"step {k}: expected one frame ending with <|frame_sep|>, got {out.text[:80]!r}"
        if error is not None:
            malformed.append({"step": k, "text": out.text})
        parsed += error is None
        first_error = first_error or error
        frames.append(got[0] if error is None else INVALID)
    return Prediction(frames, parsed / max(1, len(case.frames) - 1), first_error, malformed=malformed, reason=reason)


def action_lines(backend: Backend, context: str, sampling: Sampling) -> Sampling:
    """`sampling` with the actions constrained to the program's lines (tracetext.ActionLines)."""
    return dataclasses.replace(sampling, constraint=tracetext.ActionLines(backend.tokenizer, context))


def evaluate_case(backend: Backend, case: Case, mode: str, sampling: Sampling,
                  constrain: bool = False) -> tuple[Prediction, TraceScore]:
    """constrain: every predicted action is one of the program's lines (`action_lines`)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if constrain:
        sampling = action_lines(backend, case.context, sampling)
    predict = predict_free if mode == "free" else predict_teacher_forced
    prediction = predict(backend, case, sampling)
    return prediction, score_trace(prediction.frames, case.frames[1:], valid=prediction.valid)


def load_cases(dataset: str | Path, limit: int | None = None) -> list[Case]:
    """Traced programs from a `cwm data build` dataset (its Parquet shards), status ok only."""
    from cwm.data.dataset import row_to_trace, rows

    cases = []
    for row in rows(dataset, kind="traces"):
        if row["status"] != "ok" or not row["frames"]:
            continue
        cases.append(Case(row["id"], tracetext.context_of(row["cwm_text"]), row_to_trace(row).frames))
        if limit is not None and len(cases) >= limit:
            break
    return cases


def frames_to_json(frames: list[Frame]) -> list[dict]:
    return [dataclasses.asdict(f) for f in frames]


def run_traces(backend: Backend, cases: list[Case], mode: str, sampling: Sampling, log: ResultsLog | None = None,
               constrain: bool = False) -> dict:
    """Score every case (`constrain`: see evaluate_case); the results dict has per-item results,
    aggregates and the headline metric.
    With a log, each item is written as it is done, and cases already in the log are not run again."""
    from cwm.eval.metrics import aggregate

    done, todo = items_to_do(cases, log, key=lambda c: c.id)
    fresh = {}
    for case in progress(todo, f"trace prediction ({mode})", done=len(done)):
        prediction, score = evaluate_case(backend, case, mode, sampling, constrain)
        fresh[case.id] = item = {"id": case.id, "score": score.as_dict(), "error": prediction.error,
                                 "failed": not prediction.frames and prediction.reason is not None,
                                 "reason": prediction.reason, "malformed": prediction.malformed,
                                 "predicted": frames_to_json(prediction.frames)}
        if log is not None:
            log.add(item)
    logged = log.done if log is not None else {}
    items = [fresh.get(c.id) or logged[str(c.id)] for c in cases]
    aggregates = aggregate([TraceScore(**item["score"]) for item in items])
    aggregates["failed"] = sum(item["failed"] for item in items)  # prompts that did not fit the context
    return {"task": "trace", "mode": mode, "constrained": constrain, "headline": "state", "aggregates": aggregates,
            "items": items}
