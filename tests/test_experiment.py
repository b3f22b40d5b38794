"""`tiekd experiment` end to end at toy scale on real Multi30k, and `tiekd analyze`."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
import yaml


TINY = {
    "name": "tiny", "note": "A toy run.", "vocab_size": 300, "train_pairs": 600,
    "teacher": {"model": "micro", "max_updates": 30, "max_tokens": 2048, "lr": 3e-3, "warmup_updates": 10,
                "valid_every": 30, "valid_bleu": False, "log_every": 10},
    "student": {"max_updates": 8, "max_tokens": 2048, "lr": 3e-3, "warmup_updates": 4, "valid_every": 4,
                "valid_bleu": False, "log_every": 4},
    "student_sizes": ["micro"],
    "students": [{"name": "No-KD", "method": "none", "baseline": True},
                 {"name": "Word-KD", "method": "word-kd", "baseline": True}, {"name": "TIE-KD", "method": "tie-kd"}],
    "seeds": [1], "average_last": 2, "test_sets": ["test_2016_flickr"], "test_max_sentences": 25,
    "max_decode_length": 20, "analyze_sentences": 25, "bootstrap_resamples": 100,
    "randomization_trials": 1000,  # the default 10,000 cost ~2 s per comparison here, 8 per report
}


def write_config(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_experiment_runs_the_whole_pipeline_and_skips_finished_stages(tmp_path, multi30k, capsys, monkeypatch):
    from tiekd.cli import main
    from tiekd.experiment.pipeline import Pipeline
    from tiekd.training import trainer

    config = write_config(tmp_path / "exp.yaml", {**TINY, "multi30k": str(multi30k)})
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 0
    for name in ("results.md", "results.csv", "results.json", "bleu_by_method.png", "agreement_by_method.png"):
        assert (out / name).is_file(), name
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["No-KD", "Word-KD", "TIE-KD"]
    assert all(0 <= float(r["test_2016_flickr:bleu:mean"]) <= 100 for r in rows)
    assert "vs_no_kd:p" in rows[1] and rows[1]["vs_no_kd:p"] and not rows[0].get("vs_no_kd:p")
    table = json.loads((out / "results.json").read_text())
    assert 0 <= table["students"][2]["analysis"]["top1_agreement"] <= 1
    report = (out / "results.md").read_text()
    assert "| Teacher |" in report and "TIE-KD" in report
    assert report.splitlines()[2] == "> A toy run."  # the experiment's note, under the title
    # the paper's findings, read from these rows: TIE-KD against both baselines, the analysis rows not run
    assert "## The paper's findings, checked" in report
    findings = {line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |") for line in report.splitlines()
                if line.startswith("| TIE-KD beats") or line.startswith("| (b) keeps")}
    assert set(findings) == {"TIE-KD beats No-KD", "TIE-KD beats Word-KD", "(b) keeps almost all of Word-KD's gain"}
    assert findings["(b) keeps almost all of Word-KD's gain"] == "not run"
    assert all(verdict != "not run" for claim, verdict in findings.items() if claim.startswith("TIE-KD"))

    # a stage recorded before hashes became path-independent (hash of the raw settings) is still accepted
    from tiekd.experiment.pipeline import settings_hash

    marker = out / "students" / "word-kd-micro-seed1" / "stage.json"
    record = json.loads(marker.read_text())
    record["settings_hash"] = settings_hash(record["settings"])
    marker.write_text(json.dumps(record))

    # an experiment.yaml written before a setting existed reads as that setting's default (`beam` stands
    # for such a setting: this experiment leaves it at its default)
    saved = yaml.safe_load((out / "experiment.yaml").read_text())
    del saved["beam"]
    (out / "experiment.yaml").write_text(yaml.safe_dump(saved))

    # a rerun finds every stage done: it prepares, trains, translates and analyses nothing
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    capsys.readouterr()  # forget the first run's output
    with monkeypatch.context() as patch:
        for name in ("prepare", "_train", "_evaluate", "_analyze"):
            patch.setattr(Pipeline, name, must_not_run)
        patch.setattr(trainer, "run_training", must_not_run)
        assert main(["experiment", "--config", str(config), "--out", str(out)]) == 0
    assert "] student " not in capsys.readouterr().out  # no student stage announced its work
    assert json.loads((out / "results.json").read_text())["students"][0]["scores"] == table["students"][0]["scores"]

    # other settings in the same folder are refused, never mixed
    changed = write_config(tmp_path / "exp2.yaml", {**TINY, "multi30k": str(multi30k),
                                                   "student": {**TINY["student"], "lr": 1e-3}})
    assert main(["experiment", "--config", str(changed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "student" in err

    # but rows may be added: a second seed for one row trains only that student
    finished = {p: p.stat().st_mtime_ns for p in out.glob("students/*/stage.json")}
    students = [dict(TINY["students"][0], seeds=[1, 2])] + TINY["students"][1:]
    more = write_config(tmp_path / "exp3.yaml", {**TINY, "multi30k": str(multi30k), "students": students})
    trained = []
    real_training = trainer.run_training

    def recording(run_config, **kwargs):
        trained.append(run_config.out)
        return real_training(run_config, **kwargs)

    monkeypatch.setattr(trainer, "run_training", recording)
    assert main(["experiment", "--config", str(more), "--out", str(out)]) == 0
    assert trained == [str(out / "students" / "no-kd-micro-seed2" / "run")]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["name"], r["seeds"]) for r in rows] == [("No-KD", "2"), ("Word-KD", "1"), ("TIE-KD", "1")]


def test_two_workers_share_one_experiment_folder(tmp_path, multi30k):
    """Two processes started with the same command split the stages: every stage runs exactly once."""
    import os
    import subprocess
    import sys

    config = write_config(tmp_path / "exp.yaml", {**TINY, "multi30k": str(multi30k)})
    out = tmp_path / "exp"
    command = [sys.executable, "-m", "tiekd", "experiment", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    # each worker announces a stage it runs as "student <slug>: <method>"; a teacher-free student may
    # also be trained ahead ("student <slug>: training it while the teacher trains") by a worker waiting
    # for the teacher, and its stage (resume: nothing left to train; evaluation) then run by either worker
    announced = [line.split("] student ")[1].split(": ", 1) for log in logs for line in log.splitlines()
                 if line.startswith("[") and "] student " in line]
    stages = sorted(slug for slug, what in announced if not what.startswith("training it while"))
    ahead = [slug for slug, what in announced if what.startswith("training it while")]
    assert stages == sorted(f"{n}-micro-seed1" for n in ("no-kd", "word-kd", "tie-kd")), logs
    assert set(ahead) <= {"no-kd-micro-seed1"} and len(ahead) == len(set(ahead)), logs
    for stage in out.glob("students/*/run/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in stage.read_text().splitlines()
                 if json.loads(line)["kind"] == "train"]
        assert len(steps) == len(set(steps)), stage
    for log in logs:  # each worker waited for the other and wrote the full table
        assert "| TIE-KD |" in log and "| No-KD |" in log


def test_a_bad_student_row_fails_before_any_stage_starts(tmp_path, multi30k, capsys):
    from tiekd.cli import main

    students = TINY["students"] + [{"name": "Top-k", "method": "kd-topk", "options": {"topk": 0, "rankng": False}},
                                   {"name": "Typo", "method": "word_kd"}]
    config = write_config(tmp_path / "exp.yaml", {**TINY, "multi30k": str(multi30k), "students": students,
                                                  "teacher": {**TINY["teacher"], "lr": -1}})
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"invalid experiment {config}; nothing was run (4 problems)" in error
    line = rf"{re.escape(str(config))}:\d+: "
    assert re.search(line + r"teacher\.lr -1: must be > 0\. Fix: ", error)
    assert re.search(line + r"students\[3\] \(Top-k\) options\.topk 0: must be >= 1\. Fix: ", error)
    assert re.search(line + r"students\[3\] \(Top-k\) options: unknown key 'rankng'\. Fix: did you mean 'ranking'\?",
                     error)
    assert re.search(line + r"students\[4\] \(Typo\) method 'word_kd': must be one of .*Fix: use 'word-kd'", error)
    assert "Traceback" not in error and not out.exists()  # no stage started, nothing written


def test_a_count_of_significance_samples_below_1_is_refused_before_any_stage(tmp_path, multi30k, capsys):
    from tiekd.cli import main

    config = write_config(tmp_path / "exp.yaml", {**TINY, "multi30k": str(multi30k), "randomization_trials": 0})
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(config))}:\d+: randomization_trials 0: must be a whole number of at least 1\. "
                     r"Fix: write e\.g\. 10000 trials", error), error
    assert not out.exists()


def test_every_shipped_preset_parses():
    from tiekd.config import KD_METHODS, RunConfig
    from tiekd.experiment.pipeline import PRESET_DIR, load_experiment_config

    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"quick", "cpu", "gpu", "capacity", "wmt14-en-de", "wmt14-en-fr", "wmt16-en-ro"} <= set(names)
    for name in names:
        # settings only: the WMT presets name Hugging Face datasets, and tests never reach the internet
        config = load_experiment_config(name, None, check_data=False)
        assert config.students and all(s.method in KD_METHODS for s in config.students)
        RunConfig.from_dict({**config.teacher, "data": "x", "out": "y"}, source=name)
        for spec in config.students:
            RunConfig.from_dict({**config.student, **spec.options, "data": "x", "out": "y", "method": spec.method,
                                 "teacher": "t"}, source=name)


def naive_agreement(student, teacher, tokenizer, sources, targets, topk, edges=(1 / 3, 2 / 3)) -> dict:
    """analysis.agreement_statistics written plainly: one sentence at a time, counted token by token."""
    counts = {"tokens": 0, "agree": 0, "teacher_gold": 0, "student_gold": 0, "overlap": 0.0}
    bins = [{"tokens": 0, "teacher_gold": 0, "agree": 0} for _ in range(len(edges) + 1)]
    for source, target in zip(sources, targets):
        gold = tokenizer(target).input_ids
        decoder_input = torch.tensor([[teacher.config.decoder_start_token_id] + gold[:-1]])
        inputs = tokenizer([source], return_tensors="pt")
        with torch.no_grad():
            s_logits = student(**inputs, decoder_input_ids=decoder_input).logits[0]
            t_logits = teacher(**inputs, decoder_input_ids=decoder_input).logits[0]
        for position, token in enumerate(gold):
            s_row, t_row = s_logits[position].tolist(), t_logits[position].tolist()
            s_ranked = sorted(range(len(s_row)), key=s_row.__getitem__, reverse=True)  # token ids, best first
            t_ranked = sorted(range(len(t_row)), key=t_row.__getitem__, reverse=True)
            s_best, t_best = s_ranked[0], t_ranked[0]
            s_top, t_top = set(s_ranked[:topk]), set(t_ranked[:topk])
            confidence = 1 / sum(math.exp(v - t_row[t_best]) for v in t_row)  # softmax at the top-1
            counts["tokens"] += 1
            counts["agree"] += s_best == t_best
            counts["teacher_gold"] += t_best == token
            counts["student_gold"] += s_best == token
            counts["overlap"] += len(s_top & t_top) / topk
            b = bins[sum(confidence > edge for edge in edges)]
            b["tokens"] += 1
            b["teacher_gold"] += t_best == token
            b["agree"] += s_best == t_best
    n = counts["tokens"]
    return {"tokens": n, "top1_agreement": counts["agree"] / n, "teacher_gold_overlap": counts["teacher_gold"] / n,
            "student_gold_accuracy": counts["student_gold"] / n, f"top{topk}_overlap": counts["overlap"] / n,
            "bins": bins}


def test_analyze_two_different_models_against_a_naive_reference(prepared, teacher_dir, tmp_path, capsys):
    from tiekd.cli import main
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.io import read_lines
    from tiekd.models import load_model

    # the student: the teacher with noisy weights, so the two agree on some tokens and not on others
    student = load_model(teacher_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.5 * param.std() * torch.randn(param.shape, generator=generator) if param.numel() > 1 else 0)
    student.save_pretrained(tmp_path / "student")
    load_tokenizer(teacher_dir).save_pretrained(tmp_path / "student")

    out = tmp_path / "analysis"
    assert main(["analyze", "--student", str(tmp_path / "student"), "--teacher", str(teacher_dir), "--data",
                 str(prepared), "--max-sentences", "30", "--topk", "3", "--out", str(out), "--device", "cpu"]) == 0
    stats = json.loads((out / "analysis.json").read_text())
    sources, targets = (read_lines(path)[:30] for path in load_prepared(prepared).splits["valid"])
    expected = naive_agreement(load_model(tmp_path / "student").eval(), load_model(teacher_dir).eval(),
                               load_tokenizer(teacher_dir), sources, targets, topk=3)
    n = expected["tokens"]
    assert stats["tokens"] == n and stats["topk"] == 3
    assert 0.2 < expected["top1_agreement"] < 0.95, expected  # really two different models
    assert expected["teacher_gold_overlap"] != pytest.approx(expected["student_gold_accuracy"], abs=0.02)
    # batched, padded logits may break a near-tie differently from one sentence alone: a token or two
    for key in ("top1_agreement", "teacher_gold_overlap", "student_gold_accuracy", "top3_overlap"):
        assert stats[key] == pytest.approx(expected[key], abs=2.5 / n), key
    assert [row["bin"] for row in stats["by_teacher_confidence"]] == [
        "q(t1) in [0.00, 0.33)", "q(t1) in [0.33, 0.67)", "q(t1) in [0.67, 1.00]"]
    for row, naive in zip(stats["by_teacher_confidence"], expected["bins"]):
        assert row["share_of_tokens"] == pytest.approx(naive["tokens"] / n, abs=2.5 / n)
        for key, count in (("teacher_gold_overlap", "teacher_gold"), ("top1_agreement", "agree")):
            if naive["tokens"] >= 20:
                assert row[key] == pytest.approx(naive[count] / naive["tokens"], abs=2.5 / naive["tokens"]), (row, key)
    assert sum(naive["tokens"] >= 20 for naive in expected["bins"]) >= 2  # the bins are really compared
    assert (out / "analysis.png").stat().st_size > 1000
    assert "top-1 agreement" in capsys.readouterr().out


def test_an_interrupted_training_stage_is_not_recorded_as_finished(tmp_path, multi30k, monkeypatch):
    """A SIGTERM makes the trainer save and return; the experiment must stop, not score a half-trained model."""
    from tiekd.cli import main
    from tiekd.training import trainer

    config = write_config(tmp_path / "exp.yaml", {**TINY, "multi30k": str(multi30k)})
    real = trainer.run_training

    def stopped_early(run_config, **kwargs):
        summary = real(run_config, **kwargs)
        return {**summary, "interrupted": True}

    monkeypatch.setattr(trainer, "run_training", stopped_early)
    assert main(["experiment", "--config", str(config), "--out", str(tmp_path / "exp")]) == 2
    assert not (tmp_path / "exp" / "teacher" / "stage.json").exists()


def test_analyze_reads_a_whole_prepared_split_from_its_stored_ids(prepared, teacher_dir, tmp_path, monkeypatch):
    """Without --max-sentences, analyze takes the split's ids as `prepare` stored them (read as needed, not
    the split's text encoded again), with the figures the text gives."""
    from tiekd.cli import main
    from tiekd.data import binarized
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.evaluation.agreement import agreement_statistics
    from tiekd.io import read_lines
    from tiekd.models import load_model

    opened = []
    original = binarized.load_corpus
    monkeypatch.setattr(binarized, "load_corpus", lambda *args: opened.append(original(*args)) or opened[-1])
    out = tmp_path / "analysis"
    assert main(["analyze", "--student", str(teacher_dir), "--teacher", str(teacher_dir), "--data", str(prepared),
                 "--topk", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert len(opened) == 1 and isinstance(opened[0], binarized.BinarizedCorpus)
    stats = json.loads((out / "analysis.json").read_text())
    sources, targets = map(read_lines, load_prepared(prepared).splits["valid"])
    model = load_model(teacher_dir)
    from_text = agreement_statistics(model, model, load_tokenizer(teacher_dir), sources, targets, topk=3)
    assert stats["tokens"] == from_text["tokens"]
    assert stats["teacher_gold_overlap"] == pytest.approx(from_text["teacher_gold_overlap"], abs=1e-9)
