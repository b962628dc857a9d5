"""`cwm data build | pack | stats`: thin argument parsing over cwm.data.build, .pack and .stats."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="data_verb", required=True, metavar="{build,pack,stats}")

    build = verbs.add_parser("build", help="trace programs into a Parquet dataset (resumable)")
    build.add_argument("--source", required=True, help="synth[:length=6,nesting=2,values=10] | real[:size=2,main=50] | dir:PATH|stdlib | "
                       "programs:FILE.jsonl | eval:cruxeval (with --split eval) | code:PATH|stdlib (plain source corpus)")
    build.add_argument("--n", type=int, default=None, help="records wanted (synth, real: required; else at most, default all)")
    build.add_argument("--out", required=True, help="dataset directory (rerun the same command to resume)")
    build.add_argument("--workers", type=int, default=1, help="warm worker processes (default 1)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--split", choices=("train", "eval"), default="train")
    build.add_argument("--shard-size", type=int, default=256, help="records per Parquet shard (default 256)")
    build.add_argument("--max-events", type=int, default=10_000, help="drop traces with more events (default 10000)")
    build.add_argument("--max-bytes", type=int, default=1_000_000, help="drop traces larger than this (default 1 MB)")
    build.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program (default 10)")
    build.add_argument("--decontaminate", default="cruxeval,humaneval",
                       help="evaluation sets whose programs a train build drops: cruxeval, humaneval, "
                       "a comma list, or none (default cruxeval,humaneval)")
    build.add_argument("--ray", metavar="ADDRESS", default=None, help="run as Ray tasks ('local' starts a local Ray)")
    build.add_argument("--quiet", action="store_true", help="no progress bar or statistics")

    pack = verbs.add_parser("pack", help="tokenize datasets and pack them into fixed-length sequences")
    pack.add_argument("--input", action="append", required=True, metavar="NAME=PATH:WEIGHT",
                      help="a dataset dir or a chat .jsonl, with a mixture weight (repeatable); io:NAME=PATH:WEIGHT reads "
                           "a trace dataset as CruxEval direct-prompt input/output pairs")
    pack.add_argument("--tokenizer", required=True, help="tokenizer directory or file")
    pack.add_argument("--out", required=True, help="packed dataset directory")
    pack.add_argument("--seq-len", type=int, default=2048)
    pack.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (default: when an input runs out)")
    pack.add_argument("--seed", type=int, default=0)
    pack.add_argument("--trace-loss", choices=("frames", "all"), default="frames",
                      help="frames: learn the frames, not the source context (default); all: every token")
    pack.add_argument("--whole-docs", action="store_true",
                      help="never split a document across rows: it starts a new row, and one longer than a row is dropped")
    pack.add_argument("--quiet", action="store_true", help="no progress on stderr")

    stats = verbs.add_parser("stats", help="statistics of a built dataset")
    stats.add_argument("dataset", help="dataset directory")


def run(args: argparse.Namespace) -> int:
    from cwm.data.dataset import DatasetError  # BuildError is one
    from cwm.data.evalsets import EvaluationOnlyError
    from cwm.data.pack import PackError

    try:
        return {"build": _build, "pack": _pack, "stats": _stats}[args.data_verb](args)
    except (DatasetError, EvaluationOnlyError, PackError, FileNotFoundError) as e:
        print(f"cwm data {args.data_verb}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume" if args.data_verb == "build" else ""
        print(f"cwm data {args.data_verb}: interrupted{resume}", file=sys.stderr)
        return 130


def _build(args) -> int:
    from cwm.data.build import BuildError, BuildParams, build
    from cwm.data.evalsets import parse_sets
    from cwm.data.stats import dataset_stats, print_stats

    try:
        sets = parse_sets(args.decontaminate)
    except ValueError as e:
        raise BuildError(str(e)) from None
    params = BuildParams(
        source=args.source, n=args.n, seed=args.seed, split=args.split, shard_size=args.shard_size,
        max_events=args.max_events, max_bytes=args.max_bytes, timeout=args.timeout, decontaminate=sets,
    )  # fmt: skip
    build(args.out, params, workers=args.workers, ray=args.ray, progress=not args.quiet)
    if not args.quiet:
        print_stats(dataset_stats(args.out))
    return 0


def _pack(args) -> int:
    from cwm.data.pack import PackInput, pack
    from cwm.tokenizer import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(args.tokenizer)
    except TokenizerError as e:
        print(f"cwm data pack: {e}", file=sys.stderr)
        return 2
    from cwm.progress import Bar

    inputs = [PackInput.parse(spec) for spec in args.input]
    with Bar("packing", None, "tokens", enabled=not args.quiet) as bar:
        meta = pack(inputs, tok, args.out, seq_len=args.seq_len, seed=args.seed, max_tokens=args.max_tokens, loss=args.trace_loss,
                    whole_docs=args.whole_docs, progress=lambda done, total: bar.update(done, total=total))
    shares = ", ".join(f"{name} {tokens} tokens" for name, tokens in meta["tokens"].items())
    dropped = f"; {meta['dropped_longer_than_a_row']} documents longer than a row dropped" if args.whole_docs else ""
    print(f"packed {meta['num_sequences']} sequences of {meta['seq_len']} tokens into {args.out} ({shares}{dropped})")
    return 0


def _stats(args) -> int:
    from cwm.data.stats import dataset_stats, print_stats

    print_stats(dataset_stats(args.dataset))
    return 0
