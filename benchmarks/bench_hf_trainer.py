"""`tiekd distill` against tiekd.hf.DistillationTrainer on the same work: loss curve, test BLEU and time per update.

Both distill a fresh `tiny` student from one teacher with the same method, schedule and batches (the HF run
uses `DistillationConfig(max_tokens=...)`, which feeds tiekd's token-count batches in tiekd's epoch order),
side by side: one one-thread process each, started together, glibc's malloc tuned the same way in both
(tiekd.training.malloc_tuning, what the `tiekd` command applies to its training commands). Time per update covers updates 51 to the
last: for tiekd from its own log (tokens/s per window, validation excluded), for the HF run from the wall
clock at its logs, so start-up, the end-of-run validation and saving are outside both. Then both students translate the test sets
(beam 4, the same code) and are scored with sacreBLEU, each set and all pooled.

    python benchmarks/bench_hf_trainer.py --prepared DATA --teacher models/multi30k-de-en-teacher \
        --out OUT --method tie-kd --updates 600

DATA is a `tiekd prepare` folder made with the teacher's tokenizer (`tiekd prepare --tokenizer TEACHER`).
Prints the two loss curves, the ratio of times per update and the BLEU of both; writes OUT/bench_hf_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LOG_EVERY = 50
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tiekd, not an installed one


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", default="tie-kd")
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hf-child", action="store_true", help=argparse.SUPPRESS)  # the HF run's own process
    parser.add_argument("--finish-only", action="store_true",
                        help="score two runs already in --out (e.g. after an interruption of the scoring)")
    return parser.parse_args(argv)


def tiekd_command(args) -> list[str]:
    return [sys.executable, "-m", "tiekd", "distill", "--data", str(args.prepared), "--out", str(args.out / "tiekd"),
            "--model", args.student, "--method", args.method, "--teacher", str(args.teacher),
            "--max-updates", str(args.updates), "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
            "--lr", str(args.lr), "--warmup-updates", str(args.warmup), "--lr-schedule", "linear",
            "--valid-every", str(args.updates), "--no-valid-bleu", "--log-every", str(LOG_EVERY), "--keep-last", "1",
            "--device", "cpu"]


def hf_run(args) -> None:
    """The HF side, in its own process: DistillationTrainer with tiekd's batches and schedule."""
    from tiekd.training.malloc_tuning import tune_for_command

    tune_for_command("distill")  # the same allocator behaviour as the `tiekd distill` process beside it
    import torch
    from transformers import DataCollatorForSeq2Seq, TrainerCallback

    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.hf import DistillationConfig, DistillationTrainer, SentencePairs
    from tiekd.models import build_model, load_model

    out = args.out / "hf"
    tokenizer = load_tokenizer(args.prepared / "tokenizer")
    torch.manual_seed(args.seed)
    student = build_model(args.student, tokenizer)
    pairs = SentencePairs(tokenizer, args.prepared / "train.de", args.prepared / "train.en")
    log = open(args.out / "hf_log.jsonl", "w")

    class Clock(TrainerCallback):
        def on_log(self, _args, state, _control, logs=None, **_):
            if logs and "loss" in logs:
                log.write(json.dumps({"step": state.global_step, "loss": logs["loss"], "time": time.time()}) + "\n")
                log.flush()

    config = DistillationConfig(
        output_dir=str(out), method=args.method, max_tokens=args.max_tokens, max_steps=args.updates, seed=args.seed,
        learning_rate=args.lr, warmup_steps=args.warmup, lr_scheduler_type="linear", adam_beta2=0.98,
        max_grad_norm=5.0, weight_decay=0.0, logging_steps=LOG_EVERY, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False)
    trainer = DistillationTrainer(model=student, teacher_model=load_model(args.teacher), args=config,
                                  train_dataset=pairs, data_collator=DataCollatorForSeq2Seq(tokenizer, model=student),
                                  callbacks=[Clock()])
    trainer.train()
    trainer.save_model(str(out / "student"))


def wait(args, procs) -> None:
    for proc, name in zip(procs, ("tiekd", "hf")):
        if proc.wait() != 0:
            sys.exit(f"the {name} run failed (status {proc.returncode}); see {args.out}/{name}.err")


def curves(args) -> dict[str, list[dict]]:
    """Each run's logged losses. tiekd's records carry tokens/s over their window (validation excluded), so a
    window's seconds are its target tokens over that rate; the HF run's carry the wall clock at each log."""
    tiekd = [json.loads(line) for line in (args.out / "tiekd" / "metrics.jsonl").read_text().splitlines()]
    hf = [json.loads(line) for line in (args.out / "hf_log.jsonl").read_text().splitlines()]
    return {"tiekd": [r for r in tiekd if r.get("kind") == "train"], "hf": hf}


