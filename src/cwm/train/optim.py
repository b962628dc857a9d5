"""AdamW with decay / no-decay parameter groups, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from cwm.train.config import OptimSection, ScheduleSection


def build_optimizer(model: torch.nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    """Weight decay on matrices (projections, embeddings, output head); none on 1-D norm weights
    and biases, whose scale decay would only fight."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel per step, and it can skip a step on the device (`found_inf`, trainer.py)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, fused=True)


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleSection) -> float:
    """The factor on the peak lr for optimizer step `step` (0-based) of `total_steps`.

    Warmup is linear from lr/warmup to lr. Then "cosine" decays to min_lr_ratio at the last step;
    "wsd" holds lr and decays linearly to min_lr_ratio over the last decay_fraction of the steps;
    "constant" holds lr.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "cosine":
        span = max(1, total_steps - 1 - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.kind == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 - (1 - floor) * progress
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: ScheduleSection):
    """A LambdaLR, so its position is saved and restored with the usual state_dict."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))
