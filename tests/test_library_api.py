"""tiekd from Python: every distillation method as one object for your own training loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def _batch(prepared, tokenizer, n=12):
    from tiekd.data.batching import collate, encode_pair_files

    corpus = encode_pair_files(tokenizer, prepared / "valid.de", prepared / "valid.en")
    return collate(corpus, list(range(n)))


@pytest.fixture(scope="module")
def models(prepared, teacher_dir):
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.models import build_model, load_model

    tokenizer = load_tokenizer(prepared / "tokenizer")
    torch.manual_seed(3)
    return build_model("micro", tokenizer), load_model(teacher_dir), tokenizer


def test_import_tiekd_is_light_and_names_its_public_api():
    code = "import sys, tiekd; assert 'torch' not in sys.modules; print(sorted(tiekd.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "DistillationObjective" in out and "METHODS" in out


@pytest.mark.parametrize("method, settings", [("word-kd", {}), ("tie-kd", {"topk": 3}), ("jsd", {"jsd_beta": 0.3}),
                                              ("selective-kd", {"selective_ratio": 0.4}),
                                              ("on-policy", {"on_policy_lambda": 1.0,
                                                             "on_policy_sampling": "greedy"})])
def test_the_library_objective_is_the_trainers_objective(models, prepared, method, settings):
    """for_method builds what `tiekd distill` builds from its RunConfig: the same loss on the same batch,
    per target token, with labels padded by the pad id or by Hugging Face's -100."""
    import tiekd
    from tiekd.config import RunConfig
    from tiekd.kd.objectives import DistillationObjective

    student, teacher, tokenizer = models
    batch = _batch(prepared, tokenizer)
    ours = tiekd.DistillationObjective.for_method(method, student, teacher, **settings)
    config = RunConfig(data="d", out="o", method=method, teacher="t", **settings)
    trainers = DistillationObjective(student, config, teacher)
    student.eval()  # no dropout: the two calls see the same network
    total, parts = trainers(batch.input_ids, batch.attention_mask, batch.labels)
    loss, mean_parts = ours.mean_loss(batch.input_ids, batch.attention_mask, batch.labels)
    assert loss.item() == pytest.approx(total.item() / batch.num_target_tokens, rel=1e-6)
    assert set(mean_parts) == set(parts) == {"ce", "kd"}
    hf_labels = batch.labels.masked_fill(batch.labels == tokenizer.pad_token_id, -100)
    assert ours.mean_loss(batch.input_ids, batch.attention_mask, hf_labels)[0].item() == pytest.approx(loss.item(),
                                                                                                      rel=1e-6)


def test_settings_change_the_loss_and_own_loop_training_lowers_it(models, prepared):
    import tiekd

    student, teacher, tokenizer = models
    batch = _batch(prepared, tokenizer)
    student.eval()
    low = tiekd.DistillationObjective.for_method("tie-kd", student, teacher, kd_alpha=0.1)
    high = tiekd.DistillationObjective.for_method("tie-kd", student, teacher, kd_alpha=0.9)
    args = (batch.input_ids, batch.attention_mask, batch.labels)
    assert low.mean_loss(*args)[0].item() != pytest.approx(high.mean_loss(*args)[0].item(), rel=1e-3)

    objective = tiekd.DistillationObjective.for_method("word-kd", student, teacher)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, _ = objective.mean_loss(*args)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_bad_settings_and_a_foreign_teacher_are_refused_clearly(models):
    import tiekd
    from tiekd.models import build_model

    student, teacher, tokenizer = models
    with pytest.raises(TypeError, match=r"unknown setting\(s\) top_k \(did you mean 'topk'\?\)"):
        tiekd.DistillationObjective.for_method("tie-kd", student, teacher, top_k=5)
    with pytest.raises(tiekd.TiekdError, match=r"kd_alpha 1\.5: must be in \[0, 1\]"):
        tiekd.DistillationObjective.for_method("word-kd", student, teacher, kd_alpha=1.5)
    with pytest.raises(tiekd.TiekdError, match=r"method 'word_kd': must be one of .*word-kd"):
        tiekd.DistillationObjective.for_method("word_kd", student, teacher)
    with pytest.raises(tiekd.TiekdError, match=r"method 'tie-kd' needs a teacher\. Fix: pass teacher="):
        tiekd.DistillationObjective.for_method("tie-kd", student)
    with pytest.raises(tiekd.TiekdError, match=r"'seq-kd' trains on the teacher's translations.*distill-data"):
        tiekd.DistillationObjective.for_method("seq-kd", student, teacher)
    other = build_model("micro", tokenizer)
    other.resize_token_embeddings(tokenizer.vocab_size + 8)
    with pytest.raises(tiekd.TiekdError, match=rf"teacher's vocabulary has {len(tokenizer) + 8:,} entries and the "
                                               rf"student's {len(tokenizer):,}"):
        tiekd.DistillationObjective.for_method("word-kd", student, other)
