"""A real full disk under four commands: train, average, export and translate write into a small tmpfs
that fills up half-way through their output, then run again once space is free.

    sudo python benchmarks/full_disk.py [--multi30k DIR] [--json results.json]

Needs root (it mounts tmpfs file systems under a temporary folder and unmounts them at the end). For each
command the undisturbed output is measured first on the ordinary disk; the tmpfs is then filled with a
filler file until only half of that output fits. Checked each time, and printed as a table:
  - the command exits with status 2 and one clear error naming the path and the fix, no traceback;
  - nothing partial is left: no temporary (`.<name>.<role>-<pid>-<hex>`), no final output that differs
    from the undisturbed one;
  - after the filler is removed, the same command (training: with --resume) finishes (status 0).
This covers what tests/test_write_faults.py cannot inject: the C++ and Rust writers of torch.save,
safetensors, SentencePiece and CTranslate2 meeting a real ENOSPC.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPORARY = re.compile(r"^\..+\.(tmp|building|part|old)-[A-Za-z0-9_]+-\d+-[0-9a-f]{8}$")


def tiekd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tiekd", *args], cwd=cwd, env=env, capture_output=True, text=True)


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def differing(reference: Path, output: Path) -> list[str]:
    """Files under the final name `output` that differ from the undisturbed run's (a partial output)."""
    if output.is_file():
        return [] if output.read_bytes() == reference.read_bytes() else [str(output)]
    return [str(p) for p in output.rglob("*") if p.is_file()
            and p.read_bytes() != (reference / p.relative_to(output)).read_bytes()] if output.is_dir() else []


def mount_tmpfs(where: Path, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def fill_leaving(where: Path, free: int) -> Path:
    """A filler file that leaves about `free` bytes of the file system free."""
    filler = where / "filler"
    available = shutil.disk_usage(where).free - free
    with open(filler, "wb") as handle:
        handle.truncate(0)
        block = b"\0" * (1 << 20)
        while available > 0:
            handle.write(block[: min(len(block), available)])
            available -= len(block)
    return filler


def one_case(name: str, command, output, work: Path, rerun_flag, share: float = 0.5) -> dict:
    """Run `command(out_root)` undisturbed, then on a tmpfs with `share` of its output's space, then again."""
    reference_root = work / f"{name}-reference"
    reference_root.mkdir()
    started = time.time()
    done = tiekd(*command(reference_root), cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    size = folder_bytes(output(reference_root))
    mount = work / f"{name}-tmpfs"
    mount_tmpfs(mount, max(4 << 20, 4 * size))
    try:
        filler = fill_leaving(mount, int(size * share))
        failed = tiekd(*command(mount), cwd=work)
        error = failed.stderr.strip().splitlines()[-1] if failed.stderr.strip() else ""
        leftovers = [str(p) for p in mount.rglob(".*") if TEMPORARY.match(p.name)]
        partial = [] if name == "train" else differing(output(reference_root), output(mount))
        filler.unlink()
        rerun = tiekd(*command(mount), *rerun_flag(mount), cwd=work)
        return {
            "command": name, "output_bytes": size, "free_bytes": int(size * share), "exit": failed.returncode,
            "clear_error": failed.returncode == 2 and "could not be written" in error and "Fix:" in error
            and "Traceback" not in failed.stderr,
            "error": error, "leftovers": leftovers, "partial": partial, "rerun_exit": rerun.returncode,
            "rerun_error": rerun.stderr[-500:] if rerun.returncode else "",
            "seconds": round(time.time() - started, 1),
        }
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multi30k", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("skipped: mounting tmpfs file systems needs root", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="tiekd-full-disk-") as tmp:
        work = Path(tmp)
        text = work / "text"
        text.mkdir()
        for name, split, n in (("train", "train", 3000), ("val", "val", 100), ("test", "test_2016_flickr", 1000)):
            for lang in ("de", "en"):
                lines = (args.multi30k / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
                (text / f"{name}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert tiekd("prepare", "--train", "text/train.de", "text/train.en", "--valid", "text/val.de", "text/val.en",
                     "--vocab-size", "1000", "--out", "data", cwd=work).returncode == 0
        train = ["--data", "data", "--model", "micro", "--max-updates", "8", "--save-every", "2", "--valid-every",
                 "4", "--max-tokens", "1024", "--valid-max-sentences", "20", "--no-valid-bleu", "--keep-last", "10"]
        assert tiekd("train", *train, "--out", "teacher", cwd=work).returncode == 0
        cases = [
            ("train", lambda root: ["train", *train, "--out", str(root / "run")], lambda root: root / "run",
             lambda root: ["--resume"] if (root / "run" / "config.yaml").is_file() else [], 0.5),
            ("average", lambda root: ["average", "teacher", "--last", "3", "--out", str(root / "model")],
             lambda root: root / "model", lambda root: [], 0.5),
            # a tenth: the space runs out inside CTranslate2's converter, not after it
            ("export", lambda root: ["export", "teacher/checkpoints/best", "--out", str(root / "ct2"),
                                     "--quantization", "float32"], lambda root: root / "ct2", lambda root: [], 0.1),
            ("translate", lambda root: ["translate", "--model", "teacher/checkpoints/best", "--input", "text/test.de",
                                        "--output", str(root / "test.hyp"), "--greedy", "--max-length", "40",
                                        "--quiet"], lambda root: root / "test.hyp", lambda root: [], 0.5),
        ]
        results = [one_case(*case[:3], work, *case[3:]) for case in cases]
    print(f"{'command':<10}{'output':>10}{'free':>10}  exit  clear error  leftovers  partial  rerun")
    for r in results:
        print(f"{r['command']:<10}{r['output_bytes'] / 1e6:>8.2f}MB{r['free_bytes'] / 1e6:>8.2f}MB  {r['exit']:>4}  "
              f"{'yes' if r['clear_error'] else 'NO':>11}  {len(r['leftovers']):>9}  {len(r['partial']):>7}  "
              f"{r['rerun_exit']:>5}")
        print(f"    {r['error'][:300]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(r["clear_error"] and not r["leftovers"] and not r["partial"] and r["rerun_exit"] == 0 for r in results)
    print("all four: a clear error, nothing partial, a rerun that finishes" if ok else "FAILED (above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
