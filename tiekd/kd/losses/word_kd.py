"""Word-level KD: KL(teacher || student) at every target position (Hinton et al. 2015; Kim & Rush 2016)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._chunked import chunked_loss


def _word_kd_chunk(chunk, gold, need_grad):
    log_p = torch.log_softmax(chunk.student(), dim=-1)  # [C, V]
    log_q = torch.log_softmax(chunk.teacher(), dim=-1)
    q = log_q.exp()
    terms = log_q.sub_(log_p).mul_(q)  # q (log q - log p), overwriting log_q
    # 0 * log 0 = 0: where the teacher puts no mass (a -inf logit) the product would be nan
    terms.masked_fill_(q == 0, 0.0)
    loss = terms.sum()
    del terms, log_q
    if not need_grad:
        return loss, None
    # d/dz sum_v q_v (log q_v - log p_v) = p - q   (sum_v q_v = 1)
    return loss, torch.exp(log_p, out=chunk.grad_out(scratch=log_p)).sub_(q)


def word_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    pad_id: int,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Word-level KD loss KL(q || p), summed over non-pad positions.

    Per position, with p = softmax(student_logits), q = softmax(teacher_logits) and exact log-softmax
    on both sides (docs/method.md §3; Zhang et al., ACL 2023, arXiv 2305.08096):

        KL(q || p) = sum_v q_v * (log q_v - log p_v),   terms with q_v = 0 count as 0.

    Temperature 1. The teacher logits get no gradient.

    Args:
        student_logits: `[..., V]` float logits.
        teacher_logits: `[..., V]` teacher logits on the same decoder input.
        target: `[...]` int64 gold ids, used only to find padding (`pad_id`).
        mask: optional bool `[...]` restricting the summed positions (e.g. Selective-KD).
        chunk_size: tokens per chunk (default ~8M logits' worth, 1000 at V = 8000); the extra memory
            is a few `[chunk_size, V]` float32 tensors.

    Returns:
        0-dim float32 (float64 for float64 logits) sum over kept positions.
    """
    return chunked_loss(_word_kd_chunk, student_logits, teacher_logits, target, pad_id, mask, chunk_size)
