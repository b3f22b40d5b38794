"""Word-level divergences beyond KL(q || p), for comparing TIE-KD with the KD losses that followed it.

Notation as in docs/method.md §1: at one position, p = softmax(student logits z), q = softmax(teacher
logits), over the vocabulary V. Each loss is summed over non-pad positions (and `mask`), chunked as in
`tiekd.kd.losses._chunked`, with exact log-softmax on both sides and mixtures formed in log space
(logaddexp), so no probability is floored.

- Reverse KL (mode-seeking; e.g. MiniLLM, Gu et al. ICLR 2024):   KL(p || q) = sum_v p_v (log p_v - log q_v)
- Generalized Jensen-Shannon (GKD, Agarwal et al. ICLR 2024), 0 < beta < 1, m = beta q + (1 - beta) p:
      JSD_beta = beta KL(q || m) + (1 - beta) KL(p || m)
- Total variation distance (Wen et al. ACL 2023, "f-Divergence Minimization for Sequence-Level KD"):
      TVD = 1/2 sum_v |p_v - q_v|
- Skew KL and skew reverse KL (DistiLLM, Ko et al. ICML 2024), 0 <= alpha < 1:
      SKL_alpha  = KL(q || alpha q + (1 - alpha) p)
      SRKL_alpha = KL(p || alpha p + (1 - alpha) q)

Gradients are analytic. For a loss f(p), df/dz_j = p_j (g_j - sum_v p_v g_v) with g = df/dp (the
softmax Jacobian), and per loss:
    reverse KL  g = log p - log q                                  (the constant 1 cancels)
    JSD_beta    g = (1 - beta) (log p - log m)
    TVD         g = sign(p - q) / 2                                (subgradient 0 where p = q)
    SKL_alpha   g = -(1 - alpha) q / m
    SRKL_alpha  g = log p - log m - alpha p / m                    (the constant 1 cancels)
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from ._chunked import chunked_loss


def _softmax_backward(log_p: Tensor, g: Tensor, out: Tensor) -> Tensor:
    """p * (g - sum_v p_v g_v), written into `out`: the gradient w.r.t. logits of a loss with dL/dp = g."""
    p = log_p.exp()
    mean_g = (p * g).sum(-1, keepdim=True)
    return torch.mul(p, g.sub_(mean_g), out=out)


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b) from log a and log b, without leaving log space."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a)) if 0 < weight_a < 1 else (
        log_a if weight_a >= 1 else log_b)


def _xlogy_terms(log_x: Tensor, log_y: Tensor) -> Tensor:
    """x (log x - log y) per entry, with 0 where x = 0 (0 log 0 = 0)."""
    x = log_x.exp()
    terms = x * (log_x - log_y)
    return terms.masked_fill_(x == 0, 0.0)


def _reverse_kl_chunk(chunk, gold, need_grad):
    log_p = torch.log_softmax(chunk.student(), dim=-1)
    log_q = torch.log_softmax(chunk.teacher(), dim=-1)
    loss = _xlogy_terms(log_p, log_q).sum()
    if not need_grad:
        return loss, None
    return loss, _softmax_backward(log_p, log_p - log_q, chunk.grad_out(scratch=log_q))


def _jsd_chunk(chunk, gold, need_grad, *, beta):
    log_p = torch.log_softmax(chunk.student(), dim=-1)
    log_q = torch.log_softmax(chunk.teacher(), dim=-1)
    log_m = _log_mix(log_q, log_p, beta)
    loss = beta * _xlogy_terms(log_q, log_m).sum() + (1 - beta) * _xlogy_terms(log_p, log_m).sum()
    if not need_grad:
        return loss, None
    g = (log_p - log_m).mul_(1 - beta)
    return loss, _softmax_backward(log_p, g, chunk.grad_out(scratch=log_q))


def _tvd_chunk(chunk, gold, need_grad):
    log_p = torch.log_softmax(chunk.student(), dim=-1)
    difference = log_p.exp() - torch.softmax(chunk.teacher(), dim=-1)
    loss = 0.5 * difference.abs().sum()
    if not need_grad:
        return loss, None
    g = difference.sign_().mul_(0.5)
    return loss, _softmax_backward(log_p, g, chunk.grad_out(scratch=difference))


def _skew_kl_chunk(chunk, gold, need_grad, *, alpha):
    log_p = torch.log_softmax(chunk.student(), dim=-1)
    log_q = torch.log_softmax(chunk.teacher(), dim=-1)
    log_m = _log_mix(log_q, log_p, alpha)
    loss = _xlogy_terms(log_q, log_m).sum()
    if not need_grad:
        return loss, None
    g = (log_q - log_m).exp_().mul_(-(1 - alpha))  # -(1 - alpha) q / m
    return loss, _softmax_backward(log_p, g, chunk.grad_out(scratch=log_q))


def _skew_reverse_kl_chunk(chunk, gold, need_grad, *, alpha):
    log_p = torch.log_softmax(chunk.student(), dim=-1)
    log_q = torch.log_softmax(chunk.teacher(), dim=-1)
    log_m = _log_mix(log_p, log_q, alpha)
    loss = _xlogy_terms(log_p, log_m).sum()
    if not need_grad:
        return loss, None
    g = (log_p - log_m) - alpha * (log_p - log_m).exp()  # log(p/m) - alpha p / m
    return loss, _softmax_backward(log_p, g, chunk.grad_out(scratch=log_q))


_DOC_ARGS = """
    Args:
        student_logits: `[..., V]` float logits; the only input that gets a gradient.
        teacher_logits: `[..., V]` teacher logits on the same decoder input.
        target: `[...]` int64 gold ids, used only to find padding (`pad_id`).
        mask: optional bool `[...]` restricting the summed positions.
        chunk_size: tokens per chunk (default ~8M logits' worth).

    Returns:
        0-dim float32 (float64 for float64 logits) sum over kept positions."""


def reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, pad_id: int, *,
                    mask: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """Reverse KL, KL(p || q) = sum_v p_v (log p_v - log q_v), summed over kept positions."""
    return chunked_loss(_reverse_kl_chunk, student_logits, teacher_logits, target, pad_id, mask, chunk_size)


def jsd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, pad_id: int, beta: float = 0.5, *,
             mask: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """Generalized JSD (GKD), beta KL(q || m) + (1 - beta) KL(p || m) with m = beta q + (1 - beta) p."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta {beta} must lie in (0, 1). Fix: use e.g. 0.5 (at 0 or 1 the loss is 0)")
    return chunked_loss(partial(_jsd_chunk, beta=float(beta)), student_logits, teacher_logits, target, pad_id,
                        mask, chunk_size)


