"""Trainer overhead: `cwm.train.Trainer` against a bare PyTorch loop on the same work.

Same model (preset, seed), same packed rows, same batch; the bare loop does only forward, loss,
backward, AdamW step, zero_grad on batches already in memory. The trainer's per-step time is what
it logs itself: consecutive records span whole loop iterations, so sampling, masks, clipping,
scheduler and JSONL/TensorBoard/console logging are all inside; the bare loop's step times are
averaged over the same windows of `--log-every` steps. Rounds alternate between
the two to spread the noise of a shared machine. Prints medians, and last `trainer_overhead: X`.

    .venv/bin/python benchmarks/train.py [--preset cwm-small] [--steps 10] [--rounds 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def bare_steps(cfg, batch, steps: int) -> list[float]:
    from cwm.model import Transformer
    from cwm.train.distributed import pick_device
    from cwm.train.optim import build_optimizer
    from cwm.train.trainer import _autocast

    device = pick_device(cfg.train.device)
    autocast = _autocast(device, cfg.train.precision)  # the trainer's precision rule: bf16 on GPUs
    torch.manual_seed(cfg.train.seed)
    model = Transformer(get_model_config(cfg))
    model.init_weights(seed=cfg.train.seed)
    model.to(device)
    batch = batch.to(device)
    opt = build_optimizer(model, cfg.optim)  # the trainer's AdamW (fused), so only the loop differs
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast():
            logits = model(batch.inputs, doc_ids=batch.doc_ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first step warms up allocators
    every = cfg.log.every
    return [statistics.mean(times[i : i + every]) for i in range(0, len(times) - every + 1, every)]


def trainer_steps(cfg) -> list[float]:
    from cwm.train.logging import read_jsonl
    from cwm.train.trainer import Trainer

    trainer = Trainer(cfg)
    trainer.train()
    records = [r for r in read_jsonl(Path(cfg.train.out_dir) / "metrics.jsonl") if "tokens_per_s" in r]
    return [trainer.plan.tokens_per_step / r["tokens_per_s"] for r in records][1:]  # per-step mean of each window


def get_model_config(cfg):
    from cwm.model import get_preset

    return get_preset(cfg.model.preset, **cfg.model.overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cwm-small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=129)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--log-every", type=int, default=1, help="the trainer's log.every (1: the most logging)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cwm.train.bytedata import write_byte_dataset
    from cwm.train.config import load_config
    from cwm.train.data import make_batch

    tmp = Path(tempfile.mkdtemp(prefix="cwm-bench-train-"))
    files = sorted((ROOT / "src/cwm").rglob("*.py"))
    data = write_byte_dataset(tmp / "data", [f.read_bytes() for f in files], args.seq_len)
    overrides = [
        f"model.preset='{args.preset}'",
        f"data.train=['{data}']",
        f"train.max_steps={args.steps + args.log_every}",
        f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}",
        f"log.every={args.log_every}",
        f"train.device='{args.device}'",
    ]
    cfg = load_config(None, overrides)
    # The bare loop gets one real batch of the same rows, loaded once.
    from cwm.data.packed import PackedDataset

    dataset = PackedDataset(data)
    batch = make_batch([dataset[i] for i in range(args.batch)])

    trainer_times, bare_times = [], []
    for r in range(args.rounds):
        cfg.train.out_dir = str(tmp / f"run{r}")
        trainer_times += trainer_steps(cfg)
        bare_times += bare_steps(cfg, batch, args.steps + 1)
    t, b = statistics.median(trainer_times), statistics.median(bare_times)
    print(
        f"preset {args.preset}, batch {args.batch} x {args.seq_len - 1} tokens, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps, log every {args.log_every}",
        file=sys.stderr,
    )
    print(f"trainer: median {t * 1e3:.1f} ms/step")
    print(f"bare loop: median {b * 1e3:.1f} ms/step")
    print(f"trainer_overhead: {t / b:.3f}")


if __name__ == "__main__":
    main()
