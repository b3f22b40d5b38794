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
    from tiekd.training.trainer import run_training

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


def test_micro_model_overfits_100_pairs(tmp_path, multi30k):
    """Memorising 100 real pairs shows the model, loss and decoder fit together."""
    import sacrebleu

    from tiekd.data.prepare import prepare_data
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.inference.translate import DecodeOptions, translate_sentences
    from tiekd.models import load_model
    from tiekd.training.trainer import run_training

    src, tgt = head(multi30k / "train.de", 100), head(multi30k / "train.en", 100)
    for name, lines in (("t.de", src), ("t.en", tgt)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "prep"
    prepare_data(data, train=(tmp_path / "t.de", tmp_path / "t.en"), valid=(tmp_path / "t.de", tmp_path / "t.en"),
                 vocab_size=400, verbose=False)
    out = tmp_path / "run"
    # one batch holds all 100 pairs: full-batch Adam memorises them fastest. The micro model without
    # dropout does it in 250 updates at a high rate (measured BLEU: 86 at 200, 95 at 250; tiny, 9x the
    # compute per update, took 150 updates at lr 3e-3 and diverged at 5e-3)
    run_training(small_config(data, out, model="micro", dropout=0.0, label_smoothing=0.0, max_updates=250,
                              lr=1.5e-2, warmup_updates=20, valid_every=250, log_every=50, max_tokens=8192,
                              valid_bleu=False), quiet=True)
    losses = [r["loss"] for r in read_metrics(out)]
    model_dir = out / "checkpoints" / "step_0000250"
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    hyps = translate_sentences(model, tokenizer, src, DecodeOptions(beam=4))
    bleu = sacrebleu.corpus_bleu(hyps, [tgt]).score
    assert bleu > 80, bleu
    assert losses[-1] < 0.3 < 3 < losses[0], losses  # per-token CE of the last 50 updates (measured: 0.12)


def test_saved_model_loads_in_plain_transformers_and_translates_the_same(prepared, tmp_path, teacher_dir):
    """`tiekd translate` (batched, padded) gives plain `generate`'s translations (one sentence at a time),
    except where two beams are near-tied: padding changes the float sums enough to break a tie otherwise."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tiekd.cli import main
    from tiekd.inference.translate import DecodeOptions, sequence_log_probs, translate_to_ids

    sources = head(Path(prepared) / "valid.de", 12)
    (tmp_path / "in.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    assert main(["translate", "--model", str(teacher_dir), "--input", str(tmp_path / "in.de"),
                 "--output", str(tmp_path / "out.en"), "--beam", "4", "--lenpen", "0.6", "--quiet"]) == 0
    ours = (tmp_path / "out.en").read_text(encoding="utf-8").splitlines()

    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(teacher_dir)).eval()
    theirs, theirs_ids = [], []
    for sentence in sources:  # one at a time: no padding, the plainest possible use
        output = model.generate(**tokenizer([sentence], return_tensors="pt"), num_beams=4, length_penalty=0.6,
                                max_new_tokens=256, early_stopping=True)
        theirs.append(tokenizer.decode(output[0], skip_special_tokens=True))
        theirs_ids.append([t for t in output[0].tolist() if t != tokenizer.pad_token_id])
    assert sum(bool(h.strip()) for h in ours) == len(ours)
    same = [a == b for a, b in zip(ours, theirs)]
    assert sum(same) >= 0.8 * len(sources), list(zip(ours, theirs))
    if not all(same):  # the command's token ids (its own computation again), to score what it chose
        ours_ids = translate_to_ids(model, tokenizer, sources, DecodeOptions(beam=4, length_penalty=0.6))
        assert tokenizer.batch_decode(ours_ids, skip_special_tokens=True) == ours
        for i in (i for i, equal in enumerate(same) if not equal):
            scores = [sequence_log_probs(model, tokenizer, [sources[i]], [ids])[0] / len(ids) ** 0.6
                      for ids in (ours_ids[i], theirs_ids[i])]
            assert abs(scores[0] - scores[1]) < 1e-3, (i, ours[i], theirs[i], scores)


def test_beam_search_scores_at_least_greedy(prepared, teacher_dir):
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.inference.translate import DecodeOptions, sequence_log_probs, translate_to_ids
    from tiekd.models import load_model

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
    from tiekd.training.trainer import Trainer, run_training

    straight = tmp_path / "straight"
    run_training(small_config(prepared, straight, max_updates=24, valid_every=8, dropout=0.1), quiet=True)

    split = tmp_path / "split"
    run_training(small_config(prepared, split, max_updates=16, valid_every=8, dropout=0.1), quiet=True)
    # continue the same run further (extending max_updates is allowed on resume)
    trainer = Trainer(small_config(prepared, split, max_updates=24, valid_every=8, dropout=0.1), resume=True, quiet=True)
    assert trainer.state.step == 16
    trainer.fit()
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(straight)]
    a = torch.load(straight / "checkpoints" / "step_0000024" / "trainer_state.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "step_0000024" / "trainer_state.pt", weights_only=False)
    assert a["step"] == b["step"] == 24
    from safetensors.torch import load_file

    wa = load_file(str(straight / "checkpoints" / "step_0000024" / "model.safetensors"))
    wb = load_file(str(split / "checkpoints" / "step_0000024" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_stopped_between_log_lines_logs_the_same_losses_after_resume(prepared, tmp_path, monkeypatch):
    """The train-loss window (loss and token sums since the last log line) is saved in checkpoints: a
    run with log_every 4, stopped by SIGTERM after update 6 and resumed, logs at update 8 the mean over
    updates 5-8, as an uninterrupted run does, not over 7-8 only."""
    import signal

    from tiekd.training.trainer import Trainer, run_training

    options = dict(max_updates=12, log_every=4, valid_every=100, valid_bleu=False, dropout=0.1)
    straight = tmp_path / "straight"
    run_training(small_config(prepared, straight, **options), quiet=True)

    split = tmp_path / "split"
    trainer = Trainer(small_config(prepared, split, **options), quiet=True)
    original, calls = trainer._update, []

    def signalled_during_the_6th_update(order):
        calls.append(order)
        if len(calls) == 6:
            signal.raise_signal(signal.SIGTERM)  # the trainer's handler: stop after this update
        return original(order)

    monkeypatch.setattr(trainer, "_update", signalled_during_the_6th_update)
    summary = trainer.fit()
    assert summary["interrupted"] and summary["step"] == 6
    assert [r["step"] for r in read_metrics(split)] == [4]

    run_training(small_config(prepared, split, **options), resume=True, quiet=True)
    resumed, uninterrupted = read_metrics(split), read_metrics(straight)
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted] == [4, 8, 12]
    for a, b in zip(resumed, uninterrupted):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])


def test_a_checkpoint_from_before_saved_windows_resumes_with_an_empty_window():
    from tiekd.training.state import LossWindow, TrainingState

    old = {"step": 1200, "epoch": 8, "update_in_epoch": 128, "best_score": 33.1, "best_step": 1200,
           "skipped_nonfinite": 0, "train_seconds": 1791.9, "optimizer": {}, "optimizer_layout": "ids"}
    state = TrainingState.from_dict(old)
    assert (state.step, state.epoch, state.update_in_epoch, state.best_score) == (1200, 8, 128, 33.1)
    assert state.target_tokens_seen == 0 and state.train_core_seconds == 0.0  # keys it did not have yet
    assert state.loss_window.to_dict() == LossWindow().to_dict() == {"loss": 0.0, "tokens": 0, "parts": {}}
    window = LossWindow()
    window.add(6.0, ["ce", "kd"], [2.0, 4.0], tokens=3)
    state.loss_window = window
    again = TrainingState.from_dict(state.to_dict())
    assert again.to_dict() == state.to_dict() and again.loss_window.parts == {"ce": 2.0, "kd": 4.0}


def test_a_window_resumed_half_way_counts_its_speed_over_this_process_s_updates_only():
    """The loss is over the whole window; tokens/s only over the tokens trained since the clock started (a
    resume at update 1,538 of a 1,500-1,550 window once logged 4,338 tokens/s for a run doing 654)."""
    from tiekd.training.metrics import train_record
    from tiekd.training.state import LossWindow

    window = LossWindow()
    window.add(30.0, [], [], tokens=3000)
    resumed = LossWindow.from_dict(window.to_dict())
    resumed.add(10.0, [], [], tokens=1000)
    resumed.started -= 2.0  # two seconds since this process's clock started
    record = train_record(resumed, step=50, epoch=1, lr=1e-3, grad_norm=1.0)
    assert record["loss"] == pytest.approx(40.0 / 4000)
    assert record["tokens_per_s"] == pytest.approx(500.0, rel=0.05)


def test_gradient_accumulation_normalises_by_the_tokens_of_the_whole_update(prepared, tmp_path):
    """The accumulated gradient equals that of (sum of both batches' losses) / (their token count)."""
    from tiekd.data import batching
    from tiekd.models import zero_pad_row_grad
    from tiekd.training.trainer import Trainer

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


def test_average_of_different_checkpoints_is_their_elementwise_mean(prepared, tmp_path, teacher_dir):
    from safetensors.torch import load_file, save_file

    from tiekd.cli import main

    # two other "checkpoints" of the teacher's architecture: its weights shifted and scaled
    teacher = load_file(str(teacher_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    folders = [teacher_dir]
    for k, change in enumerate((lambda w: w + torch.randn(w.shape, generator=generator), lambda w: 3 * w)):
        folder = tmp_path / f"other{k}"
        folder.mkdir()
        for name in ("config.json", "vocab.json"):
            (folder / name).write_bytes((teacher_dir / name).read_bytes())
        changed = {name: change(value).contiguous() for name, value in teacher.items()}
        save_file(changed, str(folder / "model.safetensors"))
        folders.append(folder)
    out = tmp_path / "avg"
    assert main(["average", "--checkpoints", *map(str, folders), "--out", str(out)]) == 0
    weights = [load_file(str(folder / "model.safetensors")) for folder in folders]
    averaged = load_file(str(out / "model.safetensors"))
    assert averaged.keys() == teacher.keys()
    for name, value in averaged.items():
        mean = sum(w[name].double() for w in weights) / 3
        assert value.dtype == torch.float32 and torch.allclose(value.double(), mean, rtol=1e-6, atol=1e-7), name
    name = next(k for k in averaged if "fc1.weight" in k)
    assert not torch.allclose(averaged[name], teacher[name], atol=1e-3)  # a real mean, not a copy of one
    assert (out / "config.json").is_file() and (out / "vocab.json").is_file()
    assert not (out / "trainer_state.pt").exists() and not (out / "MANIFEST.json").exists()


def test_average_last_checkpoints_of_a_run(prepared, tmp_path):
    from safetensors.torch import load_file

    from tiekd.training.average import average_checkpoints, find_last_checkpoints
    from tiekd.training.trainer import run_training

    run = tmp_path / "run"
    run_training(small_config(prepared, run, max_updates=30, valid_every=10, valid_bleu=False), quiet=True)
    folders = find_last_checkpoints(run, 2)
    assert [f.name for f in folders] == ["step_0000020", "step_0000030"]
    out = average_checkpoints(folders, tmp_path / "avg")
    w1, w2 = (load_file(str(f / "model.safetensors")) for f in folders)
    avg = load_file(str(out / "model.safetensors"))
    assert avg.keys() == w1.keys()
    assert all(torch.allclose(avg[k], (w1[k] + w2[k]) / 2, atol=1e-6) for k in avg)
    assert not all(torch.equal(w1[k], w2[k]) for k in avg)


def test_an_existing_run_folder_is_refused_and_left_untouched(prepared, tmp_path):
    from tiekd.training.trainer import run_training

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
    from tiekd.training import checkpoint
    from tiekd.training.trainer import Trainer

    out = tmp_path / "run"
    trainer = Trainer(small_config(prepared, out, max_updates=12, valid_every=5, valid_bleu=False), quiet=True)
    original = trainer._update

    def poisoned(order):
        if trainer.state.step == 7:  # the 8th update produces NaN gradients
            for p in trainer.student.parameters():
                p.data[...] = float("nan") if p.dim() == 2 and p.shape[0] == p.shape[1] else p.data
        return original(order)

    monkeypatch.setattr(trainer, "_update", poisoned)
    with pytest.raises(TiekdError, match=r"non-finite .* update 8 .*step_0000005"):
        trainer.fit()
    assert checkpoint.latest_good_checkpoint(out / "checkpoints").name == "step_0000005"


def test_nonfinite_updates_can_be_skipped_and_counted(prepared, tmp_path, monkeypatch):
    """A skipped update leaves weights, optimizer state and schedule as they were; the next update is
    the 3rd step, on the next batch."""
    import copy

    from tiekd.training.schedule import lr_at
    from tiekd.training.trainer import Trainer

    trainer = Trainer(small_config(prepared, tmp_path / "run", max_updates=6, valid_every=100, valid_bleu=False,
                                   on_nonfinite="skip"), quiet=True)
    calls = []
    original = trainer._update

    def snapshot():
        return {"weights": {k: v.clone() for k, v in trainer.student.state_dict().items()},
                "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
                "scheduler": trainer.scheduler.state_dict(), "lr": trainer.optimizer.param_groups[0]["lr"],
                "state": trainer.state.to_dict()}

    def sometimes_bad(order):
        calls.append(snapshot())
        assert all(p.grad is None for p in trainer.student.parameters())  # nothing left from a skipped update
        result = original(order)
        if len(calls) == 3:
            result["finite"] = False
        return result

    monkeypatch.setattr(trainer, "_update", sometimes_bad)
    summary = trainer.fit()
    assert summary["skipped_nonfinite"] == 1 and summary["step"] == 6 and len(calls) == 7
    before, after = calls[2], calls[3]  # around the skipped 3rd update
    assert all(torch.equal(before["weights"][k], after["weights"][k]) for k in before["weights"])
    assert not all(torch.equal(calls[1]["weights"][k], before["weights"][k]) for k in before["weights"])
    assert before["scheduler"] == after["scheduler"] and before["lr"] == after["lr"]
    opt_before, opt_after = before["optimizer"]["state"], after["optimizer"]["state"]
    assert opt_before.keys() == opt_after.keys() and len(opt_before) > 10
    for index, slots in opt_before.items():
        assert all(torch.equal(slots[name], opt_after[index][name]) for name in slots), index
    assert after["state"]["step"] == before["state"]["step"] == 2
    assert after["state"]["update_in_epoch"] == before["state"]["update_in_epoch"] + 1  # the bad batch is passed over
    config = trainer.config
    records = [r for r in read_metrics(tmp_path / "run")]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # the schedule counts real updates only
    assert [r["lr"] for r in records] == pytest.approx(
        [lr_at(s, config.lr, config.warmup_updates, config.warmup_init_lr) for s in range(1, 7)], rel=1e-12)


def test_best_checkpoint_and_keep_last_pruning(prepared, tmp_path, monkeypatch):
    """`best` is the checkpoint of the best validation (highest BLEU, or without BLEU the lowest loss);
    only the newest `keep_last` step checkpoints stay."""
    from safetensors.torch import load_file

    from tiekd.training.trainer import Trainer

    for kind, values in (("bleu", [10.0, 30.0, 20.0, 25.0]), ("loss", [3.0, 2.0, 2.5, 2.2])):
        scores = iter(values)
        weights = {}

        def scripted_validation(self):
            weights[self.state.step] = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            value = next(scores)
            return {"kind": "valid", "step": self.state.step, "loss": value if kind == "loss" else 1.0,
                    **({"bleu": value} if kind == "bleu" else {})}

        monkeypatch.setattr(Trainer, "validate", scripted_validation)
        out = tmp_path / kind
        summary = Trainer(small_config(prepared, out, max_updates=20, valid_every=5, keep_last=2), quiet=True).fit()
        assert summary["best_step"] == 10 and summary["best_score"] == (30.0 if kind == "bleu" else -2.0)
        assert [r["best"] for r in read_metrics(out, "valid")] == [True, True, False, False]
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_0000015", "step_0000020"]
        best = out / "checkpoints" / "best"
        assert torch.load(best / "trainer_state.pt", weights_only=False)["step"] == 10
        saved = load_file(str(best / "model.safetensors"))
        assert all(torch.equal(saved[k], weights[10][k]) for k in saved)
        assert not all(torch.equal(saved[k], weights[20][k]) for k in saved)


def test_prune_keeps_the_newest_steps_by_number(tmp_path):
    from tiekd.training.checkpoint import prune_step_checkpoints

    for name in ("step_5", "step_40", "step_100", "best", "notes"):
        (tmp_path / name).mkdir()
    prune_step_checkpoints(tmp_path, keep_last=0)  # 0 keeps every checkpoint
    assert len(list(tmp_path.iterdir())) == 5
    prune_step_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "notes", "step_100", "step_40"]


def test_max_epochs_runs_whole_epochs(prepared, tmp_path, monkeypatch):
    """`--max-epochs 2`: every batch once per epoch, records and validations at the epoch boundaries, and
    the decaying schedule's last update is the last of the 2nd epoch."""
    import yaml

    from tiekd.cli import main
    from tiekd.data import batching
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.training.trainer import Trainer

    seen = []  # (epoch, batch) of every update
    original = Trainer._update

    def recording(self, order):
        seen.append((self.state.epoch, order[self.state.update_in_epoch]))
        return original(self, order)

    monkeypatch.setattr(Trainer, "_update", recording)
    values = small_config(prepared, tmp_path / "run", max_tokens=4096, valid_bleu=False, valid_every=1000,
                          warmup_updates=2, lr_schedule="cosine", min_lr=1e-4).to_dict()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--max-updates", "0", "--max-epochs", "2",
                 "--valid-each-epoch"]) == 0
    data = load_prepared(prepared)
    n = len(batching.make_batches(batching.encode_pair_files(load_tokenizer(data.tokenizer_dir), *data.splits["train"]),
                                  4096))  # batches in one epoch
    assert n >= 4 and len(seen) == 2 * n
    assert [batch for epoch, batch in seen if epoch == 0] == batching.epoch_order(n, values["seed"], 0)
    assert sorted(batch for epoch, batch in seen if epoch == 1) == list(range(n))
    train = read_metrics(out)
    assert [r["step"] for r in train] == list(range(1, 2 * n + 1))
    assert [r["epoch"] for r in train] == [1] * n + [2] * n
    assert [(r["step"], r["epochs_completed"]) for r in read_metrics(out, "valid")] == [(n, 1), (2 * n, 2)]
    assert train[-1]["lr"] == pytest.approx(1e-4, rel=1e-9)  # the cosine reaches min_lr at the 2nd epoch's end
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["step"], summary["epoch"]) == (2 * n, 2)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", f"step_{n:07d}", f"step_{2 * n:07d}"]


