"""`tiekd experiment` end to end at toy scale on real Multi30k, and `tiekd analyze`."""

from __future__ import annotations

import csv
import json
import time

import pytest
import yaml


TINY = {
    "name": "tiny", "vocab_size": 300, "train_pairs": 600,
    "teacher": {"model": "micro", "max_updates": 30, "max_tokens": 2048, "lr": 3e-3, "warmup_updates": 10,
                "valid_every": 30, "valid_bleu": False, "log_every": 10},
    "student": {"max_updates": 8, "max_tokens": 2048, "lr": 3e-3, "warmup_updates": 4, "valid_every": 4,
                "valid_bleu": False, "log_every": 4},
    "student_sizes": ["micro"],
    "students": [{"name": "No-KD", "method": "none"}, {"name": "Word-KD", "method": "word-kd"},
                 {"name": "TIE-KD", "method": "tie-kd"}],
    "seeds": [1], "average_last": 2, "test_sets": ["test_2016_flickr"], "test_max_sentences": 25,
    "max_decode_length": 20, "analyze_sentences": 25, "bootstrap_resamples": 100,
}


def write_config(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_experiment_runs_the_whole_pipeline_and_skips_finished_stages(tmp_path, multi30k, capsys):
    from tiekd.cli import main

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

    # a stage recorded before hashes became path-independent (hash of the raw settings) is still accepted
    from tiekd.experiment import settings_hash

    marker = out / "students" / "word-kd-micro-seed1" / "stage.json"
    record = json.loads(marker.read_text())
    record["settings_hash"] = settings_hash(record["settings"])
    marker.write_text(json.dumps(record))

    # a rerun finds every stage done and trains nothing
    started = time.perf_counter()
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 0
    assert time.perf_counter() - started < 20
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
    assert main(["experiment", "--config", str(more), "--out", str(out)]) == 0
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
    trained = [line.split("]")[1].split(":")[0].strip() for log in logs for line in log.splitlines()
               if line.startswith("[") and "] student " in line]
    assert sorted(trained) == sorted(f"student {n}-micro-seed1" for n in ("no-kd", "word-kd", "tie-kd")), logs
    for stage in out.glob("students/*/run/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in stage.read_text().splitlines()
                 if json.loads(line)["kind"] == "train"]
        assert len(steps) == len(set(steps)), stage
    for log in logs:  # each worker waited for the other and wrote the full table
        assert "| TIE-KD |" in log and "| No-KD |" in log


def test_every_shipped_preset_parses():
    from tiekd.experiment import PRESET_DIR, load_experiment_config
    from tiekd.config import KD_METHODS, RunConfig

    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"quick", "cpu", "gpu"} <= set(names)
    for name in names:
        config = load_experiment_config(name, None)
        assert config.students and all(s.method in KD_METHODS for s in config.students)
        RunConfig.from_dict({**config.teacher, "data": "x", "out": "y"}, source=name)
        for spec in config.students:
            RunConfig.from_dict({**config.student, **spec.options, "data": "x", "out": "y", "method": spec.method,
                                 "teacher": "t"}, source=name)


def test_analyze_writes_json_plot_and_summary(prepared, teacher_dir, tmp_path, capsys):
    from tiekd.cli import main

    out = tmp_path / "analysis"
    assert main(["analyze", "--student", str(teacher_dir), "--teacher", str(teacher_dir), "--data", str(prepared),
                 "--max-sentences", "30", "--out", str(out)]) == 0
    stats = json.loads((out / "analysis.json").read_text())
    # a model compared with itself agrees everywhere
    assert stats["top1_agreement"] == pytest.approx(1.0)
    assert stats["top5_overlap"] == pytest.approx(1.0)
    assert stats["teacher_gold_overlap"] == pytest.approx(stats["student_gold_accuracy"])
    shares = sum(row["share_of_tokens"] for row in stats["by_teacher_confidence"])
    assert shares == pytest.approx(1.0)
    assert (out / "analysis.png").stat().st_size > 1000
    assert "top-1 agreement" in capsys.readouterr().out


def test_an_interrupted_training_stage_is_not_recorded_as_finished(tmp_path, multi30k, monkeypatch):
    """A SIGTERM makes the trainer save and return; the experiment must stop, not score a half-trained model."""
    from tiekd import trainer
    from tiekd.cli import main

    config = write_config(tmp_path / "exp.yaml", {**TINY, "multi30k": str(multi30k)})
    real = trainer.run_training

    def stopped_early(run_config, **kwargs):
        summary = real(run_config, **kwargs)
        return {**summary, "interrupted": True}

    monkeypatch.setattr(trainer, "run_training", stopped_early)
    assert main(["experiment", "--config", str(config), "--out", str(tmp_path / "exp")]) == 2
    assert not (tmp_path / "exp" / "teacher" / "stage.json").exists()
