"""Data parallelism (`torchrun -m tiekd ...`) on CPUs with gloo.

Two processes with `--update-freq 1` consume the same two batches per update as one process with
`--update-freq 2` (see `batching.update_batches`), and the loss is normalised by the global token count,
so they must log the same losses and end with the same parameters (up to float summation order).
Only rank 0 writes the run folder; a stop signal to any one rank stops every rank after the same update.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tiekd.training import checkpoint

ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT")}
ENV["OMP_NUM_THREADS"] = "1"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tiekd"]
SINGLE = [sys.executable, "-m", "tiekd"]


def run_args(command: str, data: Path, out: Path, max_updates: int, update_freq: int, teacher: Path | None,
             *extra: str) -> list[str]:
    args = [command, "--data", str(data), "--out", str(out), "--model", "micro", "--deterministic", "--device", "cpu",
            "--max-updates", str(max_updates), "--update-freq", str(update_freq), "--log-every", "1",
            "--max-tokens", "1024", "--seed", "7", "--lr", "3e-3", "--warmup-updates", "10", *extra]
    if teacher is not None:
        args += ["--method", "tie-kd", "--teacher", str(teacher)]
    return args


def run_to_end(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    return done


def run_together(*commands: list[str], cwd: Path, timeout: float = 300) -> list[str]:
    """Run the commands side by side (their startup is mostly one-core imports) and return each one's
    stdout once all have ended, each with status 0."""
    logs = [cwd / f"together_{i}" for i in range(len(commands))]
    procs = []
    for args, log in zip(commands, logs):
        with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
            procs.append(subprocess.Popen(args, cwd=cwd, env=ENV, stdout=out, stderr=err))
    try:
        for args, proc, log in zip(commands, procs, logs):
            assert proc.wait(timeout=timeout) == 0, \
                f"{args}\nstdout:\n{log.with_suffix('.out').read_text()[-3000:]}\n" \
                f"stderr:\n{log.with_suffix('.err').read_text()[-5000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [log.with_suffix(".out").read_text() for log in logs]


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def assert_same_training(two: Path, one: Path, steps: int) -> None:
    """Same losses (each part too), learning rates, gradient norms and final parameters.

    Parameters agree to 1e-6 except for a few elements that Adam may move apart: its step
    lr * m / (sqrt(v) + eps) has size about lr whatever the gradient's size, so a unit whose gradient is
    near zero (a ReLU unit at the edge of its dead zone) turns a summation-order difference of 1e-9 into
    a parameter difference of up to lr per update. Measured on an Intel Xeon of this machine kind: 31 of
    54,376 elements, all in one ReLU unit of encoder layer 0, 1.4e-5 apart after 4 updates. A sharding
    or accumulation bug moves most elements, so at most 0.1% may differ, each by at most sum(lr)."""
    got, want = records(two, "train"), records(one, "train")
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, steps + 1))
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a.keys() - {"tokens_per_s"}:
            want_value = pytest.approx(b[key], abs=1e-6, rel=1e-6) if isinstance(b[key], float) else b[key]
            assert a[key] == want_value, (a["step"], key)
    final = f"checkpoints/step_{steps:07d}/model.safetensors"
    wa, wb = load_file(str(two / final)), load_file(str(one / final))
    assert wa.keys() == wb.keys()
    adam_bound = sum(r["lr"] for r in want)  # |Adam step| <= about lr per update
    differ = {key: (wa[key] - wb[key]).abs() for key in wa}
    elements = sum(d.numel() for d in differ.values())
    beyond = {key: int((d > 1e-6).sum()) for key, d in differ.items()}
    assert sum(beyond.values()) <= 0.001 * elements, {key: n for key, n in beyond.items() if n}
    for key, d in differ.items():
        assert float(d.max()) <= adam_bound, (key, float(d.max()), adam_bound)


# Each case costs two process starts (about 10 s of imports each on a slow machine of this kind), so
# the cases are the fewest that cover every path: training with update_freq 1 under DDP is compared with
# one process in the signal test below, and FSDP with update_freq 2 in the FSDP resume test.
@pytest.mark.parametrize("command, update_freq, sharding", [("train", 2, "ddp"), ("distill", 1, "ddp"),
                                                             ("distill", 1, "fsdp")])
def test_two_processes_equal_one_process_with_the_same_global_batch(command, update_freq, sharding, prepared,
                                                                    teacher_dir, tmp_path):
    """2 processes x update_freq batches per update == 1 process x 2 * update_freq (update_freq 2 also
    exercises DDP's no_sync). Under FSDP each rank holds half of every parameter, yet the run (and its
    checkpoints: full HF folders) must be the same."""
    teacher = teacher_dir if command == "distill" else None
    # train: validation BLEU on 1 sentence, so rank 1 decodes nothing and the gathering must cope
    valid = (["--valid-bleu", "--valid-max-sentences", "1", "--valid-beam", "1"] if command == "train"
             else ["--no-valid-bleu"])
    two, one = tmp_path / "two", tmp_path / "one"
    sharded = ["--fsdp"] if sharding == "fsdp" else []
    stdout, _ = run_together(TORCHRUN + run_args(command, prepared, two, 3, update_freq, teacher, *valid, *sharded),
                             SINGLE + run_args(command, prepared, one, 3, 2 * update_freq, teacher, *valid), cwd=tmp_path)

    assert stdout.count("student: ") == 1 and "x 2 processes" in stdout  # rank 0 speaks alone
    assert_same_training(two, one, 3)
    (v2,), (v1,) = records(two, "valid"), records(one, "valid")
    assert v2["step"] == v1["step"] == 3
    assert v2["loss"] == pytest.approx(v1["loss"], abs=1e-5) and v2["nll"] == pytest.approx(v1["nll"], abs=1e-5)
    if command == "train":
        assert v2["bleu"] == pytest.approx(v1["bleu"], abs=1e-9)
    # only rank 0 wrote: the same files as the one-process run, one line per record
    assert files(two) == files(one)
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 4
    summary = json.loads((two / "summary.json").read_text())
    assert summary["step"] == 3 and summary["interrupted"] is False


# Twice, rank 1 arrives 5 s after rank 0, while the default group gives up after 2 s (as NCCL's does
# after 10 minutes while one rank is still decoding its share of a corpus): first at wait_for_all, then
# at the plain barrier. The barrier comes last because a wait that gave up leaves the group unusable.
LATE_RANK = """
import time
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
from tiekd.training import distributed
dist.init_process_group("gloo", timeout=timedelta(seconds=2))
info = distributed.init_distributed("cpu")
distributed.open_long_waits(info)
said = []
for wait in (distributed.wait_for_all, distributed.barrier):
    if info.rank == 1:
        time.sleep(5)
    try:
        wait(info)
        said.append("met")
    except RuntimeError:
        said.append("gave up")