def seconds_per_update(args, logs: dict) -> dict[str, float]:
    """Over updates LOG_EVERY+1 .. the last: tiekd's from its windows' tokens/s and the batches' target tokens
    (the same batches in both runs), HF's from the wall clock between its first and last log."""
    from tiekd.data.batching import epoch_order, make_batches, updates_per_epoch
    from tiekd.hf import SentencePairs
    from tiekd.data.tokenizer import load_tokenizer

    pairs = SentencePairs(load_tokenizer(args.prepared / "tokenizer"), args.prepared / "train.de",
                          args.prepared / "train.en")
    plan = make_batches(pairs.corpus, args.max_tokens)
    targets = pairs.corpus.target_lengths()
    per_epoch = updates_per_epoch(len(plan), 1, 1)
    tokens = []  # target tokens of update 1, 2, ...
    epoch = 0
    while len(tokens) < args.updates:
        tokens += [int(targets[plan[k]].sum()) for k in epoch_order(len(plan), args.seed, epoch)][:per_epoch]
        epoch += 1
    seconds, previous = 0.0, LOG_EVERY
    for record in logs["tiekd"][1:]:
        seconds += sum(tokens[previous:record["step"]]) / record["tokens_per_s"]
        previous = record["step"]
    hf = logs["hf"]
    return {"tiekd": seconds / (previous - LOG_EVERY),
            "hf": (hf[-1]["time"] - hf[0]["time"]) / (hf[-1]["step"] - hf[0]["step"])}


def test_bleu(model_dir: Path, prepared: Path) -> dict[str, float]:
    """BLEU of beam-4 translations of every test set of the prepared folder, and of all of them pooled."""
    import sacrebleu
    import torch

    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.models import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    scores, pooled_hyp, pooled_ref = {}, [], []
    for source in sorted(prepared.glob("test_*.de")):
        lines = source.read_text(encoding="utf-8").splitlines()
        references = source.with_suffix(".en").read_text(encoding="utf-8").splitlines()
        hypotheses = []
        with torch.inference_mode():
            for start in range(0, len(lines), 64):
                encoded = tokenizer(lines[start:start + 64], return_tensors="pt", padding=True)
                hypotheses += tokenizer.batch_decode(model.generate(**encoded, num_beams=4, max_new_tokens=200),
                                                     skip_special_tokens=True)
        scores[source.stem] = round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)
        pooled_hyp += hypotheses
        pooled_ref += references
    scores["pooled"] = round(sacrebleu.corpus_bleu(pooled_hyp, [pooled_ref]).score, 2)
    return scores


def main(argv=None) -> None:
    args = arguments(argv)
    if args.hf_child:
        hf_run(args)
        return
    if args.finish_only:
        finish(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    hf_command = [sys.executable, __file__, *sys.argv[1:], "--hf-child"] if argv is None else \
        [sys.executable, __file__, *argv, "--hf-child"]
    procs = []
    for name, command in (("tiekd", tiekd_command(args)), ("hf", hf_command)):
        with open(args.out / f"{name}.out", "w") as out, open(args.out / f"{name}.err", "w") as err:
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
    wait(args, procs)
    finish(args)


def finish(args) -> None:
    """Curves, time per update and test BLEU of two finished runs in args.out (also: --finish-only)."""
    seen = curves(args)
    tiekd_model = args.out / "tiekd" / "checkpoints" / f"step_{args.updates:07d}"
    result = {"method": args.method, "student": args.student, "updates": args.updates, "max_tokens": args.max_tokens,
              "curves": seen, "seconds_per_update": seconds_per_update(args, seen),
              "bleu": {"tiekd": test_bleu(tiekd_model, args.prepared),
                       "hf": test_bleu(args.out / "hf" / "student", args.prepared)},
              "date": time.strftime("%Y-%m-%d"), "cpu": _cpu_name()}
    (args.out / "bench_hf_trainer.json").write_text(json.dumps(result, indent=1))
    print("update  tiekd distill loss  DistillationTrainer loss")
    hf_by_step = {r["step"]: r["loss"] for r in seen["hf"]}
    for record in seen["tiekd"]:
        print(f"{record['step']:6d}  {record['loss']:18.3f}  {hf_by_step.get(record['step'], float('nan')):24.3f}")
    t, h = result["seconds_per_update"]["tiekd"], result["seconds_per_update"]["hf"]
    print(f"seconds per update (updates {LOG_EVERY}-{args.updates}, side by side, one thread each): tiekd {t:.3f}, "
          f"HF {h:.3f}, HF/tiekd {h / t:.3f}")
    for name in ("tiekd", "hf"):
        print(f"test BLEU ({name}): " + ", ".join(f"{k} {v:.2f}" for k, v in result["bleu"][name].items()))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
