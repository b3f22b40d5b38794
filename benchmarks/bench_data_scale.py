"""What preparing and opening a corpus costs as it grows: streamed, binarized data against the code before.

    python benchmarks/bench_data_scale.py --sizes 30000,300000,1000000 --old-code OLD_CHECKOUT \\
        --work SCRATCH --json results.json [--plot cost.png]

For each size a synthetic corpus of WMT-like sentence lengths is built from Multi30k (each pair 1-3
Multi30k pairs joined), then, each in a fresh process with its peak resident memory (ru_maxrss):
  - `tiekd prepare` of this checkout, and of OLD_CHECKOUT (a git worktree of an earlier commit) where given;
  - SentencePiece's own encoding of the same training lines with the same tokenizer on all cores, the
    floor for prepare's work beyond training the tokenizer; both `--prepare-repeats` times (medians) at
    sizes up to `--prepare-repeats-max-pairs`;
  - `tiekd train` for 3 updates of a `micro` model on the prepared folder, `--train-repeats` times: seconds
    and peak memory of the whole run, and the seconds, RSS and peak RSS at the moment its corpus is open and
    its batches planned (what the corpus costs before the first update); medians, with every run's peak;
    with the old code too, on its own prepared folder.
Ratios are measured side by side in one run; absolute times drift with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

MEASURE = """
import resource, runpy, sys, time
started = time.time()
sys.argv = {argv!r}


def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")]


# the corpus is open and its batches planned once make_batches returns: what the process holds then, and
# its peak so far, are what the corpus costs before the first update (the updates' own peak depends on
# the batches drawn, and varies between identical runs). Only for train: the batching module imports
# torch, which `prepare` never loads, and a prepare process with torch loaded encoded 0.1-0.2 s slower
# at 30k pairs (0.58-0.62 s against 0.46-0.49 s beyond the tokenizer, three quiet runs each).
for module in ("tiekd.data.batching", "tiekd.batching") if sys.argv[1] == "train" else ():
    try:
        batching = __import__(module, fromlist=["make_batches"])
    except ImportError:
        continue
    planned = batching.make_batches

    def make_batches(*args, planned=planned, **kwargs):
        plan = planned(*args, **kwargs)
        print("OPENED", time.time() - started, *status(), flush=True)
        return plan

    batching.make_batches = make_batches
    break
try:
    runpy.run_module("tiekd", run_name="__main__")
except SystemExit as stop:
    code = stop.code or 0
else:
    code = 0
print("MEASURED", time.time() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, code, flush=True)
"""


def measured(code_dir: Path, argv: list[str], cwd: Path) -> dict:
    """Run `python -m tiekd ARGV` of the checkout `code_dir` in a fresh process: wall seconds, peak RSS,
    and for training the seconds, RSS and peak RSS at the moment its batches are planned."""
    env = {**os.environ, "PYTHONPATH": str(code_dir), "OMP_NUM_THREADS": "1"}
    script = MEASURE.format(argv=["tiekd", *argv])
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    line = [l for l in done.stdout.splitlines() if l.startswith("MEASURED")]
    if not line or line[-1].split()[3] != "0":
        raise RuntimeError(f"tiekd {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    _, seconds, rss, _ = line[-1].split()
    result = {"seconds": round(float(seconds), 2), "peak_rss_mb": round(int(rss) / 1e6, 1)}
    opened = [l.split() for l in done.stdout.splitlines() if l.startswith("OPENED")]
    if opened:
        _, at, now, peak = opened[0]
        result.update(opened_s=round(float(at), 2), opened_rss_mb=round(int(now) / 1e6, 1),
                      opened_peak_rss_mb=round(int(peak) / 1e6, 1))
    return result


def repeated_train(code: Path, argv: list[str], cwd: Path, run_dir: Path, repeats: int) -> dict:
    """`tiekd train` `repeats` times from scratch: the median of each figure, and every run's peak."""
    import statistics

    runs = []
    for _ in range(repeats):
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        runs.append(measured(code, argv, cwd))
    summary = {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}
    summary["peak_rss_mb_runs"] = [run["peak_rss_mb"] for run in runs]
    return summary


