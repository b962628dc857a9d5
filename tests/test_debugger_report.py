"""The HTML report: self-contained, everything escaped, the first divergence marked."""

import re
from html.parser import HTMLParser

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
