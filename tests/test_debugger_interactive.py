"""`cwm debug` at a real terminal (a pty), as a pdb user drives it: Enter repeats the last
command, the history survives the session (readline, arrow keys), `next` shows the stepped-over
callee's predicted return value, and Ctrl-C stops a prediction under way without ending the
session."""

import os
import pty
import re
import select
import signal
import sys
import time

import pytest

from conftest import make_tiny_checkpoint, serving_like_fgserve
from cwm.debugger.cli import history_file
from cwm.debugger.session import prepare
from cwm.eval.oracle import OracleBackend

pytest.importorskip("readline")

PROGRAM = "def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    return y\n"
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[=>])")


class Terminal:
    """A program on the slave side of a pty; what it prints is read from the master side."""

    def __init__(self, argv, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its stdin/stdout/stderr are the terminal
            os.execve(argv[0], argv, env)
        self.seen = b""
        self.pos = 0

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def expect(self, text: str, timeout: float = 60) -> str:
        """Wait until `text` appears after what was matched before; returns the output up to it."""
        deadline = time.monotonic() + timeout
        while True:
            plain = ANSI.sub(b"", self.seen).replace(b"\r", b"")
            at = plain.find(text.encode(), self.pos)
            if at >= 0:
                before, self.pos = plain[self.pos:at], at + len(text)
                return before.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{plain[self.pos:].decode(errors='replace')}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:  # the program ended
                    pass

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.seen += os.read(self.fd, 65536)
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("the debugger did not exit")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tok, max_seq_len=2048)


@pytest.fixture(scope="module")
def endless(tmp_path_factory, tok):
    """A real cwm-tiny checkpoint that never ends a frame: greedy decoding always picks the token of
    "x". Every block's weights are zero (its norms too), so each block adds nothing to the residual
    stream; every token embeds to the same vector, so the final hidden state is the same everywhere;
    lm_head scores only "x" against it."""
    import torch

    from cwm.model import Transformer, get_preset, save_pretrained

    path = tmp_path_factory.mktemp("endless")
    tok.save(path)
    cfg = get_preset("cwm-tiny", vocab_size=tok.vocab_size, max_seq_len=2048, bos_token_id=tok.bos_id,
                     eos_token_ids=tuple(tok.stop_ids))
    model = Transformer(cfg)
    (x,) = tok.encode("x")
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed_tokens.weight.fill_(1.0)
        model.norm.weight.fill_(1.0)
        model.lm_head.weight[x] = 10.0
    save_pretrained(model, path)
    return path


@pytest.fixture()
def env(tmp_path):
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm", "COLUMNS": "120",
            "LINES": "50", "HOME": str(tmp_path)}


@pytest.fixture()
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


def debug(*args):
    return [sys.executable, "-m", "cwm", "debug", *map(str, args)]


def test_enter_repeats_history_persists_and_next_shows_the_return(tok, checkpoint, program, env):
    """Driven by a model that knows the run (the oracle behind a loopback server)."""
    context, real, _ = prepare(PROGRAM, "f(3)")
    with serving_like_fgserve(OracleBackend.from_trace(tok, context, real)) as (url, _):
        term = Terminal(debug(program, "--call", "f(3)", "--server", url, "--tokenizer", checkpoint), env)
        term.expect("step 0")
        term.expect("(cwm) ")
        term.send("s\r")
        term.expect("step 1")
        term.expect("(cwm) ")
        term.send("\r")  # Enter: step again
        shown = term.expect("(cwm) ")
        assert "step 2" in shown and "def f(x):" in shown
        term.send("s\r")
        term.expect("step 3")
        term.expect("(cwm) ")
        term.send("n\r")  # over g(x, 2): its return value, predicted, is shown
        shown = term.expect("(cwm) ")
        assert "g returned 6" in shown and "step 6" in shown and "return y" in shown
        term.send("q\r")
        assert term.wait() == 0
    with pytest.MonkeyPatch.context() as mp:  # where the debugger keeps its history, for this env
        mp.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
        history = history_file().read_text().split()
    assert history[-3:] == ["s", "n", "q"]  # readline keeps one of two equal lines in a row; Enter adds none

    # a new session: two arrow-ups bring back `n` (the last is `q`)
    with serving_like_fgserve(OracleBackend.from_trace(tok, context, real)) as (url, _):
        term = Terminal(debug(program, "--call", "f(3)", "--server", url, "--tokenizer", checkpoint), env)
        term.expect("(cwm) ")
        term.send("\x1b[A\x1b[A\r")
        shown = term.expect("(cwm) ")
        assert "step 1" in shown  # `n` from the call frame of main: its first line
        term.send("\x04")  # Ctrl-D ends the session
        assert term.wait() == 0


def test_ctrl_c_stops_a_prediction_not_the_session(endless, program, env):
    """A model that never ends its frame, given 1,500 tokens for one, is still predicting when
    Ctrl-C comes; Ctrl-C ends that prediction within seconds, the prompt comes back with the frames
    as they were, and the session goes on (Ctrl-C at the prompt does not end it either)."""
    term = Terminal(debug(program, "--call", "f(3)", "--model", endless, "--max-frame-tokens", "1500",
                          "--no-real"), env)
    term.expect("step 0")
    term.expect("(cwm) ")
    term.send("s\r")
    time.sleep(1.0)  # the prediction is under way (it lasts tens of seconds); not still inside readline
    started = time.monotonic()
    term.send("\x03")
    shown = term.expect("(cwm) ", timeout=20)
    assert time.monotonic() - started < 10
    assert "interrupted" in shown and "step 0" in shown  # the session as it was before `s`
    time.sleep(0.5)  # readline is waiting: a signal that lands before its select() waits for the next key
    term.send("\x03")  # at the prompt: a fresh prompt, the session stays
    term.expect("(cwm) ", timeout=10)
    term.send("p\r")
    assert "{}" in term.expect("(cwm) ")  # main's locals: the session is alive and unchanged
    term.send("q\r")
    assert term.wait() == 0
