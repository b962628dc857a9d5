"""Which model shape trains fastest per token on this CPU: the measurement behind configs/cwm-mini.toml.

For each candidate shape (vocabulary of the cwm-mini tokenizer, sequence 1024 with document
masks), times full training steps (forward, loss, backward, AdamW) on random tokens with 1 and
with 2 torch threads, and prints tokens/s per shape and thread count (medians over steps after a
warm-up). Steps of the candidates alternate so the noise of a shared machine spreads evenly.

    .venv/bin/python benchmarks/mini_shapes.py [--seq 1024] [--batch 8] [--steps 4] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: ModelConfig overrides
    "d128-L4": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=384),
    "d192-L6": dict(dim=192, n_layers=6, n_heads=6, n_kv_heads=2, head_dim=32, ffn_dim=512),
    "d256-L6": dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=2, head_dim=32, ffn_dim=704),
    "d256-L8": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=32, ffn_dim=704),
}


def main() -> None:
    from cwm.model import ModelConfig, Transformer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--vocab", type=int, default=4352)
    args = ap.parse_args()

    models = {}
    for name, shape in SHAPES.items():
        cfg = ModelConfig(vocab_size=args.vocab, max_seq_len=args.seq, sliding_window=args.seq,
                          rope_original_max_seq_len=args.seq, **shape)
        model = Transformer(cfg)
        model.init_weights(seed=0)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), sum(p.numel() for p in model.parameters()))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    doc_ids = torch.arange(args.seq).div(256, rounding_mode="floor").expand(args.batch, -1)  # 4 documents a row

    def step(model, opt):
        logits = model(tokens[:, :-1], doc_ids=doc_ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        times = {name: [] for name in models}
        for s in range(args.steps + 1):
            for name, (model, opt, _) in models.items():
                t0 = time.perf_counter()
                step(model, opt)
                if s:  # the first step of each is a warm-up
                    times[name].append(time.perf_counter() - t0)
        for name, (_, _, n) in models.items():
            rate = args.batch * args.seq / statistics.median(times[name])
            rows.append((name, n, threads, rate))
            print(f"{name:10s} params {n / 1e6:5.2f}M  threads {threads}  {rate:8.0f} tokens/s", flush=True)
    best = max(rows, key=lambda r: r[3] * r[1])  # most parameter-updates per second
    print(f"fastest per token: {max(rows, key=lambda r: r[3])[0]}; most params x tokens/s: {best[0]} at {best[2]} threads")


if __name__ == "__main__":
    main()