def repeated_prepare(code: Path, argv: list[str], cwd: Path, out: Path, repeats: int,
                     floor_lines: tuple[Path, Path] | None) -> dict:
    """`tiekd prepare` `repeats` times into a fresh `out`, each followed by SentencePiece's own encoding of
    the same training lines (`floor_lines`) with the tokenizer it trained: median seconds, phases and floor,
    the highest peak, and every run's (beyond the tokenizer, floor) pair. At 30k pairs both are under a
    second and one run's ratio moved between 1.8x and 2.2x on a quiet machine."""
    import statistics

    runs = []
    for _ in range(repeats):
        subprocess.run(["rm", "-rf", str(out)], check=True)
        run = measured(code, argv, cwd)
        run["phases"] = json.loads((out / "meta.json").read_text()).get("seconds", {})
        if floor_lines is not None:
            run["spm_encode_s"] = spm_floor(out / "tokenizer", *floor_lines)
        runs.append(run)
    summary = {"seconds": round(statistics.median(run["seconds"] for run in runs), 2),
               "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
               "phases": {key: round(statistics.median(run["phases"][key] for run in runs), 2)
                          for key in runs[0]["phases"]},
               "runs": [{"prepare_s": run["seconds"], "peak_rss_mb": run["peak_rss_mb"], "beyond_tokenizer_s":
                         beyond({"prepare_phases_s": run["phases"]}), "spm_encode_s": run.get("spm_encode_s")}
                        for run in runs]}
    if floor_lines is not None:
        summary["spm_encode_s"] = round(statistics.median(run["spm_encode_s"] for run in runs), 2)
    if all(isinstance(run["beyond_tokenizer_s"], float) for run in summary["runs"]):  # the runs' totals' median
        summary["beyond_tokenizer_s"] = round(statistics.median(run["beyond_tokenizer_s"] for run in summary["runs"]), 2)
    return summary


def synthetic_corpus(multi30k: Path, pairs: int, folder: Path) -> tuple[Path, Path]:
    """`pairs` pairs of WMT-like length: each 1-3 random Multi30k training pairs joined (seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    src, tgt = folder / "train.de", folder / "train.en"
    if src.is_file() and tgt.is_file():
        return src, tgt
    de = (multi30k / "train.de").read_text(encoding="utf-8").splitlines()
    en = (multi30k / "train.en").read_text(encoding="utf-8").splitlines()
    rng = random.Random(pairs)
    with open(src, "w", encoding="utf-8") as s, open(tgt, "w", encoding="utf-8") as t:
        for _ in range(pairs):
            picks = [rng.randrange(len(de)) for _ in range(rng.randint(1, 3))]
            s.write(" ".join(de[i] for i in picks) + "\n")
            t.write(" ".join(en[i] for i in picks) + "\n")
    return src, tgt


SPM_FLOOR = """
import sys, time, sentencepiece as spm, os
model = spm.SentencePieceProcessor(model_file=sys.argv[1])
lines = open(sys.argv[2], encoding="utf-8").read().splitlines() + open(sys.argv[3], encoding="utf-8").read().splitlines()
started = time.time()
for i in range(0, len(lines), 10000):
    model.encode(lines[i:i + 10000], out_type=int, num_threads=os.cpu_count())
print(time.time() - started)
"""


def spm_floor(tokenizer_dir: Path, src: Path, tgt: Path) -> float:
    done = subprocess.run([sys.executable, "-c", SPM_FLOOR, str(tokenizer_dir / "source.spm"), str(src), str(tgt)],
                          capture_output=True, text=True, check=True)
    return round(float(done.stdout.strip()), 2)


def private_memory(pid: int) -> tuple[int, int]:
    """(USS, PSS) of a process in bytes, from /proc/PID/smaps_rollup: its private pages, and its pages
    with shared ones divided among their sharers (a memory-mapped corpus is shared page cache)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Pss", 0)


def ranks_memory(data: Path, out: Path, ranks: int) -> list[dict]:
    """Peak USS and PSS of each torchrun rank training 3 updates on `data` (sampled every 0.1 s)."""
    import shutil
    import time

    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={ranks}", "-m",
               "tiekd", "train", "--data", str(data), "--out", str(out), "--model", "micro", "--max-updates", "3",
               "--valid-every", "1000", "--save-every", "1000", "--max-tokens", "4096", "--no-valid-bleu",
               "--valid-max-sentences", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, list[int]] = {}
    while launcher.poll() is None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == launcher.pid:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"tiekd" not in cmdline or str(out).encode() not in cmdline or any(b"torchrun" in c for c in cmdline):
                    continue
                uss, pss = private_memory(int(entry.name))
            except OSError:
                continue
            peak = peaks.setdefault(int(entry.name), [0, 0])
            peak[0], peak[1] = max(peak[0], uss), max(peak[1], pss)
        time.sleep(0.1)
    if launcher.returncode:
        raise RuntimeError(f"torchrun failed:\n{launcher.stderr.read()[-3000:]}")
    return [{"uss_mb": round(u / 1e6, 1), "pss_mb": round(p / 1e6, 1)} for u, p in peaks.values()]


