"""TIE-KD token loss: KL plus the intra- and inter-ranking hinges on the teacher's top-k.

Zhang et al., "Towards Understanding and Improving Knowledge Distillation for Neural Machine
Translation", ACL 2023 (arXiv 2305.08096); exact math and reference-code defaults in docs/method.md §5.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ._chunked import chunked_loss

# the reference code's log smoothing: TIE-KD's KL takes log(x + 1e-6) of both p and q, and analysis (c)
# its teacher-side log (losses/analysis.py uses this same constant)
LOG_EPS = 1e-6


def _rank_terms(student_probs, teacher_probs, topk):
    """R_intra + R_inter per row, and their gradient w.r.t. p as sparse (ids, coefficients).

    student_probs, teacher_probs: [C, V]. Returns (loss [C], ids [C, 2k], coef [C, 2k], p_at_ids [C, 2k]).
    """
    teacher_top_q, teacher_top_ids = teacher_probs.topk(topk, dim=-1)  # t_1..t_k, sorted by q
    student_top_p, student_top_ids = student_probs.topk(topk, dim=-1)  # s_1..s_k, sorted by p
    p_t = student_probs.gather(1, teacher_top_ids)  # p[t_i]   [C, k]
    q_s = teacher_probs.gather(1, student_top_ids)  # q[s_j]   [C, k]
    p_s = student_top_p  # p[s_j]

    # R_intra = sum_j max(0, p[t_j] - p[t_1]); the hinge's subgradient at 0 is 0 (as torch.relu)
    intra_gap = p_t - p_t[:, :1]
    intra_active = intra_gap > 0
    # R_inter = sum_{i,j} [q[t_i] > q[s_j]] * max(0, p[s_j] - p[t_i]);  pairs are [C, i, j]
    inter_gap = p_s[:, None, :] - p_t[:, :, None]
    inter_active = (teacher_top_q[:, :, None] > q_s[:, None, :]) & (inter_gap > 0)
    loss = intra_gap.clamp_min(0).sum(-1) + (inter_gap * inter_active).sum((1, 2))

    # d/dp: each active hinge max(0, p[a] - p[b]) adds +1 at a and -1 at b
    intra_active = intra_active.to(p_t.dtype)
    inter_active = inter_active.to(p_t.dtype)
    coef_t = intra_active - inter_active.sum(2)
    coef_t[:, 0] -= intra_active.sum(1)
    coef_s = inter_active.sum(1)
    ids = torch.cat([teacher_top_ids, student_top_ids], dim=1)
    return loss, ids, torch.cat([coef_t, coef_s], dim=1), torch.cat([p_t, p_s], dim=1)


def _tie_kd_chunk(chunk, gold, need_grad, *, topk, use_ranking):
    p = torch.softmax(chunk.student(), dim=-1)  # [C, V]
    q = torch.softmax(chunk.teacher(), dim=-1)
    p_smooth = p + LOG_EPS
    # KL with the reference's smoothed logs: sum_v q_v log((q_v + d) / (p_v + d))
    terms = (q + LOG_EPS).div_(p_smooth).log_().mul_(q)
    loss = terms.sum()
    del terms
    if use_ranking:
        rank_loss, ids, coef, p_at_ids = _rank_terms(p, q, topk)
        loss = loss + rank_loss.sum()
    if not need_grad:
        return loss, None

    # dL/dp_v = -b_v + (sparse ranking coefficients c at ids), b = q / (p + d); softmax backward
    # dL/dz = p * (dL/dp - <p, dL/dp>) = p * (<p, b> - r - b) + scatter(ids, c * p[ids]), r = sum c p[ids]
    b = torch.div(q, p_smooth, out=p_smooth)
    del q
    shift = torch.einsum("cv,cv->c", p, b)  # <p, b> as a batched dot: no [C, V] temporary
    if use_ranking:
        sparse = coef * p_at_ids  # duplicate ids (t_i == s_j) add up in scatter_add_
        shift = shift - sparse.sum(1)
    grad = torch.sub(shift[:, None], b, out=chunk.grad_out(scratch=b)).mul_(p)
    if use_ranking:
        grad.scatter_add_(1, ids, sparse)
    return loss, grad


def tie_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    pad_id: int,
    topk: int = 5,
    use_ranking: bool = True,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """TIE-KD token loss KL + R_intra + R_inter, summed over non-pad positions.

    Per position, with p = softmax(student_logits), q = softmax(teacher_logits), t_1..t_k the
    teacher's top-k ids sorted by q and s_1..s_k the student's top-k ids sorted by p
    (docs/method.md §5; Zhang et al., ACL 2023, arXiv 2305.08096):

        KL      = sum_v q_v * (log(q_v + 1e-6) - log(p_v + 1e-6))
        R_intra = sum_{j=1..k} max(0, p[t_j] - p[t_1])
        R_inter = sum_{i=1..k} sum_{j=1..k} [q[t_i] > q[s_j]] * max(0, p[s_j] - p[t_i])

    The KL deliberately uses the reference code's log(x + 1e-6) on both p and q (not the exact
    log-softmax of `word_kd_loss`), since that is what produced the paper's numbers; it stays finite
    where q_v = 0. Hinges are on probabilities, margin 0, weight 1; the top-k ids are constants
    (argsort is not differentiable), the p values at them carry gradient. Positions where t_1 is the
    gold token are not masked. The teacher logits get no gradient.

    Args:
        student_logits, teacher_logits: `[..., V]` float logits on the same decoder input.
        target: `[...]` int64 gold ids, used only to find padding (`pad_id`).
        topk: k of the ranking terms (5 in the paper).
        use_ranking: False returns the KL part only (the "iterative KD only" ablation).
        mask: optional bool `[...]` restricting the summed positions (e.g. Selective-KD).
        chunk_size: tokens per chunk (default ~8M logits' worth, 1000 at V = 8000); the extra memory
            is a few `[chunk_size, V]` float32 tensors.

    Returns:
        0-dim float32 (float64 for float64 logits) sum over kept positions.
    """
    vocab = student_logits.shape[-1]
    if use_ranking and not 1 <= topk <= vocab:
        raise ValueError(f"topk must be in [1, vocab size {vocab}], got {topk}")
    chunk_fn = partial(_tie_kd_chunk, topk=int(topk), use_ranking=bool(use_ranking))
    return chunked_loss(chunk_fn, student_logits, teacher_logits, target, pad_id, mask, chunk_size)
