"""Correct on code no one here wrote: all 800 CruxEval programs, each traced in the sandbox.

CruxEval is evaluation-only data: this test reads it; nothing trains on it.
"""

import ast
import json

from cwm.eval.cruxeval import DEFAULT_DATA as CRUXEVAL  # the copy inside the package
from cwm.sandbox import Limits, run_function
from cwm.trace import parse_cwm_text, to_cwm_text, trace_call


def test_all_800_cruxeval_return_values_match_and_their_texts_round_trip():
    rows = [json.loads(line) for line in CRUXEVAL.read_text().splitlines() if line.strip()]
    assert len(rows) == 800
    wrong = []
    for row in rows:
        call = f"f({row['input']})"
        result = run_function(trace_call, row["code"], call, limits=Limits(timeout=10))
        trace = result.value if result.ok else None
        if trace is None or trace.status != "ok" or ast.literal_eval(trace.return_value) != ast.literal_eval(row["output"]):
            wrong.append((row["id"], result.status, trace and (trace.status, trace.return_value), row["output"]))
            continue
        if int(row["id"].split("_")[1]) % 8 == 0:  # and a sample reads back from its text
            assert parse_cwm_text(to_cwm_text(trace)).to_trace(call) == trace, row["id"]
    assert wrong == []
