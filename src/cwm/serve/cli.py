"""`cwm serve [--model DIR] [--host 127.0.0.1] [--port N]` (default model: the shipped cwm-mini)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint directory (config.json, *.safetensors, tokenizer files); "
                        "default: the shipped cwm-mini")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=5678, help="port (default 5678, as the release's server)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--name", default=None, help="model name reported to clients (default: the directory name)")


def run(args) -> int:
    from pathlib import Path

    import uvicorn

    from cwm.backends import LocalBackend
    from cwm.models import default_model
    from cwm.serve.app import create_app

    try:
        args.model = args.model or default_model()
        backend = LocalBackend.from_dir(args.model, device=args.device)
    except (OSError, ValueError) as e:  # missing or broken checkpoint: say which, no traceback
        print(f"error: cannot load {args.model}: {e}", file=sys.stderr)
        return 2
    name = args.name or Path(args.model).resolve().name
    app = create_app(backend, model_name=name)
    print(f"serving {name} on http://{args.host}:{args.port} (/completions, /v1/completions, /v1/chat/completions, /health)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
