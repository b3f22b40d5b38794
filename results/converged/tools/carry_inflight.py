"""Carry the unfinished students of a long experiment from one machine to the next.

Kept as the experiment's history, not part of the product: it carried checkpoints through git, which the
repository no longer allows (tests/test_repository.py); a long run now stays on one machine's folder.

A converged table takes many working stretches, and a stretch's machine is not always handed to the
next one: a student still training when the machine goes is lost with it. A TIE-KD student of the
converged preset needs more core-hours than one stretch gives a worker, so without this it never ends.

    save:    for every student stage without a stage.json (not finished), copy its run files, its
             newest intact step checkpoint (weights, optimizer, scheduler, data position, RNG) and its
             sequence-level KD targets (run/seqkd/train.hyp, when made) into DEST/<stage>/run/; stages
             finished since the last save are dropped from DEST.
    restore: copy DEST/<stage> into RUN/students/<stage> where RUN has no newer intact checkpoint of it
             (and the carried targets where RUN lacks them); `tiekd experiment` then resumes it from that
             checkpoint as after any interruption, and a seq-KD stage trains on the carried targets.

    python results/converged/tools/carry_inflight.py save    <runs>/converged results/converged/inflight
    python results/converged/tools/carry_inflight.py restore results/converged/inflight runs/converged

The newest checkpoint travels (about 20 MB for a `tiny` student), and with it every intact checkpoint
that the run will still keep at its end: steps >= max_updates - (keep_last - 1) * save_every of its
config.yaml (2,800 for the converged preset: it averages the last 5 of 3,600, one every 200), so a stage
carried late keeps all the checkpoints its average needs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from tiekd.training.checkpoint import STEP_PATTERN, latest_good_checkpoint, step_checkpoints, verify_checkpoint

# where a run keeps the teacher's translations it trains on (tiekd/training/train_corpus.py): hours of decoding
# with the pinned code's `generate`, so they travel like a checkpoint
TARGETS = Path("seqkd")
TARGET_FILES = ("train.hyp", "train.hyp.json", "info.json")  # the targets, then their settings (new, pinned code)


def _newest_intact_step(run_dir: Path) -> int:
    """The step of the checkpoint a resume would use (the newest intact one), -1 without one."""
    checkpoint = latest_good_checkpoint(run_dir / "checkpoints")
    return int(STEP_PATTERN.match(checkpoint.name).group(1)) if checkpoint is not None else -1


def averaging_window_start(run_dir: Path) -> int | None:
    """The first step whose checkpoint the run keeps to its end, from run/config.yaml (max_updates,
    keep_last, save_every); None where the file does not say (then only the newest checkpoint travels)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    values = yaml.safe_load(config.read_text(encoding="utf-8"))
    keys = ("max_updates", "keep_last", "save_every")
    if not isinstance(values, dict) or not all(isinstance(values.get(key), int) for key in keys):
        return None
    if values["keep_last"] < 1 or values["save_every"] < 1:
        return None
    return values["max_updates"] - (values["keep_last"] - 1) * values["save_every"]


def checkpoints_to_carry(run_dir: Path) -> list[Path]:
    """The newest intact checkpoint and the intact ones inside the averaging window, oldest first."""
    newest = latest_good_checkpoint(run_dir / "checkpoints")
    if newest is None:
        return []
    start = averaging_window_start(run_dir)
    window = [folder for step, folder in step_checkpoints(run_dir / "checkpoints")
              if start is not None and step >= start and folder != newest and verify_checkpoint(folder) is None]
    return window + [newest]


