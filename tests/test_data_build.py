"""The dataset builder on real traced programs: records, shards, resume after kill -9, hostile code."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from cwm.data.build import BuildError, BuildParams, build
from cwm.data.dataset import row_to_trace, schema
from cwm.data.stats import PROMISED, dataset_stats
from cwm.data.synth import generate
from cwm.trace.format import to_cwm_text

SMALL = dict(max_events=2000, max_bytes=200_000, timeout=3.0, decontaminate=())


def records(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return [row for name in sorted(manifest["shards"]) for row in pq.read_table(out / name).to_pylist()]


def key(rows):
    return [(r["index"], r["id"], r["status"], r["cwm_text"]) for r in rows]


@pytest.fixture(scope="module")
def synth_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    build(out, BuildParams(source="synth", n=24, seed=0, shard_size=8, **SMALL), workers=1, progress=False)
    return out


def test_a_synth_build_writes_traced_records_in_shards(synth_build):
    manifest = json.loads((synth_build / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 3
    assert sorted(manifest["shards"]) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    rows = records(synth_build)
    programs = generate(0, 24)
    assert [r["index"] for r in rows] == list(range(24))
    assert [(r["source"], r["call"]) for r in rows] == [(p.source, p.call) for p in programs]
    assert {r["status"] for r in rows} == {"ok"}
    # the format others read (cwm.eval.traces, cwm.data.pack): exactly these columns and types
    for name in manifest["shards"]:
        assert pq.read_schema(synth_build / name).equals(schema("traces"), check_metadata=False)
    for row in rows:
        assert row["cwm_text"].startswith("<|begin_of_text|><|trace_context_start|>")
        assert row["cwm_text"].endswith("<|end_of_text|>")
        assert row["num_events"] == len(row["frames"]) > 0
        assert row["num_bytes"] == len(row["cwm_text"].encode())
        # the structured frames are the same trace as the text
        assert to_cwm_text(row_to_trace(row)) == row["cwm_text"]
    # the return value is the real one
    namespace = {}
    exec(programs[5].source, namespace)
    assert rows[5]["return_value"] == repr(eval(programs[5].call, namespace))


def test_statistics_report_statuses_events_and_constructs(synth_build):
    stats = dataset_stats(synth_build)
    assert stats["records"] == 24 and stats["statuses"] == {"ok": 24}
    assert 0 < stats["events"]["min"] <= stats["events"]["median"] <= stats["events"]["max"]
    assert {"FunctionDef", "For", "If", "Return"} <= set(stats["constructs"])
    assert set(stats["missing_constructs"]) < set(PROMISED)  # 24 programs cover most, not necessarily all
    run = subprocess.run([sys.executable, "-m", "cwm", "data", "stats", str(synth_build)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "24 records" in run.stdout and "constructs covered" in run.stdout


def test_two_workers_give_the_same_records(synth_build, tmp_path):
    build(tmp_path, BuildParams(source="synth", n=24, seed=0, shard_size=8, **SMALL), workers=2, progress=False)
    assert records(tmp_path) == records(synth_build)  # every column of every record


def test_duplicates_are_dropped_and_only_the_candidates_needed_are_generated(tmp_path, monkeypatch):
    import cwm.data.synth as synth

    examined, original, expected = [], synth.generate_compiled, generate(0, 6)

    def each_twice(seed, index, knobs):  # candidate i is program i // 2: every other one is a duplicate
        examined.append(index)
        return original(seed, index // 2, knobs=knobs)

    monkeypatch.setattr(synth, "generate_compiled", each_twice)
    manifest = build(tmp_path, BuildParams(source="synth", n=6, seed=0, shard_size=4, **SMALL), workers=1, progress=False)
    assert [(r["index"], r["source"]) for r in records(tmp_path)] == [(i, p.source) for i, p in enumerate(expected)]
    assert manifest["plan"] == {"candidates": 11, "duplicates": 5, "contaminated": 0}
    assert sorted(examined) == list(range(11))  # rounds of exactly the number still missing: none thrown away
    assert [e["candidates"] for e in manifest["shards"].values()] == [[0, 7], [7, 11]]


def test_a_rerun_with_other_parameters_is_refused(synth_build):
    with pytest.raises(BuildError, match=r"other parameters \(seed: 0 then 1\)"):
        build(synth_build, BuildParams(source="synth", n=24, seed=1, shard_size=8, **SMALL), progress=False)
    # the same parameters: nothing to do, nothing changes
    before = {p.name: p.stat().st_mtime_ns for p in synth_build.glob("shard-*")}
    build(synth_build, BuildParams(source="synth", n=24, seed=0, shard_size=8, **SMALL), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in synth_build.glob("shard-*")} == before


def _cli_build(out, n, workers=1):
    return [sys.executable, "-m", "cwm", "data", "build", "--source", "synth", "--n", str(n), "--out", str(out),
            "--shard-size", "4", "--max-events", "2000", "--timeout", "3", "--decontaminate", "none", "--quiet",
            "--workers", str(workers)]


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_minus_9_then_rerun_gives_exactly_the_uninterrupted_records(tmp_path, workers):
    n = 60
    reference = tmp_path / "reference"
    build(reference, BuildParams(source="synth", n=n, seed=0, shard_size=4, max_events=2000, timeout=3.0, decontaminate=()), progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli_build(out, n, workers), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and every process it started, mid-run
    proc.wait()
    killed_at = json.loads(manifest.read_text())
    assert not killed_at["complete"] and 2 <= len(killed_at["shards"]) < 15
    rerun = subprocess.run(_cli_build(out, n), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(manifest.read_text())["complete"]
    assert key(records(out)) == key(records(reference))  # none lost, none twice
    assert not list(out.glob(".*tmp"))


# name -> (source, call, the statuses it may end with: the tracer's limit or the sandbox's)
HOSTILE = {
    "infinite_loop": ("def f():\n    while True:\n        pass\n", "f()", {"event_limit", "timeout"}),
    # a MemoryError the program raises is its own exception (a complete trace), or the sandbox's
    "memory_bomb": ("def f():\n    x = [0] * (10 ** 10)\n    return len(x)\n", "f()", {"exception", "memory"}),
    "huge_output": ("def f():\n    while True:\n        print('x' * 100000)\n", "f()", {"output_limit"}),
    "os_exit": ("import os\n\ndef f():\n    os._exit(3)\n", "f()", {"exit"}),
    "settrace_none": ("import sys\n\ndef f():\n    sys.settrace(None)\n    x = 1\n    return x\n", "f()", {"tracer_removed"}),
    # the tracer gives up on the repr (its own timeout) and the trace completes
    "repr_loops": ("class A:\n    def __repr__(self):\n        while True:\n            pass\n\ndef f():\n    a = A()\n    return 1\n", "f()", {"ok"}),
    "deep_recursion": ("def f(n=0):\n    return f(n + 1)\n", "f()", {"recursion"}),
}


def test_hostile_programs_get_their_status_and_no_good_record_is_lost(synth_build, tmp_path):
    good = generate(0, 24)
    rows = []
    for i, p in enumerate(good):
        rows.append({"source": p.source, "call": p.call, "origin": "synth"})
        if i % 3 == 0 and i // 3 < len(HOSTILE):
            name = list(HOSTILE)[i // 3]
            source, call, _ = HOSTILE[name]
            rows.append({"source": source, "call": call, "origin": f"hostile:{name}"})
    programs = tmp_path / "programs.jsonl"
    programs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mixed"
    started = time.monotonic()
    build(out, BuildParams(source=f"programs:{programs}", shard_size=8, **SMALL), workers=2, progress=False)
    assert time.monotonic() - started < 60
    got = records(out)
    assert len(got) == len(rows)
    statuses = {r["origin"].split(":")[1]: r["status"] for r in got if r["origin"].startswith("hostile:")}
    assert set(statuses) == set(HOSTILE)
    for name, status in statuses.items():
        assert status in HOSTILE[name][2], (name, status)
    hostile = {r["origin"].split(":")[1]: r for r in got if r["origin"].startswith("hostile:")}
    assert "<repr of A timed out>" in hostile["repr_loops"]["cwm_text"]
    assert hostile["infinite_loop"]["cwm_text"] is None  # a stopped trace is kept as a status, not learned
    good_rows = [r for r in got if r["origin"] == "synth"]
    assert [r["cwm_text"] for r in good_rows] == [r["cwm_text"] for r in records(synth_build)]


def test_a_program_that_traces_differently_twice_is_not_learned(tmp_path):
    rows = [{"source": "import os\n\ndef f():\n    return os.urandom(8).hex()\n", "call": "f()"},
            {"source": "def g(x):\n    return x + 1\n", "call": "g(1)"}]
    programs = tmp_path / "programs.jsonl"
    programs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(tmp_path / "out", BuildParams(source=f"programs:{programs}", **SMALL), progress=False)
    random_row, plain_row = records(tmp_path / "out")
    assert (random_row["status"], random_row["cwm_text"], random_row["frames"]) == ("nondeterministic", None, [])
    assert random_row["num_events"] > 0 and random_row["error"] == "two runs gave different traces"
    assert plain_row["status"] == "ok" and plain_row["return_value"] == "2" and plain_row["cwm_text"]


def test_a_program_that_spoils_the_tracers_results_costs_its_neighbours_nothing(tmp_path):
    # It shares the sandboxed process with the tracer, so it can replace the renderer for the
    # programs after it in its chunk; the worker must not crash on what comes back, and each
    # program traced again alone gets its true record.
    spoiler = 'import sys\n\ndef f():\n    sys.modules["cwm.data.tracing"].rendered = lambda trace: ({"status": 5}, None)\n    return 1\n'
    rows = [{"source": "def g(x):\n    return x + 1\n", "call": f"g({i})"} for i in range(4)]
    rows.insert(1, {"source": spoiler, "call": "f()"})
    programs = tmp_path / "programs.jsonl"
    programs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(tmp_path / "out", BuildParams(source=f"programs:{programs}", **SMALL), progress=False)
    got = records(tmp_path / "out")
    assert [(r["status"], r["return_value"]) for r in got] == [("ok", "1"), ("ok", "1"), ("ok", "2"), ("ok", "3"), ("ok", "4")]


def test_a_harvest_build_traces_real_functions_twice(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text(
        'def double(x: int):\n    """\n    >>> double(21)\n    42\n    """\n    return 2 * x\n\n\n'
        'def greet(name="world"):\n    return "hello " + name\n'
    )
    out = tmp_path / "out"
    build(out, BuildParams(source=f"dir:{src}", seed=0, **SMALL), progress=False)
    rows = {r["call"]: r for r in records(out)}
    assert rows["double(21)"]["status"] == "ok" and rows["double(21)"]["return_value"] == "42"
    assert rows["greet()"]["return_value"] == "'hello world'"
    assert rows["greet()"]["context"].startswith('def greet(name="world"):  # << START_OF_TRACE')
    assert all(r["status"] in ("ok", "exception") for r in rows.values())  # deterministic: kept


# ---------------------------------------------------------------------------------------------
# Bounded in time, stopped cleanly


def test_the_run_check_is_bounded_in_int_size_and_in_time():
    from cwm.data.synth import Program, generate_compiled, runs_within

    # seed 0, program 1515 hung a 3000-program build: a loop squares its list, so ints double in
    # size each turn within the event budget. Now a candidate whose ints pass 2**63 is rejected.
    started = time.thread_time()
    program, _ = generate_compiled(0, 1515)
    assert time.thread_time() - started < 5
    assert runs_within(program, 2000)
    squaring = Program("def f(xs):\n    for k in range(40):\n        xs = [i * j for i, j in zip(xs, xs)]\n    return xs\n", "f([10, 5])")
    started = time.thread_time()
    assert not runs_within(squaring, 2000)
    assert time.thread_time() - started < 1
    # few events, each slow (C code): the CPU-time bound stops it (CPU time: the machine may be busy)
    slow = Program("def f():\n    n = 0\n    for k in range(1000):\n        n += sum(range(10 ** 6))\n    return n\n", "f()")
    started = time.thread_time()
    assert not runs_within(slow, 100_000, max_seconds=0.3)
    assert time.thread_time() - started < 2


GENERATOR_FREED = """
import sys
from cwm.data.synth import Program, runs_within

