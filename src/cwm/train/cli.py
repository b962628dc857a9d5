"""`cwm train --config configs/NAME.toml [section.key=value ...] [--resume] [--dry-run]`, and
`cwm train --export RUN/checkpoints/step_N --out DIR [--dtype bf16]` (a step checkpoint as a
Hugging Face model directory).

Under torchrun (`torchrun --nproc-per-node N -m cwm train --config ...`) the same command trains
data-parallel (train.parallel = "ddp") or sharded (train.parallel = "fsdp").
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a training config (TOML), e.g. configs/smoke.toml")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="override config values (TOML syntax)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    parser.add_argument(
        "--dry-run", action="store_true", help="build the model on the meta device and print the plan; train nothing"
    )
    parser.add_argument(
        "--export", metavar="CHECKPOINT", help="write a step checkpoint (RUN/checkpoints/step_N) as a Hugging Face model to --out"
    )
    parser.add_argument("--out", metavar="DIR", help="with --export: the directory to write")
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), help="with --export: the weights' dtype (default: as trained)"
    )


def run(args) -> int:
    if args.export or args.out or args.dtype:
        return export(args)
    if not args.config:
        print("cwm train: error: --config is required (or --export CHECKPOINT --out DIR)", file=sys.stderr)
        return 2
    from cwm.train.config import ConfigError, load_config
    from cwm.train.trainer import TrainingError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print_plan(cfg)
            return 0
        from cwm.train.trainer import Trainer

        Trainer(cfg, resume=args.resume).train()
        from cwm.train.distributed import barrier

        barrier()  # every rank is done with its collectives before the group is torn down
        return 0
    except ConfigError as e:
        print(f"cwm train: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"cwm train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if "torch" in sys.modules:
            from cwm.train.distributed import shutdown_distributed

            shutdown_distributed()


def export(args) -> int:
    if not (args.export and args.out) or args.config or args.overrides or args.resume or args.dry_run:
        print("cwm train: error: export as `cwm train --export CHECKPOINT --out DIR [--dtype bf16]`", file=sys.stderr)
        return 2
    import torch

    from cwm.train.checkpoint import CheckpointStateError, export_checkpoint

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.dtype]
    try:
        out = export_checkpoint(args.export, args.out, dtype=dtype)
    except (CheckpointStateError, OSError) as e:
        print(f"cwm train: error: --export: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def print_plan(cfg) -> None:
    """The run's sizes, with the model built on the meta device (no memory) to count parameters."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from cwm.model.config import format_bytes
    from cwm.train.distributed import DistInfo
    from cwm.train.trainer import build_model, make_plan, memory_per_device

    world = int(os.environ.get("WORLD_SIZE", cfg.train.plan_world_size))
    plan = make_plan(cfg, world)
    _, model = build_model(plan.model_config, DistInfo(device=torch.device("meta")), cfg.train)  # as the run builds it
    params = sum(p.numel() for p in model.parameters())
    sharded = cfg.train.parallel == "fsdp" and world > 1
    memory = memory_per_device(plan, cfg, sharded)
    t, m = cfg.train, plan.model_config

    table = Table(title=f"plan: {t.out_dir}", show_header=False)
    rows = [
        ("model", f"{cfg.model.preset} ({m.n_layers} layers, dim {m.dim}, vocab {m.vocab_size})"),
        ("parameters", f"{params:,} ({params / 1e9:.2f}B)"),
        ("init from", cfg.model.init_from or "random init"),
        (
            "data",
            ", ".join(f"{p} x{w:g}" for p, w in zip(cfg.data.train, cfg.data.weights or [1.0] * len(cfg.data.train))),
        ),
        ("context", f"{plan.seq_len - 1:,} tokens (packed rows of {plan.seq_len:,})"),
        ("devices", f"{world} ({'FSDP2' if sharded else t.parallel.upper() if world > 1 else 'single'})"),
        ("global batch", f"{t.global_batch_size:,} sequences = {plan.tokens_per_step:,} tokens"),
        ("micro batch x accumulation", f"{t.micro_batch_size} x {plan.grad_accum}"),
        ("steps", f"{plan.total_steps:,}"),
        ("tokens", f"{plan.total_tokens:,} ({plan.total_tokens / 1e12:.3g}T)"),
        ("schedule", f"{cfg.schedule.kind}, warmup {cfg.schedule.warmup_steps:,}, peak lr {cfg.optim.lr:g}"),
        ("training FLOPs", f"{plan.flops_per_token * plan.total_tokens:.3e} ({plan.flops_per_token:.3e} per token)"),
    ]
    rows += [(f"memory/device: {k}", format_bytes(v)) for k, v in memory.items()]
    total = sum(memory.values())
    rows.append(("memory/device: total", format_bytes(total)))
    if total > 80 * 1024**3:
        rows.append(
            (
                "[bold red]warning[/]",
                "over an 80 GiB GPU: needs context parallelism or a chunked loss (not implemented)",
            )
        )
    for row in rows:
        table.add_row(*row)
    Console().print(table)
