"""The teacher-logit cache (tiekd/kd/teacher_cache.py): its rows are the teacher's logits, an objective or a
run that reads them gives what the live teacher gives, and a cache of other data is never used."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import small_config
from tiekd.errors import TiekdError


def valid_corpus(prepared):
    """The slice's 100 validation pairs as a BinarizedCorpus: a corpus small enough to cache in a test."""
    from tiekd.data.binarized import load_corpus
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    data = load_prepared(prepared)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    return load_corpus(data, data.splits["valid"], tokenizer, 512), tokenizer


def build_cache(prepared, teacher_dir, folder, corpus=None, **options):
    from tiekd.kd.teacher_cache import open_or_build
    from tiekd.models import load_model

    corpus = corpus if corpus is not None else valid_corpus(prepared)[0]
    teacher = load_model(teacher_dir).eval()
    # small batches: the stored rows must not depend on how the build batched them
    cache = open_or_build(folder, teacher_dir, teacher, corpus, 300, torch.device("cpu"), quiet=True, **options)
    return cache, teacher, corpus


def test_rows_are_the_teachers_logits_on_the_gold_prefix(prepared, teacher_dir, tmp_path):
    from tiekd.data.batching import collate
    from tiekd.kd.objectives import shift_right

    cache, teacher, corpus = build_cache(prepared, teacher_dir, tmp_path / "cache")
    indices = [17, 0, 63, 5, 99]  # not the build's length order, so the padding differs from the build's
    batch = collate(corpus, indices)
    with torch.no_grad():
        live = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       decoder_input_ids=shift_right(batch.labels, teacher.config.decoder_start_token_id)).logits
    stored = cache.gold_logits(batch.indices, batch.labels, corpus.pad_id)
    real = batch.labels != corpus.pad_id
    assert stored.shape == live.shape
    assert torch.allclose(stored[real], live[real], atol=1e-4, rtol=1e-5)
    assert not stored[~real].any()  # padding rows are zeros
    record = json.loads((cache.folder / "cache.json").read_text())
    assert record["positions"] == int(corpus.target_lengths().sum())
    assert record["bytes"] == record["positions"] * teacher.config.vocab_size * 4


@pytest.mark.parametrize("method", ["word-kd", "selective-kd", "tie-kd"])
def test_the_objective_on_cached_logits_equals_the_live_teacher(prepared, teacher_dir, tmp_path, method):
    """Loss and gradients alike; a single-pass method never runs the teacher, TIE-KD runs it for passes 2..N."""
    from tiekd.data.batching import collate
    from tiekd.kd.objectives import DistillationObjective
    from tiekd.models import build_model

    cache, teacher, corpus = build_cache(prepared, teacher_dir, tmp_path / "cache")
    batch = collate(corpus, [3, 8, 21, 40, 77, 90])
    torch.manual_seed(0)
    _, tokenizer = valid_corpus(prepared)
    student = build_model("micro", tokenizer).eval()  # no dropout: the two forward passes see the same student
    config = small_config(prepared, tmp_path / "run", method=method, teacher=str(teacher_dir), iterative_passes=3)
    objective = DistillationObjective(student, config, teacher)

    def loss_and_grads(**cached):
        student.zero_grad()
        total, parts = objective(batch.input_ids, batch.attention_mask, batch.labels, **cached)
        total.backward()
        return total.detach(), parts["kd"], [p.grad.clone() for p in student.parameters() if p.grad is not None]

    live_total, live_kd, live_grads = loss_and_grads()
    calls = []
    decode = objective._decode
    objective._decode = lambda model, *args: (calls.append(model is teacher), decode(model, *args))[1]
    cached_total, cached_kd, cached_grads = loss_and_grads(
        gold_teacher_logits=cache.gold_logits(batch.indices, batch.labels, corpus.pad_id))
    assert float(cached_total) == pytest.approx(float(live_total), rel=1e-5)
    assert float(cached_kd) == pytest.approx(float(live_kd), rel=1e-5)
    for live, cached in zip(live_grads, cached_grads):
        assert torch.allclose(live, cached, atol=1e-6, rtol=1e-4)
    assert calls.count(True) == (2 if method == "tie-kd" else 0)


