"""Training objectives: the student's whole per-batch loss, as one module that DDP can wrap.

Each objective returns the SUM over non-pad target tokens (the trainer divides by the global token
count of the update) and a dict of detached per-part sums for logging.
- `none`: label-smoothed CE (docs/method.md §2).
- word-level KD and the analysis variants: (1 - a) * ls_ce + a * KD on the gold prefix.
- `selective-kd` (Wang et al. 2021): KD only on the batch's hardest `selective_ratio` tokens.
- `reverse-kl`, `jsd`, `tvd`, `skew-kl`, `skew-reverse-kl`: word-level KD with that divergence
  (tiekd.kd.losses.divergences) instead of KL(q || p); `kd_temperature` softens any plain divergence.
- `on-policy` (generalized KD, Agarwal et al. ICLR 2024, with the gold CE kept as in TIE-KD): with
  probability `on_policy_lambda` a batch's KD term is computed on the student's own decoded output
  (sampled or greedy) instead of the gold prefix; the divergence is `on_policy_divergence`. lambda 0 is
  word-level KD with that divergence; TIE-KD's iterative passes are its teacher-forced argmax cousin.
- `tie-kd` (Zhang et al. 2023, docs/method.md §5-7): (1 - a) * ls_ce + a * mean over N passes of the
  TIE-KD token loss, pass n > 1 fed with [start] + the previous student pass's argmax, shifted right;
  with `iterative_start_update` U > 0, updates before U run pass 1 only (our option, not the paper's).
The teacher runs frozen, under `torch.inference_mode()`, and encodes each batch once (and not at all when
the gold-prefix logits come from a cache, tiekd.kd.teacher_cache, and no pass needs another prefix). What each method
contributes (its KD loss, passes, token mask, on-policy prefixes) comes from its entry in tiekd/kd/methods.py.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from . import losses
from ..config import RunConfig
from ..config_fields import InvalidConfig
from ..errors import TiekdError
from .methods import get_method

# the settings a method reads, named as `tiekd distill` names them (RunConfig's fields and defaults)
KD_SETTINGS = ("label_smoothing", "kd_alpha", "kd_temperature", "topk", "iterative_passes", "iterative_start_update",
               "ranking", "selective_ratio", "jsd_beta", "skew_alpha", "on_policy_lambda", "on_policy_divergence",
               "on_policy_sampling")
IGNORE_INDEX = -100  # Hugging Face's label padding; tiekd pads labels with the pad id


def with_temperature(loss_fn, temperature: float):
    """T^2 * loss(student / T, teacher / T): Hinton et al. (2015)'s softened KD, whose T^2 keeps the
    gradient's scale comparable across temperatures. T = 1 returns `loss_fn` itself."""
    if temperature == 1.0:
        return loss_fn

    def softened(student_logits, teacher_logits, target, pad_id, **kwargs):
        return temperature ** 2 * loss_fn(student_logits / temperature, teacher_logits / temperature, target,
                                          pad_id, **kwargs)

    return softened


class _Lazy:
    """A value computed on first call (under inference mode), then kept: the teacher's encoding of a batch,
    which a batch whose passes all read cached logits never needs."""

    def __init__(self, compute):
        self._compute, self._value = compute, None

    def __call__(self):
        if self._value is None:
            with torch.inference_mode():
                self._value = self._compute()
        return self._value


class _Frozen:
    """Holds the teacher outside the module tree, so DDP/FSDP/`state_dict` never see it."""

    def __init__(self, model):
        self.model = model


def shift_right(tokens: torch.Tensor, start_id: int) -> torch.Tensor:
    """[start] + tokens[:, :-1]: the decoder input that predicts `tokens` (teacher forcing)."""
    start = torch.full_like(tokens[:, :1], start_id)
    return torch.cat([start, tokens[:, :-1]], dim=1)


