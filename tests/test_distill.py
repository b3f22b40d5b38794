"""Distillation objectives and `tiekd distill` on a real Multi30k slice with a tiny trained teacher."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import small_config
from tiekd.kd import losses


def batch_of(prepared, n=6):
    from tiekd.data.batching import collate, encode_pair_files
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    data = load_prepared(prepared)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    corpus = encode_pair_files(tokenizer, *data.splits["valid"])
    return collate(corpus, list(range(n))), tokenizer


def objective_for(prepared, teacher_dir, tmp_path, **overrides):
    from tiekd.models import build_model, load_model
    from tiekd.kd.objectives import DistillationObjective

    batch, tokenizer = batch_of(prepared)
    torch.manual_seed(0)
    student = build_model("micro", tokenizer)
    config = small_config(prepared, tmp_path, **{"method": "tie-kd", "teacher": str(teacher_dir), **overrides})
    return DistillationObjective(student, config, load_model(teacher_dir)), batch


def test_single_pass_tie_kd_equals_the_formula(prepared, teacher_dir, tmp_path):
    objective, batch = objective_for(prepared, teacher_dir, tmp_path, iterative_passes=1, dropout=0.0)
    objective.student.eval()
    total, parts = objective(batch.input_ids, batch.attention_mask, batch.labels)

    from tiekd.kd.objectives import shift_right

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
    from tiekd.kd.objectives import shift_right

    gold_input = shift_right(batch.labels, objective.start_id)
    assert torch.equal(seen[0][1], gold_input) and torch.equal(seen[1][1], gold_input)
    for previous, current in ((0, 2), (2, 4)):
        expected = shift_right(seen[previous][2].argmax(-1), objective.start_id)
        assert torch.equal(seen[current][1], expected)       # student's pass n input
        assert torch.equal(seen[current + 1][1], expected)   # the teacher sees the same prefix
    assert not torch.equal(seen[2][1], gold_input)           # a real student prefix, not gold


def test_the_teacher_gets_no_gradient_and_is_not_updated(prepared, teacher_dir, tmp_path):
    from tiekd.training.trainer import Trainer

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
    from tiekd.training.trainer import run_training

    out = tmp_path / method
    run_training(small_config(prepared, out, method=method, teacher=str(teacher_dir), max_updates=30,
                              valid_every=30, valid_bleu=False), quiet=True)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    kd = [r["kd"] for r in records if r["kind"] == "train"]
    assert len(kd) == 30
    assert sum(kd[-5:]) / 5 < 0.8 * sum(kd[:5]) / 5


def reference_kd(method, student_logits, teacher_logits, labels, pad, config):
    """Each method's KD sum, straight from tiekd.kd.losses (docs/method.md §3-5, §8)."""
    if method == "tie-kd":  # one pass: passes 2..N are tested above
        return losses.tie_kd_loss(student_logits, teacher_logits, labels, pad, topk=config.topk)
    if method == "word-kd":
        return losses.word_kd_loss(student_logits, teacher_logits, labels, pad)
    if method == "selective-kd":
        mask = losses.selective_token_mask(student_logits, labels, pad, ratio=config.selective_ratio)
        return losses.word_kd_loss(student_logits, teacher_logits, labels, pad, mask=mask)
    if method == "kd-top1-only":
        return losses.kd_without_correlation_loss(student_logits, teacher_logits, labels, pad)
    if method == "kd-without-top1":
        return losses.kd_without_top1_loss(student_logits, teacher_logits, labels, pad)
    if method == "kd-topk":
        return losses.topk_kd_loss(student_logits, teacher_logits, labels, pad, topk=config.topk)
    raise ValueError(method)


WORD_LEVEL = ["tie-kd", "word-kd", "selective-kd", "kd-top1-only", "kd-without-top1", "kd-topk"]


def first_update_batch(trainer):
    """The batch the trainer's first update takes (one process, update_freq 1)."""
    from tiekd.data import batching

    order = batching.epoch_order(len(trainer.batches), trainer.config.seed, 0)
    return batching.collate(trainer.train_corpus, trainer.batches[order[0]])


