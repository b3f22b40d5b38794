"""Training-step CPU cost with glibc's default malloc against tiekd's tuning (tiekd/training/malloc_tuning.py).

    OMP_NUM_THREADS=1 python benchmarks/bench_malloc.py --data runs/quick/data --student tiny --teacher teacher
    python benchmarks/bench_malloc.py --data DATA --teacher-model runs/converged/teacher/model --methods tie-kd

Every case trains the same student on the same real batches from the same seed in a fresh process
(benchmarks/fresh_process.py), the two settings alternating, --repeats times each. Per case it reads
the process's own counters over the timed steps (getrusage): user and system CPU seconds, minor page
faults, and the peak resident memory. The figure to read is CPU seconds per step (user + system, what
the experiment's core-hours count), default over tuned, and whether both settings trained the same
weights bit for bit (a hash of the parameters after the last step).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import time
from pathlib import Path

from fresh_process import measure_in_fresh_process, peak_rss_mb

SETTINGS = ("default", "tuned")


def measure_child(args) -> dict:
    """One case: train warm-up + timed steps of one method under one malloc setting."""
    from tiekd.training.malloc_tuning import keep_freed_memory

    applied = keep_freed_memory() if args.child_setting == "tuned" else False
    import torch

    from real_batches import sample_real_batches
    from tiekd.config import RunConfig
    from tiekd.models import build_model, load_model
    from tiekd.kd.objectives import DistillationObjective

    tokenizer, chosen = sample_real_batches(args.data, args.max_tokens, args.warmup + args.steps)
    torch.manual_seed(0)
    method = args.child_method
    teacher = None
    if method != "none":
        teacher = load_model(args.teacher_model) if args.teacher_model else build_model(args.teacher, tokenizer)
    student = build_model(args.student, tokenizer).train()
    config = RunConfig(data=args.data, out="unused", method=method, teacher="t" if teacher is not None else "")
    objective = DistillationObjective(student, config, teacher)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4, betas=(0.9, 0.98))
    tokens = 0
    for k, batch in enumerate(chosen):
        if k == args.warmup:
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loss, _ = objective(batch.input_ids, batch.attention_mask, batch.labels)
        (loss / batch.num_target_tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.num_target_tokens if k >= args.warmup else 0
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    weights = hashlib.sha256()
    for parameter in student.parameters():
        weights.update(parameter.detach().numpy().tobytes())
    steps = args.steps
    return {"setting": args.child_setting, "method": method, "applied": applied,
            "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
            "sys_s_per_step": (after.ru_stime - before.ru_stime) / steps,
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "wall_s_per_step": wall / steps, "target_tokens": tokens, "peak_rss_mb": peak_rss_mb(),
            "weights_sha256": weights.hexdigest(), "threads": torch.get_num_threads()}


def summarise(cases: list[dict]) -> dict:
    """Median over repeats of each figure, per setting."""
    figures = ("user_s_per_step", "sys_s_per_step", "minor_faults_per_step", "wall_s_per_step", "peak_rss_mb")
    out = {}
    for setting in SETTINGS:
        mine = [case for case in cases if case["setting"] == setting]
        out[setting] = {name: statistics.median(case[name] for case in mine) for name in figures}
        out[setting]["cpu_s_per_step"] = statistics.median(c["user_s_per_step"] + c["sys_s_per_step"] for c in mine)
    if not all(case["applied"] for case in cases if case["setting"] == "tuned"):
        raise SystemExit("the tuned cases ran with glibc's default malloc (keep_freed_memory() was skipped: "
                         "not glibc?); fix: run where tiekd.training.malloc_tuning.skip_reason() is None")
    out["cpu_ratio_default_over_tuned"] = out["default"]["cpu_s_per_step"] / out["tuned"]["cpu_s_per_step"]
    out["same_weights"] = len({case["weights_sha256"] for case in cases}) == 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared-data folder")
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--teacher", default="teacher", help="teacher size preset (random weights)")
    parser.add_argument("--teacher-model", help="a trained teacher folder instead of --teacher")
    parser.add_argument("--methods", default="none,word-kd,tie-kd")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="cases per setting and method")
    parser.add_argument("--json", help="write every case and the summary here")
    parser.add_argument("--child-setting", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_setting:
        print(json.dumps(measure_child(args)))
        return

    # the parent passes no malloc variables of its own to the children: each child chooses its setting
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MALLOC_") and name not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env["TIEKD_MALLOC_TUNING"] = "1"
    shared = ["--data", args.data, "--student", args.student, "--teacher", args.teacher, "--max-tokens",
              str(args.max_tokens), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    shared += ["--teacher-model", args.teacher_model] if args.teacher_model else []
    report = {"args": vars(args), "methods": {}}
    for method in args.methods.split(","):
        cases = []
        for repeat in range(args.repeats):
            for setting in SETTINGS if repeat % 2 == 0 else reversed(SETTINGS):
                cases.append(measure_in_fresh_process(
                    __file__, [*shared, "--child-setting", setting, "--child-method", method],
                    f"{method} with {setting} malloc", env=env))
        report["methods"][method] = {"cases": cases, "summary": summarise(cases)}
    threads = report["methods"][method]["cases"][0]["threads"]
    print(f"student {args.student}, teacher {args.teacher_model or args.teacher}, {args.steps} timed steps of "
          f"<= {args.max_tokens} tokens, {threads} thread(s), median of {args.repeats} fresh processes per setting")
    print(f"{'method':10} {'setting':8} {'CPU s/step':>10} {'sys s':>6} {'faults/step':>12} {'peak MB':>8} "
          f"{'default/tuned':>13} {'same weights':>12}")
    for method, result in report["methods"].items():
        summary = result["summary"]
        for setting in SETTINGS:
            row = summary[setting]
            tail = (f" {summary['cpu_ratio_default_over_tuned']:13.2f} {str(summary['same_weights']):>12}"
                    if setting == "tuned" else "")
            print(f"{method:10} {setting:8} {row['cpu_s_per_step']:10.3f} {row['sys_s_per_step']:6.3f} "
                  f"{row['minor_faults_per_step']:12.0f} {row['peak_rss_mb']:8.0f}{tail}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
