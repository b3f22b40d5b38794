"""Label-smoothed cross-entropy on the gold tokens, in fairseq's form (docs/method.md §2)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ._chunked import chunked_loss


def _ls_ce_chunk(chunk, gold, need_grad, *, epsilon):
    log_p = torch.log_softmax(chunk.student(), dim=-1)  # [C, V]
    vocab = log_p.shape[-1]
    eps_i = epsilon / (vocab - 1)
    gold_weight = 1.0 - epsilon - eps_i
    nll = -log_p.gather(1, gold[:, None]).squeeze(1)  # -log p[gold]
    smooth = -log_p.sum(-1)  # -sum_v log p[v]
    loss = (gold_weight * nll + eps_i * smooth).sum()
    if not need_grad:
        return loss, None
    # d/dz = gold_weight (p - onehot(gold)) + eps_i (V p - 1)
    grad = torch.exp(log_p, out=chunk.grad_out(scratch=log_p)).mul_(gold_weight + eps_i * vocab).sub_(eps_i)
    grad.scatter_add_(1, gold[:, None], grad.new_full((grad.shape[0], 1), -gold_weight))
    return loss, grad


def label_smoothed_ce(
    student_logits: Tensor,
    target: Tensor,
    pad_id: int,
    epsilon: float = 0.1,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Label-smoothed cross-entropy, summed over non-pad positions.

    Per position, with p = softmax(student_logits), V the vocabulary size and eps_i = eps / (V - 1)
    (fairseq's `label_smoothed_nll_loss`, used by the TIE-KD reference code; docs/method.md §2):

        ls_ce = (1 - eps - eps_i) * (-log p[gold]) + eps_i * (-sum_v log p[v])

    Args:
        student_logits: `[..., V]` float logits (fp32, bf16, fp16 or fp64).
        target: `[...]` int64 gold ids; positions equal to `pad_id` are excluded.
        epsilon: label smoothing eps (0 gives plain NLL).
        mask: optional bool `[...]` restricting the summed positions further.
        chunk_size: tokens per chunk (default ~8M logits' worth, 1000 at V = 8000); the extra memory
            is a few `[chunk_size, V]` float32 tensors.

    Returns:
        0-dim float32 (float64 for float64 logits) sum over kept positions; divide by `token_count`.
    """
    return chunked_loss(
        partial(_ls_ce_chunk, epsilon=float(epsilon)), student_logits, None, target, pad_id, mask, chunk_size
    )
