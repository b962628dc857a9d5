"""A self-contained HTML report of a predicted trace against the real one.

One file, no scripts, no external assets: the source with the lines each trace executed, then
one row per predicted step with the real frame it stands for beside it; rows that differ are
highlighted and the first divergence is marked and linked from the summary. Every piece of
program or model text is escaped.

Pairing: by default step i against real frame i. The debugger passes its own pairing (`pairs`),
the one its console uses: after `next`/`out` a forced return stands for the stepped-over call's
own return, so the callee's body in the real trace is skipped, not reported as a divergence.
A malformed step shows the model's raw text and where the parser stopped.
"""

from __future__ import annotations

import html
from pathlib import Path

from cwm.eval.metrics import action_of, state_of
from cwm.trace.format import MARKER, RETURN, Frame

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
pre, td.code { font-family: monospace; white-space: pre-wrap; }
table { border-collapse: collapse; width: 100%; }
td, th { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; font-size: 13px; }
tr.diff td { background: #ffe3e3; }
tr.first td { background: #ffb3b3; font-weight: bold; }
span.real { background: #d8f5d8; } span.pred { background: #dde8ff; } span.both { background: #e9f7c9; }
.lineno { color: #888; }
tr.edited td { background: #f3e8ff; }
pre.raw { background: #fff4d6; margin: 2px 0; }
"""


def _frame_cells(frame: Frame | None) -> str:
    if frame is None:
        return "<td>—</td><td></td><td></td>"
    what = frame.value if frame.event in ("return", "exception") else state_of(frame)
    shown = what if isinstance(what, str) or what is None else ", ".join(f"{k}={v}" for k, v in what.items())
    return (
        f"<td>{html.escape(frame.event)}</td>"
        f"<td class='code'>{html.escape(frame.source.rstrip())}</td>"
        f"<td class='code'>{html.escape(str(shown))}</td>"
    )


def _malformed_cells(text: str, error: str | None) -> str:
    return (
        "<td class='malformed'>malformed</td>"
        f"<td colspan=2>{html.escape(error or 'not a frame')}"
        f"<pre class='raw'>{html.escape(text)}</pre></td>"
    )


def _source_view(source: str, real: list[Frame], predicted: list[Frame]) -> str:
    real_lines = {f.lineno for f in real}
    pred_lines = {action_of(f)[1] for f in predicted}  # predicted frames may lack line numbers
    rows = []
    for number, line in enumerate(source.splitlines(), start=1):
        in_real = number in real_lines
        in_pred = line.removesuffix(MARKER) in pred_lines
        css = "both" if in_real and in_pred else "real" if in_real else "pred" if in_pred else ""
        text = html.escape(line) or " "
        rows.append(f"<span class='lineno'>{number:4d}</span>  <span class='{css}'>{text}</span>")
    return "<pre>" + "\n".join(rows) + "</pre>"


def _same(p: Frame | None, r: Frame | None) -> tuple[bool, bool]:
    if p is None or r is None:
        return False, False
    return action_of(p) == action_of(r), state_of(p) == state_of(r)


def render_report(source: str, real: list[Frame], predicted: list[Frame | None], title: str = "trace report",
                  valid: bool = True, pairs: list[int | None] | None = None,
                  raw: list[tuple[str, str | None] | None] | None = None, edited_from: int | None = None,
                  missing_tail: bool = True) -> str:
    """The report page.

    predicted: the predicted frames (None for a malformed one, whose text and error are in `raw`);
    pairs: for each predicted frame the index of the real frame it stands for (None: none;
    default: the same position); edited_from: the first step changed by a what-if edit (from there
    on the real run is no reference); missing_tail: list the real frames after the last paired one
    as missing steps (the prediction ended early)."""
    pairs = list(range(len(predicted))) if pairs is None else list(pairs)
    raw = list(raw or [None] * len(predicted))
    rows: list[tuple] = []  # (step number or None, predicted, raw, real index or None, real frame or None, edited)
    for i, p in enumerate(predicted):
        k = pairs[i]
        j = k if k is not None and k < len(real) else None
        edited = edited_from is not None and i >= edited_from
        rows.append((i + 1, p, raw[i], j, None if j is None else real[j], edited))
    if missing_tail:
        last = max((j for _, _, _, j, _, _ in rows if j is not None), default=-1)
        rows += [(None, None, None, j, real[j], False) for j in range(last + 1, len(real))]

    compared = [(p, r) for _, p, _, _, r, edited in rows if not edited]
    same = [_same(p, r) for p, r in compared]
    ok = [a and s for a, s in same]
    first = next((k for k, good in enumerate(ok) if not good), None)
    n = len(compared)
    html_rows = []
    k = 0  # index among the compared rows
    for number, p, bad, j, r, edited in rows:
        if edited:
            css, anchor = "edited", ""
        else:
            css = "" if ok[k] else ("first" if k == first else "diff")
            anchor = " id='first-divergence'" if k == first else ""
            k += 1
        pred = _malformed_cells(*bad) if p is None and bad is not None else _frame_cells(p)
        html_rows.append(
            f"<tr class='{css}'{anchor} data-step='{'' if number is None else number}' "
            f"data-real='{'' if j is None else j + 1}'><td>{'' if number is None else number}</td>"
            f"<td>{'' if j is None else j + 1}</td>{_frame_cells(r)}{pred}</tr>"
        )
    predicted_frames = [p for p in predicted if p is not None]
    # the output: the value of the predicted frame that stands for the real trace's last (the entry's return)
    ends = [p for _, p, _, j, _, edited in rows if j == len(real) - 1 and p is not None and not edited]
    out_pred = ends[0].value if ends and ends[0].event == RETURN else None
    out_real = real[-1].value if real and real[-1].event == RETURN else None
    divergence = "none" if first is None else f"<a href='#first-divergence'>{html.escape(_number(rows, first))}</a>"
    summary = (
        f"valid format: {valid and all(p is not None for p in predicted)} · steps matching: {sum(ok)}/{n} · "
        f"action match: {sum(a for a, _ in same) / n if n else 1.0:.3f} · state match: "
        f"{sum(s for _, s in same) / n if n else 1.0:.3f} · output match: {out_pred is not None and out_pred == out_real}"
        f" · first divergence: {divergence}"
        + (f" · steps from {edited_from + 1} on follow a what-if edit (no reference)" if edited_from is not None else "")
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class='summary'>{summary}</p>
<h2>Source</h2>
<p><span class='real'>executed (real)</span> <span class='pred'>predicted only</span> <span class='both'>both</span></p>
{_source_view(source, real, predicted_frames)}
<h2>Steps</h2>
<p>Each predicted step beside the real frame it stands for (after a step over, the call's own return).</p>
<table id='steps'><tr><th>step</th><th>real #</th><th colspan=3>real</th><th colspan=3>predicted</th></tr>
<tr><th></th><th></th><th>event</th><th>line</th><th>locals / value</th><th>event</th><th>line</th><th>locals / value</th></tr>
{''.join(html_rows)}
</table></body></html>
"""


def _number(rows, k: int) -> str:
    """The label of the k-th compared row: its step number, or the real frame it misses."""
    compared = [row for row in rows if not row[5]]
    number, _, _, j, _, _ = compared[k]
    return f"step {number}" if number is not None else f"real frame {j + 1} (not predicted)"


def write_report(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.write_text(render_report(*args, **kwargs), encoding="utf-8")
    return path
