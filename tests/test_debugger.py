"""The neural debugger: sessions over real programs, driven by an oracle that replays the real
trace (so every command's effect is known exactly) and by a real tiny untrained model (whose
output is mostly malformed: it must be shown, never crash)."""

import argparse
import copy
import io

import pytest

from conftest import DEBUG_PROGRAM as PROGRAM
from conftest import make_tiny_checkpoint, serving
from cwm.backends import LocalBackend, Sampling
from cwm.debugger import cli
from cwm.debugger.session import Session, prepare
from cwm.eval.metrics import action_of, state_of
from cwm.eval.oracle import OracleBackend
from cwm.eval.traces import Case, predict_teacher_forced
from cwm.tokenizer.tracetext import frames_ids


def session(tok, prepared, frames=None, frame_ids=None):
    context, real = prepared
    oracle = OracleBackend.from_trace(tok, context, frames or real)
    if frame_ids is not None:
        oracle.frame_ids = frame_ids
    return Session(oracle, context, real=real)


def events(s):
    return [st.frame.event if st.frame else "malformed" for st in s.steps]


def test_step_follows_the_real_trace_to_the_end(tok, prepared):
    s = session(tok, prepared)
    while not s.done:
        s.step()
    seen = [(action_of(st.frame), state_of(st.frame)) for st in s.steps]
    assert seen == [(action_of(f), state_of(f)) for f in prepared[1]] and s.first_divergence() is None


def test_next_steps_over_calls_with_a_forced_return(tok, prepared):
    s = session(tok, prepared)
    s.next()  # main: line `return f(3)`
    s.next()  # predicts call f, forces its return (value without body), then main's return
    assert events(s) == ["call", "line", "call", "return", "return"]
    assert s.steps[3].frame.value == "6" and s.steps[3].ids[0] == tok.return_sep_id
    real = s.real_pairs()
    assert [r.source.strip() for r in real[3:]] == ["return y", "return f(3)"] and s.first_divergence() is None


def test_step_into_then_out(tok, prepared):
    s = session(tok, prepared)
    for _ in range(3):
        s.step()  # line main, call f, line `y = g(x, 2)`
    s.out()  # over g's call, to f's return, then one more frame (main's return)
    assert events(s) == ["call", "line", "call", "line", "call", "return", "line", "return", "return"]
    assert s.current.frame.value == "6" and s.first_divergence() is None


def test_back_reset_and_print(tok, prepared):
    s = session(tok, prepared)
    for _ in range(4):
        s.step()
    assert s.current.frame.event == "call" and s.locals() == {"a": "3", "b": "2"}
    s.step()  # line `return a * b`: its locals were written ".." and are resolved
    assert b'".."' not in str(s.current.frame.locals).encode() and s.locals() == {"a": "3", "b": "2"}
    assert '".."' in s.current.text
    s.back()
    assert len(s.steps) == 5
    s.reset()
    assert len(s.steps) == 1 and s.steps[0].frame == prepared[1][0]


def test_divergence_is_found_at_the_wrong_frame(tok, prepared):
    frames = copy.deepcopy(prepared[1])
    frames[5].locals["b"] = "5"
    s = session(tok, prepared, frames)
    while not s.done:
        s.step()
    assert s.first_divergence() == 5


def test_malformed_output_is_a_step_not_a_crash(tok, prepared):
    context, real = prepared
    ids = frames_ids(tok, context, real)
    ids[3] = [tok.line_sep_id] + tok.encode("{oops") + [tok.frame_sep_id]
    s = session(tok, prepared, frame_ids=ids)
    for _ in range(3):
        s.step()
    assert s.current.frame is None and s.current.error and "{oops" in s.current.text
    assert s.first_divergence() == 3
    s.back()
    assert s.current.frame.event == "call"


def test_a_trace_that_fills_the_context_ends_with_a_step_that_says_so(tok, prepared):
    """The frames so far stay (for --auto's table and `back`); before, generate's ValueError ended
    the whole session with one line of error and the table was lost."""
    context, real = prepared
    ids = frames_ids(tok, context, real)
    full = session(tok, prepared)
    room = len(full.context_ids) + sum(len(f) for f in ids[:4]) + 3  # frame 5 cannot be finished
    for context_length, frame in ((room, 4), (room - 3, 4)):  # cut within frame 5, or exactly after frame 4
        s = session(tok, prepared)
        s.backend.context_length = context_length
        while not (s.done or s.current.error):
            s.step()
        assert [st.frame is not None for st in s.steps] == [True] * frame + [False]
        assert ("the end of the model's context" if context_length == room else "no room left in the model's context") \
            in s.current.error
        s.back()
        assert s.current.frame == real[frame - 1]


def test_what_if_changes_the_prompt(tok, prepared):
    """The edited value is what the model sees next (recorded from the real prompts sent)."""
    s = session(tok, prepared)
    s.step()
    s.step()  # call f, x = 3
    sent = []
    original = s.backend.complete
    s.backend.complete = lambda prompt, **kw: sent.append(list(prompt)) or original(prompt, **kw)
    s.set_local("x", "10")
    assert s.current.edited and s.locals() == {"x": "10"}
    s.step()
    assert '{"x": "10"}' in tok.decode(sent[-1]) and s.first_divergence() is None  # no reference after an edit
    with pytest.raises(ValueError, match="not a Python expression"):
        s.set_local("x", "1 +")