# one file per rank: two ranks printing to the one stdout pipe can interleave their lines
Path(f"rank{info.rank}.said").write_text(",".join(said))
distributed.shutdown()
"""


def test_long_uneven_waits_outlast_the_default_timeout(tmp_path):
    """wait_for_all (used after decoding shards and after rank 0's export) waits past the default
    group's timeout; the plain barrier, the control, does not."""
    script = tmp_path / "late_rank.py"
    script.write_text(LATE_RANK)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    said_files = [tmp_path / f"rank{rank}.said" for rank in (0, 1)]
    said = [file.read_text() if file.exists() else None for file in said_files]
    assert said == ["met,gave up", "met,gave up"], done.stdout[-2000:] + done.stderr[-3000:]


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the worker processes that torchrun (pid `launcher`) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration, ValueError):
            continue
        rank = [item[5:] for item in environ if item.startswith(b"RANK=")]
        if parent == launcher and rank:
            found[int(rank[0])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_rank_stops_all_ranks_cleanly_and_the_run_resumes(prepared, tmp_path):
    run = tmp_path / "run"
    args = TORCHRUN + run_args("train", prepared, run, 400, 1, None, "--save-every", "2", "--no-valid-bleu")
    with open(tmp_path / "log.out", "w") as out, open(tmp_path / "log.err", "w") as err:
        proc = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.step_checkpoints(run / "checkpoints"):
            assert proc.poll() is None, (tmp_path / "log.err").read_text()[-5000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        workers = worker_pids(proc.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGTERM)  # rank 1 only: the all-reduced stop flag must stop rank 0 too
        assert proc.wait(timeout=120) == 0, (tmp_path / "log.err").read_text()[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = (tmp_path / "log.out").read_text()
    assert stdout.count("Continue with --resume") == 1 and "stopped by a signal to another rank" in stdout, stdout
    summary = json.loads((run / "summary.json").read_text())
    stopped = summary["step"]
    assert summary["interrupted"] is True and 1 <= stopped < 400
    assert checkpoint.latest_good_checkpoint(run / "checkpoints").name == f"step_{stopped:07d}"
    assert [r["step"] for r in records(run, "train")] == list(range(1, stopped + 1))

    # resume with two processes, then compare with one uninterrupted process of the same global batch
    total = stopped + 2
    run_to_end(args + ["--resume", "--max-updates", str(total)], tmp_path)
    one = tmp_path / "one"
    run_to_end(SINGLE + run_args("train", prepared, one, total, 2, None, "--save-every", "2", "--no-valid-bleu"),
               tmp_path)
    assert_same_training(run, one, total)
    assert json.loads((run / "summary.json").read_text())["interrupted"] is False


def test_fsdp_checkpoints_resume_sharded_or_replicated(prepared, tmp_path):
    """An FSDP run saved at update 2 resumes under FSDP to update 3, then under DDP to update 4; the
    result equals one uninterrupted process with the same global batch (losses, Adam state, weights).
    Two batches per rank and update exercise FSDP's deferred reduce-scatter accumulation too."""
    run, one = tmp_path / "run", tmp_path / "one"
    extra = ["--save-every", "1", "--no-valid-bleu"]
    run_together(TORCHRUN + run_args("train", prepared, run, 2, 2, None, *extra, "--fsdp"),
                 SINGLE + run_args("train", prepared, one, 4, 4, None, *extra), cwd=tmp_path)
    from tiekd.models import load_model

    load_model(run / "checkpoints" / "step_0000002")  # a plain Hugging Face model folder
    run_to_end(TORCHRUN + run_args("train", prepared, run, 3, 2, None, *extra, "--fsdp", "--resume"), tmp_path)
    run_to_end(TORCHRUN + run_args("train", prepared, run, 4, 2, None, *extra, "--resume"), tmp_path)
    assert_same_training(run, one, 4)
    weights = load_file(str(run / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert not weights["model.shared.weight"][-1].any()  # the <pad> row (last id) stayed zero in the shards
    saved = checkpoint.load_trainer_state(run / "checkpoints" / "step_0000003")
    assert saved["optimizer_layout"] == "names" and saved["optimizer"]["state"]


def test_a_rank_skips_interpreter_shutdown_yet_keeps_its_output_and_exit_code(tmp_path):
    """A torchrun rank ends with os._exit (tiekd.training.process_exit.run_and_exit): gloo threads that outlive the
    destroyed process group can abort a finalizing interpreter. Its atexit handlers (a probe here) must not
    run, after a return or an error, yet what it printed into a pipe must still arrive, and its exit code
    must be kept; a single process still shuts down normally."""
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a cat sits on the mat\n" * 50)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, sys\natexit.register(lambda: sys.stderr.write('interpreter shutdown ran\\n'))\n")
    single_env = {**ENV, "PYTHONPATH": str(probe)}
    rank_env = {**single_env, "RANK": "1", "WORLD_SIZE": "2"}
    evaluate = SINGLE + ["evaluate", "--hyp", str(hyp), "--ref", str(hyp)]
    single = subprocess.run(evaluate, env=single_env, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0 and "interpreter shutdown ran" in single.stderr  # the probe works
    rank = subprocess.run(evaluate, env=rank_env, capture_output=True, text=True, timeout=120)
    assert rank.returncode == 0, rank.stderr
    assert "interpreter shutdown ran" not in rank.stderr
    assert rank.stdout == single.stdout and rank.stdout.startswith("BLEU = 100.00")
    console_script = [str(Path(sys.executable).with_name("tiekd"))] + evaluate[len(SINGLE):]  # `tiekd ...`
    rank = subprocess.run(console_script, env=rank_env, capture_output=True, text=True, timeout=120)
    assert rank.returncode == 0 and "interpreter shutdown ran" not in rank.stderr and rank.stdout == single.stdout
    missing = evaluate[:-1] + [str(tmp_path / "missing.txt")]
    for args, code, says in [(missing, 2, "missing.txt: no such file"),  # an error main() reports
                             (SINGLE + ["--debug"] + missing[len(SINGLE):], 1, "Traceback"),  # an error main() raises
                             (evaluate + ["--no-such-flag"], 2, "unrecognized arguments")]:  # argparse's exit
        failed = subprocess.run(args, env=rank_env, capture_output=True, text=True, timeout=120)
        assert failed.returncode == code and says in failed.stderr, failed.stderr
        assert "interpreter shutdown ran" not in failed.stderr


def test_experiment_trains_each_stage_on_n_processes(tmp_path, multi30k):
    """`tiekd experiment --nproc-per-node 2`: the teacher and every student train under torchrun (2 gloo
    processes here, one per GPU on a GPU machine), the other stages in the experiment's own process, and the
    report comes out as with one process."""
    import yaml

    values = {"name": "n", "vocab_size": 300, "train_pairs": 400, "multi30k": str(multi30k),
              "teacher": {"model": "micro", "max_updates": 6, "max_tokens": 1024, "lr": 3e-3, "warmup_updates": 2,
                          "valid_every": 6, "valid_bleu": False, "log_every": 2},
              "student": {"max_updates": 4, "max_tokens": 1024, "lr": 3e-3, "warmup_updates": 2, "valid_every": 4,
                          "valid_bleu": False, "log_every": 2},
              "student_sizes": ["micro"], "students": [{"name": "No-KD", "method": "none", "baseline": True},
                                                       {"name": "TIE-KD", "method": "tie-kd"}],
              "seeds": [1], "average_last": 1, "test_sets": ["test_2016_flickr"], "test_max_sentences": 10,
              "max_decode_length": 12, "analyze_sentences": 10, "bootstrap_resamples": 50,
              "randomization_trials": 100}
    config = tmp_path / "n.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "exp"
    done = run_to_end([*SINGLE, "experiment", "--config", str(config), "--out", str(out), "--device", "cpu",
                       "--nproc-per-node", "2"], cwd=tmp_path, timeout=500)
    assert (out / "results.md").is_file()
    for stage in ("teacher", "students/no-kd-micro-seed1", "students/tie-kd-micro-seed1"):
        assert (out / stage / "stage-run.yaml").is_file() and (out / stage / "model" / "model.safetensors").is_file()
    assert done.stdout.count("training on 2 processes (torchrun)") == 3
    assert done.stdout.count("x 2 processes") >= 3  # each stage's trainer reports its world


def test_sequence_level_kd_targets_get_their_ids_stored_once_under_torchrun(prepared, teacher_dir, tmp_path):
    """Two ranks decode their shares of the teacher's targets; rank 0 alone stores their ids beside them
    while the other waits (all ranks decide alike whether to), and a resumed run reads those ids."""
    out = tmp_path / "run"
    args = ["distill", "--data", str(prepared), "--out", str(out), "--model", "micro", "--device", "cpu",
            "--method", "seq-kd", "--teacher", str(teacher_dir), "--train-split", "valid", "--seq-kd-beam", "1",
            "--max-tokens", "1024", "--no-valid-bleu", "--valid-every", "100", "--save-every", "2"]
    run_to_end(TORCHRUN + args + ["--max-updates", "2"], cwd=tmp_path)
    record = out / "seqkd" / "train.hyp.ids.json"
    assert record.is_file() and (out / "seqkd" / "train.hyp.ids").is_file()
    written = record.stat().st_mtime_ns
    run_to_end(TORCHRUN + args + ["--max-updates", "3", "--resume"], cwd=tmp_path)
    assert record.stat().st_mtime_ns == written  # current ids: not made again
    assert [r["step"] for r in records(out, "train")][-1] == 3