def test_each_epoch_has_its_own_order_and_resumes_across_the_boundary(prepared, tmp_path, monkeypatch):
    from tiekd.data import batching
    from tiekd.training.trainer import Trainer, run_training

    seen = []  # (run, epoch, batch) of every update
    original = Trainer._update

    def recording(self, order):
        seen.append((self.out.name, self.state.epoch, order[self.state.update_in_epoch]))
        return original(self, order)

    monkeypatch.setattr(Trainer, "_update", recording)
    options = dict(max_updates=0, max_tokens=4096, valid_bleu=False, valid_every=1000)
    run_training(small_config(prepared, tmp_path / "straight", max_epochs=2, **options), quiet=True)
    run_training(small_config(prepared, tmp_path / "split", max_epochs=1, **options), quiet=True)
    run_training(small_config(prepared, tmp_path / "split", max_epochs=2, **options), resume=True, quiet=True)
    second_epoch = {run: [b for r, epoch, b in seen if r == run and epoch == 1] for run in ("straight", "split")}
    n = len(second_epoch["split"])
    assert second_epoch["split"] == batching.epoch_order(n, 7, 1)  # the resumed run: epoch 1's own order
    assert second_epoch["straight"] == second_epoch["split"]  # and so the uninterrupted run
    losses = {run: [r["loss"] for r in read_metrics(tmp_path / run)] for run in ("straight", "split")}
    assert losses["straight"] == losses["split"]


