"""Which device a run uses, and the precision it computes in there."""

from __future__ import annotations

import contextlib

import torch

from ..errors import TiekdError


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU when one is visible, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TiekdError(f"device {name} asked for, but no CUDA GPU is visible. Fix: use --device cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on GPUs (fp32 on CPUs, where bf16 is slow), as nanoGPT does."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
