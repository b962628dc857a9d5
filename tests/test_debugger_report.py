"""The HTML report: self-contained, everything escaped, the first divergence marked."""

import re
from html.parser import HTMLParser

import pytest

from cwm.debugger.report import render_report, write_report
from cwm.trace.format import Frame

SOURCE = 'def f(s):  # << START_OF_TRACE\n    t = s + "</td><script>alert(1)</script>"\n    return t\n'


def frames(value='"<b>"'):
    return [
        Frame("line", 2, '    t = s + "</td><script>alert(1)</script>"\n', {"s": "'<i>'"}),
        Frame("line", 3, "    return t\n", {"s": "'<i>'", "t": value}),
        Frame("return", 3, "    return t\n", None, value),
    ]


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append(dict(attrs))


def parse(page):
    c = Collect()
    c.feed(page)
    return c


def test_everything_is_escaped_and_nothing_is_external():
    page = render_report(SOURCE, frames(), frames(), title="<t>")
    tags = parse(page).tags
    assert "script" not in tags and "b" not in tags and "i" not in tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # self-contained


def test_divergence_is_highlighted_and_linked(tmp_path):
    predicted = frames(value='"x"')
    page = render_report(SOURCE, frames(), predicted)
    rows = [r for r in parse(page).rows if "class" in r]
    assert [r["class"] for r in rows] == ["", "first", "diff"]
    assert rows[1].get("id") == "first-divergence" and "href='#first-divergence'" in page
    assert "output match: False" in page
    path = write_report(tmp_path / "r.html", SOURCE, frames(), predicted)
    assert path.read_text(encoding="utf-8") == page


def test_missing_steps_show_as_divergent():
    page = render_report(SOURCE, frames(), frames()[:1])
    assert [r["class"] for r in parse(page).rows if "class" in r] == ["", "first", "diff"]
    assert "first divergence: <a href='#first-divergence'>real frame 2 (not predicted)</a>" in page


# --- the debugger's report, read back by a real browser -------------------------------------

PROGRAM = "def g(a, b):\n    return a * b\n\ndef f(x):\n    y = g(x, 2)\n    return y\n"


def browser():
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Rows(HTMLParser):
    """The step rows of a rendered DOM: (step, real, class), the text of each raw block, and
    whether any element was made from model text (a <b> or <script> inside the table)."""

    def __init__(self):
        super().__init__()
        self.rows, self.raw, self.in_raw, self.in_table, self.injected = [], [], False, False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.in_table = True
        elif tag == "tr" and "data-step" in attrs:
            self.rows.append((attrs["data-step"], attrs["data-real"], attrs.get("class", "")))
        elif tag == "pre" and attrs.get("class") == "raw":
            self.in_raw = True
            self.raw.append("")
        elif self.in_table and tag in ("b", "script"):
            self.injected = True

    def handle_endtag(self, tag):
        self.in_raw = self.in_raw and tag != "pre"

    def handle_data(self, data):
        if self.in_raw:
            self.raw[-1] += data


@pytest.mark.skipif(browser() is None, reason="no Chromium here (apt-get install chromium)")
def test_report_pairs_frames_like_the_console_in_a_real_browser(tok, tmp_path, monkeypatch, capsys):
    """After `next` and `out` the predicted trace skips the callee bodies; the report pairs each
    predicted frame with the real frame it stands for (no false divergence), and the malformed
    last frame's raw model text is on the page. Checked in headless Chromium's DOM."""
    import argparse
    import io
    import subprocess

    from conftest import serving_like_fgserve
    from cwm.debugger import cli
    from cwm.debugger.session import prepare
    from cwm.eval.oracle import OracleBackend

    context, real, _ = prepare(PROGRAM, "f(3)")
    oracle = OracleBackend.from_trace(tok, context, real)
    oracle.frame_ids[9] = [tok.return_sep_id] + tok.encode('{oops <b>bold</b>') + [tok.frame_sep_id]
    tok.save(tmp_path / "tok")
    program, report = tmp_path / "prog.py", tmp_path / "report.html"
    program.write_text(PROGRAM)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with serving_like_fgserve(oracle) as (url, _):
        # line, call f, line `y = g(x, 2)`, next (call g, its return, `return y`), out (f returns, then one more)
        monkeypatch.setattr("sys.stdin", io.StringIO(f"s\ns\ns\nn\no\nreport {report}\nq\n"))
        assert cli.run(parser.parse_args([str(program), "--call", "f(3)", "--server", url,
                                          "--tokenizer", str(tmp_path / "tok")])) == 0
    console = capsys.readouterr().out
    assert "first divergence at step 8" in console and "g returned 6" in console

    run = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          report.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "</html>" in run.stdout, run.stderr[-2000:]
    dom = Rows()
    dom.feed(run.stdout)
    # step k stands for real frame k until `next`: the forced return of g stands for g's own return
    # (real 6); g's body (real 5) is skipped, not a divergence
    assert [(s, r) for s, r, _ in dom.rows] == [("1", "1"), ("2", "2"), ("3", "3"), ("4", "4"), ("5", "6"),
                                                ("6", "7"), ("7", "8"), ("8", "9")]
    assert [c for _, _, c in dom.rows] == [""] * 7 + ["first"]  # only the malformed frame diverges
    assert any("{oops <b>bold</b>" in text for text in dom.raw) and not dom.injected
    assert "output match: False" in run.stdout  # the entry's return is the malformed frame
    shot = tmp_path / "report.png"
    subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", report.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000  # something was drawn