def read_records(run, kind="train"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.parametrize("method", WORD_LEVEL)
def test_every_method_trains_with_its_own_loss(prepared, teacher_dir, tmp_path, method):
    """The first update's logged ce, kd and loss are those of the method's loss on that batch, and no
    other method's KD loss gives the same value (kd_alpha and topk off their defaults, so their
    wiring counts too)."""
    from tiekd.kd.objectives import shift_right
    from tiekd.training.trainer import Trainer

    out = tmp_path / "run"
    trainer = Trainer(small_config(prepared, out, method=method, teacher=str(teacher_dir), max_updates=2, kd_alpha=0.3,
                                   topk=3, iterative_passes=1, valid_bleu=False, valid_every=100), quiet=True)
    config, pad = trainer.config, trainer.pad_id
    batch = first_update_batch(trainer)
    decoder_input = shift_right(batch.labels, trainer.student.config.decoder_start_token_id)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=decoder_input)
    with torch.no_grad():  # micro has no dropout: training mode computes the same logits
        student_logits, teacher_logits = trainer.student(**kwargs).logits, trainer.teacher(**kwargs).logits
    ce = float(losses.label_smoothed_ce(student_logits, batch.labels, pad, epsilon=config.label_smoothing))
    kd = {m: float(reference_kd(m, student_logits, teacher_logits, batch.labels, pad, config)) for m in WORD_LEVEL}
    trainer.fit()

    first = read_records(out)[0]
    tokens = batch.num_target_tokens
    assert first["step"] == 1
    assert first["ce"] == pytest.approx(ce / tokens, rel=1e-5)
    assert first["kd"] == pytest.approx(kd[method] / tokens, rel=1e-5)
    assert first["loss"] == pytest.approx((0.7 * ce + 0.3 * kd[method]) / tokens, rel=1e-5)
    # the check tells the methods apart: every other KD loss is 10 tolerances away at least (the nearest,
    # word-kd to tie-kd, differs by TIE-KD's ranking terms: about 1e-3 of the sum)
    others = [m for m in WORD_LEVEL if m != method]
    assert all(abs(kd[m] - kd[method]) > 1e-4 * abs(kd[method]) for m in others), kd


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


def test_seq_kd_method_end_to_end(prepared, teacher_dir, tmp_path):
    """seq-kd trains with plain CE on the teacher's greedy translations of the training sources."""
    from tiekd.data.batching import encode_texts
    from tiekd.data.prepare import load_prepared
    from tiekd.io import read_lines
    from tiekd.models import load_model
    from tiekd.kd.objectives import shift_right
    from tiekd.training.trainer import Trainer

    out = tmp_path / "run"
    # the 100 validation pairs as training set: the teacher translates them in seconds, not 2,000 pairs
    trainer = Trainer(small_config(prepared, out, method="seq-kd", teacher=str(teacher_dir), max_updates=2,
                                   train_split="valid", valid_bleu=False, valid_every=100, seq_kd_beam=1), quiet=True)
    hyps = (out / "seqkd" / "train.hyp").read_text(encoding="utf-8").splitlines()
    sources, references = map(read_lines, load_prepared(prepared).splits["valid"])
    assert len(hyps) == len(sources) == 100
    assert (out / "seqkd" / "shards-work" / "teacher-ct2" / "model.bin").is_file()  # CTranslate2 decoded them
    # the training targets are the teacher's translations, not the references
    # ...read from ids stored beside them once, not encoded again at every start
    from tiekd.data.binarized import BinarizedCorpus

    assert isinstance(trainer.train_corpus, BinarizedCorpus)
    assert (out / "seqkd" / "train.hyp.ids").is_file() and (out / "seqkd" / "train.hyp.ids.json").is_file()
    stored = trainer.train_corpus.targets
    assert [stored[i].tolist() for i in range(len(stored))] == encode_texts(trainer.tokenizer, hyps)
    assert sum(h != r for h, r in zip(hyps, references)) > 0.9 * len(hyps)
    # CTranslate2 decoded them from the teacher's folder: the run holds no PyTorch teacher
    assert trainer.teacher is None
    # ...and greedy ones: teacher-forced on them, the teacher's argmax is (nearly always) the next token
    teacher, tokenizer, pad = load_model(teacher_dir), trainer.tokenizer, trainer.pad_id

    def teacher_argmax_agreement(targets):
        agree = total = 0
        for source, target in zip(sources[:40], targets[:40]):
            labels = torch.tensor([tokenizer(target).input_ids])
            with torch.no_grad():
                logits = teacher(**tokenizer([source], return_tensors="pt"),
                                 decoder_input_ids=shift_right(labels, teacher.config.decoder_start_token_id)).logits
            agree += int((logits.argmax(-1) == labels).sum())
            total += labels.numel()
        return agree / total

    on_hyps, on_references = teacher_argmax_agreement(hyps), teacher_argmax_agreement(references)
    assert on_hyps > 0.95 and on_references < 0.8, (on_hyps, on_references)

    # no KD term: the first update's loss is the student's label-smoothed CE on the teacher's targets
    assert trainer.objective.teacher is None and trainer.objective.kd_loss is None
    batch = first_update_batch(trainer)
    decoder_input = shift_right(batch.labels, trainer.student.config.decoder_start_token_id)
    with torch.no_grad():
        logits = trainer.student(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 decoder_input_ids=decoder_input).logits
    ce = float(losses.label_smoothed_ce(logits, batch.labels, pad, epsilon=trainer.config.label_smoothing))
    summary = trainer.fit()
    assert summary["step"] == 2
    first = read_records(out)[0]
    assert first["loss"] == pytest.approx(ce / batch.num_target_tokens, rel=1e-5) and "kd" not in first


