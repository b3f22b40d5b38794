"""Training objectives: the student's whole per-batch loss, as one module that DDP can wrap.

Each objective returns the SUM over non-pad target tokens (the trainer divides by the global token
count of the update) and a dict of detached per-part sums for logging.
- `none`: label-smoothed CE (tie-kd.md §3).
- word-level KD and the analysis variants: (1 - a) * ls_ce + a * KD on the gold prefix.
- `selective-kd` (Wang et al. 2021): KD only on the batch's hardest `selective_ratio` tokens.
- `tie-kd` (Zhang et al. 2023, tie-kd.md §3-4): (1 - a) * ls_ce + a * mean over N passes of the
  TIE-KD token loss, pass n > 1 fed with [start] + the previous student pass's argmax, shifted right;
  with `iterative_start_update` U > 0, updates before U run pass 1 only (our option, not the paper's).
The teacher runs frozen, under `torch.inference_mode()`, and encodes each batch once.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from . import losses
from .config import RunConfig

KD_LOSSES = {
    "word-kd": losses.word_kd_loss,
    "selective-kd": losses.word_kd_loss,
    "kd-top1-only": losses.kd_without_correlation_loss,
    "kd-without-top1": losses.kd_without_top1_loss,
}


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
        method = config.method
        self.passes = config.iterative_passes if method == "tie-kd" else 1
        # updates finished so far, set by the trainer before each update: TIE-KD's passes 2..N start
        # at `config.iterative_start_update` (0, the paper's recipe: from the first update)
        self.updates_done = 0
        if method == "tie-kd":
            self.kd_loss = partial(losses.tie_kd_loss, topk=config.topk, use_ranking=config.ranking)
        elif method == "kd-topk":
            self.kd_loss = partial(losses.topk_kd_loss, topk=config.topk)
        else:
            self.kd_loss = KD_LOSSES.get(method)  # None for none / seq-kd (plain CE on their targets)

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

    def forward(self, input_ids, attention_mask, labels):
        config = self.config
        decoder_input = shift_right(labels, self.start_id)
        student_logits, student_encoded = self._first_student_pass(input_ids, attention_mask, decoder_input)
        ce = losses.label_smoothed_ce(student_logits, labels, self.pad_id, epsilon=config.label_smoothing)
        if self.kd_loss is None:
            return ce, {"ce": ce.detach()}

        with torch.inference_mode():
            teacher_encoded = self.teacher.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        kd_total = student_logits.new_zeros((), dtype=torch.float32)
        passes = self.passes if self.updates_done >= config.iterative_start_update else 1
        for pass_index in range(passes):
            if pass_index > 0:
                # pass n > 1: the student's own previous predictions become the prefix (tie-kd.md §4)
                decoder_input = shift_right(student_logits.detach().argmax(-1), self.start_id)
                student_logits = self._decode(self.student, student_encoded, attention_mask, decoder_input)
            with torch.inference_mode():
                teacher_logits = self._decode(self.teacher, teacher_encoded, attention_mask, decoder_input)
            mask = None
            if config.method == "selective-kd":
                mask = losses.selective_token_mask(student_logits, labels, self.pad_id, ratio=config.selective_ratio)
            kd_kwargs = {"mask": mask} if mask is not None else {}
            kd_total = kd_total + self.kd_loss(student_logits, teacher_logits, labels, self.pad_id, **kd_kwargs)
        kd = kd_total / passes
        alpha = config.kd_alpha
        total = (1 - alpha) * ce + alpha * kd
        return total, {"ce": ce.detach(), "kd": kd.detach()}
