"""The divergence-family methods, the KD temperature and on-policy KD, wired through the objective."""

from __future__ import annotations

import pytest
import torch

from conftest import small_config
from test_distill import objective_for
from tiekd.kd import losses
from tiekd.errors import TiekdError
from tiekd.kd.objectives import shift_right

METHOD_LOSSES = {
    "reverse-kl": lambda s, t, y, pad: losses.reverse_kl_loss(s, t, y, pad),
    "jsd": lambda s, t, y, pad: losses.jsd_loss(s, t, y, pad, beta=0.5),
    "tvd": lambda s, t, y, pad: losses.tvd_loss(s, t, y, pad),
    "skew-kl": lambda s, t, y, pad: losses.skew_kl_loss(s, t, y, pad, alpha=0.1),
    "skew-reverse-kl": lambda s, t, y, pad: losses.skew_reverse_kl_loss(s, t, y, pad, alpha=0.1),
}


def gold_logits(objective, batch, temperature=1.0):
    decoder_input = shift_right(batch.labels, objective.start_id)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=decoder_input)
    student_logits = objective.student(**kwargs).logits
    with torch.no_grad():
        teacher_logits = objective.teacher(**kwargs).logits
    return student_logits, teacher_logits


@pytest.mark.parametrize("method", list(METHOD_LOSSES))
def test_each_divergence_method_uses_its_own_loss(prepared, teacher_dir, tmp_path, method):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, method=method, dropout=0.0)
    objective.student.eval()
    total, parts = objective(batch.input_ids, batch.attention_mask, batch.labels)
    student_logits, teacher_logits = gold_logits(objective, batch)
    pad = objective.pad_id
    kd = METHOD_LOSSES[method](student_logits, teacher_logits, batch.labels, pad)
    ce = losses.label_smoothed_ce(student_logits, batch.labels, pad, epsilon=0.1)
    torch.testing.assert_close(parts["kd"], kd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, 0.5 * ce + 0.5 * kd, rtol=1e-5, atol=1e-5)
    # and it is not word-KD's KL under another name
    assert not torch.allclose(kd, losses.word_kd_loss(student_logits, teacher_logits, batch.labels, pad), rtol=1e-3)


def test_temperature_softens_both_sides_and_rescales_by_t_squared(prepared, teacher_dir, tmp_path):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, method="word-kd", dropout=0.0, kd_temperature=2.0)
    objective.student.eval()
    _, parts = objective(batch.input_ids, batch.attention_mask, batch.labels)
    student_logits, teacher_logits = gold_logits(objective, batch)
    expected = 4.0 * losses.word_kd_loss(student_logits / 2, teacher_logits / 2, batch.labels, objective.pad_id)
    torch.testing.assert_close(parts["kd"], expected.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(TiekdError, match="kd_temperature"):
        small_config(prepared, tmp_path, method="tie-kd", teacher=str(teacher_dir), kd_temperature=2.0)


def test_on_policy_lambda_zero_is_word_level_kd_with_the_divergence(prepared, teacher_dir, tmp_path):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, method="on-policy", dropout=0.0,
                                     on_policy_lambda=0.0, on_policy_divergence="tvd")
    objective.student.eval()
    _, parts = objective(batch.input_ids, batch.attention_mask, batch.labels)
    student_logits, teacher_logits = gold_logits(objective, batch)
    expected = losses.tvd_loss(student_logits, teacher_logits, batch.labels, objective.pad_id)
    torch.testing.assert_close(parts["kd"], expected.detach(), rtol=1e-5, atol=1e-5)


def test_on_policy_lambda_one_distills_on_the_students_own_greedy_output(prepared, teacher_dir, tmp_path):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, method="on-policy", dropout=0.0,
                                     on_policy_lambda=1.0, on_policy_divergence="reverse-kl",
                                     on_policy_sampling="greedy")
    objective.student.eval()
    seen = []
    original = objective._decode

    def recording(model, encoded, mask, decoder_input):
        seen.append(decoder_input.clone())
        return original(model, encoded, mask, decoder_input)

    objective._decode = recording
    _, parts = objective(batch.input_ids, batch.attention_mask, batch.labels)
    student_prefix, teacher_prefix = seen  # one student and one teacher pass on the same prefix
    assert torch.equal(student_prefix, teacher_prefix)
    # that prefix is [start] + the student's own greedy translation (padded after its first </s>)
    with torch.no_grad():
        greedy = objective.student.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                            num_beams=1, do_sample=False, max_new_tokens=batch.labels.shape[1] + 10)
    pad, eos = objective.pad_id, objective.student.config.eos_token_id
    own = greedy[:, 1:].clone()
    for row in range(own.shape[0]):
        tokens = own[row].tolist()
        if eos in tokens:
            own[row, tokens.index(eos) + 1:] = pad
    assert torch.equal(student_prefix, shift_right(own, objective.start_id))
    assert not torch.equal(own[:, :batch.labels.shape[1]], batch.labels)  # not the gold translation
    # the divergence is the reverse KL on that prefix, rescaled to the gold token count
    with torch.no_grad():
        kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=student_prefix)
        kd = losses.reverse_kl_loss(objective.student(**kwargs).logits, objective.teacher(**kwargs).logits, own, pad)
    expected = kd * (batch.labels != pad).sum() / (own != pad).sum()
    torch.testing.assert_close(parts["kd"], expected, rtol=1e-4, atol=1e-4)


def test_on_policy_trains_and_refuses_fsdp(prepared, teacher_dir, tmp_path):
    from tiekd.training.trainer import run_training

    summary = run_training(small_config(prepared, tmp_path / "run", method="on-policy", teacher=str(teacher_dir),
                                        max_updates=3, valid_bleu=False, valid_every=100), quiet=True)
    assert summary["step"] == 3
    with pytest.raises(TiekdError, match="on-policy"):
        small_config(prepared, tmp_path / "x", method="on-policy", teacher=str(teacher_dir), fsdp=True)