def test_seq_kd_with_the_pytorch_engine_drops_its_teacher_after_decoding(prepared, teacher_dir, tmp_path,
                                                                          monkeypatch):
    """The pytorch engine decodes the targets with a loaded teacher, which training then lets go of
    (plain CE needs none); a resumed run, whose targets exist, does not load it at all."""
    from tiekd.training import trainer as trainer_module
    from tiekd.training.trainer import Trainer

    loads = []
    original = trainer_module.load_teacher
    monkeypatch.setattr(trainer_module, "load_teacher", lambda *args: loads.append(1) or original(*args))
    out = tmp_path / "run"
    config = small_config(prepared, out, method="seq-kd", teacher=str(teacher_dir), max_updates=2, train_split="valid",
                          valid_bleu=False, valid_every=100, seq_kd_beam=1, seq_kd_engine="pytorch", save_every=2)
    trainer = Trainer(config, quiet=True)
    assert len(loads) == 1 and trainer.teacher is None and trainer.objective.teacher is None
    assert not (out / "seqkd" / "shards-work" / "teacher-ct2").exists()  # decoded by PyTorch, not CTranslate2
    targets = (out / "seqkd" / "train.hyp").read_text(encoding="utf-8")
    assert trainer.fit()["step"] == 2
    resumed = Trainer(dataclasses.replace(config, max_updates=3), resume=True, quiet=True)
    assert len(loads) == 1 and resumed.teacher is None
    assert (out / "seqkd" / "train.hyp").read_text(encoding="utf-8") == targets


def test_iterative_passes_start_at_iterative_start_update(prepared, teacher_dir, tmp_path, monkeypatch):
    """Before update U (`iterative_start_update`) TIE-KD runs pass 1 only, its single-pass loss; from U on,
    all N passes."""
    from tiekd.training.trainer import Trainer

    objective, batch = objective_for(prepared, teacher_dir, tmp_path / "objective", iterative_passes=3,
                                     iterative_start_update=5)
    objective.student.eval()
    single = objective_for(prepared, teacher_dir, tmp_path / "single", iterative_passes=1)[0]
    single.student.load_state_dict(objective.student.state_dict())
    single.student.eval()
    expected_single = float(single(batch.input_ids, batch.attention_mask, batch.labels)[1]["kd"])
    objective.updates_done = 4
    assert float(objective(batch.input_ids, batch.attention_mask, batch.labels)[1]["kd"]) == pytest.approx(
        expected_single, rel=1e-6)
    objective.updates_done = 5
    assert float(objective(batch.input_ids, batch.attention_mask, batch.labels)[1]["kd"]) != pytest.approx(
        expected_single, rel=1e-3)

    # the trainer tells the objective how many updates are done: 1 teacher pass, then 3 (and 2 student re-passes)
    trainer = Trainer(small_config(prepared, tmp_path / "run", method="tie-kd", teacher=str(teacher_dir),
                                   iterative_passes=3, iterative_start_update=2, max_updates=4, valid_bleu=False,
                                   valid_every=100), quiet=True)
    calls = []
    decode = trainer.objective._decode

    def counting(model, *args):
        calls.append(trainer.objective.updates_done)
        return decode(model, *args)

    monkeypatch.setattr(trainer.objective, "_decode", counting)
    trainer.fit()
    assert [calls.count(update) for update in range(4)] == [1, 1, 5, 5]
