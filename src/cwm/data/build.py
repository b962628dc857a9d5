"""The dataset builder: programs -> traces (in the sandbox, in parallel) -> Parquet shards + manifest.

    build(out, BuildParams(source="synth", n=1000, seed=0), workers=2)

The work is split into tasks of CHUNK consecutive *candidates*: synthetic programs are
generated where the task runs (program i depends on the seed and i only), other sources'
programs are listed first (cheap) and sent along. A task traces its candidates in one sandbox
and returns their records; the main process walks the results in candidate order, drops
duplicates (by content hash) and evaluation programs, numbers the rest 0, 1, 2, ... and writes
them in shards. Generating and tracing overlap, and the main process only dedups and writes.

Resumable by construction, so a build killed at any moment (kill -9) and rerun with the same
command ends with exactly the records of an uninterrupted run:

  1. which candidates are kept, and their order, is a deterministic function of the parameters
     (source, seed, n, ...): the i-th kept candidate is record i, in shard i // shard_size;
  2. a shard is written to a temporary file, fsynced and renamed; then the manifest (itself
     written the same way) lists it, with the range of candidates it covers;
  3. shards are completed in order, so a rerun keeps the longest run of listed shards from the
     first, reads their records' content hashes back, and goes on from the candidate after them;
  4. the manifest records the parameters, and a rerun with other ones into the same directory
     is refused.

Each worker is a warm process that forks a sandbox (cwm.sandbox) per task, so no program
pays for a fresh interpreter. Ray (`ray=ADDRESS`) runs the same tasks as Ray tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cwm.data import evalsets, harvest, realistic, synth
from cwm.data.dataset import FORMAT, MANIFEST, DatasetError, read_manifest, read_shard, schema, shard_name
from cwm.data.synth import Program
from cwm.data.tracing import TraceHost, sandboxed

SOURCE_KINDS = ("synth", "real", "dir", "programs", "eval", "code")
GENERATORS = {"synth": synth, "real": realistic}  # sources whose programs the tasks generate: kind -> module
COMPRESSION = "zstd"  # of the Parquet shards
CHUNK = 32  # candidates per task and per sandbox fork: small enough to balance, large enough to amortise the fork


class BuildError(DatasetError):
    """A build that cannot start or resume as asked (the message says what to do)."""


@dataclass(frozen=True)
class BuildParams:
    """Everything the records depend on (and nothing they do not, such as the worker count)."""

    source: str  # synth[:knobs] | dir:PATH|stdlib | programs:FILE.jsonl | eval:NAME | code:PATH|stdlib
    n: int | None = None  # records wanted (synth: required; others: at most, None = all)
    seed: int = 0
    split: str = "train"  # train | eval; a train build refuses evaluation sets and drops their programs
    shard_size: int = 256
    max_events: int = 10_000  # the paper's limits for a kept trace
    max_bytes: int = 1_000_000
    timeout: float = 10.0  # wall-clock seconds per program (the tracer stops it; the sandbox is the backstop)
    decontaminate: tuple[str, ...] = evalsets.EVAL_SETS  # cruxeval, humaneval

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def arg(self) -> str:
        return self.source.split(":", 1)[1] if ":" in self.source else ""

    def check(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise BuildError(f"unknown --source {self.source!r}; use one of synth, real, dir:PATH, programs:FILE.jsonl, eval:NAME, code:PATH")
        if self.split not in ("train", "eval"):
            raise BuildError(f"--split must be train or eval, not {self.split!r}")
        if self.kind == "eval" and self.split == "train":
            evalsets.refuse_in_training(self.arg)
        if self.kind in GENERATORS and not self.n:
            raise BuildError(f"--source {self.kind} needs --n (how many programs to generate)")
        if self.kind in GENERATORS:
            try:
                GENERATORS[self.kind].Knobs.parse(self.arg)
            except ValueError as e:
                raise BuildError(str(e)) from None
        if (self.n is not None and self.n < 1) or self.shard_size < 1:
            raise BuildError("--n and --shard-size must be positive")

    def manifest_dict(self) -> dict:
        params = asdict(self)
        params["decontaminate"] = list(self.decontaminate)
        return params


# ---------------------------------------------------------------------------------------------
# The plan of a listed source: which items, in which order (static, deterministic)


@dataclass
class Plan:
    items: list = field(default_factory=list)  # Program (traces) or (path, text) (code)
    counts: dict = field(default_factory=lambda: {"candidates": 0, "duplicates": 0, "contaminated": 0})
    seen: set = field(default_factory=set, repr=False)  # content ids of the items


def content_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def make_plan(params: BuildParams) -> Plan:
    """The deduplicated, decontaminated items of a listed source (all kinds but synth), in order."""
    if params.kind in GENERATORS:
        raise BuildError("synthetic programs are generated by the build's tasks, not planned")
    if params.kind == "code":
        from cwm.data.corpus import source_files

        return _dedup(source_files(params.arg or "stdlib"), params, key=lambda item: (item[1],), contaminated=lambda _: False)
    key = lambda p: (p.source, p.call)  # noqa: E731
    if params.kind == "eval":
        return _dedup(evalsets.evaluation_programs(params.arg), params, key, lambda _: False)
    banned = _banned(params)
    if params.kind == "dir":
        candidates = harvest.harvest(params.arg or "stdlib", params.seed)
        random.Random(params.seed).shuffle(candidates)
    else:
        candidates = _read_programs(Path(params.arg))
    # Normalising parses the source, which is untrusted: in sandboxes, never in this process.
    keys = harvest.in_sandbox(lambda p: evalsets.source_key(p.source), candidates) if banned else []
    evaluation = {p.source for p, k in zip(candidates, keys) if k in banned}
    return _dedup(candidates, params, key, lambda p: p.source in evaluation)


def _banned(params: BuildParams) -> frozenset[str]:
    """The source keys of the evaluation programs a training build must not contain."""
    if params.split != "train" or not params.decontaminate or params.kind in ("eval", "code"):
        return frozenset()
    try:
        return evalsets.contamination_keys(tuple(params.decontaminate))
    except (FileNotFoundError, ValueError) as e:
        raise BuildError(f"cannot decontaminate against {', '.join(params.decontaminate)}: {e} (or pass --decontaminate none)") from None


def _evaluation_test(params: BuildParams):
    """(program, its compiled code) -> is it an evaluation program? None when nothing is banned.
    The shapes of its functions rule most programs out before the costly normalised source."""
    banned = _banned(params)
    if not banned:
        return None
    shapes = evalsets.contamination_shapes(tuple(params.decontaminate))
    return lambda program, code: evalsets.function_shape(code) in shapes and evalsets.source_key(program.source) in banned


def _dedup(stream, params: BuildParams, key, contaminated) -> Plan:
    """The stream's items in order, without duplicates and contaminated ones, up to n."""
    plan = Plan()
    for item in stream:
        if params.n is not None and len(plan.items) >= params.n:
            break
        plan.counts["candidates"] += 1
        digest = content_id(*key(item))
        if digest in plan.seen:
            plan.counts["duplicates"] += 1
        elif contaminated(item):
            plan.counts["contaminated"] += 1
        else:
            plan.seen.add(digest)
            plan.items.append(item)
    return plan


