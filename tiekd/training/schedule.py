"""Learning-rate schedules, each a linear warm-up from `init` to `peak` over `warmup` updates, then:

- `inverse-sqrt` (Vaswani et al. 2017; fairseq's `inverse_sqrt`): lr(s) = peak * sqrt(warmup / s).
  It never ends, so a run stopped at any update is mid-schedule.
- `linear`: lr(s) = min + (peak - min) * (T - s) / (T - warmup), reaching `min` at the last update T.
- `cosine` (Loshchilov & Hutter 2017, SGDR without restarts):
  lr(s) = min + (peak - min) * (1 + cos(pi * (s - warmup) / (T - warmup))) / 2.

The decaying schedules end the run at a low learning rate, which settles the weights within a fixed
budget (the "trapezoid"/decay-to-zero recipe of e.g. Hägele et al. 2024): the state a converged run
needs, without training until an inverse-sqrt schedule has decayed by itself.
"""

from __future__ import annotations

import math

SCHEDULES = ("inverse-sqrt", "linear", "cosine")


def lr_at(step: int, peak_lr: float, warmup: int, init_lr: float, schedule: str = "inverse-sqrt",
          total: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate after `step` updates (step 0 is the first update's rate)."""
    if warmup > 0 and step < warmup:
        return init_lr + (peak_lr - init_lr) * step / warmup
    if schedule == "inverse-sqrt":
        return peak_lr * math.sqrt(max(warmup, 1) / max(step, 1))
    if total <= warmup:
        raise ValueError(f"the {schedule} schedule needs total updates ({total}) above the warm-up ({warmup})")
    progress = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return min_lr + (peak_lr - min_lr) * shape


def make_scheduler(optimizer, peak_lr: float, warmup: int, init_lr: float, schedule: str = "inverse-sqrt",
                   total: int = 0, min_lr: float = 0.0):
    """A LambdaLR over an optimizer whose base learning rate is `peak_lr`."""
    # torch is imported here, not at the top: the command line reads SCHEDULES while it builds its
    # parser, and `tiekd --help` should not wait seconds for torch
    import torch

    lr_at(warmup, peak_lr, warmup, init_lr, schedule, total, min_lr)  # fail here, not at the warm-up's end
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, peak_lr, warmup, init_lr, schedule, total, min_lr) / peak_lr)
