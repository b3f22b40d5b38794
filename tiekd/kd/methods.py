"""Every distillation method as one registered object: adding a method touches this file only.

A `Method` says what the student learns and what the method needs from the rest of tiekd:
- `kd_loss(config)` builds the per-position KD term, `(student_logits, teacher_logits, target, pad_id,
  **kw) -> sum over positions` (tiekd.kd.losses); None means the objective is the gold CE alone;
- `needs_teacher`: a teacher model folder is required; `online_teacher`: the teacher runs inside every
  update (False for sequence-level KD, whose teacher only decodes the targets once);
- `teacher_targets`: the student trains on the teacher's translations instead of the references;
- `passes(config)`: decoder passes per update (TIE-KD's iterative KD), `temperature`: `kd_temperature`
  applies, `token_mask(config)`: which positions get the KD term (Selective-KD), `on_policy`: the
  KD prefix may be the student's own decoded output.
The objective (tiekd/kd/objectives.py) combines them as (1 - kd_alpha) * label-smoothed CE + kd_alpha * KD.
Formulas and sources are in the loss docstrings of tiekd/kd/losses/ and in docs/method.md §9.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from ..errors import TiekdError


def _one_pass(config) -> int:
    return 1


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    kd_loss: Callable | None = None
    needs_teacher: bool = True
    online_teacher: bool = True
    teacher_targets: bool = False
    passes: Callable = _one_pass
    temperature: bool = False
    token_mask: Callable | None = None
    on_policy: bool = False


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry (the CLI's `--method` choices and every check read it from here)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def runs_teacher_on_gold(method: Method) -> bool:
    """The method's KD term runs the teacher on gold prefixes inside its updates (at least in pass 1): what
    a teacher-logit cache (tiekd.kd.teacher_cache) can stand in for."""
    return method.kd_loss is not None and method.online_teacher


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise TiekdError(f"unknown method {name!r}. Fix: use one of {', '.join(METHODS)}")
    return METHODS[name]


# ---------------------------------------------------------------------------------------------------
# loss builders


def _loss(attribute: str, **params) -> Callable:
    """A builder of the loss `tiekd.kd.losses.<attribute>` with `params` read from the run's config;
    the losses (and torch) are imported only when a run builds one."""
    def build(config):
        from . import losses

        function = getattr(losses, attribute)
        return partial(function, **{k: v(config) for k, v in params.items()}) if params else function

    return build


# word-level divergences D(q || p) between the teacher q and the student p (tiekd.kd.losses.divergences)
_DIVERGENCE_LOSSES = {
    "word-kd": _loss("word_kd_loss"),
    "reverse-kl": _loss("reverse_kl_loss"),
    "jsd": _loss("jsd_loss", beta=lambda c: c.jsd_beta),
    "tvd": _loss("tvd_loss"),
    "skew-kl": _loss("skew_kl_loss", alpha=lambda c: c.skew_alpha),
    "skew-reverse-kl": _loss("skew_reverse_kl_loss", alpha=lambda c: c.skew_alpha),
}
DIVERGENCES = tuple(_DIVERGENCE_LOSSES)


def divergence_loss(name: str, config):
    """The word-level divergence `name` (one of DIVERGENCES) with the run's parameters."""
    if name not in _DIVERGENCE_LOSSES:
        raise ValueError(f"unknown divergence {name!r}")
    return _DIVERGENCE_LOSSES[name](config)


def _selective_mask(config):
    def hardest_tokens(student_logits, labels, pad_id):
        from . import losses

        return losses.selective_token_mask(student_logits, labels, pad_id, ratio=config.selective_ratio)

    return hardest_tokens


# ---------------------------------------------------------------------------------------------------
# the methods, in the order the CLI lists them

register(Method("none", "nothing from a teacher: label-smoothed CE on the gold targets", needs_teacher=False))
register(Method("word-kd", "KL(q || p) at every gold-prefix position (Hinton et al. 2015; Kim & Rush 2016)",
                kd_loss=_DIVERGENCE_LOSSES["word-kd"], temperature=True))
register(Method("seq-kd", "CE on the teacher's beam translations of the training set (Kim & Rush 2016)",
                online_teacher=False, teacher_targets=True))
register(Method("tie-kd", "KL + ranking loss on the teacher's top-k over N iterative passes (Zhang et al. 2023)",
                kd_loss=_loss("tie_kd_loss", topk=lambda c: c.topk, use_ranking=lambda c: c.ranking),
                passes=lambda config: config.iterative_passes))
register(Method("selective-kd", "word-KD on the batch's hardest tokens only (Wang et al. 2021)",
                kd_loss=_DIVERGENCE_LOSSES["word-kd"], temperature=True, token_mask=_selective_mask))
register(Method("kd-top1-only", "analysis (b): only the teacher's top-1, weighted by its probability",
                kd_loss=_loss("kd_without_correlation_loss")))
register(Method("kd-without-top1", "analysis (c): the teacher's top-1 mass moved onto the gold token",
                kd_loss=_loss("kd_without_top1_loss")))
register(Method("kd-topk", "KD on the teacher's top-k tokens only", kd_loss=_loss("topk_kd_loss", topk=lambda c: c.topk)))
for _name, _summary in (("reverse-kl", "KL(p || q)"), ("jsd", "generalized JSD (GKD, Agarwal et al. 2024)"),
                        ("tvd", "total variation distance"), ("skew-kl", "skew KL (DistiLLM, Ko et al. 2024)"),
                        ("skew-reverse-kl", "skew reverse KL (DistiLLM, Ko et al. 2024)")):
    register(Method(_name, f"word-level KD with the {_summary}", kd_loss=_DIVERGENCE_LOSSES[_name], temperature=True))
register(Method("on-policy", "generalized KD: the KD term on the student's own decoded output with probability "
                             "on_policy_lambda (Agarwal et al. 2024)",
                kd_loss=lambda config: divergence_loss(config.on_policy_divergence, config), temperature=True,
                on_policy=True))
del _name, _summary