class DistillationObjective(nn.Module):
    """Student (a submodule) + optional frozen teacher -> loss sum for one batch."""

    def __init__(self, student, config: RunConfig, teacher=None):
        super().__init__()
        self.student = student
        self.config = config
        self.pad_id = student.config.pad_token_id
        self.start_id = student.config.decoder_start_token_id
        self._teacher = _Frozen(teacher) if teacher is not None else None
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.method = get_method(config.method)
        self.passes = self.method.passes(config)
        # updates finished so far, set by the trainer before each update: TIE-KD's passes 2..N start
        # at `config.iterative_start_update` (0, the paper's recipe: from the first update)
        self.updates_done = 0
        # None for none / seq-kd: plain CE on their targets
        self.kd_loss = self.method.kd_loss(config) if self.method.kd_loss is not None else None
        if self.kd_loss is not None:
            self.kd_loss = with_temperature(self.kd_loss, config.kd_temperature)
        self.token_mask = self.method.token_mask(config) if self.method.token_mask is not None else None

    @classmethod
    def for_method(cls, method: str, student, teacher=None, **settings) -> DistillationObjective:
        """The objective of `method` for your own training code, without a RunConfig: `settings` are the
        `tiekd distill` settings of KD_SETTINGS (the rest keep their defaults), checked by the same rules.

            objective = DistillationObjective.for_method("tie-kd", student, teacher, topk=5)
            loss, parts = objective.mean_loss(input_ids, attention_mask, labels)
            loss.backward()

        `teacher` is frozen and put in eval mode; it must share the student's vocabulary."""
        config = method_config(method, teacher_given=teacher is not None, **settings)
        if teacher is not None:
            check_same_vocabulary(student, teacher)
        return cls(student, config, teacher)

    def mean_loss(self, input_ids, attention_mask, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss per target token of one batch, and its parts (ce, kd) per target token. `labels` may
        be padded with the tokenizer's pad id or with Hugging Face's -100."""
        labels = self.gold_labels(labels)
        total, parts = self(input_ids, attention_mask, labels)
        tokens = (labels != self.pad_id).sum().clamp(min=1)
        return total / tokens, {name: value / tokens for name, value in parts.items()}

    def gold_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """`labels` with Hugging Face's -100 padding replaced by the pad id, which the losses mask by."""
        return labels.masked_fill(labels == IGNORE_INDEX, self.pad_id)

    @property
    def teacher(self):
        return self._teacher.model if self._teacher is not None else None

    def _decode(self, model, encoder_outputs, attention_mask, decoder_input_ids):
        return model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                     decoder_input_ids=decoder_input_ids, use_cache=False).logits

    def _first_student_pass(self, input_ids, attention_mask, decoder_input_ids):
        """(logits, encoder output) of the student's first pass. Every student call goes through the
        model's own forward, never a submodule alone: under FSDP only the root forward gathers the
        shared embeddings. The encoder runs here once; passes 2..N reuse its output."""
        output = self.student(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                              use_cache=False)
        return output.logits, BaseModelOutput(last_hidden_state=output.encoder_last_hidden_state)

    def forward(self, input_ids, attention_mask, labels, decoder_input_ids=None, gold_teacher_logits=None):
        """(loss summed over the batch's target tokens, its parts summed); the trainer divides both by the
        update's global target-token count. `labels` are padded with the pad id; `decoder_input_ids`, when
        given (Hugging Face collators make them), replace the shifted labels as pass 1's prefix.
        `gold_teacher_logits` [B, T, V], when given, are the teacher's logits on the gold prefix read from
        a cache (tiekd.kd.teacher_cache): pass 1 uses them instead of running the teacher."""
        config = self.config
        if gold_teacher_logits is not None and decoder_input_ids is not None:
            raise ValueError("gold_teacher_logits are the teacher's on the shifted labels, and decoder_input_ids "
                             "replace that prefix. Fix: give one of the two (without decoder_input_ids, the labels "
                             "shifted right are pass 1's prefix)")
        decoder_input = shift_right(labels, self.start_id) if decoder_input_ids is None else decoder_input_ids
        student_logits, student_encoded = self._first_student_pass(input_ids, attention_mask, decoder_input)
        ce = losses.label_smoothed_ce(student_logits, labels, self.pad_id, epsilon=config.label_smoothing)
        if self.kd_loss is None:
            return ce, {"ce": ce.detach()}

        teacher_encoded = _Lazy(lambda: self.teacher.get_encoder()(input_ids=input_ids, attention_mask=attention_mask))
        if self.method.on_policy and bool(torch.rand(()) < config.on_policy_lambda):
            kd = self._on_policy_kd(input_ids, attention_mask, labels, student_encoded, teacher_encoded())
            alpha = config.kd_alpha
            return (1 - alpha) * ce + alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}
        kd_total = student_logits.new_zeros((), dtype=torch.float32)
        passes = self.passes if self.updates_done >= config.iterative_start_update else 1
        for pass_index in range(passes):
            if pass_index > 0:
                # pass n > 1: the student's own previous predictions become the prefix (docs/method.md §6)
                decoder_input = shift_right(student_logits.detach().argmax(-1), self.start_id)
                student_logits = self._decode(self.student, student_encoded, attention_mask, decoder_input)
            if pass_index == 0 and gold_teacher_logits is not None:
                teacher_logits = gold_teacher_logits
            else:
                with torch.inference_mode():
                    teacher_logits = self._decode(self.teacher, teacher_encoded(), attention_mask, decoder_input)
            kd_kwargs = {}
            if self.token_mask is not None:  # e.g. Selective-KD: only the batch's hardest tokens
                kd_kwargs["mask"] = self.token_mask(student_logits, labels, self.pad_id)
            kd_total = kd_total + self.kd_loss(student_logits, teacher_logits, labels, self.pad_id, **kd_kwargs)
        kd = kd_total / passes
        alpha = config.kd_alpha
        total = (1 - alpha) * ce + alpha * kd
        return total, {"ce": ce.detach(), "kd": kd.detach()}

    def _on_policy_kd(self, input_ids, attention_mask, labels, student_encoded, teacher_encoded):
        """KD on the student's own output (generalized KD, Agarwal et al. ICLR 2024): the student decodes
        the batch (sampled or greedy, no gold, no gradient), then the student and the teacher run
        teacher-forced on that output and the divergence is summed over its tokens.

        The sum is rescaled by (gold tokens / generated tokens), so that the trainer's division by the
        gold token count gives the mean over the generated tokens, the same weight per token as off-policy.
        """
        config = self.config
        was_training = self.student.training
        self.student.eval()  # the student's own translation: no dropout while it is decoded
        with torch.no_grad():
            generated = self.student.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=student_encoded.last_hidden_state.detach()),
                attention_mask=attention_mask, do_sample=config.on_policy_sampling == "sample",
                num_beams=1, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=labels.shape[1] + 10)
        self.student.train(was_training)
        own = generated[:, 1:]  # drop the start symbol: [start] + own is the prefix that predicts own
        finished = own.new_zeros(own.shape[0], dtype=torch.bool)
        own = own.clone()
        eos = self.student.config.eos_token_id
        for column in range(own.shape[1]):  # tokens after the first </s> are padding
            own[finished, column] = self.pad_id
            finished |= own[:, column] == eos
        decoder_input = shift_right(own, self.start_id)
        student_logits = self._decode(self.student, student_encoded, attention_mask, decoder_input)
        with torch.inference_mode():
            teacher_logits = self._decode(self.teacher, teacher_encoded, attention_mask, decoder_input)
        kd = self.kd_loss(student_logits, teacher_logits, own, self.pad_id)
        own_tokens = (own != self.pad_id).sum().clamp(min=1)
        return kd * ((labels != self.pad_id).sum() / own_tokens)