def _read_programs(path: Path) -> list[Program]:
    """A JSONL file of {"source": ..., "call": ...} (optionally "origin") per line, all strings."""
    if not path.is_file():
        raise BuildError(f"--source programs:{path}: no such file; give a JSONL file of {{\"source\", \"call\"}} rows")
    programs = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                if not line.strip():
                    continue
                row = json.loads(line.decode("utf-8"))
                fields = (row["source"], row["call"], row.get("origin", f"{path.name}:{number}"))
                if not all(isinstance(field, str) for field in fields):
                    raise TypeError("source, call and origin must be strings")
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
                raise BuildError(f"{path}:{number}: not a {{\"source\", \"call\"}} JSON object of strings ({type(e).__name__}: {e})") from None
            programs.append(Program(*fields))
    return programs


# ---------------------------------------------------------------------------------------------
# Tracing (runs in a worker process)


def _sandboxed(programs: list[Program], params: BuildParams, codes: list | None = None):
    """One sandbox traces `programs` (cwm.data.tracing: in this process's lean trace host), each in
    a fresh fork unless our own generator wrote them; a SandboxResult whose value is
    [(record fields, CWM text or None)]."""
    codes = codes or [None] * len(programs)
    settings = (params.max_events, params.max_bytes, params.timeout, params.kind not in GENERATORS)
    return sandboxed([(p.source, p.call, c) for p, c in zip(programs, codes)], settings)


@dataclass(frozen=True)
class Task:
    """Candidates start, start + 1, ..., stop - 1: a listed source's programs, or None: generate them."""

    start: int
    stop: int
    programs: tuple[Program, ...] | None = None


