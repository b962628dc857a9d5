"""How fast cwm-mini learns to copy, by initialization: GPT-2's fixed Normal(0, 0.02) against
LeCun's 1/sqrt(fan_in) (the project's `init_weights`), same model, data and seed.

    .venv/bin/python benchmarks/init_copy.py [--steps 300] [--vocab 512] [--seeds 0,1]

The task can only be learned by a copy (induction) head: rows of a random 24-token span repeated
4 times, loss on the repeats (a model that copies reaches ~0; one that does not stays at
log(vocab)). Prints, per init and seed, the loss every 25 steps and the first step where it falls
below 1.0 (`never` if it does not within --steps); last, `steps_to_copy` for each init.
docs/cwm-mini.md ("Initialization") has the numbers and what they changed.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from cwm.model.config import get_preset
from cwm.model.transformer import Transformer

SPAN, COPIES, BATCH = 24, 4, 16


def gpt2_init(model: Transformer, seed: int) -> None:
    """The init this project used before: every matrix N(0, 0.02), residual writers / sqrt(2L)."""
    generator = torch.Generator().manual_seed(seed)
    residual = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0, residual if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02, generator=generator)


def steps_to_copy(init: str, vocab: int, steps: int, seed: int, lr: float) -> int | None:
    torch.manual_seed(seed)
    model = Transformer(get_preset("cwm-mini"))
    if init == "gpt2":
        gpt2_init(model, seed)
    else:
        model.init_weights(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = torch.Generator().manual_seed(1000 + seed)
    first = None
    for step in range(1, steps + 1):
        rows = torch.cat([torch.randint(0, vocab, (BATCH, SPAN), generator=data)] * COPIES, 1)
        logits = model(rows[:, :-1])[:, SPAN - 1 :]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), rows[:, SPAN:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if first is None and loss.item() < 1.0:
            first = step
        if step % 25 == 0:
            print(f"  {init} seed {seed} step {step}: loss {loss.item():.3f}", flush=True)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for init in ("gpt2", "lecun"):
        results[init] = [steps_to_copy(init, args.vocab, args.steps, int(s), args.lr) for s in args.seeds.split(",")]
    for init, firsts in results.items():
        print(f"steps_to_copy {init}: " + ", ".join("never" if f is None else str(f) for f in firsts))


if __name__ == "__main__":
    main()
