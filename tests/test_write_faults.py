"""Every command under a failing write: the fault-injection harness of tiekd.writes.

Each command runs once undisturbed (its writes counted), then again with its first, middle and last
write failing with ENOSPC, and with its middle write standing for a SIGKILL. Each time: a clear error
naming the path and the fix (or, for the kill, nothing at all), no partial output under a final name,
and a rerun of the same command (with --resume for training) that finishes with the same result as
the undisturbed run and leaves no temporary behind. In-process: each `tiekd` process would spend
seconds importing torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import head

TEMPORARY = re.compile(r"^\..+\.(tmp|building|part|old)-[A-Za-z0-9_]+-\d+-[0-9a-f]{8}$")


@dataclass
class Case:
    name: str
    argv: Callable[[Path, dict], list[str]]          # (out, inputs) -> the command line
    result: Callable[[Path], dict[str, bytes]]       # what must equal the undisturbed run's
    rerun_flags: Callable[[Path], list[str]] = lambda out: []


def files(root: Path, *patterns: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for pattern in patterns for p in sorted(root.glob(pattern))
            if p.is_file()}


def weights_of_last_checkpoint(out: Path) -> dict[str, bytes]:
    steps = sorted((out / "run" / "checkpoints").glob("step_*"))
    return {"last": (steps[-1] / "model.safetensors").read_bytes()} if steps else {}


def resume_if_started(out: Path) -> list[str]:
    return ["--resume"] if (out / "run" / "config.yaml").is_file() else []


TRAIN = ["--model", "micro", "--max-updates", "6", "--save-every", "2", "--valid-every", "3", "--log-every", "2",
         "--max-tokens", "1024", "--valid-max-sentences", "8", "--no-valid-bleu", "--deterministic", "--seed", "7",
         "--keep-last", "2"]

CASES = [
    Case("prepare", lambda out, i: ["prepare", "--train", str(i["text"] / "train.de"), str(i["text"] / "train.en"),
                                    "--valid", str(i["text"] / "val.de"), str(i["text"] / "val.en"),
                                    "--vocab-size", "200", "--out", str(out / "data")],
         # the .spm files record the path SentencePiece trained from, a fresh temporary each time
         lambda out: files(out / "data", "*.de", "*.en", "tokenizer/vocab.json")),
    Case("train", lambda out, i: ["train", "--data", str(i["prepared"]), "--out", str(out / "run"), *TRAIN],
         weights_of_last_checkpoint, resume_if_started),
    Case("distill", lambda out, i: ["distill", "--method", "word-kd", "--teacher", str(i["teacher"]), "--data",
                                    str(i["prepared"]), "--out", str(out / "run"), *TRAIN],
         weights_of_last_checkpoint, resume_if_started),
    Case("average", lambda out, i: ["average", str(i["run"]), "--last", "2", "--out", str(out / "model")],
         lambda out: files(out / "model", "*")),
    Case("export", lambda out, i: ["export", str(i["teacher"]), "--out", str(out / "ct2")],
         lambda out: files(out / "ct2", "model.bin", "*vocabulary*")),
    Case("translate", lambda out, i: ["translate", "--model", str(i["teacher"]), "--input", str(i["text"] / "test.de"),
                                      "--output", str(out / "test.hyp"), "--greedy", "--quiet"],
         lambda out: files(out, "test.hyp")),
    Case("evaluate", lambda out, i: ["evaluate", "--hyp", str(i["text"] / "val.en"), "--ref", str(i["text"] / "val.en"),
                                     "--json", str(out / "scores.json")],
         lambda out: files(out, "scores.json")),
    Case("analyze", lambda out, i: ["analyze", "--student", str(i["teacher"]), "--teacher", str(i["teacher"]),
                                    "--data", str(i["prepared"]), "--max-sentences", "10", "--out", str(out / "a")],
         lambda out: files(out / "a", "analysis.json")),
    Case("distill-data", lambda out, i: ["distill-data", "--teacher", str(i["teacher"]), "--source",
                                         str(i["text"] / "test.de"), "--out", str(out / "train.hyp"), "--beam", "1",
                                         "--shard-size", "8", "--work-dir", str(out / "work")],
         lambda out: files(out, "train.hyp")),
    Case("experiment", lambda out, i: ["experiment", "--config", str(i["experiment"]), "--out", str(out / "exp")],
         lambda out: files(out / "exp", "students/*/*.hyp", "teacher/eval/*.hyp")),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, multi30k, prepared, teacher_dir):
    text = tmp_path_factory.mktemp("text")
    for name, split, n in (("train", "train", 300), ("val", "val", 20), ("test", "test_2016_flickr", 12)):
        for lang in ("de", "en"):
            (text / f"{name}.{lang}").write_text("\n".join(head(multi30k / f"{split}.{lang}", n)) + "\n",
                                                 encoding="utf-8")
    experiment = text / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "faults", "teacher_model": str(teacher_dir),
        "data": {"train": [str(text / "train.de"), str(text / "train.en")],
                 "valid": [str(text / "val.de"), str(text / "val.en")],
                 "tests": {"t": [str(text / "test.de"), str(text / "test.en")]}},
        "student": {"max_updates": 4, "max_tokens": 1024, "valid_every": 2, "valid_bleu": False, "log_every": 2,
                    "save_every": 2},
        "student_sizes": ["micro"], "students": [{"name": "Word-KD", "method": "word-kd"}],
        "average_last": 1, "test_max_sentences": 8,
        "max_decode_length": 16, "analyze_sentences": 8, "bootstrap_resamples": 10, "randomization_trials": 10,
    }))
    return {"text": text, "prepared": prepared, "teacher": teacher_dir, "run": teacher_dir.parent.parent,
            "experiment": experiment}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if TEMPORARY.match(p.name)]


def run(argv: list[str]) -> int:
    from tiekd.cli import main

    return main(argv)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_failed_or_killed_write_leaves_nothing_partial_and_a_rerun_finishes(case, inputs, tmp_path, capsys):
    from tiekd import writes

    reference = tmp_path / "reference"
    with writes.inject_fault(0) as counted:
        assert run(case.argv(reference, inputs)) == 0, capsys.readouterr().err
    expected = case.result(reference)
    assert expected, f"{case.name}: the undisturbed run wrote nothing to compare"
    total = counted.count
    assert total >= 1
    capsys.readouterr()

    for kind, at in [("enospc", 1), ("enospc", (total + 1) // 2), ("enospc", total), ("kill", (total + 1) // 2)]:
        out = tmp_path / f"{kind}-{at}"
        with writes.inject_fault(at, kind) as plan:
            if kind == "kill":
                with pytest.raises(writes.ProcessKilled):
                    run(case.argv(out, inputs))
            else:
                assert run(case.argv(out, inputs)) == 2
                error = capsys.readouterr().err
                # the output is named by its final path, not by the temporary it was being built in
                failed = re.sub(r"/\.([^/]+)\.(tmp|building|part|old)-[A-Za-z0-9_]+-\d+-[0-9a-f]{8}(?=/|$)", r"/\1",
                                plan.paths[at - 1])
                assert f"{failed}: could not be written (No space left on device" in error, (failed, error)
                assert "Fix: free space" in error and "Traceback" not in error, error
        assert plan.count == at, f"{case.name}: the fault at write {at} of {total} did not stop the command"
        # nothing under a final name is partial: whatever exists matches the undisturbed run's bytes
        partial = case.result(out)
        if case.name not in ("train", "distill"):  # a stopped run keeps its earlier, complete checkpoints
            assert all(expected.get(key) == value for key, value in partial.items()), (kind, at, sorted(partial))
        if kind == "enospc":
            assert temporaries(out) == [], (kind, at)
        capsys.readouterr()
        assert run(case.argv(out, inputs) + case.rerun_flags(out)) == 0, (kind, at, capsys.readouterr().err)
        assert case.result(out) == expected, (kind, at)
        assert temporaries(out) == [], (kind, at, temporaries(out))
    capsys.readouterr()


def test_a_leftover_is_removed_only_when_its_writer_has_ended(tmp_path):
    import os
    import subprocess

    from tiekd import writes

    ended = subprocess.Popen(["true"])
    ended.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        host = writes.HOST
        gone = tmp_path / f".model.tmp-{host}-{ended.pid}-0123abcd"
        busy = tmp_path / f".model.tmp-{host}-{alive.pid}-0123abcd"
        mine = tmp_path / f".x.json.tmp-{host}-{os.getpid()}-0123abcd"  # this process wrote it, then was "killed"
        elsewhere = tmp_path / f".model.tmp-another_machine-{ended.pid}-0123abcd"  # its process id means nothing here
        legacy = tmp_path / ".best.tmp"
        for folder in (gone, busy, legacy, elsewhere):
            folder.mkdir()
        mine.write_text("{")
        writes.atomic_write_json(tmp_path / "x.json", {"a": 1})
        assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
        assert not gone.exists() and not mine.exists()
        # another process still writes it; another machine's; an older tiekd's (reported)
        assert busy.exists() and elsewhere.exists() and legacy.exists()
    finally:
        alive.kill()
        alive.wait()


def test_storage_errors_of_libraries_become_one_clear_error(tmp_path):
    from tiekd import writes

    with pytest.raises(writes.WriteFailed, match=r"state\.pt: could not be written \(basic_ios::clear: iostream "
                                                 r"error; [\d,.]+ MB free there\)\..*Fix: free space"):
        with writes.guarded(tmp_path / "state.pt"):
            raise RuntimeError("basic_ios::clear: iostream error")
    with pytest.raises(ValueError, match="not storage"):  # anything else passes through unchanged
        with writes.guarded(tmp_path / "state.pt"):
            raise ValueError("not storage")
    target = tmp_path / "folder"
    with pytest.raises(writes.WriteFailed, match=r"folder/weights: could not be written"):
        with writes.staged_folder(target) as tmp:
            (tmp / "a").write_bytes(b"x" * 1000)
            writes.call(tmp / "weights", _raise_enospc)
    assert not target.exists() and temporaries(tmp_path) == []


def _raise_enospc():
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
