"""A self-contained HTML report of a predicted trace against the real one.

One file, no scripts, no external assets: the source with the lines each trace executed, then
one row per step with the real and the predicted frame side by side; rows that differ are
highlighted and the first divergence is marked and linked from the summary. Every piece of
program or model text is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path

from cwm.eval.metrics import action_of, score_trace, state_of
from cwm.trace.format import Frame

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
pre, td.code { font-family: monospace; white-space: pre-wrap; }
table { border-collapse: collapse; width: 100%; }
td, th { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; font-size: 13px; }
tr.diff td { background: #ffe3e3; }
tr.first td { background: #ffb3b3; font-weight: bold; }
span.real { background: #d8f5d8; } span.pred { background: #dde8ff; } span.both { background: #e9f7c9; }
.lineno { color: #888; }
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


def _source_view(source: str, real: list[Frame], predicted: list[Frame]) -> str:
    real_lines = {f.lineno for f in real}
    pred_lines = {action_of(f)[1] for f in predicted}  # predicted frames may lack line numbers
    rows = []
    for number, line in enumerate(source.splitlines(), start=1):
        in_real = number in real_lines
        in_pred = line.removesuffix("  # << START_OF_TRACE") in pred_lines
        css = "both" if in_real and in_pred else "real" if in_real else "pred" if in_pred else ""
        text = html.escape(line) or " "
        rows.append(f"<span class='lineno'>{number:4d}</span>  <span class='{css}'>{text}</span>")
    return "<pre>" + "\n".join(rows) + "</pre>"


def render_report(source: str, real: list[Frame], predicted: list[Frame], title: str = "trace report",
                  valid: bool = True) -> str:
    score = score_trace(predicted, real, valid=valid)
    rows = []
    for i in range(max(len(real), len(predicted))):
        r = real[i] if i < len(real) else None
        p = predicted[i] if i < len(predicted) else None
        css = "" if score.step_ok[i] else ("first" if i == score.first_divergence else "diff")
        anchor = " id='first-divergence'" if i == score.first_divergence else ""
        rows.append(f"<tr class='{css}'{anchor}><td>{i + 1}</td>{_frame_cells(r)}{_frame_cells(p)}</tr>")
    divergence = (
        "none" if score.first_divergence is None
        else f"<a href='#first-divergence'>step {score.first_divergence + 1}</a>"
    )
    summary = (
        f"valid format: {score.valid} · action match: {score.action:.3f} · state match: "
        f"{score.state:.3f} · output match: {score.output} · first divergence: {divergence}"
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{summary}</p>
<h2>Source</h2>
<p><span class='real'>executed (real)</span> <span class='pred'>predicted only</span> <span class='both'>both</span></p>
{_source_view(source, real, predicted)}
<h2>Steps</h2>
<table><tr><th>#</th><th colspan=3>real</th><th colspan=3>predicted</th></tr>
<tr><th></th><th>event</th><th>line</th><th>locals / value</th><th>event</th><th>line</th><th>locals / value</th></tr>
{''.join(rows)}
</table></body></html>
"""


def write_report(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.write_text(render_report(*args, **kwargs), encoding="utf-8")
    return path
