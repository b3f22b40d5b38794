"""Selective-KD token selection, batch level (Wang et al., "Selective Knowledge Distillation for Neural
Machine Translation", ACL 2021; a TIE-KD baseline, docs/method.md §8)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._chunked import check_shapes, compute_dtype, default_chunk_size


@torch.no_grad()
def selective_token_mask(
    student_logits: Tensor,
    target: Tensor,
    pad_id: int,
    ratio: float = 0.5,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Bool `[...]` mask of the hardest `ratio` share of the batch's non-pad tokens.

    Hardness is the student's gold cross-entropy  ce = -log p[gold] = logsumexp(z) - z[gold]
    (no label smoothing, no gradient). Exactly floor(ratio * n + 0.5) of the batch's n non-pad tokens
    are selected (ties broken by position); pad positions never are. Pass the result as `mask=` to
    any KD loss of this package to distil only on those tokens.
    """
    check_shapes(student_logits, target)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}. Fix: Selective-KD uses 0.5")
    vocab = student_logits.shape[-1]
    chunk_size = default_chunk_size(vocab) if chunk_size is None else chunk_size
    flat_logits = student_logits.reshape(-1, vocab)
    flat_target = target.reshape(-1).long()
    nonpad = flat_target != pad_id

    # gold CE per position, chunked so the float32 upcast never covers the whole batch
    dtype = compute_dtype(student_logits)
    ce = torch.empty(flat_target.shape, dtype=dtype, device=student_logits.device)
    for start in range(0, flat_logits.shape[0], chunk_size):
        logits = flat_logits[start : start + chunk_size].to(dtype)
        gold = flat_target[start : start + chunk_size].clamp(0, vocab - 1)  # pad ids may be out of range
        ce[start : start + chunk_size] = logits.logsumexp(-1) - logits.gather(1, gold[:, None]).squeeze(1)
    ce = ce.nan_to_num_(nan=float("inf")).masked_fill_(~nonpad, -float("inf"))  # pads rank last

    # rank of each position in descending CE, computed on device (no host sync for the count)
    order = ce.argsort(descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    n_selected = torch.floor(nonpad.sum() * ratio + 0.5)  # round half up
    return ((rank < n_selected) & nonpad).view(target.shape)
