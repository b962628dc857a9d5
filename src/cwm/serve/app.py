"""`cwm serve`: a local checkpoint behind HTTP (FastAPI + uvicorn).

Endpoints
  POST /completions      the release's (serve/fgserve.py): prompt as text or token ids; each choice
                         carries `text` and `tokens` (the stop token included, as the release does)
  POST /v1/completions   OpenAI-compatible text completions (the stop sequence is left out of `text`)
  GET  /v1/models        for OpenAI clients
  GET  /health           {"status": "ok", "model": ...}

Requests run one at a time in arrival order: the backend holds a lock, and the waiting requests
queue for it (in FastAPI's thread pool, then in the event loop); none is dropped. Malformed or
oversized requests get a 4xx naming the problem.
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cwm.backends import Completion, LocalBackend, Sampling, encode_prompt

# The release's server defaults (serve/fgserve.py FastGenArgs), used when a request leaves them out.
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.6, 0.95
MAX_BODY_BYTES = 8 << 20
MAX_CHOICES = 16


class CompletionsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (logprobs, user, ...)

    prompt: str | list[int]
    max_tokens: int = Field(256, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    model: str | None = None


def create_app(backend: LocalBackend, model_name: str = "cwm") -> FastAPI:
    app = FastAPI(title="cwm serve")
    tokenizer = backend.tokenizer
    vocab_size = int(tokenizer.vocab_size)

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and int(size) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    def run(rq: CompletionsRequest) -> tuple[list[int], list[Completion]]:
        ids = encode_prompt(tokenizer, rq.prompt)
        if not ids:
            raise HTTPException(400, "prompt is empty")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise HTTPException(400, f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
        if len(ids) + rq.max_tokens > backend.context_length:
            raise HTTPException(
                400, f"prompt ({len(ids)} tokens) + max_tokens ({rq.max_tokens}) exceeds the model's "
                     f"context of {backend.context_length} tokens; shorten the prompt or lower max_tokens",
            )
        stop = [rq.stop] if isinstance(rq.stop, str) else list(rq.stop or [])
        completions = []
        for i in range(rq.n):
            sampling = Sampling(
                temperature=DEFAULT_TEMPERATURE if rq.temperature is None else rq.temperature,
                top_p=DEFAULT_TOP_P if rq.top_p is None else rq.top_p,
                max_new_tokens=rq.max_tokens,
                seed=None if rq.seed is None else rq.seed + i,
            )
            completions.append(backend.complete(ids, stop=stop, sampling=sampling))
        return ids, completions

    def usage(ids, completions) -> dict:
        generated = sum(len(c.tokens) for c in completions)
        return {"prompt_tokens": len(ids), "completion_tokens": generated, "total_tokens": len(ids) + generated}

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "cwm"}]}

    @app.post("/completions")
    def completions(rq: CompletionsRequest):
        ids, outs = run(rq)
        return {
            "id": uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": model_name, "usage": usage(ids, outs),
            "choices": [
                {"index": i, "text": c.text, "tokens": c.tokens, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(outs)
            ],
        }

    @app.post("/v1/completions")
    def openai_completions(rq: CompletionsRequest):
        ids, outs = run(rq)
        return {
            "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": model_name, "usage": usage(ids, outs),
            "choices": [
                {"index": i, "text": _without_stop(tokenizer, c, rq.stop), "logprobs": None,
                 "finish_reason": c.finish_reason}
                for i, c in enumerate(outs)
            ],
        }

    return app


def _without_stop(tokenizer, completion: Completion, stop) -> str:
    """OpenAI semantics: the text ends before the stop sequence or stop token."""
    if completion.finish_reason != "stop":
        return completion.text
    text = tokenizer.decode(completion.tokens[:-1])
    last = tokenizer.decode(completion.tokens)
    for s in [stop] if isinstance(stop, str) else (stop or []):
        if s in last:
            return last[: last.index(s)]
    return text
