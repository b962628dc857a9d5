"""`cwm convert SRC OUT`: a Meta-layout checkpoint (params.json + consolidated.00.pth or DCP) to
the Hugging Face layout."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="directory with params.json and consolidated.00.pth (or a DCP checkpoint)")
    parser.add_argument("out", help="output directory (config.json + sharded safetensors)")
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, GiB")


def run(args) -> int:
    from cwm.model.convert import convert_meta_to_hf

    try:
        out = convert_meta_to_hf(args.src, args.out, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