def save(experiment_dir: Path, dest: Path) -> None:
    students = experiment_dir / "students"
    if not students.is_dir():
        sys.exit(f"{students}: no students folder; fix: pass the experiment folder (the --out of tiekd experiment)")
    dest.mkdir(parents=True, exist_ok=True)
    for stage in sorted(p for p in students.iterdir() if p.is_dir()):
        carried = dest / stage.name
        if (stage / "stage.json").is_file():
            if carried.exists():
                shutil.rmtree(carried)
                print(f"{stage.name}: finished; its carried checkpoint is dropped")
            continue
        carry = checkpoints_to_carry(stage / "run")
        checkpoint = carry[-1] if carry else None
        has_targets = _has_targets(stage / "run")
        if checkpoint is None and not has_targets:
            print(f"{stage.name}: no intact checkpoint or targets yet; nothing to carry")
            continue
        here, carried_step = _newest_intact_step(stage / "run"), _newest_intact_step(carried / "run")
        if carried_step > here:  # never trade a carried checkpoint for an older one (restore was not run here)
            if has_targets and not _has_targets(carried / "run"):
                _copy_targets(stage / "run", carried / "run")
            print(f"{stage.name}: the carried step {carried_step} is newer than this machine's "
                  f"{here if here >= 0 else 'none'}; kept "
                  "(fix: run `restore` before training on a new machine)")
            continue
        # write beside, then swap, so an interrupted save leaves the previous carried copy whole
        staging = dest / f".{stage.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "run" / "checkpoints").mkdir(parents=True)
        for item in (stage / "run").iterdir():
            if item.is_file():
                shutil.copy2(item, staging / "run" / item.name)
        for folder in carry:
            shutil.copytree(folder, staging / "run" / "checkpoints" / folder.name)
        if has_targets:
            _copy_targets(stage / "run", staging / "run")
        shutil.rmtree(carried, ignore_errors=True)
        staging.rename(carried)
        what = [", ".join(folder.name for folder in carry)] if carry else []
        print(f"{stage.name}: carried {' and '.join(what + (['its seq-KD targets'] if has_targets else []))}")


def _has_targets(run_dir: Path) -> bool:
    return (run_dir / TARGETS / TARGET_FILES[0]).is_file()


def _copy_targets(run_dir: Path, into: Path) -> None:
    """The finished targets file (and its info), not the shards it was merged from."""
    (into / TARGETS).mkdir(parents=True, exist_ok=True)
    for name in TARGET_FILES:
        if (run_dir / TARGETS / name).is_file():
            shutil.copy2(run_dir / TARGETS / name, into / TARGETS / name)


def restore(source: Path, experiment_dir: Path) -> None:
    if not source.is_dir():
        sys.exit(f"{source}: no carried students here; fix: pass the folder that `save` wrote")
    for carried in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        target = experiment_dir / "students" / carried.name
        if (target / "stage.json").is_file():
            print(f"{carried.name}: already finished here; left as it is")
            continue
        have, bring = _newest_intact_step(target / "run"), _newest_intact_step(carried / "run")
        targets_missing_here = _has_targets(carried / "run") and not _has_targets(target / "run")
        if have >= bring:
            if targets_missing_here:
                config = carried / "run" / "config.yaml"
                if not (target / "run" / "config.yaml").is_file():  # a run folder the trainer will resume
                    if not config.is_file():
                        print(f"{carried.name}: carried targets without the run's config.yaml; skipped (fix: "
                              "save again from the machine that made them)")
                        continue
                    (target / "run").mkdir(parents=True, exist_ok=True)
                    shutil.copy2(config, target / "run" / "config.yaml")
                _copy_targets(carried / "run", target / "run")
                print(f"{carried.name}: its seq-KD targets restored; this machine's step {have} kept")
            else:
                print(f"{carried.name}: this machine's step {have} is not older than the carried {bring}; kept")
            continue
        kept = None
        if _has_targets(target / "run") and not _has_targets(carried / "run"):
            kept = Path(tempfile.mkdtemp(dir=experiment_dir))  # the local targets outlive the swap
            _copy_targets(target / "run", kept)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(carried, target)
        if kept is not None:
            _copy_targets(kept, target / "run")
            shutil.rmtree(kept)
        print(f"{carried.name}: restored at step {bring}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    save_parser = sub.add_parser("save", help="copy unfinished students' newest checkpoints out")
    save_parser.add_argument("experiment_dir", type=Path)
    save_parser.add_argument("dest", type=Path)
    restore_parser = sub.add_parser("restore", help="put carried students back into an experiment folder")
    restore_parser.add_argument("source", type=Path)
    restore_parser.add_argument("experiment_dir", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        save(args.experiment_dir, args.dest)
    else:
        restore(args.source, args.experiment_dir)


if __name__ == "__main__":
    main()