program = Program("def f(xs):\\n    n = 0\\n    for i in range(30):\\n        n += 1\\n    return all(x > 0 for x in xs)\\n", "f([1, -1, 2])")
events = 0
def count(frame, event, arg):
    global events
    events += 1
    return count
namespace = {}
exec(program.source, namespace)
sys.settrace(count)
eval(program.call, namespace)
sys.settrace(None)
print(events, [m for m in range(1, events + 5) if runs_within(program, m)])
"""


def test_a_budget_exceeded_while_a_generator_is_freed_prints_nothing_and_still_rejects():
    # all() leaves its generator suspended; freeing it runs it once more, where an exception can
    # only be printed ("Exception ignored in ...") and tracing is turned off, so the run went on
    # unchecked and passed. Every budget below the events the run needs must reject it, silently.
    run = subprocess.run([sys.executable, "-c", GENERATOR_FREED], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    needed, passing = json.loads("[" + run.stdout.replace(" ", ",", 1) + "]")
    assert passing == list(range(needed, needed + 5))


def _build_processes(out) -> list[int]:
    """Live processes (not zombies) started for a build into `out`: the main process, its workers and
    their sandboxes all carry `out` on their command line (workers and sandboxes are forks)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(out).encode() in cmdline and state != "Z" and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def _children(pid: int) -> list[int]:
    kids = []
    for other in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{other}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(other))
        except OSError:
            continue
    return kids


