"""A WMT preset at its real model sizes on a WMT-sized stand-in corpus: do its first updates run here?

    python benchmarks/bench_wmt_preset.py --preset wmt14-en-de --corpus CORPUS_DIR --work SCRATCH \
        [--updates 2] [--update-freq 1] [--json out.json]

CORPUS_DIR holds train.de / train.en, e.g. the 4.5M-pair synthetic corpus that benchmarks/bench_data_scale.py
builds (`--work` there, `corpus-4500000/`); Multi30k's validation and test_2016_flickr files are added beside
it. The benchmark writes an experiment file that is the preset with only these changes: the data (that
folder, De->En: the direction costs the same; a 20,000-piece vocabulary instead of 32,000, the most
the stand-in's Multi30k words allow), `--updates` updates for the teacher and the student, one
student row (TIE-KD, the most expensive), a validation of 50 sentences without BLEU at the last update, 20
sentences of test_2016_flickr as the test set, and `--update-freq` (the preset's 8 gives 32k tokens an update, which takes minutes per
update on a CPU). Then it runs `tiekd experiment` in a fresh process and reports, per stage, the seconds
per training update (the trainer's own train_seconds over its updates) and the peak resident memory of
the process while that stage ran (sampled every 0.5 s with psutil), and the whole run's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def experiment_file(args, corpus: Path) -> dict:
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "tiekd" / "presets" /
                             f"{args.preset}.yaml").read_text(encoding="utf-8"))
    short = {"max_updates": args.updates, "update_freq": args.update_freq, "valid_every": args.updates,
             "valid_max_sentences": 50, "valid_bleu": False, "save_every": args.updates, "log_every": 1,
             "warmup_updates": max(1, args.updates)}
    data = {"prepared": str(args.prepared)} if args.prepared else {"folder": str(corpus)}
    return {**preset, "name": f"{args.preset}-stand-in", "data": data, "src_lang": "de",
            "vocab_size": args.vocab_size,
            "tgt_lang": "en", "teacher": {**preset["teacher"], **short}, "student": {**preset["student"], **short},
            "students": [{"name": "TIE-KD", "method": "tie-kd"}], "average_last": 1, "test_max_sentences": 20,
            "test_sets": ["test_2016_flickr"],
            "analyze_sentences": 20, "bootstrap_resamples": 10, "randomization_trials": 10}


def stage_of(out: Path) -> str:
    """The stage running now, from the folders the experiment creates as each one starts (a reused prepared
    folder has no stage of its own here)."""
    if list(out.glob("students/*/stage.json")):
        return "report"
    if (out / "students").is_dir():
        return "student"
    return "teacher" if (out / "teacher").is_dir() else "prepare"


def run(args) -> dict:
    import psutil

    corpus = args.work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in ("train.de", "train.en"):
        target = corpus / name
        if not target.exists():
            target.symlink_to((args.corpus / name).resolve())
    for split, source in (("val", "val"), ("test_2016_flickr", "test_2016_flickr")):
        for lang in ("de", "en"):
            shutil.copyfile(args.multi30k / f"{source}.{lang}", corpus / f"{split}.{lang}")
    config = args.work / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment_file(args, corpus), sort_keys=False))
    out = args.work / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.time()
    with open(args.work / "experiment.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "tiekd", "experiment", "--config", str(config), "--out",
                                  str(out), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
        process, peaks, seconds = psutil.Process(child.pid), {}, {}
        while child.poll() is None:
            stage = stage_of(out)
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                break
            peaks[stage] = max(peaks.get(stage, 0), rss)
            seconds[stage] = seconds.get(stage, 0) + 0.5
            time.sleep(0.5)
    if child.returncode != 0:
        sys.exit(f"tiekd experiment failed (status {child.returncode}); see {args.work / 'experiment.log'}")
    result = {"preset": args.preset, "updates": args.updates, "update_freq": args.update_freq,
              "threads": args.threads, "wall_seconds": round(time.time() - started, 1),
              "stage_wall_seconds": seconds, "stage_peak_rss_gb": {k: round(v / 1e9, 2) for k, v in peaks.items()}}
    for stage, run_dir in (("teacher", out / "teacher" / "run"),
                           ("student", next(out.glob("students/*/run")))):
        valid = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if '"valid"' in line]
        result[f"{stage}_seconds_per_update"] = round(valid[-1]["train_seconds"] / valid[-1]["step"], 1)
        result[f"{stage}_target_tokens_per_update"] = round(valid[-1]["target_tokens_seen"] / valid[-1]["step"])
    from tiekd.experiment.size_view import parameter_count

    result["teacher_parameters"] = parameter_count(out / "teacher" / "model")
    result["student_parameters"] = parameter_count(next(out.glob("students/*/model")))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="wmt14-en-de")
    parser.add_argument("--corpus", type=Path, required=True, help="folder with train.de and train.en")
    parser.add_argument("--multi30k", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (the experiment goes in WORK/exp)")
    parser.add_argument("--prepared", type=Path, help="a prepared folder of an earlier run (WORK/exp/data) to reuse, "
                                                     "so that only the training stages are measured again")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--update-freq", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=20000,
                        help="the stand-in's vocabulary: Multi30k's words allow at most ~20,900 SentencePiece pieces, "
                             "so the preset's 32,000 cannot be trained on it (its models then have 12,000 x d_model "
                             "fewer embedding parameters than at 32k)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
