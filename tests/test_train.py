"""Training, checkpoints, resume, decoding and the saved model folders, on real Multi30k slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import head, small_config
from tiekd.errors import TiekdError


def read_metrics(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_training_lowers_the_loss_and_writes_a_complete_run(prepared, tmp_path):
    from tiekd.trainer import run_training

    out = tmp_path / "run"
    summary = run_training(small_config(prepared, out, max_updates=40, valid_every=20), quiet=True)
    losses = [r["loss"] for r in read_metrics(out)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    valid = read_metrics(out, "valid")
    assert [r["step"] for r in valid] == [20, 40] and valid[1]["loss"] < valid[0]["loss"]
    assert "bleu" in valid[0]
    assert summary["step"] == 40
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["best", "step_0000020", "step_0000040"]
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "step_0000040" / "trainer_state.pt").is_file()
    state = torch.load(out / "checkpoints" / "step_0000040" / "trainer_state.pt", weights_only=False)
    assert state["config"]["max_updates"] == 40 and state["step"] == 40


def test_tiny_model_overfits_100_pairs(tmp_path, multi30k):
    """Memorising 100 real pairs shows the model, loss and decoder fit together."""
    import sacrebleu

    from tiekd.data.prepare import prepare_data
    from tiekd.models import load_model
    from tiekd.tokenizer import load_tokenizer
    from tiekd.trainer import run_training
    from tiekd.translate import DecodeOptions, translate_sentences

    src, tgt = head(multi30k / "train.de", 100), head(multi30k / "train.en", 100)
    for name, lines in (("t.de", src), ("t.en", tgt)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "prep"
    prepare_data(data, train=(tmp_path / "t.de", tmp_path / "t.en"), valid=(tmp_path / "t.de", tmp_path / "t.en"),
                 vocab_size=400, verbose=False)
    out = tmp_path / "run"
    # one batch holds all 100 pairs: full-batch Adam memorises them fastest
    run_training(small_config(data, out, model="tiny", dropout=0.0, label_smoothing=0.0, max_updates=300,
                              lr=3e-3, warmup_updates=50, valid_every=300, log_every=100, max_tokens=8192,
                              valid_bleu=False), quiet=True)
    model_dir = out / "checkpoints" / "step_0000300"
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    hyps = translate_sentences(model, tokenizer, src, DecodeOptions(beam=4))
    bleu = sacrebleu.corpus_bleu(hyps, [tgt]).score
    assert bleu > 80, bleu


def test_saved_model_loads_in_plain_transformers_and_translates_identically(prepared, tmp_path, teacher_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tiekd.cli import main

    sources = head(Path(prepared) / "valid.de", 12)
    (tmp_path / "in.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    assert main(["translate", "--model", str(teacher_dir), "--input", str(tmp_path / "in.de"),
                 "--output", str(tmp_path / "out.en"), "--beam", "4", "--lenpen", "0.6", "--quiet"]) == 0
    ours = (tmp_path / "out.en").read_text(encoding="utf-8").splitlines()

    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(teacher_dir)).eval()
    theirs = []
    for sentence in sources:  # one at a time: no padding, the plainest possible use
        output = model.generate(**tokenizer([sentence], return_tensors="pt"), num_beams=4, length_penalty=0.6,
                                max_new_tokens=256, early_stopping=True)
        theirs.append(tokenizer.decode(output[0], skip_special_tokens=True))
    assert ours == theirs
    assert sum(bool(h.strip()) for h in ours) == len(ours)


def test_beam_search_scores_at_least_greedy(prepared, teacher_dir):
    from tiekd.models import load_model
    from tiekd.tokenizer import load_tokenizer
    from tiekd.translate import DecodeOptions, sequence_log_probs, translate_to_ids

    model, tokenizer = load_model(teacher_dir), load_tokenizer(teacher_dir)
    sources = head(Path(prepared) / "valid.de", 30)
    # length penalty 0: beam search then maximises the plain sum of log-probabilities, like greedy
    greedy = translate_to_ids(model, tokenizer, sources, DecodeOptions(beam=1))
    beam = translate_to_ids(model, tokenizer, sources, DecodeOptions(beam=5, length_penalty=0.0))
    greedy_scores = sequence_log_probs(model, tokenizer, sources, greedy)
    beam_scores = sequence_log_probs(model, tokenizer, sources, beam)
    assert all(b >= g - 1e-4 for b, g in zip(beam_scores, greedy_scores))
    assert sum(b > g + 1e-4 for b, g in zip(beam_scores, greedy_scores)) >= 1


def test_resume_gives_the_same_losses_and_parameters(prepared, tmp_path):
    from tiekd.trainer import Trainer, run_training

    straight = tmp_path / "straight"
    run_training(small_config(prepared, straight, max_updates=24, valid_every=8, dropout=0.1), quiet=True)

    split = tmp_path / "split"
    run_training(small_config(prepared, split, max_updates=16, valid_every=8, dropout=0.1), quiet=True)
    # continue the same run further (extending max_updates is allowed on resume)
    trainer = Trainer(small_config(prepared, split, max_updates=24, valid_every=8, dropout=0.1), resume=True, quiet=True)
    assert trainer.state["step"] == 16
    trainer.fit()
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(straight)]
    a = torch.load(straight / "checkpoints" / "step_0000024" / "trainer_state.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "step_0000024" / "trainer_state.pt", weights_only=False)
    assert a["step"] == b["step"] == 24
    from safetensors.torch import load_file

    wa = load_file(str(straight / "checkpoints" / "step_0000024" / "model.safetensors"))
    wb = load_file(str(split / "checkpoints" / "step_0000024" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gradient_accumulation_normalises_by_the_tokens_of_the_whole_update(prepared, tmp_path):
    """The accumulated gradient equals that of (sum of both batches' losses) / (their token count)."""
    from tiekd import batching
    from tiekd.models import zero_pad_row_grad
    from tiekd.trainer import Trainer

    trainer = Trainer(small_config(prepared, tmp_path / "a", max_tokens=512, update_freq=2, max_updates=1,
                                   dropout=0.0, clip_norm=0.0, valid_bleu=False), quiet=True)
    order = batching.epoch_order(len(trainer.batches), trainer.config.seed, 0)
    trainer._update(order)
    accumulated = {n: p.grad.clone() for n, p in trainer.student.named_parameters() if p.grad is not None}
    assert len(accumulated) > 10
    trainer.optimizer.zero_grad(set_to_none=True)

    first, second = (batching.collate(trainer.train_corpus, trainer.batches[b]) for b in order[:2])
    assert first.num_target_tokens != second.num_target_tokens  # unequal batches make the check meaningful
    total = sum(trainer.objective(b.input_ids, b.attention_mask, b.labels)[0] for b in (first, second))
    (total / (first.num_target_tokens + second.num_target_tokens)).backward()
    zero_pad_row_grad(trainer.student)  # the trainer keeps the <pad> (decoder start) row fixed
    for name, param in trainer.student.named_parameters():
        if name in accumulated:
            assert torch.allclose(accumulated[name], param.grad, atol=1e-6, rtol=1e-4), name


def test_average_of_identical_checkpoints_is_that_checkpoint(prepared, tmp_path, teacher_dir):
    from safetensors.torch import load_file

    from tiekd.cli import main

    out = tmp_path / "avg"
    assert main(["average", "--checkpoints", str(teacher_dir), str(teacher_dir), "--out", str(out)]) == 0
    a, b = load_file(str(teacher_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert (out / "config.json").is_file() and (out / "vocab.json").is_file()


def test_average_last_checkpoints_of_a_run(prepared, tmp_path):
    from safetensors.torch import load_file

    from tiekd.average import average_checkpoints, find_last_checkpoints
    from tiekd.trainer import run_training

    run = tmp_path / "run"
    run_training(small_config(prepared, run, max_updates=30, valid_every=10, valid_bleu=False), quiet=True)
    folders = find_last_checkpoints(run, 2)
    assert [f.name for f in folders] == ["step_0000020", "step_0000030"]
    out = average_checkpoints(folders, tmp_path / "avg")
    w1, w2 = (load_file(str(f / "model.safetensors")) for f in folders)
    avg = load_file(str(out / "model.safetensors"))
    name = next(k for k in avg if "fc1.weight" in k)
    assert torch.allclose(avg[name], (w1[name] + w2[name]) / 2, atol=1e-6)


def test_an_existing_run_folder_is_refused_and_left_untouched(prepared, tmp_path):
    from tiekd.trainer import run_training

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(TiekdError, match="already holds other files.*--overwrite"):
        run_training(small_config(prepared, out), quiet=True)
    assert (out / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_unknown_config_key_lists_the_valid_keys(tmp_path):
    from tiekd.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("data: x\nout: y\nlearning_rate: 0.1\n")
    with pytest.raises(TiekdError, match=r"learning_rate.*these keys.*\blr\b"):
        from tiekd.config import RunConfig, load_config_file

        RunConfig.from_dict(load_config_file(config), source=str(config))
    assert main(["train", "--config", str(config)]) == 2


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(prepared, tmp_path, monkeypatch):
    from tiekd import checkpoint
    from tiekd.trainer import Trainer

    out = tmp_path / "run"
    trainer = Trainer(small_config(prepared, out, max_updates=12, valid_every=5, valid_bleu=False), quiet=True)
    original = trainer._update

    def poisoned(order):
        if trainer.state["step"] == 7:  # the 8th update produces NaN gradients
            for p in trainer.student.parameters():
                p.data[...] = float("nan") if p.dim() == 2 and p.shape[0] == p.shape[1] else p.data
        return original(order)

    monkeypatch.setattr(trainer, "_update", poisoned)
    with pytest.raises(TiekdError, match=r"non-finite .* update 8 .*step_0000005"):
        trainer.fit()
    assert checkpoint.latest_good_checkpoint(out / "checkpoints").name == "step_0000005"


def test_nonfinite_updates_can_be_skipped_and_counted(prepared, tmp_path, monkeypatch):
    from tiekd.trainer import Trainer

    trainer = Trainer(small_config(prepared, tmp_path / "run", max_updates=6, valid_every=100, valid_bleu=False,
                                   on_nonfinite="skip"), quiet=True)
    calls = {"n": 0}
    original = trainer._update

    def sometimes_bad(order):
        calls["n"] += 1
        result = original(order)
        if calls["n"] == 3:
            result["finite"] = False
        return result

    monkeypatch.setattr(trainer, "_update", sometimes_bad)
    summary = trainer.fit()
    assert summary["skipped_nonfinite"] == 1 and summary["step"] == 6