def method_config(method: str, teacher_given: bool, **settings) -> RunConfig:
    """The RunConfig of `method` with `settings` (names of KD_SETTINGS), checked by `tiekd distill`'s rules:
    an unknown setting, a method that trains on the teacher's translations (seq-kd: no loss to compute)
    or a missing teacher is refused with the fix."""
    unknown = sorted(set(settings) - set(KD_SETTINGS))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], KD_SETTINGS, n=1)
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}" + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; the settings are {', '.join(KD_SETTINGS)}")
    known = _known_methods().get(method)  # an unknown method is refused below, with the choices
    if known is not None and known.teacher_targets:
        raise TiekdError(f"method {method!r} trains on the teacher's translations, not on a loss. Fix: write "
                         "them with `tiekd distill-data` and train on them with method none")
    if known is not None and known.needs_teacher and not teacher_given:
        raise TiekdError(f"method {method!r} needs a teacher. Fix: pass teacher=<a frozen seq2seq model>")
    try:
        config = RunConfig(data="-", out="-", method=method, teacher="(given)" if teacher_given else "",
                           **settings)
    except InvalidConfig as error:
        raise error.renamed(lambda key, with_key=True: key if with_key else "") from None
    return config


def _known_methods():
    from .methods import METHODS

    return METHODS


def check_same_vocabulary(student, teacher, student_tokenizer=None, teacher_tokenizer=None) -> None:
    """Refuse a teacher whose output vocabulary is not the student's: KD compares their distributions
    token by token. With tokenizers, their vocabularies must match entry for entry as well."""
    sizes = (student.config.vocab_size, teacher.config.vocab_size)
    if sizes[0] != sizes[1]:
        raise TiekdError(f"the teacher's vocabulary has {sizes[1]:,} entries and the student's {sizes[0]:,}: "
                         "KD needs one vocabulary. Fix: build the student with the teacher's tokenizer")
    if student_tokenizer is not None and teacher_tokenizer is not None:
        from ..data.tokenizer import vocab_fingerprint

        prints = vocab_fingerprint(student_tokenizer), vocab_fingerprint(teacher_tokenizer)
        if prints[0] != prints[1]:
            raise TiekdError(f"the tokenizers differ (student vocabulary {prints[0][0]:,} entries, fingerprint "
                             f"{prints[0][1]}; teacher {prints[1][0]:,}, {prints[1][1]}). Fix: use the teacher's "
                             "tokenizer for the student and its data")
