"""Never lose a run, never take bad input quietly.

- kill -9 in the middle of `tiekd train` / `tiekd distill --method tie-kd`, then `--resume`: the same
  losses and bit-identical parameters as an uninterrupted run, and no duplicated metrics lines;
- SIGTERM saves a checkpoint, exits 0 and says how to continue;
- a damaged or half-written checkpoint is named and skipped, the newest intact one is used;
- bad input through the CLI: exit status 2 and a message naming the file (and line) and the fix, with no
  traceback (unless --debug).
Every run here is a real `python -m tiekd` subprocess or a `tiekd.cli.main` call on real Multi30k slices.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import head, small_config
from tiekd.cli import main
from tiekd.errors import TiekdError
from tiekd.training import checkpoint

ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT")}
ENV["OMP_NUM_THREADS"] = "1"


# ----------------------------------------------------------------------------- helpers
def tiekd_command(command: str, data: Path, out: Path, max_updates: int, teacher: Path | None = None) -> list[str]:
    args = [sys.executable, "-m", "tiekd", command, "--data", str(data), "--out", str(out), "--model", "micro",
            "--deterministic", "--save-every", "2", "--max-updates", str(max_updates), "--log-every", "1",
            "--no-valid-bleu", "--valid-every", "8", "--max-tokens", "1024", "--seed", "7", "--lr", "3e-3",
            "--warmup-updates", "10", "--device", "cpu"]
    if teacher is not None:
        args += ["--method", "tie-kd", "--teacher", str(teacher)]
    return args


def run_to_end(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    # output goes to files, never to pipes nobody reads (a full pipe would stall the run)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(args, cwd=cwd, env=ENV, stdout=out, stderr=err)


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, min_step: int, log: Path, timeout: float = 240) -> int:
    """Poll `run/checkpoints` until a step checkpoint >= min_step exists; return the newest step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [step for step, _ in checkpoint.step_checkpoints(run / "checkpoints")]
        if steps and max(steps) >= min_step:
            return max(steps)
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before checkpoint step {min_step} appeared:\n"
                        + log.with_suffix(".err").read_text()[-3000:])
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    pytest.fail(f"no checkpoint step >= {min_step} after {timeout} s")


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


CLOCK_KEYS = ("tokens_per_s", "train_seconds", "train_core_seconds")


def deterministic_part(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in CLOCK_KEYS}  # everything but the clocks


