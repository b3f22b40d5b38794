"""Learning-rate schedule: linear warm-up then inverse square root (Vaswani et al. 2017; fairseq's
`inverse_sqrt`): lr(step) = init + (peak - init) * step / warmup for step < warmup, else
peak * sqrt(warmup / step)."""

from __future__ import annotations

import math

import torch


def inverse_sqrt_factor(step: int, peak_lr: float, warmup: int, init_lr: float) -> float:
    """Multiplier of `peak_lr` at `step` (LambdaLR form)."""
    if warmup > 0 and step < warmup:
        return (init_lr + (peak_lr - init_lr) * step / warmup) / peak_lr
    return math.sqrt(max(warmup, 1) / max(step, 1))


def make_scheduler(optimizer, peak_lr: float, warmup: int, init_lr: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: inverse_sqrt_factor(step, peak_lr, warmup, init_lr))
