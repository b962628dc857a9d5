"""Shared fixtures: a small real tokenizer and a real (untrained) tiny checkpoint built from it."""

import contextlib
import difflib
from pathlib import Path

import pytest

CORPUS = Path(difflib.__file__).read_text()  # any Python text will do for a tiny BPE


@pytest.fixture(scope="session")
def tok():
    from cwm.tokenizer import train_bpe

    return train_bpe(iter([CORPUS]), vocab_size=512)


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