def run_task(task: Task, params: BuildParams):
    """In a worker: ([(content id, contaminated)] of each candidate, the records of the clean ones
    as an Arrow table whose `index` is the candidate's number). Never raises for what a program does."""
    programs, codes = task.programs, {}
    if programs is None:
        generator = GENERATORS[params.kind]
        knobs = generator.Knobs.parse(params.arg)
        try:
            made = [generator.generate_compiled(params.seed, i, knobs=knobs) for i in range(task.start, task.stop)]
        except RuntimeError as e:  # no valid program within the generator's tries: knobs too tight
            raise BuildError(str(e)) from None
        programs = [program for program, _ in made]
        codes = {i: code for i, (_, code) in enumerate(made, start=task.start)}
    assert programs is not None
    is_evaluation = _evaluation_test(params) if codes else None  # a listed source's plan is clean already
    keys = [(content_id(p.source, p.call), is_evaluation is not None and is_evaluation(*realistic.judged_part(p, codes[i]))) for i, p in enumerate(programs, start=task.start)]
    clean = [(task.start + k, p) for k, (p, (_, bad)) in enumerate(zip(programs, keys)) if not bad]
    if not clean:
        return keys, schema("traces").empty_table()
    return keys, trace_chunk(clean, params, codes or None)


def trace_chunk(chunk: list[tuple[int, Program]], params: BuildParams, codes: dict | None = None):
    """The records of a chunk of (index, program) as an Arrow table; never raises for what a program does.
    `codes`: index -> the program's compiled module code, where this process has it (synth).

    One sandbox traces the whole chunk, since forking a sandbox costs more than most traces. If
    that run fails (a program exited, crashed, flooded its output, ...), each program runs again
    alone, so a hostile program gets its own status and costs its neighbours nothing. The table
    is built here, in the worker: it travels back as Arrow IPC (far cheaper than dicts), and the
    main process only concatenates and writes.
    """
    import pyarrow as pa

    from cwm.sandbox import SandboxResult

    programs = [p for _, p in chunk]
    first = _sandboxed(programs, params, [codes.get(i) for i, _ in chunk] if codes else None)
    # Code we did not write runs twice: a record is kept only if both traces agree.
    second = _sandboxed(programs, params) if first.ok and params.kind in ("dir", "programs") else None
    if first.ok and (second is None or second.ok or len(chunk) == 1):
        agains = [None] * len(chunk) if second is None else second.value if second.ok else ["failed"]
        try:
            records = [_traced_record(i, p, rendered, again) for (i, p), rendered, again in zip(chunk, first.value, agains, strict=True)]
            return pa.Table.from_pylist(records, schema=schema("traces"))
        except Exception as e:  # a program shares the tracer's process: it can reach in and spoil what comes back
            first = SandboxResult("internal_error", error=f"the traced run sent back a malformed result: {type(e).__name__}: {e}")
    if len(chunk) > 1:
        return pa.concat_tables([trace_chunk([item], params, codes) for item in chunk])
    # the sandbox stopped this one program (timeout, memory, exit, crash, ...), or it spoiled its result
    (index, program), = chunk
    return pa.Table.from_pylist([_record(index, program, status=first.status, error=first.error)], schema=schema("traces"))


def _record(index: int, program: Program, **fields) -> dict:
    record: dict[str, Any] = {
        "index": index, "id": content_id(program.source, program.call), "origin": program.origin,
        "source": program.source, "call": program.call, "status": None, "error": None,
        "return_value": None, "num_events": 0, "num_bytes": 0, "context": None, "cwm_text": None, "frames": [],
    }  # fmt: skip
    record.update(fields)
    record["error"] = _cut(record["error"])
    return record


def _traced_record(index: int, program: Program, rendered: tuple[dict, str | None], again) -> dict:
    """The record of a rendered trace; `again` is a second one of it (or None, or "failed")."""
    from cwm.trace.format import COMPLETE

    fields, text = rendered
    record = _record(index, program, **fields)
    if again is not None and text is not None and fields["status"] in COMPLETE and (again == "failed" or again[1] != text):
        record.update(status="nondeterministic", error="two runs gave different traces", context=None, cwm_text=None, frames=[])
    return record


def _cut(text: str | None, limit: int = 2000) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# Parquet shards and the manifest