def test_importing_tiekd_leaves_transformers_logging_alone():
    """Only the command line quiets transformers; a library import must not change a user's logging."""
    import subprocess
    import sys

    code = ("from transformers.utils import logging as l; before = l.get_verbosity(); "
            "import tiekd, tiekd.training.trainer, tiekd.experiment.pipeline; assert l.get_verbosity() == before; "
            "assert l.is_progress_bar_enabled()")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_length_factor_stops_each_translation_at_its_own_limit(prepared):
    """With max_length_factor f a translation of an n-token source has at most ceil(f * n) tokens, and a
    greedy translation is the same decoded alone or in a batch with a longer source."""
    import math

    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.inference.translate import DecodeOptions, translate_to_ids
    from tiekd.models import build_model

    tokenizer = load_tokenizer(Path(prepared) / "tokenizer")
    torch.manual_seed(3)
    model = build_model("micro", tokenizer)  # untrained: it rarely says </s>, so the limits bind
    sources = head(Path(prepared) / "valid.de", 6)
    lengths = [len(ids) for ids in tokenizer(sources)["input_ids"]]
    options = DecodeOptions(beam=1, max_length_factor=1.5, progress=False)
    together = translate_to_ids(model, tokenizer, sources, options)
    assert all(len(ids) <= math.ceil(1.5 * n) for ids, n in zip(together, lengths))
    assert sum(len(ids) == math.ceil(1.5 * n) for ids, n in zip(together, lengths)) >= 3  # the limit was reached
    alone = [translate_to_ids(model, tokenizer, [source], options)[0] for source in sources]
    assert alone == together
    unlimited = translate_to_ids(model, tokenizer, sources[:1], DecodeOptions(beam=1, max_length=40, progress=False))
    assert len(unlimited[0]) > math.ceil(1.5 * lengths[0])  # without the factor it decodes further