def tvd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, pad_id: int, *,
             mask: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """Total variation distance, 1/2 sum_v |p_v - q_v|, summed over kept positions."""
    return chunked_loss(_tvd_chunk, student_logits, teacher_logits, target, pad_id, mask, chunk_size)


def skew_kl_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, pad_id: int, alpha: float = 0.1, *,
                 mask: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """Skew KL (DistiLLM), KL(q || alpha q + (1 - alpha) p); alpha = 0 is word-level KD's KL(q || p)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha {alpha} must lie in [0, 1). Fix: use e.g. 0.1")
    return chunked_loss(partial(_skew_kl_chunk, alpha=float(alpha)), student_logits, teacher_logits, target,
                        pad_id, mask, chunk_size)


def skew_reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, pad_id: int,
                         alpha: float = 0.1, *, mask: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """Skew reverse KL (DistiLLM), KL(p || alpha p + (1 - alpha) q); alpha = 0 is the reverse KL."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha {alpha} must lie in [0, 1). Fix: use e.g. 0.1")
    return chunked_loss(partial(_skew_reverse_kl_chunk, alpha=float(alpha)), student_logits, teacher_logits,
                        target, pad_id, mask, chunk_size)


for _loss in (reverse_kl_loss, jsd_loss, tvd_loss, skew_kl_loss, skew_reverse_kl_loss):
    _loss.__doc__ += "\n" + _DOC_ARGS
