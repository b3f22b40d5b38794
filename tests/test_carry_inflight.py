"""benchmarks/carry_inflight.py: unfinished students travel as their newest intact checkpoint, and a
restore never replaces a newer or equal checkpoint the machine already has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_benchmark_script

from tiekd.checkpoint import MANIFEST, verify_checkpoint
from tiekd.io import sha256_file


@pytest.fixture(scope="module")
def carry():
    return load_benchmark_script("carry_inflight")


def make_checkpoint(run_dir: Path, step: int, intact: bool = True) -> Path:
    """A step folder with the manifest `save_checkpoint` writes (weights stand-in, state); `intact`
    False leaves it as a crash mid-write would (no manifest)."""
    folder = run_dir / "checkpoints" / f"step_{step:07d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(f"weights at {step}".encode())
    (folder / "trainer_state.pt").write_bytes(f"state at {step}".encode())
    if intact:
        files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
        (folder / MANIFEST).write_text(json.dumps({"files": files, "step": step}))
    return folder


def make_stage(experiment: Path, name: str, steps: list[int], finished: bool = False,
               broken_newest: bool = False) -> Path:
    run = experiment / "students" / name / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "valid", "step": max(steps, default=0)}) + "\n")
    (run / "config.yaml").write_text("method: tie-kd\n")
    for step in steps:
        make_checkpoint(run, step)
    if broken_newest:
        make_checkpoint(run, max(steps) + 200, intact=False)
    if finished:
        (run.parent / "stage.json").write_text("{}")
    return run.parent


def carried_steps(stage: Path) -> list[str]:
    return sorted(p.name for p in (stage / "run" / "checkpoints").iterdir())


def test_save_carries_the_newest_intact_checkpoint_of_unfinished_stages_only(carry, tmp_path, capsys):
    experiment, dest = tmp_path / "run", tmp_path / "inflight"
    make_stage(experiment, "tie-kd-seed1", [200, 400], broken_newest=True)  # step 600 torn mid-write
    make_stage(experiment, "word-kd-seed1", [200, 400], finished=True)
    make_stage(experiment, "seq-kd-seed1", [])
    (dest / "word-kd-seed1").mkdir(parents=True)  # carried earlier, finished since

    carry.save(experiment, dest)

    assert sorted(p.name for p in dest.iterdir()) == ["tie-kd-seed1"]
    assert carried_steps(dest / "tie-kd-seed1") == ["step_0000400"]
    assert verify_checkpoint(dest / "tie-kd-seed1" / "run" / "checkpoints" / "step_0000400") is None
    assert (dest / "tie-kd-seed1" / "run" / "metrics.jsonl").is_file()
    printed = capsys.readouterr().out
    assert "seq-kd-seed1: no intact checkpoint or targets yet" in printed and "word-kd-seed1: finished" in printed


def test_a_second_save_replaces_the_carried_copy(carry, tmp_path):
    experiment, dest = tmp_path / "run", tmp_path / "inflight"
    stage = make_stage(experiment, "tie-kd-seed1", [200])
    carry.save(experiment, dest)
    make_checkpoint(stage / "run", 400)
    carry.save(experiment, dest)
    assert carried_steps(dest / "tie-kd-seed1") == ["step_0000400"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_restore_brings_older_or_damaged_stages_forward_and_keeps_newer_ones(carry, tmp_path, capsys):
    source_run, dest = tmp_path / "old-machine", tmp_path / "inflight"
    make_stage(source_run, "behind", [200, 400])
    make_stage(source_run, "ahead", [200])
    make_stage(source_run, "damaged", [200, 400])
    make_stage(source_run, "missing", [400])
    make_stage(source_run, "done", [400])
    carry.save(source_run, dest)

    here = tmp_path / "new-machine"
    make_stage(here, "behind", [200])
    make_stage(here, "ahead", [200, 400, 600])
    make_stage(here, "damaged", [200], broken_newest=True)  # its step 400 has no manifest
    make_stage(here, "done", [200], finished=True)

    carry.restore(dest, here)

    students = here / "students"
    assert carried_steps(students / "behind") == ["step_0000400"]  # the carried copy replaced the older one
    assert carried_steps(students / "ahead") == ["step_0000200", "step_0000400", "step_0000600"]  # kept
    assert carried_steps(students / "damaged") == ["step_0000400"]
    assert verify_checkpoint(students / "damaged" / "run" / "checkpoints" / "step_0000400") is None
    assert carried_steps(students / "missing") == ["step_0000400"]
    assert carried_steps(students / "done") == ["step_0000200"] and (students / "done" / "stage.json").is_file()
    assert "done: already finished here" in capsys.readouterr().out


def test_bad_folders_are_named_with_a_fix(carry, tmp_path):
    with pytest.raises(SystemExit, match="no students folder; fix"):
        carry.save(tmp_path / "nowhere", tmp_path / "dest")
    with pytest.raises(SystemExit, match="no carried students here; fix"):
        carry.restore(tmp_path / "nowhere", tmp_path / "run")


def make_targets(run_dir: Path, text: str) -> None:
    """The teacher's translations a seq-KD run trains on, with the shards they were merged from."""
    (run_dir / "seqkd" / "chunks").mkdir(parents=True, exist_ok=True)
    (run_dir / "seqkd" / "chunks" / "000000.txt").write_text(text)
    (run_dir / "seqkd" / "train.hyp").write_text(text)