def _write_atomic(path: Path, write) -> None:
    """write(tmp_path); then _commit it as path."""
    tmp = _tmp_path(path)
    write(tmp)
    _commit(tmp, path)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _commit(tmp: Path, path: Path) -> None:
    """fsync tmp; rename it over path; fsync the directory (so the rename is durable)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_shard(out: Path, number: int, table) -> None:
    import pyarrow.parquet as pq

    _write_atomic(out / shard_name(number), lambda tmp: pq.write_table(table, tmp, compression=COMPRESSION))


def write_manifest(out: Path, manifest: dict) -> None:
    _write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"))


def _open_manifest(out: Path, params: BuildParams, num_records: int, counts: dict | None) -> dict:
    """The manifest to go on with: a fresh one, or the one in `out` (same parameters) with the
    longest run of its shards from the first whose files are there (later ones are made again)."""
    fresh: dict[str, Any] = {
        "format": FORMAT, "kind": "code" if params.kind == "code" else "traces", "params": params.manifest_dict(),
        "num_records": num_records, "num_shards": -(-num_records // params.shard_size),
        "plan": counts or {"candidates": 0, "duplicates": 0, "contaminated": 0}, "shards": {}, "complete": num_records == 0,
    }  # fmt: skip
    if not (out / MANIFEST).exists():
        return fresh
    old = read_manifest(out)
    if old["params"] != fresh["params"]:
        diff = ", ".join(f"{k}: {old['params'].get(k)!r} then {v!r}" for k, v in fresh["params"].items() if old["params"].get(k) != v)
        raise BuildError(f"{out} holds a build with other parameters ({diff}); rerun with the same parameters to resume it, or choose another --out")
    if old["complete"]:
        return old
    if any("candidates" not in entry for entry in old["shards"].values()):
        raise BuildError(f"{out} holds an unfinished build of an older cwm; build into another --out")
    shards = {}
    while shard_name(len(shards)) in old["shards"] and (out / shard_name(len(shards))).is_file():
        shards[shard_name(len(shards))] = old["shards"][shard_name(len(shards))]
    old["shards"] = shards
    return old


# ---------------------------------------------------------------------------------------------
# Running it


def build(out: str | os.PathLike, params: BuildParams, workers: int = 1, ray: str | None = None, progress: bool = True) -> dict:
    """Build (or finish building) the dataset in `out`; returns the manifest."""
    params.check()
    out = Path(out)
    if workers < 1:
        raise BuildError("--workers must be at least 1")
    ray_module = _import_ray() if ray is not None else None  # fail before any work
    # Imported (and the evaluation sets' keys loaded) before the pool forks: every worker starts with them.
    import cwm.sandbox  # noqa: F401

    if params.kind in GENERATORS:
        _evaluation_test(params)
    plan = None if params.kind in GENERATORS else make_plan(params)
    num_records = params.n if plan is None else len(plan.items)
    assert num_records is not None  # BuildParams asks a generated source for n
    out.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(out, params, num_records, None if plan is None else plan.counts)
    write_manifest(out, manifest)
    with contextlib.ExitStack() as stack:
        stack.callback(TraceHost.close_mine)  # the trace host of this process, when it traced itself
        pool = None
        if workers > 1 and ray is None and manifest["kind"] == "traces":
            # fork: each worker starts as a copy of this warm process, and forks its sandboxes from itself.
            pool = stack.enter_context(_Workers(workers))
        done = sum(entry["rows"] for entry in manifest["shards"].values())
        from cwm.progress import Bar

        label = "tracing" if done == 0 else f"resuming ({done} done)"
        with Bar(label, num_records - done, "programs", enabled=progress) as bar:
            if manifest["kind"] == "code":
                assert plan is not None  # a listed source
                _write_code_shards(out, manifest, plan, params, bar.advance)
            else:
                runner = _run_ray(ray_module, ray, workers) if ray is not None else _run_local(pool, workers)
                _Shards(out, manifest, params, plan).fill(runner, bar.advance)
    return manifest


class _Shards:
    """The main process's side of a traces build: walk the tasks' results in candidate order,
    keep each new clean program (numbered in order), and write shards as they fill."""

    def __init__(self, out: Path, manifest: dict, params: BuildParams, plan: Plan | None):
        self.out, self.manifest, self.params, self.plan = out, manifest, params, plan
        self.size, self.wanted = params.shard_size, manifest["num_records"]
        shards = manifest["shards"].values()
        self.kept = sum(entry["rows"] for entry in shards)  # the records of the shards done
        self.next = max((entry["candidates"][1] for entry in shards), default=0)  # the first candidate after them
        self.seen = {i for name in manifest["shards"] for i in read_shard(out / name, columns=["id"])["id"].to_pylist()}
        self.writer: Any = None  # the shard being filled: its open file (a pyarrow ParquetWriter)
        self.filling = 0  # ... and its records so far
        self.first = self.next  # its first candidate
        self.dropped = {"duplicates": 0, "contaminated": 0}  # among its candidates

    def fill(self, runner, advance) -> None:
        while self.kept < self.wanted:
            waiting, start = {}, self.next
            for task, result in runner(self._tasks(), self.params):
                waiting[task.start] = (task, result)
                while start in waiting and self.kept < self.wanted:  # in candidate order
                    task, (keys, table) = waiting.pop(start)
                    advance(self._take(task, keys, table))
                    start = task.stop
        if not self.manifest["complete"]:  # every shard was there already: count them
            self._finish()

    def _tasks(self) -> list[Task]:
        """Tasks for the candidates that give the records still wanted if none is dropped. Their
        bounds are multiples of CHUNK (the programs that share a sandbox do not depend on where a
        killed build resumed)."""
        stop = self.next + self.wanted - self.kept
        bounds = [self.next, *range((self.next // CHUNK + 1) * CHUNK, stop, CHUNK), stop]
        self.next = stop
        items = self.plan.items if self.plan is not None else None
        return [Task(a, b, None if items is None else tuple(items[a:b])) for a, b in zip(bounds, bounds[1:])]

    def _take(self, task: Task, keys: list, table) -> int:
        """Keep the task's new clean candidates while records are wanted; returns how many."""
        row_of = {index: row for row, index in enumerate(table["index"].to_pylist())}
        rows, taken = [], 0
        for number, (digest, contaminated) in enumerate(keys, start=task.start):
            if self.kept == self.wanted:
                self.next = number  # the candidates after the last record are not part of the build
                break
            if contaminated:
                self.dropped["contaminated"] += 1
            elif digest in self.seen:
                self.dropped["duplicates"] += 1
            else:
                self.seen.add(digest)
                rows.append(row_of[number])
                self.kept += 1
                taken += 1
            if len(rows) + self.filling == self.size or self.kept == self.wanted:
                self._add(table.take(rows), number + 1)
                rows = []
        if rows:
            self._add(table.take(rows), None)
        return taken

    def _add(self, table, shard_end: int | None) -> None:
        """Write kept rows (numbered) into the shard being filled, as a row group; finish the shard
        when it is full (its last candidate is shard_end - 1) or the build has all its records."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        first_index = self.kept - table.num_rows  # they are the last records kept
        table = table.set_column(0, "index", pa.array(range(first_index, first_index + table.num_rows), pa.int64()))
        if self.writer is None:
            path = _tmp_path(self.out / shard_name(len(self.manifest["shards"])))
            self.writer = pq.ParquetWriter(path, table.schema, compression=COMPRESSION)
        self.writer.write_table(table)
        self.filling += table.num_rows
        if shard_end is not None:
            self._finish(shard_end)

    def _finish(self, shard_end: int | None = None) -> None:
        """Commit the shard being filled (if it has records) and the manifest."""
        end = self.next if shard_end is None else shard_end
        if self.writer is not None:
            self.writer.close()
            name = shard_name(len(self.manifest["shards"]))
            _commit(_tmp_path(self.out / name), self.out / name)
            self.manifest["shards"][name] = {"rows": self.filling, "candidates": [self.first, end], **self.dropped}
        self.writer, self.filling, self.first, self.dropped = None, 0, end, {"duplicates": 0, "contaminated": 0}
        self._count()
        write_manifest(self.out, self.manifest)

    def _count(self) -> None:
        shards = self.manifest["shards"].values()
        if self.plan is None:  # synthetic: the plan's counts are those of the shards written
            self.manifest["plan"] = {
                "candidates": max((e["candidates"][1] for e in shards), default=0),
                "duplicates": sum(e["duplicates"] for e in shards), "contaminated": sum(e["contaminated"] for e in shards),
            }  # fmt: skip
        self.manifest["complete"] = sum(e["rows"] for e in shards) == self.wanted


def _write_code_shards(out: Path, manifest: dict, plan: Plan, params: BuildParams, advance) -> None:
    import pyarrow as pa

    indexed, size = list(enumerate(plan.items)), params.shard_size
    for number in range(-(-len(indexed) // size)):
        name = shard_name(number)
        if name not in manifest["shards"]:
            items = indexed[number * size : (number + 1) * size]
            write_shard(out, number, pa.Table.from_pylist([_code_record(i, path, text) for i, (path, text) in items], schema=schema("code")))
            manifest["shards"][name] = {"rows": len(items), "candidates": [items[0][0], items[-1][0] + 1], "duplicates": 0, "contaminated": 0}
            advance(len(items))
    manifest["complete"] = True
    write_manifest(out, manifest)


def _code_record(index: int, path: str, text: str) -> dict:
    return {"index": index, "id": content_id(text), "path": path, "text": text, "num_bytes": len(text.encode())}


def _run_local(pool: "_Workers | None", workers: int):
    """Tasks in this process (no pool: 1 worker, in order) or in the pool of warm worker processes;
    yields (task, result) as each finishes."""

    def run(tasks, params):
        if pool is None:
            for task in tasks:
                yield task, run_task(task, params)
        else:
            yield from pool.run(tasks, params)

    return run


class _Workers:
    """Warm worker processes (forks of this one), each running one task at a time, made to stop:

    - close() (on the way out of the build, also when Ctrl-C interrupts it) sends each worker
      SIGTERM, which makes it leave at once (killing the sandbox it may be running on the way),
      and SIGKILL to any still there after STOP_GRACE seconds;
    - a worker dies with the main process, even one killed with -9: PR_SET_PDEATHSIG sends it
      SIGTERM then (and it leaves at once if the main process died before it could ask for that);
    - SIGINT makes a worker leave too: Ctrl-C in a terminal signals the whole process group.

    (concurrent.futures' pool deadlocked on Ctrl-C and left its workers behind on kill -9.)
    """

    STOP_GRACE = 1.0

    def __init__(self, count: int):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.procs, self.conns = [], []
        try:
            for _ in range(count):
                ours, theirs = context.Pipe()
                proc = context.Process(target=_worker, args=(theirs, os.getpid(), list(self.conns)), daemon=True)
                proc.start()
                theirs.close()
                self.procs.append(proc)
                self.conns.append(ours)
        except BaseException:
            self.close()
            raise

    def run(self, tasks: list[Task], params: BuildParams):
        """Yield (task, result) as each finishes; at most one task per worker at a time (a worker
        never has a task waiting in its pipe while it sends a result back, so neither side blocks)."""
        from multiprocessing.connection import wait

        queue, idle, busy = list(reversed(tasks)), list(self.conns), {}
        while queue or busy:
            while queue and idle:
                conn = idle.pop()
                busy[conn] = queue.pop()
                conn.send((busy[conn], params))
            ready: list[Any] = wait(list(busy))  # the workers' Connections that have a result
            for conn in ready:
                try:
                    ok, result = conn.recv()
                except EOFError:
                    raise RuntimeError("a build worker died (killed from outside?); rerun the same command to resume") from None
                if not ok:
                    raise result if isinstance(result, BuildError) else RuntimeError(f"a build worker failed:\n{result}")
                idle.append(conn)
                yield busy.pop(conn), result

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            if proc.exitcode is None:
                proc.terminate()
        deadline = time.monotonic() + self.STOP_GRACE
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker(conn, parent: int, inherited: list) -> None:
    """A worker's life: run the tasks that come through `conn` until it closes or a signal says stop."""
    import ctypes
    import signal
    import traceback

    for other in inherited:  # the main process's ends of the workers forked before: theirs to close
        other.close()

    def leave(signum, frame):
        raise SystemExit(0)  # unwinds through the sandbox run in progress, which kills its sandbox

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the main process died before prctl: nobody is waiting for us
        return
    while True:
        try:
            task, params = conn.recv()
        except EOFError:
            return
        try:
            reply = (True, run_task(task, params))
        except BuildError as e:  # the user's to fix: the main process says it in one line
            reply = (False, e)
        except Exception:
            reply = (False, traceback.format_exc())
        conn.send(reply)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BuildError("--ray needs Ray, which is not installed: pip install 'cwm[distributed]'") from None
    return ray


def _run_ray(ray, address: str, workers: int):
    """The same tasks as Ray tasks (address 'local' starts a local Ray with `workers` CPUs)."""

    def run(tasks, params):
        if not ray.is_initialized():
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(run_task)
        params_ref = ray.put(params)
        queue, running = list(reversed(tasks)), {}
        window = 4 * max(1, int(ray.available_resources().get("CPU", workers)))
        while queue or running:
            while queue and len(running) < window:
                task = queue.pop()
                running[remote.remote(task, params_ref)] = task
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                yield running.pop(ref), ray.get(ref)

    return run
