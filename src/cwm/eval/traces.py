"""Trace prediction: a backend predicts a program's trace; the metrics score it against the real one.

The entry call frame (frame 0, which carries the inputs) is always given; predictions start at
frame 1. Two modes:
  teacher-forced  each frame k is predicted from the real frames before it (one request per frame)
  free-running    the model writes the whole rest of the trace from its own frames (one request,
                  until <|end_of_text|>)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cwm.backends import Backend, Sampling
from cwm.eval import tracetext
from cwm.eval.metrics import TraceScore, score_trace
from cwm.trace.format import Frame

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
    error: str | None = None  # the first parse error
    text: str = ""  # the model's raw output (free-running)


def predict_free(backend: Backend, case: Case, sampling: Sampling) -> Prediction:
    tok = backend.tokenizer
    given = case.frames[:1]
    prompt = tracetext.context_ids(tok, case.context) + tracetext.frames_ids(tok, case.context, given)[0]
    out = backend.complete(prompt, stop=[], sampling=sampling)
    frames, error = tracetext.parse_frames(tok, prompt, out.tokens)
    if error is None and out.tokens[-1:] != [tok.eos_id]:
        error = f"the trace did not end with <|end_of_text|> within {sampling.max_new_tokens} tokens"
    return Prediction(frames, float(error is None), error, out.text)


def predict_teacher_forced(backend: Backend, case: Case, sampling: Sampling) -> Prediction:
    tok = backend.tokenizer
    context = tracetext.context_ids(tok, case.context)
    real_ids = tracetext.frames_ids(tok, case.context, case.frames)
    frames, first_error, parsed = [], None, 0
    for k in range(1, len(case.frames)):
        prompt = context + [t for ids in real_ids[:k] for t in ids]
        out = backend.complete(prompt, stop=["<|frame_sep|>"], sampling=sampling)
        got, error = tracetext.parse_frames(tok, prompt, out.tokens)
        # complete = ends with <|frame_sep|> (the release's fgserve answers "length" for every choice)
        if error is None and (len(got) != 1 or out.tokens[-1:] != [tok.frame_sep_id]):
            error = f"step {k}: expected one frame ending with <|frame_sep|>, got {out.text[:80]!r}"
        parsed += error is None
        first_error = first_error or error
        frames.append(got[0] if error is None else INVALID)
    return Prediction(frames, parsed / max(1, len(case.frames) - 1), first_error)


def evaluate_case(backend: Backend, case: Case, mode: str, sampling: Sampling) -> tuple[Prediction, TraceScore]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    predict = predict_free if mode == "free" else predict_teacher_forced
    prediction = predict(backend, case, sampling)
    return prediction, score_trace(prediction.frames, case.frames[1:], valid=prediction.valid)


def load_cases(dataset: str | Path, limit: int | None = None) -> list[Case]:
    """Traced programs from a `cwm data build` dataset (its Parquet shards), status ok only."""
    import pyarrow.parquet as pq

    from cwm.data.build import read_manifest, row_to_trace

    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    if manifest.get("kind") != "traces":
        raise ValueError(f"{dataset} holds {manifest.get('kind')!r} records, not traces; build one with `cwm data build`")
    cases = []
    for shard in sorted(manifest["shards"]):
        for row in pq.read_table(dataset / shard).to_pylist():
            if row["status"] != "ok" or not row["frames"]:
                continue
            trace = row_to_trace(row)
            cases.append(Case(row["id"], tracetext.context_of(row["cwm_text"]), trace.frames))
            if limit is not None and len(cases) >= limit:
                return cases
    return cases


def frames_to_json(frames: list[Frame]) -> list[dict]:
    return [dataclasses.asdict(f) for f in frames]


def run_traces(backend: Backend, cases: list[Case], mode: str, sampling: Sampling) -> dict:
    """Score every case; the results dict has per-item results, aggregates and the headline metric."""
    from rich.progress import track

    from cwm.eval.metrics import aggregate

    items, scores = [], []
    for case in track(cases, description=f"trace prediction ({mode})", transient=True):
        prediction, score = evaluate_case(backend, case, mode, sampling)
        scores.append(score)
        items.append({"id": case.id, "score": score.as_dict(), "error": prediction.error,
                      "predicted": frames_to_json(prediction.frames)})
    return {"task": "trace", "mode": mode, "headline": "state", "aggregates": aggregate(scores), "items": items}