def test_a_run_on_the_cache_trains_as_the_live_run_and_reuses_it(prepared, teacher_dir, tmp_path):
    """Its losses are the live run's, and it never runs the teacher (Word-KD has no other pass)."""
    from tiekd.training.trainer import Trainer

    def train(name, **extra):
        config = small_config(prepared, tmp_path / name, method="word-kd", teacher=str(teacher_dir), max_updates=4,
                              valid_every=4, valid_bleu=False, train_split="valid", max_tokens=600, **extra)
        trainer = Trainer(config, quiet=True)
        teacher_calls = []
        forward = trainer.teacher.forward
        trainer.teacher.forward = lambda *args, **kwargs: (teacher_calls.append(1), forward(*args, **kwargs))[1]
        trainer.fit()
        assert len(teacher_calls) == (0 if extra else 4)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if json.loads(line)["kind"] == "train"]

    live = train("live")
    cached = train("cached", teacher_cache=str(tmp_path / "cache"))
    assert cached == pytest.approx(live, rel=1e-4)
    built = list((tmp_path / "cache").iterdir())
    folders = [path for path in built if path.is_dir()]
    assert len(folders) == 1 and (folders[0] / "cache.json").is_file()
    stamp = (folders[0] / "logits.f32").stat().st_mtime_ns
    assert train("again", teacher_cache=str(tmp_path / "cache")) == pytest.approx(live, rel=1e-4)
    assert (folders[0] / "logits.f32").stat().st_mtime_ns == stamp  # read, not built again


def test_a_run_may_add_the_cache_when_it_resumes(prepared, teacher_dir, tmp_path):
    from tiekd.training.trainer import run_training

    values = dict(method="word-kd", teacher=str(teacher_dir), valid_every=2, valid_bleu=False, train_split="valid",
                  max_tokens=600)
    run_training(small_config(prepared, tmp_path / "run", max_updates=2, **values), quiet=True)
    summary = run_training(small_config(prepared, tmp_path / "run", max_updates=4, teacher_cache=str(tmp_path / "c"),
                                        **values), resume=True, quiet=True)
    assert summary["step"] == 4


def test_a_cache_of_other_data_is_never_read(prepared, teacher_dir, tmp_path):
    from tiekd.data.batching import collate
    from tiekd.data.binarized import BinarizedCorpus

    cache, _, corpus = build_cache(prepared, teacher_dir, tmp_path / "cache")
    # the same pairs cut to 8 positions: other inputs, so another cache beside the first
    cut = BinarizedCorpus(corpus.sources, corpus.targets, corpus.pad_id, corpus.eos_id, max_positions=8)
    other, _, _ = build_cache(prepared, teacher_dir, tmp_path / "cache", corpus=cut)
    assert other.folder != cache.folder
    # a batch whose targets are not the cache's is refused, naming the folder and the fix
    batch = collate(cut, [0, 1, 2])
    with pytest.raises(TiekdError, match="belongs to other data. Fix"):
        cache.gold_logits(batch.indices, batch.labels, corpus.pad_id)


