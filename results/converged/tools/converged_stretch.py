"""Start, watch and end one working stretch of the converged table (issue 10) on this machine.

Kept as the experiment's history, not part of the product: it carried unfinished runs between machines by
committing their checkpoints, which the repository no longer allows (tests/test_repository.py).

The table takes many stretches, often on a new machine each time. Every stretch repeats the same steps,
and a slip in them costs hours (a worker started from the wrong checkout, a stage carried past its
averaging window). This puts the steps of results/converged/README.md into one place:

    start:  the pinned worktree, the finished stages and the carried checkpoints into RUN, then WORKERS
            one-thread workers from the pinned checkout (the malloc setting of docs/RESULTS.md
            "Keeping freed memory", which the pinned code does not apply itself).
    status: each worker's stage and update, its wall seconds per update and when the stage should end
            (machines of this kind differ in speed by 2-3x, so a stretch's plan needs today's rate).
    stop:   end the workers so that their newest checkpoint is one a resume can average: SIGTERM
            (a checkpoint at the current update) below LAST_REGULAR_FROM, SIGKILL past it (the
            last regular checkpoint stays newest, so the last 5 averaged stay 200 updates apart);
            then `carry_inflight.py save` into the repository.

    python results/converged/tools/converged_stretch.py start
    python results/converged/tools/converged_stretch.py status
    python results/converged/tools/converged_stretch.py stop

Commit results/converged/inflight after `stop`; `finished` copies finished stages in alone (`stop` does it too).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PINNED_COMMIT = "9641b41"  # the commit every student of the table trains from (docs/RESULTS.md)
# the machine's folders come from the environment: WORKTREE (git worktree at PINNED_COMMIT), RUN (experiment folder)
WORKTREE = Path(os.environ.get("WORKTREE", "worktree-9641b41"))
RUN = Path(os.environ.get("RUN", "runs/converged"))
KEPT = REPO / "results" / "converged"
MULTI30K = os.environ.get("TIEKD_MULTI30K_DIR", "../shared/data/multi30k")
# glibc keeps freed memory instead of returning it to the kernel (1.29-1.35x less CPU per step)
MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456"
# the preset saves every 200 updates and averages the last 5 of 3,600: 2,800 ... 3,600
LAST_REGULAR_FROM = 2800
WORKER_PATTERN = "tiekd experiment --preset converged"
# what a finished stage keeps in the repository: no weights (results/converged/README.md)
FINISHED_FILES = ("stage.json", "test_2016_flickr.hyp", "run/config.yaml", "run/metrics.jsonl", "run/summary.json")


def _python() -> str:
    return str(REPO / ".venv" / "bin" / "python")


def start(workers: int) -> None:
    if not Path(_python()).is_file():
        sys.exit(f"{_python()}: no virtual environment; fix: python3 -m venv .venv && .venv/bin/pip install "
                 "torch==2.13.0 && .venv/bin/pip install -e '.[test]'")
    if _worker_pids():
        sys.exit("workers are already running (see `status`); fix: `stop` them first")
    if not WORKTREE.is_dir():
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(WORKTREE), PINNED_COMMIT], cwd=REPO, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=WORKTREE, capture_output=True,
                          text=True, check=True).stdout.strip()
    if not PINNED_COMMIT.startswith(head) and not head.startswith(PINNED_COMMIT):
        sys.exit(f"{WORKTREE} is at {head}, not the table's {PINNED_COMMIT}; fix: git -C {WORKTREE} checkout "
                 f"--detach {PINNED_COMMIT}")
    (RUN / "students").mkdir(parents=True, exist_ok=True)
    if not (RUN / "teacher").exists():
        shutil.copytree(KEPT / "teacher", RUN / "teacher")
    for stage in sorted((KEPT / "students").iterdir()):
        if not (RUN / "students" / stage.name).exists():
            shutil.copytree(stage, RUN / "students" / stage.name)
    subprocess.run([_python(), str(Path(__file__).with_name("carry_inflight.py")), "restore",
                    str(KEPT / "inflight"), str(RUN)], check=True)
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC, TIEKD_MULTI30K_DIR=MULTI30K, OMP_NUM_THREADS="1")
    tag = time.strftime("%m%d-%H%M")
    for index in range(1, workers + 1):
        log = RUN.parent / f"converged-{tag}-{index}.log"
        with open(log, "w") as handle:
            subprocess.Popen([_python(), "-m", "tiekd", "experiment", "--preset", "converged", "--out", str(RUN)],
                             cwd=WORKTREE, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        print(f"worker {index}: log {log}")
        if index < workers:
            time.sleep(20)  # the workers claim stages through lock files; staggering keeps the claims apart


def _worker_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", WORKER_PATTERN], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid()]


def _since_stage_start(tail: str, stage: str) -> str:
    """The log after `stage`'s own start line: an earlier stage's progress bar may stand before it, and
    its position and rate are not this stage's."""
    return tail.rsplit(f"student {stage}:", 1)[-1]