def repeated_ranks_memory(data: Path, out: Path, ranks: int, repeats: int) -> dict:
    """`ranks_memory` `repeats` times: each rank's median peak USS and PSS, the ranks sorted by USS within
    each run (which process is which rank is not stable), and every run's figures."""
    import statistics

    runs = [sorted(ranks_memory(data, out, ranks), key=lambda rank: rank["uss_mb"]) for _ in range(repeats)]
    for run in runs:
        if len(run) != ranks:  # a rank that lived under the 0.1 s sampling, or a stray process matched
            raise RuntimeError(f"found {len(run)} training processes for {ranks} torchrun ranks: {run}")
    medians = [{key: round(statistics.median(run[k][key] for run in runs), 1) for key in ("uss_mb", "pss_mb")}
               for k in range(ranks)]
    return {"ranks": medians, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="30000,300000,1000000")
    parser.add_argument("--multi30k", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k")
    parser.add_argument("--old-code", type=Path, help="a checkout of an earlier commit to measure beside this one")
    parser.add_argument("--old-max-pairs", type=int, default=1_000_000,
                        help="run the old code only up to this size (it held 6 GB at 1M pairs: 27 GB at 4.5M)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (corpora and prepared data)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--train-repeats", type=int, default=3,
                        help="train this many times at each size and report medians (identical runs' peaks differ "
                             "by up to ~190 MB here: the updates' temporaries)")
    parser.add_argument("--prepare-repeats", type=int, default=3,
                        help="prepare (and measure SentencePiece's floor) this many times at each size up to "
                             "--prepare-repeats-max-pairs and report medians: small sizes' sub-second phases are noisy")
    parser.add_argument("--prepare-repeats-max-pairs", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=0,
                        help="also train with this many torchrun ranks on the smallest and largest size, "
                             "--train-repeats times, and report each rank's median peak private memory (USS) and PSS")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    codes = {"new": here, **({"old": args.old_code.resolve()} if args.old_code else {})}
    valid = [str(args.multi30k / "val.de"), str(args.multi30k / "val.en")]
    results = []
    for pairs in (int(x) for x in args.sizes.split(",")):
        src, tgt = synthetic_corpus(args.multi30k, pairs, args.work / f"corpus-{pairs}")
        row = {"pairs": pairs, "corpus_mb": round((src.stat().st_size + tgt.stat().st_size) / 1e6, 1)}
        for name, code in codes.items():
            if name == "old" and pairs > args.old_max_pairs:
                continue
            out = args.work / f"prepared-{name}-{pairs}"
            subprocess.run(["rm", "-rf", str(out), str(args.work / f"run-{name}-{pairs}")], check=True)
            repeats = args.prepare_repeats if name == "new" and pairs <= args.prepare_repeats_max_pairs else 1
            prepare = repeated_prepare(code, ["prepare", "--train", str(src), str(tgt), "--valid", *valid,
                                              "--vocab-size", "8000", "--out", str(out)], args.work, out,
                                       repeats, (src, tgt) if name == "new" else None)
            run_dir = args.work / f"run-{name}-{pairs}"
            train = repeated_train(code, ["train", "--data", str(out), "--out", str(run_dir), "--model", "micro",
                                          "--max-updates", "3", "--valid-every", "1000", "--save-every", "1000",
                                          "--max-tokens", "4096", "--no-valid-bleu", "--valid-max-sentences", "10"],
                                   args.work, run_dir, args.train_repeats)
            row[name] = {"prepare_s": prepare["seconds"], "prepare_peak_rss_mb": prepare["peak_rss_mb"],
                         "prepare_phases_s": prepare["phases"],
                         **({"beyond_tokenizer_s": prepare["beyond_tokenizer_s"]} if "beyond_tokenizer_s" in prepare else {}),
                         **({"prepare_runs": prepare["runs"]} if len(prepare["runs"]) > 1 else {}),
                         "train_3_updates_s": train["seconds"], "train_peak_rss_mb": train["peak_rss_mb"],
                         "train_peak_rss_mb_runs": train["peak_rss_mb_runs"],
                         **{f"train_{key}": train[key] for key in ("opened_s", "opened_rss_mb", "opened_peak_rss_mb")
                            if key in train}}
            if name == "new":
                row["spm_encode_s"] = prepare["spm_encode_s"]
            print(json.dumps({"pairs": pairs, name: row[name]}), flush=True)
        results.append(row)
    print(f"{'pairs':>9} {'MB':>6}  {'prepare new s':>13} {'RSS MB':>7}  {'old s':>6} {'RSS MB':>7}  {'spm s':>6}  "
          f"{'beyond tok. s':>13}  {'train new s':>11} {'RSS MB':>7}  {'old s':>6} {'RSS MB':>7}")
    for r in results:
        old = r.get("old", {})
        print(f"{r['pairs']:>9,} {r['corpus_mb']:>6}  {r['new']['prepare_s']:>13} {r['new']['prepare_peak_rss_mb']:>7}  "
              f"{old.get('prepare_s', '-'):>6} {old.get('prepare_peak_rss_mb', '-'):>7}  {r['spm_encode_s']:>6}  "
              f"{beyond(r['new']):>13}  "
              f"{r['new']['train_3_updates_s']:>11} {r['new']['train_peak_rss_mb']:>7}  "
              f"{old.get('train_3_updates_s', '-'):>6} {old.get('train_peak_rss_mb', '-'):>7}")
    for r in results:
        if "prepare_runs" in r["new"]:
            print(f"{r['pairs']:>9,} prepare runs, beyond the tokenizer / SentencePiece alone: " + ", ".join(
                f"{run['beyond_tokenizer_s']}/{run['spm_encode_s']} s" for run in r["new"]["prepare_runs"]))
    print("train, medians of the repeats: seconds to the planned batches, RSS then, peak RSS up to then; every "
          "run's peak")
    for r in results:
        for name in ("new", "old"):
            if name in r:
                t = r[name]
                print(f"{r['pairs']:>9,} {name}: {t.get('train_opened_s', '-')} s, {t.get('train_opened_rss_mb', '-')} "
                      f"MB, {t.get('train_opened_peak_rss_mb', '-')} MB; peaks {t['train_peak_rss_mb_runs']}")
    if args.ranks:
        ranked = {}
        for pairs in (results[0]["pairs"], results[-1]["pairs"]):
            ranked[pairs] = repeated_ranks_memory(args.work / f"prepared-new-{pairs}", args.work / f"ranks-{pairs}",
                                                  args.ranks, args.train_repeats)
            print(f"{pairs:,} pairs, {args.ranks} torchrun ranks, medians of {args.train_repeats}: " + "; ".join(
                f"rank USS {r['uss_mb']} MB, PSS {r['pss_mb']} MB" for r in ranked[pairs]["ranks"]), flush=True)
        results.append({"torchrun_ranks": args.ranks, "peaks": {str(k): v for k, v in ranked.items()}})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


def beyond(row: dict) -> float | str:
    """prepare's seconds beyond training the tokenizer: reading and cleaning, then encoding and writing (for
    repeated runs, the median of the runs' totals)."""
    if "beyond_tokenizer_s" in row:
        return row["beyond_tokenizer_s"]
    phases = row.get("prepare_phases_s") or {}
    if "read_and_clean" not in phases:
        return "-"
    return round(phases["read_and_clean"] + phases["encode_filter_write"], 2)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if "pairs" in r]  # not the torchrun rows
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [r["pairs"] for r in results]
    for name, style in (("new", "-o"), ("old", "--s")):
        rows = [r for r in results if name in r]
        if not rows:
            continue
        x = [r["pairs"] for r in rows]
        left.plot(x, [r[name]["prepare_peak_rss_mb"] for r in rows], style, label=f"prepare ({name})")
        left.plot(x, [r[name]["train_peak_rss_mb"] for r in rows], style, label=f"train, 3 updates ({name})")
        if all("train_opened_peak_rss_mb" in r[name] for r in rows):
            left.plot(x, [r[name]["train_opened_peak_rss_mb"] for r in rows], style,
                      label=f"train, corpus open, batches planned ({name})")
        right.plot(x, [r[name]["prepare_s"] for r in rows], style, label=f"prepare ({name})")
        right.plot(x, [r[name]["train_3_updates_s"] for r in rows], style, label=f"train, 3 updates ({name})")
    right.plot(sizes, [r["spm_encode_s"] for r in results], ":", color="grey", label="SentencePiece encoding alone")
    for ax, label in ((left, "peak resident memory (MB)"), (right, "wall seconds")):
        ax.set_xscale("log")
        ax.set_xlabel("training pairs")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