def weights(folder: Path) -> dict[str, torch.Tensor]:
    # copies: the loaded tensors may map the file, which a test then damages in place
    return {name: t.clone() for name, t in load_file(str(folder / "model.safetensors")).items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def optimizer_tensors(folder: Path) -> list[torch.Tensor]:
    state = torch.load(folder / checkpoint.STATE_FILE, map_location="cpu", weights_only=False)
    return [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. kill -9, then --resume
@pytest.mark.parametrize("command", ["train", "distill"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(command, prepared, teacher_dir, tmp_path):
    teacher = teacher_dir if command == "distill" else None
    # long enough that the run is still going when its step-4 checkpoint appears (the kill must land mid-run)
    total = 40 if command == "train" else 24

    # the uninterrupted run goes beside the one to be killed: one-thread processes, one per core
    straight = tmp_path / "straight"
    reference = start(tiekd_command(command, prepared, straight, total, teacher), tmp_path, tmp_path / "straight_log")

    killed = tmp_path / "killed"
    args = tiekd_command(command, prepared, killed, total, teacher)
    try:
        proc = start(args, tmp_path, tmp_path / "killed_log")
        wait_for_checkpoint(proc, killed, 4, tmp_path / "killed_log")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run had already finished: it was never killed"
        assert reference.wait(timeout=300) == 0, (tmp_path / "straight_log.err").read_text()[-3000:]
    finally:  # a failure above must not leave the reference run working on into the next tests
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    summary_before = killed / "summary.json"
    assert not summary_before.exists()  # it really died mid-run
    last_logged = records(killed, "train")[-1]["step"]
    assert last_logged < total

    resumed = run_to_end(args + ["--resume"], tmp_path)
    newest = checkpoint.latest_good_checkpoint(killed / "checkpoints")
    assert "resumed from" in resumed.stdout

    # the same training, bit for bit: every logged loss, every validation, the final weights and optimizer
    got, want = records(killed, "train"), records(straight, "train")
    assert [r["step"] for r in got] == list(range(1, total + 1))  # no duplicated or missing lines
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    assert [deterministic_part(r) for r in got] == [deterministic_part(r) for r in want]
    assert [deterministic_part(r) for r in records(killed, "valid")] == \
        [deterministic_part(r) for r in records(straight, "valid")]
    # the compute clocks add up over the resume instead of restarting from zero
    assert all(r["train_core_seconds"] > 0 for r in records(killed, "valid"))
    assert [r["step"] for r in records(killed, "valid")] == list(range(8, total + 1, 8))
    final = f"step_{total:07d}"
    assert newest.name == final
    assert_same_tensors(weights(killed / "checkpoints" / final), weights(straight / "checkpoints" / final))
    for a, b in zip(optimizer_tensors(killed / "checkpoints" / final), optimizer_tensors(straight / "checkpoints" / final),
                    strict=True):
        assert torch.equal(a, b)
    assert json.loads((killed / "summary.json").read_text())["step"] == total
    # no half-written step checkpoint is left behind (the resumed run re-saved the step the kill interrupted)
    assert not [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith(".step_")]


# ----------------------------------------------------------------------------- 2. SIGTERM
def test_sigterm_saves_a_checkpoint_exits_0_and_resume_finishes(prepared, tmp_path):
    run = tmp_path / "run"
    args = tiekd_command("train", prepared, run, 400, None)  # far more than it will do before the signal
    proc = start(args, tmp_path, tmp_path / "log")
    wait_for_checkpoint(proc, run, 2, tmp_path / "log")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stdout = (tmp_path / "log.out").read_text()
    assert "stopped by signal 15" in stdout and "--resume" in stdout and str(run) in stdout, stdout

    summary = json.loads((run / "summary.json").read_text())
    stopped = summary["step"]
    assert summary["interrupted"] is True and 2 <= stopped < 400
    stop_checkpoint = run / "checkpoints" / f"step_{stopped:07d}"
    assert checkpoint.verify_checkpoint(stop_checkpoint) is None
    assert checkpoint.latest_good_checkpoint(run / "checkpoints") == stop_checkpoint
    assert checkpoint.load_trainer_state(stop_checkpoint)["step"] == stopped
    assert records(run, "train")[-1]["step"] == stopped

    # continue (and end sooner than first planned: max_updates may change on resume)
    done = run_to_end(args + ["--resume", "--max-updates", str(stopped + 3)], tmp_path)
    assert f"update {stopped}" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["step"] == stopped + 3
    assert [r["step"] for r in records(run, "train")] == list(range(1, stopped + 4))


# ----------------------------------------------------------------------------- 3. damaged checkpoints
def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_damaged_checkpoint_is_named_and_skipped_on_resume(prepared, tmp_path, capsys, caplog):
    from tiekd.training.trainer import run_training

    # both halves run in this process: the same thread count, so the same floating-point sums
    run = tmp_path / "run"
    run_training(small_config(prepared, run, max_updates=12, save_every=2, valid_every=6, valid_bleu=False),
                 quiet=True)
    ckpts = run / "checkpoints"
    assert [s for s, _ in checkpoint.step_checkpoints(ckpts)] == [4, 6, 8, 10, 12]
    original_losses = [r["loss"] for r in records(run, "train")]
    original_weights = weights(ckpts / "step_0000012")

    damaged = ckpts / "step_0000012"
    flip_bytes(damaged / "model.safetensors")
    assert "model.safetensors" in checkpoint.verify_checkpoint(damaged)
    with pytest.raises(TiekdError, match=r"step_0000012: damaged checkpoint.*model\.safetensors.*Fix"):
        checkpoint.load_trainer_state(damaged)

    # half-written checkpoints: a temporary folder, and a step folder that never got its manifest
    from tiekd import writes

    leftover = ckpts / f".step_0000012.tmp-{writes.HOST}-{dead_pid()}-0badf00d"  # its writer was killed
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 100)
    unfinished = ckpts / "step_0000014"
    shutil.copytree(ckpts / "step_0000010", unfinished)
    (unfinished / checkpoint.MANIFEST).unlink()
    # and a metrics line torn by the crash
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 13, "lo')
    assert checkpoint.latest_good_checkpoint(ckpts) == ckpts / "step_0000010"

    capsys.readouterr()
    caplog.clear()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "step_0000012 is damaged" in warnings and "model.safetensors" in warnings
    assert "step_0000014 is damaged" in warnings and "MANIFEST" in warnings
    stdout = capsys.readouterr().out
    assert "resumed from" in stdout and "step_0000010" in stdout
    # the run completed from step 10 and re-wrote step 12 intact, identical to the original
    assert checkpoint.verify_checkpoint(damaged) is None
    assert_same_tensors(weights(damaged), original_weights)
    assert [r["loss"] for r in records(run, "train")] == original_losses
    assert not leftover.exists()
    assert checkpoint.latest_good_checkpoint(ckpts) == damaged  # the unfinished step 14 is still ignored


def test_resume_accepts_the_run_folder_however_it_is_spelled_or_moved(prepared, tmp_path):
    from tiekd.training.trainer import run_training

    run = tmp_path / "run"
    run_training(small_config(prepared, run, max_updates=4, save_every=2, valid_every=100, valid_bleu=False),
                 quiet=True)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    run.rename(moved)
    assert main(["train", "--out", str(moved) + "/", "--resume", "--max-updates", "6", "--device", "cpu"]) == 0
    assert json.loads((moved / "summary.json").read_text())["step"] == 6
    assert [r["step"] for r in records(moved, "train")] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- 4. bad input through the CLI
@pytest.fixture(scope="module")
def texts(tmp_path_factory, multi30k) -> dict[str, list[str]]:
    return {name: head(multi30k / name, n) for name, n in (("train.de", 2000), ("train.en", 2000),
                                                           ("val.de", 50), ("val.en", 50))}


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def prepare_args(tmp_path: Path, texts, out: Path | None = None, **replace) -> list[str]:
    """`tiekd prepare` on user files; `replace` maps train_de/train_en/valid_de/valid_en to a path to use."""
    files = {"train_de": "train.de", "train_en": "train.en", "valid_de": "val.de", "valid_en": "val.en"}
    paths = {key: replace.get(key) or write_lines(tmp_path / "in" / name, texts[name]) for key, name in files.items()}
    return ["prepare", "--train", str(paths["train_de"]), str(paths["train_en"]),
            "--valid", str(paths["valid_de"]), str(paths["valid_en"]), "--vocab-size", "500",
            "--out", str(out or tmp_path / "prepared")]


def fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    """main(argv) exits 2 with one message holding `expected` and 'Fix', and no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("tiekd: error: ") and "Fix" in err, err
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    return err


def test_prepare_refuses_bad_text_files(tmp_path, texts, capsys):
    short = write_lines(tmp_path / "bad" / "short.en", texts["train.en"][:1999])
    fails_cleanly(capsys, prepare_args(tmp_path, texts, train_en=short), "train.de:2000", "1999 lines", "2000 lines")

    latin1 = tmp_path / "bad" / "latin1.de"
    lines = [line.encode("utf-8") for line in texts["train.de"]]
    lines[4] = "Eine Straße.".encode("latin-1")
    latin1.write_bytes(b"\n".join(lines) + b"\n")
    fails_cleanly(capsys, prepare_args(tmp_path, texts, train_de=latin1), "latin1.de:5", "invalid UTF-8")

    empty = tmp_path / "bad" / "empty.en"
    empty.write_bytes(b"")
    fails_cleanly(capsys, prepare_args(tmp_path, texts, valid_en=empty), "empty.en", "empty")

    fails_cleanly(capsys, prepare_args(tmp_path, texts, valid_en=tmp_path / "nope.en"), "nope.en", "no such file")
    assert not (tmp_path / "prepared").exists()  # nothing was written by any of them

    # with --debug the error propagates (the traceback is shown)
    with pytest.raises(TiekdError, match="nope.en"):
        main(["--debug", *prepare_args(tmp_path, texts, valid_en=tmp_path / "nope.en")])


def test_prepare_accepts_crlf_and_counts_what_it_skips_and_filters(tmp_path, texts, capsys):
    de, en = list(texts["train.de"]), list(texts["train.en"])
    en[9] = "   \t "  # whitespace only: skipped and counted
    de[19] = "Hund " * 4000  # 20,000 characters: filtered and counted
    train_de = write_lines(tmp_path / "crlf" / "train.de", de, newline="\r\n")
    train_en = write_lines(tmp_path / "crlf" / "train.en", en, newline="\r\n")
    assert main(prepare_args(tmp_path, texts, train_de=train_de, train_en=train_en)) == 0
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())["splits"]["train"]
    assert (meta["read"], meta["pairs"], meta["skipped_empty"], meta["filtered_long"], meta["crlf_lines"]) == (
        2000, 1998, 1, 1, 4000)
    assert b"\r" not in (tmp_path / "prepared" / "train.de").read_bytes()
    assert "1,998" in capsys.readouterr().out


def test_train_and_distill_refuse_bad_inputs(prepared, tmp_path, capsys):
    run = ["--model", "micro", "--max-updates", "2", "--max-tokens", "1024", "--no-valid-bleu", "--device", "cpu"]

    out = tmp_path / "run"
    fails_cleanly(capsys, ["train", "--data", "/nonexistent", "--out", str(out), *run], "/nonexistent", "no such folder",
                  "tiekd prepare")
    assert not out.exists()
    with pytest.raises(TiekdError, match="/nonexistent"):
        main(["train", "--data", "/nonexistent", "--out", str(out), *run, "--debug"])

    config = tmp_path / "run.yaml"
    config.write_text(f"data: {prepared}\nout: {out}\nmax_update: 10\n")
    fails_cleanly(capsys, ["train", "--config", str(config)], str(config), "'max_update'", "did you mean 'max_updates'",
                  "max_tokens", "lr", "seed")
    assert not out.exists()

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("not a model")
    fails_cleanly(capsys, ["train", "--data", str(prepared), "--out", str(tmp_path / "m"), *run,
                           "--model", str(not_a_model)], str(not_a_model), "not a model folder")
    fails_cleanly(capsys, ["train", "--data", str(prepared), "--out", str(tmp_path / "m"), *run,
                           "--model", "tinny"], "--model tinny", "micro")
    fails_cleanly(capsys, ["distill", "--method", "word-kd", "--teacher", str(not_a_model), "--data", str(prepared),
                           "--out", str(tmp_path / "m"), *run], str(not_a_model), "not a model folder")
    assert not (tmp_path / "m").exists()  # nothing written: the corrected command needs no --overwrite


def test_distill_refuses_a_teacher_with_another_vocabulary(prepared, tmp_path, capsys):
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.data.tokenizer import train_joint_sentencepiece
    from tiekd.models import build_model

    other = tmp_path / "other_teacher"
    train_joint_sentencepiece([prepared / "train.de", prepared / "train.en"], tmp_path / "other_tok", vocab_size=600)
    tokenizer = load_tokenizer(tmp_path / "other_tok")
    build_model("micro", tokenizer).save_pretrained(other)
    tokenizer.save_pretrained(other)
    fails_cleanly(capsys, ["distill", "--method", "tie-kd", "--teacher", str(other), "--data", str(prepared),
                           "--out", str(tmp_path / "run"), "--model", "micro", "--max-updates", "2", "--device", "cpu"],
                  str(other), "600 tokens", "differs", str(prepared / "tokenizer"))


def test_an_out_folder_holding_another_run_is_refused_and_untouched(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(prepared), "--out", str(out), "--model", "micro", "--max-tokens", "1024",
            "--no-valid-bleu", "--device", "cpu", "--valid-every", "100", "--log-every", "1"]
    assert main([*base, "--max-updates", "2"]) == 0
    before = tree(out)
    fails_cleanly(capsys, [*base, "--max-updates", "3", "--seed", "2"], str(out), "already holds a different run",
                  "--resume", "--overwrite")
    assert tree(out) == before

    assert main([*base, "--max-updates", "3", "--seed", "2", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["step"] == 3
    assert [r["step"] for r in records(out, "train")] == [1, 2, 3]


def test_translate_refuses_a_folder_that_is_not_a_model(prepared, tmp_path, capsys):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    source = write_lines(tmp_path / "in.de", head(prepared / "valid.de", 3))
    output = tmp_path / "out.en"
    fails_cleanly(capsys, ["translate", "--model", str(folder), "-i", str(source), "-o", str(output), "--quiet"],
                  str(folder), "not a model folder")
    assert not output.exists()
    with pytest.raises(TiekdError, match="not a model folder"):
        main(["--debug", "translate", "--model", str(folder), "-i", str(source), "-o", str(output)])


# ----------------------------------------------------------------------------- 4. a full disk
def test_a_full_disk_is_a_clear_error_that_keeps_the_last_good_checkpoint(prepared, tmp_path, monkeypatch):
    """The file system fills up while step 4's checkpoint is written (the trainer state, its last
    file): the error names the folder, the space it needs, the free space and the last good
    checkpoint; the partial folder is gone; once space is back, --resume finishes the run."""
    import errno

    from tiekd.training.trainer import run_training

    real_save = torch.save

    def save_until_the_disk_is_full(obj, path, *args, **kwargs):
        if "step_0000004" in str(path):
            Path(path).write_bytes(b"\0" * 1000)  # a part of the file got written before the space ran out
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_is_full)
    run = tmp_path / "run"
    config = small_config(prepared, run, max_updates=6, save_every=2, valid_every=6, valid_bleu=False)
    with pytest.raises(TiekdError) as caught:
        run_training(config, quiet=True)
    message = str(caught.value)
    ckpts = run / "checkpoints"
    assert f"{ckpts / 'step_0000004' / 'trainer_state.pt'}: could not be written (No space left on device" in message
    assert re.search(r"; [\d,]+\.\d MB free there, more than 0\.\d MB needed\)|; [\d,]+\.\d MB free there\)", message)
    assert re.search(r"A checkpoint takes about \d+\.\d MB\.", message)
    assert f"last good checkpoint is {ckpts / 'step_0000002'}: continue from it with --resume" in message
    assert [s for s, _ in checkpoint.step_checkpoints(ckpts)] == [2]
    assert checkpoint.verify_checkpoint(ckpts / "step_0000002") is None
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]  # no partial folder left behind

    monkeypatch.setattr(checkpoint.torch, "save", real_save)  # space is free again
    summary = run_training(config, resume=True, quiet=True)
    assert summary["step"] == 6
    assert [s for s, _ in checkpoint.step_checkpoints(ckpts)] == [2, 4, 6]


def test_other_write_errors_are_not_called_a_full_disk(prepared, tmp_path, monkeypatch):
    import errno

    def read_only(obj, path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(checkpoint.torch, "save", read_only)
    with pytest.raises(TiekdError, match="Read-only file system") as caught:
        checkpoint.save_checkpoint(tmp_path / "ckpts" / "step_0000001", _Unsaved(), _Unsaved(), {"step": 1})
    assert "free space" not in str(caught.value) and "mounted read-only" in str(caught.value)
    assert not [p for p in (tmp_path / "ckpts").iterdir()]  # nothing left behind

    def not_storage(obj, path, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(checkpoint.torch, "save", not_storage)
    with pytest.raises(OSError, match="not permitted") as caught:
        checkpoint.save_checkpoint(tmp_path / "ckpts" / "step_0000001", _Unsaved(), _Unsaved(), {"step": 1})
    assert not isinstance(caught.value, TiekdError)
    assert not list((tmp_path / "ckpts").iterdir())  # the partial folder is removed here too


class _Unsaved:
    """A model/tokenizer stand-in whose save_pretrained writes one small file."""

    def save_pretrained(self, folder):
        (Path(folder) / f"{id(self)}.json").write_text("{}")
