"""Does cwm-mini's architecture form the two heads a copy needs, and how fast? (docs/cwm-mini.md)

    .venv/bin/python scripts/induction_probe.py --task prev --steps 300
    .venv/bin/python scripts/induction_probe.py --task induction --steps 800 [--mimetic 0.8]
    .venv/bin/python scripts/induction_probe.py --task mix --steps 1000

Tasks, on rows of `--seq` random tokens from `--vocab` ids, loss only where the task says:
  prev       predict the token *before* the current one (only a previous-token head does it)
  triples    rows of (x, y, x): predict the third from the first (a previous-token head, as next-token prediction)
  induction  four 8-24-token segments copied from the first half to random later places; loss on
             the copies after their first token (a copy at a random distance: an induction head)
  mix        half the batch `triples`, half `induction`
  A:N        task A for N steps, then induction (e.g. prev:150: form the previous-token head first)
`--mimetic W` starts each attention head with W_q mixed towards W_k and W_o towards W_v^T
(Trockman & Kolter's mimetic initialization). Prints the loss every 25 steps; ln(vocab) is chance.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from cwm.model.config import get_preset
from cwm.model.transformer import Transformer


def rows_for(task: str, batch: int, seq: int, vocab: int, g: torch.Generator):
    """(tokens [batch, seq], loss mask over the targets [batch, seq - 1])."""
    rows = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    if task in ("triples", "mix"):
        n = batch if task == "triples" else batch // 2
        rows[:n, 2::3] = rows[:n, 0::3][:, : rows[:, 2::3].shape[1]]
        mask[:n, 2::3] = True
    if task in ("induction", "mix"):
        for b in range(0 if task == "induction" else batch // 2, batch):
            for _ in range(4):
                length = int(torch.randint(8, 25, (1,), generator=g))
                src = int(torch.randint(0, seq // 2 - length, (1,), generator=g))
                dst = int(torch.randint(src + length, seq - length, (1,), generator=g))
                rows[b, dst : dst + length] = rows[b, src : src + length]
                mask[b, dst + 1 : dst + length] = True
    return rows, mask[:, 1:]


def mimetic(model: Transformer, weight: float) -> None:
    cfg = model.cfg
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    with torch.no_grad():
        for block in model.layers:
            w = block.self_attn.qkv_proj.weight
            q, k, v = w[: H * D].view(H, D, -1), w[H * D : (H + K) * D].view(K, D, -1), w[(H + K) * D :].view(K, D, -1)
            o = block.self_attn.o_proj.weight
            for h in range(H):
                g = h // (H // K)
                q[h] = weight * k[g] + (1 - weight) * q[h]
                o[:, h * D : (h + 1) * D] = weight * v[g].t() / H + (1 - weight) * o[:, h * D : (h + 1) * D]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="induction")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mimetic", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = Transformer(get_preset("cwm-mini"))
    model.init_weights(seed=args.seed)
    if args.mimetic:
        mimetic(model, args.mimetic)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1000 + args.seed)
    first, _, until = args.task.partition(":")
    start = time.time()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 30)
        task = first if not until or step <= int(until) else "induction"
        rows, mask = rows_for("induction" if task == "prev" else task, args.batch, args.seq, args.vocab, g)
        if task == "prev":  # inputs rows[1:], targets rows[:-1]: the token before each input
            logits, targets = model(rows[:, 1:]), rows[:, :-1]
            mask = torch.ones_like(targets, dtype=torch.bool)
            mask[:, 0] = False  # the first input has nothing before it in view
        else:
            logits, targets = model(rows[:, :-1]), rows[:, 1:]
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        loss = losses[mask].mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            print(f"step {step} ({task}): loss {loss.item():.3f} (chance {math.log(args.vocab):.2f}) "
                  f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
