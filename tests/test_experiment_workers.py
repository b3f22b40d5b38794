"""Worker scheduling in `tiekd experiment`: teacher-free rows train while another worker holds the teacher."""

from __future__ import annotations

import pytest

from tiekd.errors import TiekdError
from tiekd.experiment.pipeline import ExperimentConfig, Pipeline, claim


def test_teacher_free_rows_are_trained_while_the_teacher_is_busy(tmp_path, monkeypatch):
    config = ExperimentConfig.from_dict({
        "name": "t", "teacher": {"model": "micro", "max_updates": 2},
        "student": {"max_updates": 2}, "student_sizes": ["micro"], "seeds": [1, 2],
        "students": [{"name": "No-KD", "method": "none"}, {"name": "Word-KD", "method": "word-kd"},
                     {"name": "Seq-KD on No-KD's data", "method": "none", "options": {"seq_kd_targets": True}}],
    }, source="test")
    pipeline = Pipeline(config, tmp_path / "exp")
    trained = []
    monkeypatch.setattr(Pipeline, "_train", lambda self, folder, settings: trained.append((folder.name, settings)))
    jobs = [(spec, "micro", seed) for spec in config.students for seed in (1, 2)]
    data = tmp_path / "exp" / "data"

    # seed 2's No-KD stage is held by another worker, so only seed 1's is trained here
    with claim(pipeline._lock("students/no-kd-micro-seed2"), wait=False) as held:
        assert held
        pipeline._pretrain_teacher_free(jobs, data)
    assert [name for name, _ in trained] == ["no-kd-micro-seed1"]
    settings = trained[0][1]
    # exactly the settings the row's own stage will use, so that stage resumes the finished run
    assert settings == config.student_settings(config.students[0], "micro", 1, data, tmp_path / "elsewhere")
    assert settings["method"] == "none" and settings["teacher"] == "" and settings["seed"] == 1

    # a finished stage is skipped
    trained.clear()
    (tmp_path / "exp" / "students" / "no-kd-micro-seed2").mkdir(parents=True)
    (tmp_path / "exp" / "students" / "no-kd-micro-seed2" / "stage.json").write_text("{}")
    pipeline._pretrain_teacher_free(jobs, data)
    assert [name for name, _ in trained] == ["no-kd-micro-seed1"]


def test_student_settings_may_change_until_a_student_finishes(tmp_path):
    import pytest

    from tiekd.errors import TiekdError

    values = {"name": "t", "teacher": {"model": "micro", "max_updates": 2}, "student": {"max_updates": 2},
              "students": [{"name": "No-KD", "method": "none"}]}
    Pipeline(ExperimentConfig.from_dict(values, source="a"), tmp_path)
    changed = {**values, "student": {"max_updates": 3}}
    Pipeline(ExperimentConfig.from_dict(changed, source="b"), tmp_path)  # nothing finished yet: accepted
    (tmp_path / "students" / "no-kd-small-seed1").mkdir(parents=True)
    (tmp_path / "students" / "no-kd-small-seed1" / "stage.json").write_text("{}")
    with pytest.raises(TiekdError, match="student"):
        Pipeline(ExperimentConfig.from_dict({**values, "student": {"max_updates": 4}}, source="c"), tmp_path)
    with pytest.raises(TiekdError, match="teacher"):
        Pipeline(ExperimentConfig.from_dict({**changed, "teacher": {"model": "tiny", "max_updates": 2}}, source="d"),
                 tmp_path)


def test_seeds_first_order_trains_every_rows_first_seed_before_any_second(tmp_path):
    rows = [{"name": "No-KD", "method": "none", "seeds": [1, 2, 3]},
            {"name": "Word-KD", "method": "word-kd", "seeds": [1, 2]},
            {"name": "Seq-KD", "method": "seq-kd"}]
    base = {"teacher": {"max_updates": 10}, "student": {"max_updates": 10}, "student_sizes": ["micro"],
            "students": rows, "seeds": [7]}
    by_rows = ExperimentConfig.from_dict(base, source="x.yaml")
    by_seeds = ExperimentConfig.from_dict({**base, "run_order": "seeds"}, source="x.yaml")
    runs = by_rows.student_runs()
    assert by_seeds.student_runs() == runs  # the table's order does not change
    named = lambda config: [(runs[i][0].name, runs[i][2]) for i in config.training_order()]
    assert named(by_rows) == [("No-KD", 1), ("No-KD", 2), ("No-KD", 3), ("Word-KD", 1), ("Word-KD", 2), ("Seq-KD", 7)]
    assert named(by_seeds) == [("No-KD", 1), ("Word-KD", 1), ("Seq-KD", 7), ("No-KD", 2), ("Word-KD", 2), ("No-KD", 3)]
    # the order may change in a running experiment: it changes no result
    Pipeline(by_rows, tmp_path / "exp")
    Pipeline(by_seeds, tmp_path / "exp")
    with pytest.raises(TiekdError, match="run_order 'random': must be rows or seeds"):
        ExperimentConfig.from_dict({**base, "run_order": "random"}, source="x.yaml")


def test_row_folders_are_file_safe_and_older_finished_rows_are_renamed(tmp_path):
    """Row names such as "On-policy KD (JSD, lambda 0.5)" give folders a shell needs no quotes for; a finished
    row of an older tiekd is renamed to that name, an unfinished one keeps its folder so that it resumes."""
    config = ExperimentConfig.from_dict({
        "name": "t", "teacher": {"model": "micro", "max_updates": 2}, "student": {"max_updates": 2},
        "student_sizes": ["micro"], "seeds": [1, 2],
        "students": [{"name": "On-policy KD (JSD, lambda 0.5)", "method": "on-policy"}]}, source="test")
    pipeline = Pipeline(config, tmp_path)
    spec = config.students[0]
    assert pipeline.slug(spec, "micro", 1) == "on-policy-kd-jsd-lambda-0.5-micro-seed1"
    finished = tmp_path / "students" / "on-policy-kd-(jsd,-lambda-0.5)-micro-seed1"
    finished.mkdir(parents=True)
    (finished / "stage.json").write_text("{}")
    unfinished = tmp_path / "students" / "on-policy-kd-(jsd,-lambda-0.5)-micro-seed2"
    (unfinished / "run").mkdir(parents=True)
    assert pipeline._student_folder(spec, "micro", 1) == tmp_path / "students" / "on-policy-kd-jsd-lambda-0.5-micro-seed1"
    assert (tmp_path / "students" / "on-policy-kd-jsd-lambda-0.5-micro-seed1" / "stage.json").is_file()
    assert not finished.exists()
    assert pipeline._student_folder(spec, "micro", 2) == unfinished
