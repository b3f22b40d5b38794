"""Does `tiekd distill-data` hold its source in memory? Peak resident memory on a small and a large source.

    python benchmarks/bench_distill_data_scale.py --teacher TEACHER --source BIG_SOURCE --work SCRATCH \
        [--small 10000] [--seconds 180] [--old-code OLD_CHECKOUT] [--json out.json]

The first `--small` lines of BIG_SOURCE, and all of it, are translated by the teacher (CTranslate2 int8,
greedy, one thread, 2,000-line shards), each in a fresh process whose resident memory (the whole process
tree, psutil) is sampled every 0.2 s. The small run goes to its end; the large one is stopped by SIGTERM after
`--seconds` (decoding a million lines takes hours on a CPU, but a builder that reads its whole source does
so before its first shard, so the peak shows within seconds), and what it finished is counted. With
`--old-code`, the large source also goes through an earlier checkout, side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def head(source: Path, lines: int, out: Path) -> Path:
    with open(source, encoding="utf-8") as read, open(out, "w", encoding="utf-8") as write:
        for count, line in enumerate(read):
            if count == lines:
                break
            write.write(line)
    return out


def measure(code: Path, teacher: Path, source: Path, out: Path, seconds: float | None) -> dict:
    """Peak RSS (MB) of `tiekd distill-data` of checkout `code`, the lines it finished and its wall time."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tiekd", "distill-data", "--teacher", str(teacher), "--source", str(source),
               "--out", str(out), "--beam", "1", "--compute-type", "int8", "--threads", "1", "--shard-size", "2000"]
    started = time.time()
    with open(out.with_suffix(".log"), "w") as log:
        child = subprocess.Popen(command, env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT)
        process, peak, stopped = psutil.Process(child.pid), 0, False
        while child.poll() is None:
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))
            except psutil.NoSuchProcess:
                pass
            if seconds is not None and not stopped and time.time() - started > seconds:
                child.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.2)
    shards = out.parent / f".{out.name}.work" / "shards"
    done = sum(1 for shard in shards.glob("*") if shard.is_file()) if shards.is_dir() else 0
    return {"peak_rss_mb": round(peak / 1e6, 1), "wall_seconds": round(time.time() - started, 1),
            "finished": child.returncode == 0 and not stopped, "stopped_after_seconds": seconds if stopped else None,
            "shard_files": done, "status": child.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="the large source, one sentence a line")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--old-code", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    code = Path(__file__).resolve().parents[1]
    teacher = args.teacher.resolve()
    small = head(args.source, args.small, args.work / "small.src")
    big_lines = sum(1 for _ in open(args.source, encoding="utf-8"))
    result = {"small_lines": args.small, "big_lines": big_lines, "date": time.strftime("%Y-%m-%d"),
              "small": measure(code, teacher, small, args.work / "small.out", None),
              "big": measure(code, teacher, args.source.resolve(), args.work / "big.out", args.seconds)}
    if args.old_code:
        result["big_old_code"] = measure(args.old_code.resolve(), teacher, args.source.resolve(),
                                         args.work / "big-old.out", args.seconds)
    result["big_minus_small_mb"] = round(result["big"]["peak_rss_mb"] - result["small"]["peak_rss_mb"], 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