def log_position(tail: str) -> tuple[str, int, int] | None:
    """(stage, update, of updates) from the tail of a worker's log, None before its first update."""
    stages = re.findall(r"student (\S+): \S+\s*$", tail, flags=re.MULTILINE)
    if not stages:
        return None
    # the progress bar rewrites one line with \r; its newest position is the last "N/M ["
    updates = re.findall(r"(\d+)/(\d+) \[", _since_stage_start(tail, stages[-1]))
    if not updates:
        return None
    return stages[-1], int(updates[-1][0]), int(updates[-1][1])


def log_seconds_per_update(tail: str, stage: str) -> float | None:
    """The progress bar's newest rate for `stage` (tqdm writes "16.96s/upd", or "1.20upd/s" when fast)."""
    rates = re.findall(r"(\d+(?:\.\d+)?)(s/upd|upd/s)", _since_stage_start(tail, stage))
    if not rates:
        return None
    value, unit = float(rates[-1][0]), rates[-1][1]
    return value if unit == "s/upd" else (1.0 / value if value > 0 else None)


def stop_signal(position: tuple[str, int, int] | None) -> signal.Signals:
    """SIGTERM saves a checkpoint at the current update; past the first checkpoint of the averaging
    window that extra checkpoint would replace a regular one among the last 5, so SIGKILL there."""
    late = position is not None and position[1] > LAST_REGULAR_FROM
    return signal.SIGKILL if late else signal.SIGTERM


def _worker_log_tail(pid: int) -> str:
    try:
        log = Path(os.readlink(f"/proc/{pid}/fd/1"))
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - 200_000))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _worker_position(pid: int) -> tuple[str, int, int] | None:
    return log_position(_worker_log_tail(pid))


def describe_worker(tail: str) -> str:
    """One status line: stage, update, rate and the stage's expected end (training only: the averaging,
    translation and scoring after the last update add a few minutes)."""
    position = log_position(tail)
    if position is None:
        return "no update yet"
    stage, update, total = position
    line = f"{stage} at update {update:,} of {total:,}"
    rate = log_seconds_per_update(tail, stage)
    if rate is not None:
        left_s = (total - update) * rate
        ends = time.strftime("%H:%M", time.localtime(time.time() + left_s))
        line += f", {rate:.1f} s per update, training ends in {left_s / 3600:.1f} h (about {ends})"
    return line


def status() -> None:
    pids = _worker_pids()
    if not pids:
        print("no workers running")
    for pid in pids:
        print(f"worker {pid}: {describe_worker(_worker_log_tail(pid))}")


def stop(carry: bool) -> None:
    pids = _worker_pids()
    for pid in pids:
        position = _worker_position(pid)
        chosen = stop_signal(position)
        print(f"worker {pid}: {position[0] + ' at ' + str(position[1]) if position else 'no update yet'}; "
              f"{chosen.name}")
        os.kill(pid, chosen)
    deadline = time.time() + 300
    while _worker_pids() and time.time() < deadline:
        time.sleep(2)
    if _worker_pids():
        sys.exit("workers still running after 300 s; nothing carried (fix: look at their logs, then stop again)")
    copy_finished()
    if carry:
        subprocess.run([_python(), str(Path(__file__).with_name("carry_inflight.py")), "save", str(RUN),
                        str(KEPT / "inflight")], check=True)


def copy_finished(run: Path = RUN, kept_dir: Path = KEPT) -> None:
    """Copy each stage finished on this machine into the repository, without its weights."""
    for stage in sorted((run / "students").iterdir()):
        kept = kept_dir / "students" / stage.name
        if not (stage / "stage.json").is_file() or kept.exists():
            continue
        for name in FINISHED_FILES:
            if (stage / name).is_file():
                (kept / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(stage / name, kept / name)
        print(f"{stage.name}: finished; copied into {kept}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("start", help="set up this machine and start the workers")
    start_parser.add_argument("--workers", type=int, default=2, help="one-thread workers (one per core)")
    sub.add_parser("status", help="each worker's stage, update, rate and expected end")
    stop_parser = sub.add_parser("stop", help="end the workers and carry their checkpoints")
    stop_parser.add_argument("--no-carry", action="store_true", help="end the workers only")
    sub.add_parser("finished", help="copy finished stages into the repository")
    args = parser.parse_args()
    if args.command == "start":
        start(args.workers)
    elif args.command == "status":
        status()
    elif args.command == "stop":
        stop(carry=not args.no_carry)
    else:
        copy_finished()


if __name__ == "__main__":
    main()
