"""`cwm serve`: a local checkpoint behind HTTP (FastAPI + uvicorn).

Endpoints
  POST /completions      the release's (serve/fgserve.py): prompt as text or token ids; each choice
                         carries `text` and `tokens` (the stop token included, as the release does)
  POST /v1/completions   OpenAI-compatible text completions (the stop sequence is left out of `text`)
  GET  /v1/models        for OpenAI clients
  GET  /health           {"status": "ok", "model": ..., "server": "cwm serve", "busy": bool,
                          "waiting": requests queued, "generated_tokens": count since start}

Both completion endpoints take `"stream": true` and then answer server-sent events as OpenAI does:
`data: {chunk}\\n\\n` per new piece of text, the last chunk of a choice with its finish_reason, then
`data: [DONE]\\n\\n`. /completions chunks also carry the new `tokens`.

Requests run one at a time in arrival order: each waits for its turn on an asyncio lock in the
event loop (no thread is held while it waits), and the generation runs in a worker thread, so the
event loop stays free: /health answers at once under any load. A client that hangs up stops its
generation at the next token (and a queued request whose client left is never started).
Every number is checked (finite, in range) and the body is capped at MAX_BODY_BYTES while it is
read, chunked bodies included; a bad request gets a 4xx naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Annotated

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from cwm.backends import CWM_SERVE, Completion, LocalBackend, Sampling, encode_prompt, split_stops

# The release's server defaults (serve/fgserve.py FastGenArgs), used when a request leaves them out.
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.6, 0.95
MAX_BODY_BYTES = 8 << 20
MAX_CHOICES = 16
# Sampling bounds: temperature 0 is greedy. Far below MIN_TEMPERATURE the logits / temperature
# overflow (1e-300 gives inf and NaN probabilities), so such values are refused rather than silently
# treated as greedy; 1e-4 still leaves room for clients that send a near-greedy 1e-3 instead of 0.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 100.0
MAX_NEW_TOKENS = 1 << 20  # a type bound; the real limit is the model's context (checked per request)
MAX_STOPS, MAX_STOP_CHARS = 16, 256
POLL_S = 0.05  # how often a waiting request looks for its client having hung up


class CompletionsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (logprobs, user, ...)

    prompt: str | list[Annotated[int, Field(ge=0, lt=1 << 31)]]
    max_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Annotated[str, Field(max_length=MAX_STOP_CHARS)] | list[
        Annotated[str, Field(max_length=MAX_STOP_CHARS)]] | None = Field(None, max_length=MAX_STOPS)
    seed: int | None = Field(None, ge=0, lt=1 << 63)
    stream: bool = False
    model: str | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(self, choice: int) -> Sampling:
        temperature = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        if 0 < temperature < MIN_TEMPERATURE:
            raise HTTPException(
                422, f"temperature {temperature:g} is too small to sample with: use 0 for greedy decoding, "
                     f"or a value from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}",
            )
        return Sampling(
            temperature=temperature,
            top_p=DEFAULT_TOP_P if self.top_p is None else self.top_p,
            max_new_tokens=self.max_tokens,
            seed=None if self.seed is None else (self.seed + choice) % (1 << 63),
        )


class _ClientGone(Exception):
    """The client hung up: the generation stops at its next token."""


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413 while reading them, so a chunked
    body (no Content-Length) is cut off at the limit rather than read whole into memory."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(send)
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        replayed = False

        async def replay():  # the whole body once, then the real channel (to see a disconnect)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        text = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": text})


def create_app(backend: LocalBackend, model_name: str = "cwm", max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="cwm serve")
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        """FastAPI's 422, without echoing the input (NaN and inf are not JSON: that would be a 500)."""
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    tokenizer = backend.tokenizer
    vocab_size = int(tokenizer.vocab_size)
    turn = asyncio.Lock()  # one generation at a time; waiters queue here, in arrival order
    stats = {"busy": False, "waiting": 0, "generated_tokens": 0}

    def checked(rq: CompletionsRequest) -> tuple[list[int], list[Sampling]]:
        """The prompt's ids and each choice's sampling, or a 4xx naming what is wrong."""
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
        return ids, [rq.sampling(i) for i in range(rq.n)]

    async def generate(request: Request, ids, stop, sampling, on_token=None) -> Completion:
        """One generation in a worker thread, after the ones queued before it; stopped early when
        the client hangs up (raises _ClientGone). on_token(token) runs in the worker thread."""
        cancel = threading.Event()

        def hook(token: int) -> None:
            if cancel.is_set():
                raise _ClientGone
            stats["generated_tokens"] += 1
            if on_token is not None:
                on_token(token)

        stats["waiting"] += 1
        try:
            await turn.acquire()
        finally:
            stats["waiting"] -= 1
        try:
            if await request.is_disconnected():
                raise _ClientGone
            stats["busy"] = True
            work = asyncio.ensure_future(anyio.to_thread.run_sync(
                lambda: backend.complete(ids, stop=stop, sampling=sampling, on_token=hook)))
            while not work.done():
                await asyncio.wait({work}, timeout=POLL_S)
                if not work.done() and await request.is_disconnected():
                    cancel.set()
            return work.result()
        finally:
            cancel.set()  # a stream cancelled by its consumer stops its worker too
            stats["busy"] = False
            turn.release()

    async def complete_all(request: Request, rq: CompletionsRequest):
        ids, samplings = checked(rq)
        outs = []
        for sampling in samplings:
            try:
                outs.append(await generate(request, ids, rq.stops(), sampling))
            except _ClientGone:
                raise HTTPException(499, "client closed the request") from None
        return ids, outs

    def usage(ids, completions) -> dict:
        generated = sum(len(c.tokens) for c in completions)
        return {"prompt_tokens": len(ids), "completion_tokens": generated, "total_tokens": len(ids) + generated}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "server": CWM_SERVE, **stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "cwm"}]}

    @app.post("/completions")
    async def completions(rq: CompletionsRequest, request: Request):
        if rq.stream:
            return stream(request, rq, openai=False)
        ids, outs = await complete_all(request, rq)
        return {
            "id": uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": model_name, "usage": usage(ids, outs),
            "choices": [
                {"index": i, "text": c.text, "tokens": c.tokens, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(outs)
            ],
        }

    @app.post("/v1/completions")
    async def openai_completions(rq: CompletionsRequest, request: Request):
        if rq.stream:
            return stream(request, rq, openai=True)
        ids, outs = await complete_all(request, rq)
        return {
            "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": model_name, "usage": usage(ids, outs),
            "choices": [
                {"index": i, "text": _without_stop(tokenizer, c, rq.stop), "logprobs": None,
                 "finish_reason": c.finish_reason}
                for i, c in enumerate(outs)
            ],
        }

    def stream(request: Request, rq: CompletionsRequest, openai: bool) -> StreamingResponse:
        """Server-sent events: text as it is generated, choice after choice. /v1 (openai) leaves the
        stop token or string out, as its non-streamed text does; /completions keeps it and adds
        each chunk's tokens. Everything is checked before the first byte is sent."""
        ids, samplings = checked(rq)
        stop_ids, strings = split_stops(tokenizer, rq.stops())
        hold = max((len(s) for s in strings), default=1) - 1 if openai else 0
        header = {"id": ("cmpl-" if openai else "") + uuid.uuid4().hex, "object": "text_completion",
                  "created": int(time.time()), "model": model_name}
        loop = asyncio.get_running_loop()

        def event(choice: dict) -> str:
            return f"data: {json.dumps(header | {'choices': [choice]})}\n\n"

        async def events():
            for index, sampling in enumerate(samplings):
                queue: asyncio.Queue = asyncio.Queue()
                tokens: list[int] = []
                sent = ""  # the text already sent

                def on_token(token: int) -> None:  # worker thread: the text that is safe to send
                    nonlocal sent
                    tokens.append(token)
                    kept = [t for t in tokens if t not in stop_ids] if openai else tokens
                    text = tokenizer.decode(kept).rstrip("\ufffd")  # not half a UTF-8 character
                    for s in strings if openai else ():
                        if s in text:
                            text = text[: text.index(s)]
                    text = text[: max(len(sent), len(text) - hold)]
                    piece = text[len(sent):] if len(text) > len(sent) else ""
                    if piece or not openai:
                        sent += piece
                        loop.call_soon_threadsafe(queue.put_nowait, (piece, [token]))

                task = asyncio.ensure_future(generate(request, ids, rq.stops(), sampling, on_token))
                task.add_done_callback(lambda _: queue.put_nowait(None))
                try:
                    while (item := await queue.get()) is not None:
                        piece, new = item
                        yield event({"index": index, "text": piece, "logprobs": None, "finish_reason": None}
                                    | ({} if openai else {"tokens": new}))
                    if task.exception() is not None:
                        return  # the client left (or the generation failed): nothing more to send
                    done = task.result()
                finally:
                    task.cancel()
                final = _without_stop(tokenizer, done, rq.stop) if openai else done.text
                rest = final[len(sent):]  # what was sent is always a prefix of the final text
                yield event({"index": index, "text": rest, "logprobs": None, "finish_reason": done.finish_reason}
                            | ({} if openai else {"tokens": []}))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

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
