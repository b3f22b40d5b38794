"""Distillation losses for NMT over `[..., V]` logits (docs/method.md §2-9).

Every loss returns the SUM over non-pad positions (target != pad_id, and `mask` where given) as a
0-dim tensor; the trainer divides by `token_count(...)`. Temperature is 1. The hot losses run chunk by
chunk with the gradient built in the forward pass, so the full `[tokens, V]` softmax is never held.

- `label_smoothed_ce`: fairseq label-smoothed CE on the gold tokens.
- `word_kd_loss`: KL(q || p), word-level KD.
- `tie_kd_loss`: KL + R_intra + R_inter (Zhang et al., ACL 2023, arXiv 2305.08096).
- `kd_without_correlation_loss`, `kd_without_top1_loss`, `topk_kd_loss`: the paper's analysis losses.
- `reverse_kl_loss`, `jsd_loss`, `tvd_loss`, `skew_kl_loss`, `skew_reverse_kl_loss`: the divergences
  later KD work compares with (tiekd.kd.losses.divergences).
- `selective_token_mask`: Selective-KD's hardest-tokens mask (Wang et al. 2021), for `mask=`.
"""

from ._chunked import default_chunk_size, token_count
from .analysis import kd_without_correlation_loss, kd_without_top1_loss, topk_kd_loss
from .ce import label_smoothed_ce
from .divergences import jsd_loss, reverse_kl_loss, skew_kl_loss, skew_reverse_kl_loss, tvd_loss
from .selective import selective_token_mask
from .tie_kd import tie_kd_loss
from .word_kd import word_kd_loss

__all__ = [
    "default_chunk_size",
    "jsd_loss",
    "kd_without_correlation_loss",
    "kd_without_top1_loss",
    "label_smoothed_ce",
    "reverse_kl_loss",
    "selective_token_mask",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "tie_kd_loss",
    "token_count",
    "topk_kd_loss",
    "tvd_loss",
    "word_kd_loss",
]
