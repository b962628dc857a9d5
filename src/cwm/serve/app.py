"""`cwm serve`: a local checkpoint behind HTTP (FastAPI + uvicorn).

Endpoints
  POST /completions      the release's (serve/fgserve.py): prompt as text or token ids; each choice
                         carries `text` and `tokens` (the stop token included, as the release does)
  POST /v1/completions   OpenAI-compatible text completions (the stop sequence is left out of `text`)
  POST /v1/chat/completions, /chat/completions
                         OpenAI chat: messages, tools, reasoning, tool_calls (docs/serve.md; the
                         message and reply rules are cwm.serve.chat's)
  GET  /v1/models        for OpenAI clients
  GET  /health           {"status": "ok", "model": ..., "server": "cwm serve", "busy": bool,
                          "waiting": requests queued, "generated_tokens": count since start}

Every completion endpoint takes `"stream": true` and then answers server-sent events as OpenAI does:
`data: {chunk}\\n\\n` per new piece of text, the last chunk of a choice with its finish_reason, then
`data: [DONE]\\n\\n`. /completions chunks also carry the new `tokens`; chat chunks carry deltas.

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

from cwm.backends import (
    CWM_SERVE,
    Completion,
    LocalBackend,
    Sampling,
    encode_prompt,
    split_stops,
)
from cwm.serve import chat

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


Stop = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class SamplingFields(BaseModel):
    """What the completion and chat requests share."""

    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (logprobs, user, ...)

    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Stop | list[Stop] | None = Field(None, max_length=MAX_STOPS)
    seed: int | None = Field(None, ge=0, lt=1 << 63)
    stream: bool = False
    model: str | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(self, choice: int, max_new_tokens: int) -> Sampling:
        temperature = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        if 0 < temperature < MIN_TEMPERATURE:
            raise HTTPException(
                422, f"temperature {temperature:g} is too small to sample with: use 0 for greedy decoding, "
                     f"or a value from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}",
            )
        return Sampling(
            temperature=temperature,
            top_p=DEFAULT_TOP_P if self.top_p is None else self.top_p,
            max_new_tokens=max_new_tokens,
            seed=None if self.seed is None else (self.seed + choice) % (1 << 63),
        )


class CompletionsRequest(SamplingFields):
    prompt: str | list[Annotated[int, Field(ge=0, lt=1 << 31)]]
    max_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS)


class ChatRequest(SamplingFields):
    """POST /v1/chat/completions (docs/serve.md); messages and tools are checked by cwm.serve.chat."""

    messages: list
    tools: list | None = None
    reasoning: dict | None = None
    reasoning_effort: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)  # OpenAI's newer name
    stream_options: dict | None = None


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
        if _is_chat(request):
            first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
            at = ".".join(str(p) for p in first["loc"] if p != "body")
            return _openai_error(f"{at}: {first['msg']}" if at else str(first["msg"]), at or None)
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        """FastAPI's {"detail"} shape, or OpenAI's {"error"} shape (status 400) on the chat paths."""
        if _is_chat(request) and 400 <= exc.status_code < 500 and exc.status_code != 413:
            return _openai_error(str(exc.detail), getattr(exc, "param", None))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    tokenizer = backend.tokenizer
    vocab_size = int(tokenizer.vocab_size)
    turn = asyncio.Lock()  # one generation at a time; waiters queue here, in arrival order
    stats = {"busy": False, "waiting": 0, "generated_tokens": 0}

    def checked_ids(ids: list[int], max_tokens: int | None) -> int:
        """The number of tokens to generate after `ids` (max_tokens, or by default what the context
        leaves, at most DEFAULT_CHAT_MAX_TOKENS), or a 4xx naming what is wrong."""
        if not ids:
            raise HTTPException(400, "prompt is empty")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise HTTPException(400, f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
        room = backend.context_length - len(ids)
        if max_tokens is None and room > 0:
            return min(room, DEFAULT_CHAT_MAX_TOKENS)
        if max_tokens is None or len(ids) + max_tokens > backend.context_length:
            raise HTTPException(
                400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens or 1}) exceeds the model's "
                     f"context of {backend.context_length} tokens; shorten the prompt or lower max_tokens",
            )
        return max_tokens

    def checked(rq: CompletionsRequest) -> tuple[list[int], list[Sampling]]:
        """The prompt's ids and each choice's sampling, or a 4xx naming what is wrong."""
        ids = encode_prompt(tokenizer, rq.prompt)
        max_tokens = checked_ids(ids, rq.max_tokens)
        return ids, [rq.sampling(i, max_tokens) for i in range(rq.n)]

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

    async def complete_all(request: Request, ids, stops, samplings) -> list[Completion]:
        outs = []
        for sampling in samplings:
            try:
                outs.append(await generate(request, ids, stops, sampling))
            except _ClientGone:
                raise HTTPException(499, "client closed the request") from None
        return outs

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
        ids, samplings = checked(rq)
        outs = await complete_all(request, ids, rq.stops(), samplings)
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
        ids, samplings = checked(rq)
        outs = await complete_all(request, ids, rq.stops(), samplings)
        return {
            "id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": model_name, "usage": usage(ids, outs),
            "choices": [
                {"index": i, "text": _without_stop(tokenizer, c, rq.stop), "logprobs": None,
                 "finish_reason": c.finish_reason}
                for i, c in enumerate(outs)
            ],
        }

    async def streamed(request: Request, ids, stops: list[str], sampling: Sampling, cut: bool):
        """One generation as it comes: yields (text so far, new tokens, None) per token, then
        (final text, [], Completion). With `cut` (OpenAI's semantics) the text leaves out the stop
        token or string, and holds back what could still become a stop string; each text extends
        the one before. Ends without the Completion if the client left or the generation failed."""
        stop_ids, strings = split_stops(tokenizer, stops)
        hold = max((len(s) for s in strings), default=1) - 1 if cut else 0
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        tokens: list[int] = []
        shown = ""

        def on_token(token: int) -> None:  # worker thread: the text that is safe to show
            nonlocal shown
            tokens.append(token)
            kept = [t for t in tokens if t not in stop_ids] if cut else tokens
            text = tokenizer.decode(kept).rstrip("\ufffd")  # not half a UTF-8 character
            for s in strings if cut else ():
                if s in text:
                    text = text[: text.index(s)]
            text = text[: max(len(shown), len(text) - hold)]
            if len(text) > len(shown) or not cut:
                shown = text
                loop.call_soon_threadsafe(queue.put_nowait, (text, [token]))

        task = asyncio.ensure_future(generate(request, ids, stops, sampling, on_token))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                yield (*item, None)
            if task.exception() is not None:
                return  # the client left (or the generation failed): nothing more to send
            done = task.result()
        finally:
            task.cancel()
        yield (_without_stop(tokenizer, done, stops) if cut else done.text), [], done

    def stream(request: Request, rq: CompletionsRequest, openai: bool) -> StreamingResponse:
        """Server-sent events: text as it is generated, choice after choice. /v1 (openai) leaves the
        stop token or string out, as its non-streamed text does; /completions keeps it and adds
        each chunk's tokens. Everything is checked before the first byte is sent."""
        ids, samplings = checked(rq)
        header = {"id": ("cmpl-" if openai else "") + uuid.uuid4().hex, "object": "text_completion",
                  "created": int(time.time()), "model": model_name}

        def event(choice: dict) -> str:
            return f"data: {json.dumps(header | {'choices': [choice]})}\n\n"

        async def events():
            for index, sampling in enumerate(samplings):
                sent, done = "", None  # the text already sent (always a prefix of the final text)
                async for text, new, done in streamed(request, ids, rq.stops(), sampling, cut=openai):
                    yield event({"index": index, "text": text[len(sent):], "logprobs": None,
                                 "finish_reason": done and done.finish_reason} | ({} if openai else {"tokens": new}))
                    sent = text
                if done is None:
                    return
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- chat (docs/serve.md, "Chat completions"; the rules live in cwm.serve.chat) ----------------

    def chat_request(rq: ChatRequest) -> tuple[list[int], list[Sampling], list[chat.Tool], bool]:
        try:
            tools = chat.prepare_tools(rq.tools)
            reasoning = chat.reasoning_requested(rq.reasoning, rq.reasoning_effort)
            ids = chat.prompt_ids(tokenizer, rq.messages, tools, reasoning)
        except chat.ChatError as e:
            raise _OpenAIError(str(e), e.param) from None
        max_tokens = checked_ids(ids, rq.max_completion_tokens or rq.max_tokens)
        return ids, [rq.sampling(i, max_tokens) for i in range(rq.n)], tools, reasoning

    def finish_reason(reply: chat.Reply, done: Completion) -> str:
        return "tool_calls" if reply.tool_calls else done.finish_reason

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(rq: ChatRequest, request: Request):
        ids, samplings, tools, reasoning = chat_request(rq)
        if rq.stream:
            return chat_stream(request, rq, ids, samplings, tools, reasoning)
        outs = await complete_all(request, ids, rq.stops(), samplings)
        replies = [chat.parse_reply(_without_stop(tokenizer, c, rq.stops()), tools, reasoning) for c in outs]
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "usage": usage(ids, outs),
            "choices": [{"index": i, "message": r.message(), "logprobs": None, "finish_reason": finish_reason(r, c)}
                        for i, (r, c) in enumerate(zip(replies, outs))],
        }

    def chat_stream(request: Request, rq: ChatRequest, ids, samplings, tools, reasoning) -> StreamingResponse:
        """chat.completion.chunk events: per choice a role delta, reasoning_content and content
        deltas as they settle (chat.settled), and a last delta with the rest, the tool calls and
        the finish_reason; with stream_options.include_usage, a last chunk with the usage."""
        header = {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk",
                  "created": int(time.time()), "model": model_name}

        def event(choices: list, **more) -> str:
            return f"data: {json.dumps(header | {'choices': choices} | more)}\n\n"

        def delta(index: int, delta: dict, finish: str | None = None) -> str:
            return event([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])

        async def events():
            outs = []
            for index, sampling in enumerate(samplings):
                yield delta(index, {"role": "assistant", "content": ""})
                thought, content, done = "", "", None  # what was sent
                async for text, _, done in streamed(request, ids, rq.stops(), sampling, cut=True):
                    if done is None:  # `text` so far; once done, `text` is the final text
                        new_thought, new_content = chat.settled(text, tools, reasoning)
                        piece = {k: v[len(old):] for k, v, old in [("reasoning_content", new_thought, thought),
                                                                    ("content", new_content, content)]
                                 if len(v) > len(old)}
                        if piece:
                            yield delta(index, piece)
                            thought, content = new_thought, new_content
                if done is None:
                    return
                outs.append(done)
                reply = chat.parse_reply(text, tools, reasoning)
                rest = {"reasoning_content": (reply.reasoning_content or "")[len(thought):],
                        "content": (reply.content or "")[len(content):]}
                last = {k: v for k, v in rest.items() if v}
                if reply.tool_calls:
                    last["tool_calls"] = [{"index": i} | call for i, call in enumerate(reply.tool_calls)]
                yield delta(index, last, finish_reason(reply, done))
            if (rq.stream_options or {}).get("include_usage"):
                yield event([], usage=usage(ids, outs))
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


DEFAULT_CHAT_MAX_TOKENS = 8192  # the release's chat default (fgserve.py: `rq.max_tokens or 8192`)


class _OpenAIError(HTTPException):
    """A 400 in OpenAI's error shape, naming the request field (`param`) at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(400, message)
        self.param = param


def _is_chat(request: Request) -> bool:
    return request.url.path.endswith("/chat/completions")


def _openai_error(message: str, param: str | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": None}}, status_code=status)
