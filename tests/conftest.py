"""Shared fixtures: a small real tokenizer and a real (untrained) tiny checkpoint built from it."""

import contextlib
import difflib
import signal
from pathlib import Path

import pytest

CORPUS = Path(difflib.__file__).read_text()  # any Python text will do for a tiny BPE

# A suite started in the background (`cmd &` in a script, nohup) begins with SIGINT ignored, and
# every program it starts would inherit that: the Ctrl-C tests would then test nothing but the
# shell. Catching SIGINT here gives the programs the tests start a terminal's default again (exec
# resets a caught signal to its default, never an ignored one).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tok():
    from cwm.tokenizer import train_bpe

    return train_bpe(iter([CORPUS]), vocab_size=512)


# The debugger tests' program: f calls a helper once (10 real frames when entered through main).
DEBUG_PROGRAM = "def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    return y\n"


@pytest.fixture(scope="module")
def prepared():
    """(context, real frames) of DEBUG_PROGRAM called as f(3), as `cwm debug --call` prepares it."""
    from cwm.debugger.session import prepare

    context, real, note = prepare(DEBUG_PROGRAM, "f(3)")
    assert note is None and len(real) == 10
    return context, real


def make_tiny_checkpoint(path, tok, max_seq_len=2048):
    """A randomly initialised cwm-tiny model plus `tok`, saved as a complete checkpoint dir."""
    from cwm.model import Transformer, get_preset, save_pretrained

    tok.save(path)
    cfg = get_preset("cwm-tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len,
                     bos_token_id=tok.bos_id, eos_token_ids=tuple(tok.stop_ids))
    model = Transformer(cfg)
    model.init_weights(seed=0)
    save_pretrained(model, path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, tries: int = 300) -> None:
    """Poll `url`/health (a real server starting up) until it answers 200, at most ~15 s."""
    import time

    import httpx

    for _ in range(tries):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become healthy")


@contextlib.contextmanager
def serving(backend, model_name="tiny"):
    """A real uvicorn server for `backend` in a thread on a free loopback port; yields its URL."""
    import threading

    import uvicorn

    from cwm.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend, model_name=model_name), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serving_like_fgserve(backend):
    """A loopback server that answers /completions as the release's serve/fgserve.py does, in front
    of a real backend: `finish_reason` is always "length", `tokens` end with the stop token, `text`
    is cut before it, there is no /health (404), and temperature 0 fails (fastgen divides by it).
    Yields (url, the request bodies received)."""
    import threading
    import time

    import httpx
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from cwm.backends import Sampling, encode_prompt

    app, received = FastAPI(), []

    @app.post("/completions")
    async def completions(request: Request):
        body = await request.json()
        received.append(body)
        if not body.get("temperature"):
            return JSONResponse({"error": "ZeroDivisionError: float division by zero"}, status_code=500)
        tok = backend.tokenizer
        ids = encode_prompt(tok, body["prompt"])
        stop = body.get("stop")
        out = backend.complete(ids, stop=[stop] if stop else [], sampling=Sampling(
            temperature=body["temperature"], top_p=body.get("top_p", 0.95), max_new_tokens=body["max_tokens"]))
        ended = out.tokens[-1:] and (out.tokens[-1] in tok.stop_ids or tok.is_special(out.tokens[-1]))
        text = tok.decode(out.tokens[:-1] if ended else out.tokens)
        return {"id": "x", "object": "text_completion", "model": None,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out.tokens)},
                "choices": [{"index": 0, "text": text, "tokens": out.tokens, "logprobs": None,
                             "finish_reason": "length"}]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # up when it answers at all (it has no /health)
            try:
                httpx.get(url + "/health")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url, received
    finally:
        server.should_exit = True
        thread.join(timeout=10)