def test_another_start_id_or_precision_gets_its_own_cache(prepared, teacher_dir, tmp_path):
    """The live teacher runs on prefixes that start with the student's start id and under the run's autocast;
    rows computed otherwise differ, so they are kept apart (bf16 autocast works on CPUs too, slowly)."""
    plain, _, corpus = build_cache(prepared, teacher_dir, tmp_path / "cache")
    assert plain.record["key"]["autocast"] is None and plain.record["key"]["start_id"] == corpus.pad_id
    bf16, _, _ = build_cache(prepared, teacher_dir, tmp_path / "cache", precision="bf16")
    from tiekd.kd.teacher_cache import other_caches

    assert list(other_caches(tmp_path / "cache", bf16.folder)) == [plain.folder]  # named when another is built
    assert other_caches(tmp_path / "cache", bf16.folder)[plain.folder] > (plain.folder / "logits.f32").stat().st_size
    other_start, _, _ = build_cache(prepared, teacher_dir, tmp_path / "cache", start_id=corpus.eos_id)
    assert len({plain.folder, bf16.folder, other_start.folder}) == 3
    assert bf16.record["key"]["autocast"] == "bfloat16"
    from tiekd.data.batching import collate

    batch = collate(corpus, [0, 1, 2])
    rows = [cache.gold_logits(batch.indices, batch.labels, corpus.pad_id) for cache in (plain, bf16, other_start)]
    assert not torch.allclose(rows[0], rows[1], atol=1e-4) and not torch.allclose(rows[0], rows[2], atol=1e-4)


def test_a_killed_build_s_leftover_is_removed_before_the_space_check(prepared, teacher_dir, tmp_path):
    import subprocess
    import sys

    from tiekd.writes import HOST

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "cache" / f".float32-0123456789abcdef.building-{HOST}-{int(ended.stdout)}-0badcafe"
    leftover.mkdir(parents=True)
    (leftover / "logits.f32").write_bytes(b"\0" * 4096)
    build_cache(prepared, teacher_dir, tmp_path / "cache")
    assert not leftover.exists()


def test_a_full_disk_leaves_no_cache_and_a_rerun_builds_it(prepared, teacher_dir, tmp_path, monkeypatch):
    import shutil

    from tiekd import writes

    with writes.inject_fault(at=3), pytest.raises(writes.WriteFailed, match="Fix:"):
        build_cache(prepared, teacher_dir, tmp_path / "cache")
    assert not [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]  # nothing half-built
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(TiekdError, match=r"needs .* GB .* Fix: give --teacher-cache a folder on a larger disk"):
        build_cache(prepared, teacher_dir, tmp_path / "cache")
    monkeypatch.undo()
    cache, _, corpus = build_cache(prepared, teacher_dir, tmp_path / "cache")
    assert cache.offsets[-1] == corpus.target_lengths().sum()


def test_only_methods_that_run_the_teacher_on_gold_prefixes_take_a_cache(prepared, tmp_path):
    from tiekd.config_fields import InvalidConfig

    with pytest.raises(InvalidConfig, match="teacher_cache.*no logits to cache"):
        small_config(prepared, tmp_path, method="none", teacher_cache=str(tmp_path / "c"))
    small_config(prepared, tmp_path, method="on-policy", teacher="t", teacher_cache=str(tmp_path / "c"))
    with pytest.raises(InvalidConfig, match="on_policy_lambda 1 .* no batch reads gold-prefix logits"):
        small_config(prepared, tmp_path, method="on-policy", teacher="t", on_policy_lambda=1.0,
                     teacher_cache=str(tmp_path / "c"))


def test_the_experiment_gives_the_cache_to_its_kd_rows_only(tmp_path, monkeypatch):
    """Outside the row's settings, like the device: only the run's configuration carries it."""
    from tiekd.experiment import stages
    from tiekd.training import trainer

    seen = {}

    def fake_run(config, resume=False, overwrite=False):
        seen[config.method] = config.teacher_cache
        return {"interrupted": True, "step": 0}

    monkeypatch.setattr(trainer, "run_training", fake_run)
    for method in ("word-kd", "none"):
        settings = {"data": str(tmp_path), "model": "micro", "max_updates": 1, "method": method,
                    **({"teacher": str(tmp_path)} if method != "none" else {})}
        with pytest.raises(TiekdError, match="stopped by a signal"):
            stages.train(tmp_path / method, settings, "cpu", 1, 1, print, teacher_cache=str(tmp_path / "cache"))
    assert seen == {"word-kd": str(tmp_path / "cache"), "none": ""}