def test_program_that_cannot_run_still_debugs(tok):
    context, real, note = prepare("def f(x):\n    while True:\n        x += 1\n", "f(0)", timeout=1)
    assert context.endswith("def main():  # << START_OF_TRACE\n    return f(0)\n")
    assert real is None or note  # the tracer or the sandbox stopped it; the note says which


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="not a Python expression"):
        prepare(PROGRAM, "f(3")
    with pytest.raises(ValueError, match="rename it"):
        prepare("def main():\n    pass\n", "main()")


# --- the CLI, with a real tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tok, max_seq_len=1024)


def parse(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture()
def program_file(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


def test_cli_auto_with_a_tiny_model(checkpoint, program_file, tmp_path, capsys):
    report = tmp_path / "r.html"
    code = cli.run(parse([str(program_file), "--call", "f(3)", "--model", str(checkpoint), "--auto",
                          "--max-frame-tokens", "24", "--max-steps", "3", "--report", str(report)]))
    out = capsys.readouterr().out
    assert code == 0 and "predicted frames:" in out and "real frames: 9" in out and "first divergence: step 1" in out
    assert report.read_text().startswith("<!DOCTYPE html>")


def test_cli_frame_budget_larger_than_the_room_left_is_capped_not_an_error(checkpoint, program_file, capsys):
    """A frame budget past the model's context (1,024 here) is cut to the room left; it used to
    end the session with `error: prompt ... exceeds the model's context` before any step."""
    code = cli.run(parse([str(program_file), "--call", "f(3)", "--model", str(checkpoint), "--auto",
                          "--max-frame-tokens", "4000", "--max-steps", "1"]))
    out = capsys.readouterr().out
    assert code == 0 and "predicted frames:" in out and "real frames: 9" in out


def test_cli_interactive_session(checkpoint, program_file, monkeypatch, capsys):
    commands = "h\np\ns\np x\nn\nset x = 5\nb\nreset\nfrobnicate\nq\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(commands))
    code = cli.run(parse([str(program_file), "--call", "f(3)", "--model", str(checkpoint), "--max-frame-tokens", "16"]))
    out = capsys.readouterr().out
    assert code == 0 and "commands:" in out and "unknown command 'frobnicate'" in out
    assert "malformed" in out  # the untrained model's frames are shown as malformed
    assert "error:" in out  # `set` on a malformed frame is refused with a reason, the session goes on


def test_cli_errors_are_one_line(program_file, capsys):
    assert cli.run(parse([str(program_file), "--call", "f(", "--model", "x"])) == 2
    assert cli.run(parse([str(program_file), "--call", "f(3)", "--server", "http://x", "--constrain-actions"])) == 2
    assert cli.run(parse([str(program_file) + ".missing", "--call", "f(3)", "--model", "x"])) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err and "--constrain-actions runs in this process" in err


def test_local_and_http_debugger_sessions_agree(checkpoint, prepared):
    """Identical greedy predictions through the local model and through `cwm serve` on loopback."""
    from cwm.backends import HTTPBackend

    local = LocalBackend.from_dir(checkpoint)
    with serving(local) as url:
        context, real = prepared
        sampling = Sampling(max_new_tokens=24)
        runs = []
        for backend in (local, HTTPBackend(url, local.tokenizer)):
            s = Session(backend, context, real=real, sampling=sampling)
            s.step()
            s.back()
            s.next()
            # and one prediction from each real prefix (the teacher-forced evaluation's prompts)
            forced = predict_teacher_forced(backend, Case("f", context, real), sampling)
            runs.append(([(st.ids, st.error) for st in s.steps], forced.frames, forced.error, forced.valid))
        assert runs[0] == runs[1] and len(runs[0][0]) == 2 and len(runs[0][1]) == 9


def test_auto_shows_each_predicted_step_beside_the_real_frame(tok, prepared):
    from rich.console import Console

    from cwm.debugger.view import side_by_side

    perfect = session(tok, prepared)
    while not perfect.done:
        perfect.step()
    wrong = copy.deepcopy(prepared[1])
    wrong[4].locals = {**wrong[4].locals, "a": "4"}  # g's first line with a wrong argument value
    off = session(tok, prepared, frames=wrong)
    while not off.done:
        off.step()
    for s, crosses in ((perfect, 0), (off, 1)):
        console = Console(width=200, record=True)
        console.print(side_by_side(s))
        text = console.export_text()
        rows = [line for line in text.splitlines() if line.startswith("│")]
        assert len(rows) == len(s.steps) - s.given  # one row per predicted step
        assert sum("✗" in r for r in rows) == crosses and sum("✓" in r for r in rows) == len(rows) - crosses
        assert "return y" in text and "= 6" in text
