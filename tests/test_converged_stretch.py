"""benchmarks/converged_stretch.py: a worker's stage and update are read from its log, the stop signal
keeps the averaging window's checkpoints regular, and finished stages are kept without weights."""

from __future__ import annotations

import signal

import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def stretch():
    return load_benchmark_script("converged_stretch")


def bar(first: int, last: int, total: int = 3600) -> str:
    """A tqdm bar as it lands in a log: one line rewritten with carriage returns."""
    return "".join(f"train:  {u * 100 // total}%|##| {u}/{total} [00:{u % 60:02d}<1:00:00, 3.0s/upd]\r"
                   for u in range(first, last + 1))


def test_log_position_reads_the_newest_stage_and_update(stretch):
    log = ("[13:10:22] evaluating the teacher\n"
           "[13:10:22] student word-kd-tiny-seed3: word-kd\n" + bar(3590, 3600) + "\n"
           "[14:02:00] student analysis-(b):-without-correlation-tiny-seed1: kd-top1-only\n"
           "resumed from .../step_0000639 (update 639, epoch 5)\n" + bar(639, 702))
    assert stretch.log_position(log) == ("analysis-(b):-without-correlation-tiny-seed1", 702, 3600)


def test_log_position_is_none_before_the_new_stage_trains(stretch):
    # the previous stage's finished bar must not be read as the new stage's update
    log = "[13:10:22] student no-kd-tiny-seed1: none\n" + bar(3598, 3600) + "\n[14:00:00] student tie-kd-tiny-seed3: tie-kd\n"
    assert stretch.log_position(log) is None
    assert stretch.log_position("[13:10:22] preparing the data\n") is None


def test_stop_signal_keeps_the_averaged_checkpoints_regular(stretch):
    assert stretch.stop_signal(("tie-kd-tiny-seed3", 2_800, 3600)) is signal.SIGTERM
    assert stretch.stop_signal(("tie-kd-tiny-seed3", 2_801, 3600)) is signal.SIGKILL
    assert stretch.stop_signal(None) is signal.SIGTERM


def test_copy_finished_keeps_scores_not_weights(stretch, tmp_path):
    run, kept = tmp_path / "run", tmp_path / "kept"
    done = run / "students" / "no-kd-tiny-seed1"
    (done / "run").mkdir(parents=True)
    (done / "model").mkdir()
    for name in ("stage.json", "test_2016_flickr.hyp", "run/config.yaml", "run/metrics.jsonl", "model/model.safetensors"):
        (done / name).write_text(name)
    (run / "students" / "tie-kd-tiny-seed3" / "run").mkdir(parents=True)  # unfinished: no stage.json
    (kept / "students").mkdir(parents=True)
    stretch.copy_finished(run, kept)
    copied = sorted(str(p.relative_to(kept / "students")) for p in (kept / "students").rglob("*") if p.is_file())
    assert copied == ["no-kd-tiny-seed1/run/config.yaml", "no-kd-tiny-seed1/run/metrics.jsonl",
                      "no-kd-tiny-seed1/stage.json", "no-kd-tiny-seed1/test_2016_flickr.hyp"]


def test_status_reads_the_stage_rate_and_its_end(stretch):
    log = ("[13:10:22] student word-kd-tiny-seed3: word-kd\n" + bar(3590, 3600) + "\n"
           "[14:02:00] student tie-kd-tiny-seed3: tie-kd\n"
           "train:  80%|##| 2880/3600 [01:00<3:00:00, 16.96s/upd, loss=1.643, tok_s=179]\r")
    assert stretch.log_seconds_per_update(log, "tie-kd-tiny-seed3") == pytest.approx(16.96)
    line = stretch.describe_worker(log)
    assert line.startswith("tie-kd-tiny-seed3 at update 2,880 of 3,600, 17.0 s per update, training ends in 3.4 h")
    fast = "[14:02:00] student no-kd-tiny-seed1: none\ntrain:  1%|##| 36/3600 [00:10<00:10, 4.00upd/s]\r"
    assert stretch.log_seconds_per_update(fast, "no-kd-tiny-seed1") == pytest.approx(0.25)
    # the previous stage's rate is not the new stage's
    assert stretch.log_seconds_per_update(log.rsplit("train:", 1)[0], "tie-kd-tiny-seed3") is None