def test_seq_kd_targets_travel_without_a_checkpoint_and_are_not_lost_in_a_restore(carry, tmp_path, capsys):
    source_run, dest = tmp_path / "old-machine", tmp_path / "inflight"
    make_targets(make_stage(source_run, "seq-kd-seed1", []) / "run", "a dog runs .\n")
    make_targets(make_stage(source_run, "seq-kd-seed2", [200]) / "run", "two dogs .\n")
    carry.save(source_run, dest)
    assert (dest / "seq-kd-seed1" / "run" / "seqkd" / "train.hyp").read_text() == "a dog runs .\n"
    assert not (dest / "seq-kd-seed1" / "run" / "seqkd" / "chunks").exists()  # the merged file is enough
    assert (dest / "seq-kd-seed1" / "run" / "config.yaml").is_file()
    assert "seq-kd-seed2: carried step_0000200 and its seq-KD targets" in capsys.readouterr().out

    here = tmp_path / "new-machine"
    carry.restore(dest, here)  # a fresh machine: the config and targets are put where the trainer reads them
    assert (here / "students" / "seq-kd-seed1" / "run" / "seqkd" / "train.hyp").read_text() == "a dog runs .\n"
    assert (here / "students" / "seq-kd-seed1" / "run" / "config.yaml").is_file()

    again = tmp_path / "third-machine"
    make_stage(again, "seq-kd-seed2", [200, 400])  # ahead of the carried step, but without the targets
    carry.restore(dest, again)
    stage = again / "students" / "seq-kd-seed2"
    assert carried_steps(stage) == ["step_0000200", "step_0000400"]
    assert (stage / "run" / "seqkd" / "train.hyp").read_text() == "two dogs .\n"

    behind = tmp_path / "fourth-machine"
    make_targets(make_stage(behind, "seq-kd-seed1", []) / "run", "its own .\n")  # already decoded here
    (dest / "seq-kd-seed1" / "run" / "seqkd" / "train.hyp").unlink()
    make_checkpoint(dest / "seq-kd-seed1" / "run", 200)  # the carried copy is ahead and has no targets
    carry.restore(dest, behind)
    stage = behind / "students" / "seq-kd-seed1"
    assert carried_steps(stage) == ["step_0000200"]
    assert (stage / "run" / "seqkd" / "train.hyp").read_text() == "its own .\n"  # kept through the swap
    assert not [p for p in behind.iterdir() if p.name != "students"]  # no temporary folder left


def test_a_save_never_replaces_a_newer_carried_checkpoint(carry, tmp_path, capsys):
    """A machine that decoded targets without restoring first: the carried step stays, the targets join it."""
    old, dest = tmp_path / "old-machine", tmp_path / "inflight"
    make_stage(old, "seq-kd-seed1", [200, 400])
    carry.save(old, dest)
    here = tmp_path / "new-machine"
    make_targets(make_stage(here, "seq-kd-seed1", []) / "run", "a cat .\n")
    carry.save(here, dest)
    assert carried_steps(dest / "seq-kd-seed1") == ["step_0000400"]
    assert (dest / "seq-kd-seed1" / "run" / "seqkd" / "train.hyp").read_text() == "a cat .\n"
    assert "the carried step 400 is newer than this machine's none; kept" in capsys.readouterr().out



def test_a_stage_inside_its_averaging_window_carries_every_checkpoint_the_average_needs(carry, tmp_path):
    """max_updates 1,000, keep_last 3, save_every 200: the run ends keeping 600, 800 and 1,000, so a stage
    at 800 carries 600 and 800 (the last 3 averaged stay 200 apart after the restore), not 400."""
    experiment, dest = tmp_path / "run", tmp_path / "inflight"
    stage = make_stage(experiment, "tie-kd-seed1", [400, 600, 800])
    (stage / "run" / "config.yaml").write_text("method: tie-kd\nmax_updates: 1000\nkeep_last: 3\nsave_every: 200\n")
    assert carry.averaging_window_start(stage / "run") == 600
    carry.save(experiment, dest)
    assert carried_steps(dest / "tie-kd-seed1") == ["step_0000600", "step_0000800"]

    restored = tmp_path / "elsewhere"
    (restored / "students").mkdir(parents=True)
    carry.restore(dest, restored)
    assert carried_steps(restored / "students" / "tie-kd-seed1") == ["step_0000600", "step_0000800"]


def test_a_damaged_checkpoint_in_the_window_stays_behind(carry, tmp_path):
    experiment, dest = tmp_path / "run", tmp_path / "inflight"
    stage = make_stage(experiment, "tie-kd-seed1", [600, 800])
    (stage / "run" / "config.yaml").write_text("max_updates: 1000\nkeep_last: 3\nsave_every: 200\n")
    (stage / "run" / "checkpoints" / "step_0000600" / "trainer_state.pt").write_bytes(b"torn")
    carry.save(experiment, dest)
    assert carried_steps(dest / "tie-kd-seed1") == ["step_0000800"]
