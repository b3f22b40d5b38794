"""results/capacity/tools: a finished row kept in the repository by copy_row.py and put back by
restore_rows.py into an experiment folder elsewhere is a finished stage there, so a lost folder resumes
without training its finished rows again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tiekd.experiment.pipeline import ExperimentConfig, Pipeline
from tiekd.experiment.size_view import parameter_count

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "multi30k-de-en-teacher"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "results" / "capacity" / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_row(out: Path, train):
    """The No-KD micro seed-1 row's stage in the experiment `out`, with `train` standing in for training;
    evaluation writes one translation file and returns fixed scores."""
    config = ExperimentConfig.from_dict({
        "name": "t", "teacher_model": str(TEACHER), "student": {"max_updates": 2}, "student_sizes": ["micro"],
        "seeds": [1], "students": [{"name": "No-KD", "method": "none", "baseline": True}]}, source="test")
    pipeline = Pipeline(config, out)
    pipeline._train = train
    pipeline._evaluate = fake_evaluation
    pipeline._analyze = lambda student, teacher, data: {"top1_agreement": 0.5}
    return pipeline._student(config.students[0], "micro", 1, out / "data", TEACHER)


def fake_evaluation(model: Path, folder: Path, data: Path) -> dict:
    (folder / "test_2016_flickr.hyp").write_text("a dog runs .\n")
    return {"test_2016_flickr": {"bleu": 12.5, "chrf": 40.0}}


def fake_training(folder: Path, settings: dict) -> dict:
    run = folder / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data: {settings['data']}\nout: {run}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "bleu": 10.0, "train_core_seconds": 1.0}) + "\n")
    (run / "summary.json").write_text(json.dumps({"step": 2, "run": str(run)}) + "\n")
    return {"step": 2, "run": str(run)}


def never_train(folder: Path, settings: dict) -> dict:
    raise AssertionError(f"{folder}: a restored row was trained again")


def test_a_kept_row_restored_elsewhere_is_finished_and_keeps_its_scores(tmp_path):
    copy_row, restore_rows = load_tool("copy_row"), load_tool("restore_rows")
    first = tmp_path / "machine-a" / "capacity2"
    trained = run_row(first, fake_training)
    kept = tmp_path / "repo" / "table"
    copy_row.copy_row(first, "no-kd-micro-seed1", kept, copy_row.placeholders(first, None, None))
    assert "machine-a" not in "".join(path.read_text() for path in (kept / "no-kd-micro-seed1").rglob("*.*"))

    second = tmp_path / "machine-b" / "capacity2"
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(TEACHER)
    pairs = restore_rows.local_folders(second, None, None)
    restored = restore_rows.restore_row(kept / "no-kd-micro-seed1", second, pairs, tokenizer)
    assert str(second.parent) in (restored / "run" / "summary.json").read_text()
    again = run_row(second, never_train)  # the stage is finished: no training, the same result
    assert again["scores"] == trained["scores"] and again["analysis"] == trained["analysis"]
    assert (restored / "test_2016_flickr.hyp").read_text() == "a dog runs .\n"
    # the report's parameter count reads the size's config, the only part of model/ that comes back
    from tiekd.models import build_model, parameter_count as count

    assert parameter_count(restored / "model") == count(build_model("micro", tokenizer))
    with pytest.raises(SystemExit, match="already finished"):
        restore_rows.restore_row(kept / "no-kd-micro-seed1", second, pairs, tokenizer)