def _wait_for_shards(manifest, count: int, proc, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= count:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"the build did not write {count} shards in time")


def test_ctrl_c_ends_a_2_worker_build_within_2_s_with_nothing_left_and_a_rerun_resumes(tmp_path):
    n = 60
    reference = tmp_path / "reference"
    build(reference, BuildParams(source="synth", n=n, seed=0, shard_size=4, max_events=2000, timeout=3.0, decontaminate=()), progress=False)
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli_build(out, n, workers=2), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_shards(out / "manifest.json", 2, proc)
    assert len(_children(proc.pid)) == 2  # the workers
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started <= 2.0
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err, err
    assert _build_processes(out) == []
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    rerun = subprocess.run(_cli_build(out, n, workers=2), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert key(records(out)) == key(records(reference))


def test_kill_minus_9_of_the_main_process_alone_leaves_no_worker(tmp_path):
    out = tmp_path / "orphans"
    proc = subprocess.Popen(_cli_build(out, 3000, workers=2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_shards(out / "manifest.json", 1, proc)
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.kill()  # SIGKILL to the main process only: it cannot stop anything itself
    proc.wait()
    deadline = time.monotonic() + 5
    while _build_processes(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _build_processes(out) == []


UNTRUSTED_BUILD = """
import json, resource, sys
from cwm.data.build import BuildParams, build
build(sys.argv[1], BuildParams(source="programs:" + sys.argv[2], max_events=2000, max_bytes=200_000, timeout=3.0), progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB, this process only (not its sandboxes)
"""


def test_untrusted_source_is_compiled_only_in_the_sandbox_and_a_bad_one_is_a_record_with_a_status(tmp_path):
    # Decontamination normalises (parses) every program, and tracing compiles it: both in
    # sandboxes. Parsing a 12 MB source takes ~1.4 GB, a deep expression overflows the parser;
    # in the builder's own process either would have taken its memory or crashed the build.
    rows = [
        {"source": "def g(x):\n    return x + 1\n", "call": "g(1)", "origin": "good"},
        {"source": "x = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n", "call": "x", "origin": "deep_parens"},
        {"source": "def f(x):\n    return " + "-" * 100_000 + "x\n", "call": "f(1)", "origin": "deep_unary"},
        {"source": "def f(a):\n    return a" + "[0]" * 100_000 + "\n", "call": "f([0])", "origin": "deep_subscript"},
        {"source": "def f():\n    return 1\n" + "y = 1\n" * 2_000_000, "call": "f()", "origin": "big"},
    ]
    programs = tmp_path / "programs.jsonl"
    programs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", UNTRUSTED_BUILD, str(out), str(programs)], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split()[-1]) < 1000  # MiB (parsing the big source here would take ~1.4 GB; 189-710 measured)
    got = {r["origin"]: r for r in records(out)}
    assert set(got) == {r["origin"] for r in rows}
    assert got["good"]["status"] == "ok" and got["good"]["return_value"] == "2"
    for name in ("deep_parens", "deep_unary", "deep_subscript", "big"):
        assert got[name]["status"] not in ("ok", "exception") and got[name]["cwm_text"] is None, (name, got[name]["status"])
        assert got[name]["error"], name
