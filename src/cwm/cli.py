"""`cwm <verb> ...`: thin argument parsing over library calls.

Each verb lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`.
Only the chosen verb's module is imported, so `cwm trace` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "trace": ("cwm.trace.cli", "run a Python program and record its execution as a CWM trace"),
    "model": ("cwm.model.cli", "inspect a model preset or checkpoint (parameters, layers, memory)"),
    "convert": ("cwm.model.convert_cli", "convert a Meta-layout checkpoint (params.json) to the HF layout"),
    "tokenizer": ("cwm.tokenizer.cli", "train a small byte-level BPE tokenizer with the CWM special tokens"),
    "data": ("cwm.data.cli", "build trace datasets and pack them into training sequences"),
    "train": ("cwm.train.cli", "train a model from a TOML config (pre-training, mid-training, SFT)"),
    "serve": ("cwm.serve.cli", "serve a checkpoint over HTTP (/completions, /v1/completions, /health)"),
    "debug": ("cwm.debugger.cli", "neural debugger: the model predicts a program's execution frame by frame"),
    "agent": ("cwm.agent.cli", "the coding agent: run an episode, collect trajectories, make tasks (bash/edit/create/submit)"),
    "eval": ("cwm.eval.cli", "evaluate trace prediction, CruxEval-O/I, HumanEval, LiveCodeBench, MATH-500, AIME, the local SWE benchmark; writes a results JSON"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(v) for v in VERBS)
    verbs = "\n".join(f"  {v:<{width}}  {help_}" for v, (_, help_) in VERBS.items())
    return argparse.ArgumentParser(
        prog="cwm",
        description="The Code World Model system: trace, data, train, model, debug, evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="cwm <verb> [options]   (cwm <verb> --help for a verb's options)",
        epilog="verbs:\n" + verbs,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from cwm import __version__

        print(f"cwm {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose one of: {', '.join(VERBS)}")
    module_name, help_ = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cwm {verb}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # `cwm trace ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"cwm {verb}: interrupted", file=sys.stderr)
        return 130
