"""The paper's analysis losses that take word-KD apart (docs/method.md §4).

(b) `kd_without_correlation_loss`: only the teacher's top-1, weighted by its probability.
(c) `kd_without_top1_loss`: the teacher's top-1 mass moved onto the gold token.
"top-k only" `topk_kd_loss`: the teacher's k most likely tokens, weighted by their probabilities.
Zhang et al., ACL 2023 (arXiv 2305.08096). All use exact log-softmax on the student side.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ._chunked import chunked_loss
from .tie_kd import LOG_EPS  # (c) takes the teacher-side log as log(q' + 1e-6), as the reference code does


def _topk_chunk(chunk, gold, need_grad, *, topk):
    # -sum_{j<=k} q[t_j] log p[t_j]
    log_p = torch.log_softmax(chunk.student(), dim=-1)  # [C, V]
    q_top, top_ids = torch.softmax(chunk.teacher(), dim=-1).topk(topk, dim=-1)  # [C, k]
    loss = -(q_top * log_p.gather(1, top_ids)).sum()
    if not need_grad:
        return loss, None
    # d/dz = (sum_j q[t_j]) p - sum_j q[t_j] onehot(t_j)
    grad = torch.exp(log_p, out=chunk.grad_out(scratch=log_p)).mul_(q_top.sum(1, keepdim=True))
    return loss, grad.scatter_add_(1, top_ids, -q_top)


def _without_top1_chunk(chunk, gold, need_grad):
    # KL(q' || p) with q' = q, q'[t_1] = 0, q'[gold] += q[t_1]
    log_p = torch.log_softmax(chunk.student(), dim=-1)  # [C, V]
    q = torch.softmax(chunk.teacher(), dim=-1)
    top1_q, top1_id = q.max(dim=-1, keepdim=True)
    # zero first, then add: where t_1 is the gold token this restores q exactly (a no-op)
    q_moved = q.scatter_(1, top1_id, 0.0).scatter_add_(1, gold[:, None], top1_q)
    terms = (q_moved + LOG_EPS).log_().sub_(log_p).mul_(q_moved)
    terms.masked_fill_(q_moved == 0, 0.0)  # 0 * (-inf) where the student gives a token no mass
    loss = terms.sum()
    del terms
    if not need_grad:
        return loss, None
    # d/dz = p * sum(q') - q' = p - q'
    return loss, torch.exp(log_p, out=chunk.grad_out(scratch=log_p)).sub_(q_moved)


def topk_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    pad_id: int,
    topk: int = 5,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Top-k KD, summed over non-pad positions.

    Per position, with p = softmax(student), q = softmax(teacher), t_1..t_k the teacher's top-k ids:

        loss = -sum_{j=1..k} q[t_j] * log p[t_j]

    Args: as `tiekd.kd.losses.word_kd_loss`, plus `topk` (k). Returns a 0-dim fp32/fp64 sum.
    """
    vocab = student_logits.shape[-1]
    if not 1 <= topk <= vocab:
        raise ValueError(f"topk must be in [1, vocab size {vocab}], got {topk}")
    chunk_fn = partial(_topk_chunk, topk=int(topk))
    return chunked_loss(chunk_fn, student_logits, teacher_logits, target, pad_id, mask, chunk_size)


def kd_without_correlation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    pad_id: int,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Analysis (b), KD without the correlation information, summed over non-pad positions.

    Per position, with t_1 the teacher's top-1 id:  loss = -q[t_1] * log p[t_1]
    (docs/method.md §4; the k = 1 case of `topk_kd_loss`).

    Args: as `tiekd.kd.losses.word_kd_loss`. Returns a 0-dim fp32/fp64 sum.
    """
    chunk_fn = partial(_topk_chunk, topk=1)
    return chunked_loss(chunk_fn, student_logits, teacher_logits, target, pad_id, mask, chunk_size)


def kd_without_top1_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    pad_id: int,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Analysis (c), KD without the top-1 information, summed over non-pad positions.

    Per position, q' = q with q'[t_1] = 0 and then q'[gold] += q[t_1] (a no-op where t_1 is the gold
    token), and (docs/method.md §4, teacher-side log as in the reference code):

        loss = KL(q' || p) = sum_v q'_v * (log(q'_v + 1e-6) - log p_v),   terms with q'_v = 0 are 0.

    Args: as `tiekd.kd.losses.word_kd_loss`; `target` also supplies the gold ids. Returns a 0-dim sum.
    """
    return chunked_loss(_without_top1_chunk, student_logits, teacher_logits, target, pad_id, mask, chunk_size)
