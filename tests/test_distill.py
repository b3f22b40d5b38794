"""Distillation objectives and `tiekd distill` on a real Multi30k slice with a tiny trained teacher."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import small_config
from tiekd import losses


def batch_of(prepared, n=6):
    from tiekd.batching import collate, encode_pair_files
    from tiekd.data.prepare import load_prepared
    from tiekd.tokenizer import load_tokenizer

    data = load_prepared(prepared)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    corpus = encode_pair_files(tokenizer, *data.splits["valid"])
    return collate(corpus, list(range(n))), tokenizer


def objective_for(prepared, teacher_dir, tmp_path, **overrides):
    from tiekd.models import build_model, load_model
    from tiekd.objectives import DistillationObjective

    batch, tokenizer = batch_of(prepared)
    torch.manual_seed(0)
    student = build_model("micro", tokenizer)
    config = small_config(prepared, tmp_path, **{"method": "tie-kd", "teacher": str(teacher_dir), **overrides})
    return DistillationObjective(student, config, load_model(teacher_dir)), batch


def test_single_pass_tie_kd_equals_the_formula(prepared, teacher_dir, tmp_path):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, iterative_passes=1, dropout=0.0)
    objective.student.eval()
    total, parts = objective(batch.input_ids, batch.attention_mask, batch.labels)

    from tiekd.objectives import shift_right

    pad = objective.pad_id
    decoder_input = shift_right(batch.labels, objective.start_id)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=decoder_input)
    student_logits = objective.student(**kwargs).logits
    with torch.no_grad():
        teacher_logits = objective.teacher(**kwargs).logits
    ce = losses.label_smoothed_ce(student_logits, batch.labels, pad, epsilon=0.1)
    kd = losses.tie_kd_loss(student_logits, teacher_logits, batch.labels, pad, topk=5)
    assert torch.allclose(total, 0.5 * ce + 0.5 * kd, rtol=1e-5)
    assert torch.allclose(parts["kd"], kd, rtol=1e-5)


def test_iterative_passes_feed_the_previous_student_argmax(prepared, teacher_dir, tmp_path):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, iterative_passes=3, dropout=0.0)
    objective.student.eval()
    seen = []
    original = objective._decode

    def recording(model, encoded, mask, decoder_input_ids):
        logits = original(model, encoded, mask, decoder_input_ids)
        seen.append(("student" if model is objective.student else "teacher", decoder_input_ids.clone(), logits.detach()))
        return logits

    first_pass = objective._first_student_pass

    def recording_first(input_ids, mask, decoder_input_ids):
        logits, encoded = first_pass(input_ids, mask, decoder_input_ids)
        seen.append(("student", decoder_input_ids.clone(), logits.detach()))
        return logits, encoded

    objective._decode = recording
    objective._first_student_pass = recording_first
    total, _ = objective(batch.input_ids, batch.attention_mask, batch.labels)
    roles = [role for role, _, _ in seen]
    assert roles == ["student", "teacher", "student", "teacher", "student", "teacher"]
    from tiekd.objectives import shift_right

    gold_input = shift_right(batch.labels, objective.start_id)
    assert torch.equal(seen[0][1], gold_input) and torch.equal(seen[1][1], gold_input)
    for previous, current in ((0, 2), (2, 4)):
        expected = shift_right(seen[previous][2].argmax(-1), objective.start_id)
        assert torch.equal(seen[current][1], expected)       # student's pass n input
        assert torch.equal(seen[current + 1][1], expected)   # the teacher sees the same prefix
    assert not torch.equal(seen[2][1], gold_input)           # a real student prefix, not gold


def test_the_teacher_gets_no_gradient_and_is_not_updated(prepared, teacher_dir, tmp_path):
    from tiekd.trainer import Trainer

    trainer = Trainer(small_config(prepared, tmp_path / "run", method="tie-kd", teacher=str(teacher_dir),
                                   max_updates=3, valid_bleu=False, valid_every=100), quiet=True)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.fit()
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())
    assert not trainer.teacher.training
    # the teacher is not part of the student's module tree, so it is never saved or wrapped by DDP
    assert not any("teacher" in name for name in trainer.objective.state_dict())


@pytest.mark.parametrize("method", ["tie-kd", "word-kd"])
def test_short_distillation_lowers_the_kd_loss(prepared, teacher_dir, tmp_path, method):
    from tiekd.trainer import run_training

    out = tmp_path / method
    run_training(small_config(prepared, out, method=method, teacher=str(teacher_dir), max_updates=30,
                              valid_every=30, valid_bleu=False), quiet=True)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    kd = [r["kd"] for r in records if r["kind"] == "train"]
    assert len(kd) == 30
    assert sum(kd[-5:]) / 5 < 0.8 * sum(kd[:5]) / 5


@pytest.mark.parametrize("method", ["selective-kd", "kd-top1-only", "kd-without-top1", "kd-topk"])
def test_every_method_trains(prepared, teacher_dir, tmp_path, method):
    from tiekd.trainer import run_training

    summary = run_training(small_config(prepared, tmp_path / "run", method=method, teacher=str(teacher_dir),
                                        max_updates=3, valid_bleu=False, valid_every=100), quiet=True)
    assert summary["step"] == 3


def test_selective_kd_distills_only_the_hardest_half(prepared, teacher_dir, tmp_path, monkeypatch):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, method="selective-kd", dropout=0.0)
    masks = []
    original = losses.selective_token_mask

    def recording(*args, **kwargs):
        mask = original(*args, **kwargs)
        masks.append(mask)
        return mask

    monkeypatch.setattr(losses, "selective_token_mask", recording)
    objective(batch.input_ids, batch.attention_mask, batch.labels)
    tokens = int((batch.labels != objective.pad_id).sum())
    assert len(masks) == 1 and abs(int(masks[0].sum()) - tokens / 2) <= 1


def test_sequence_level_kd_trains_on_teacher_translations_and_resumes_them(prepared, teacher_dir, tmp_path):
    from tiekd.models import load_model
    from tiekd.seqkd import teacher_targets
    from tiekd.tokenizer import load_tokenizer
    from tiekd.data.prepare import load_prepared

    teacher, tokenizer = load_model(teacher_dir), load_tokenizer(teacher_dir)
    source = tmp_path / "src.de"
    lines = (load_prepared(prepared).splits["valid"][0]).read_text(encoding="utf-8").splitlines()[:40]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    work = tmp_path / "seqkd"
    merged = teacher_targets(teacher, tokenizer, source, work, beam=2, chunk_size=16, quiet=True)
    hyps = merged.read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 40
    # an interrupted run: the merged file and one chunk are missing; only that chunk is redone
    merged.unlink()
    (work / "chunks" / "000001.txt").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "chunks").iterdir()}
    again = teacher_targets(teacher, tokenizer, source, work, beam=2, chunk_size=16, quiet=True)
    assert again.read_text(encoding="utf-8").splitlines() == hyps
    assert all((work / "chunks" / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())


def test_seq_kd_method_end_to_end(prepared, teacher_dir, tmp_path):
    from tiekd.trainer import run_training

    out = tmp_path / "run"
    summary = run_training(small_config(prepared, out, method="seq-kd", teacher=str(teacher_dir), max_updates=2,
                                        valid_bleu=False, valid_every=100, seq_kd_beam=1), quiet=True)
    assert summary["step"] == 2
    assert len((out / "seqkd" / "train.hyp").read_text(encoding="utf-8").splitlines()) == 2000
