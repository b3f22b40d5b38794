"""Training-step cost of each objective, side by side in one run, and model FLOP utilisation.

    python benchmarks/bench_train_step.py --data runs/quick/data --student small --teacher teacher
    python benchmarks/bench_train_step.py --data DATA --device cuda --student base --teacher big --steps 40
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --data runs/converged/data --student tiny \
        --teacher-model runs/converged/teacher/model --student-model runs/converged/students/no-kd-tiny-seed1/model --methods none,word-kd,kd-top1-only,kd-without-top1,tie-kd:1,tie-kd:3,jsd,on-policy \
        --json runs/converged/update_costs.json        # the converged table's equal-compute costs
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --data DATA --student mini --teacher-model TEACHER \
        --methods none,word-kd,word-kd+cache,tie-kd:3,tie-kd:3+cache --teacher-cache CACHE_DIR
                                                        # the teacher-logit cache against the live teacher

For each objective (none, word-KD, TIE-KD with N=1 and N=3) the same student preset and teacher preset
(random weights: speed does not depend on their values) train on the same real batches. Printed:
target tokens/s, the ratio to the no-KD step, peak memory, and model FLOP utilisation (MFU) against
the dense matmul peak measured in the same run (fp32 on CPU, bf16 on GPU). A method written `NAME+cache`
reads the teacher's gold-prefix logits from a teacher-logit cache (--teacher-cache, built on the whole
training split first when missing; tiekd/kd/teacher_cache.py) instead of running the teacher for them;
its time includes reading them. Model FLOPs count
6 x parameters x tokens for the student's forward+backward (encoder over source tokens, decoder and
output layer over target tokens, times N decoder passes) and 2 x parameters x tokens for the teacher's
forward passes; attention's length-quadratic terms are left out (Multi30k sentences are short).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeat: int = 5) -> float:
    """Measured dense matmul throughput in FLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync(device)
    return 2 * size ** 3 * repeat / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def split_params(model) -> tuple[int, int, int]:
    """(encoder, decoder, output layer) parameter counts; embeddings' lookups cost no FLOPs."""
    enc = sum(p.numel() for n, p in model.model.encoder.named_parameters() if "embed" not in n)
    dec = sum(p.numel() for n, p in model.model.decoder.named_parameters() if "embed" not in n)
    out = model.config.vocab_size * model.config.d_model
    return enc, dec, out


def step_flops(student, teacher, src_tokens: int, tgt_tokens: int, passes: int, with_teacher: bool,
               cached: bool = False) -> float:
    """Model FLOPs of one update; with `cached`, pass 1's teacher logits are read, not computed (and a
    single-pass method runs no teacher at all)."""
    s_enc, s_dec, s_out = split_params(student)
    flops = 6 * (s_enc * src_tokens + (s_dec + s_out) * tgt_tokens * passes)
    teacher_passes = passes - 1 if cached else passes
    if with_teacher and teacher_passes:
        t_enc, t_dec, t_out = split_params(teacher)
        flops += 2 * (t_enc * src_tokens + (t_dec + t_out) * tgt_tokens * teacher_passes)
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared-data folder")
    parser.add_argument("--student", default="small")
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--teacher-model", help="a trained teacher folder instead of the --teacher preset")
    parser.add_argument("--student-model", help="a trained student folder to start every objective from instead "
                        "of the --student preset (on-policy KD decodes its own output: a random student's runs "
                        "to the length limit)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per objective")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", default="none,word-kd,tie-kd:1,tie-kd:3")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--teacher-cache", metavar="DIR", help="teacher-logit cache folder for the NAME+cache methods "
                        "(a preset teacher is saved there first, to be named by its files)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from real_batches import sample_real_batches
    from tiekd.config import RunConfig
    from tiekd.models import build_model, load_model, parameter_count
    from tiekd.kd.objectives import DistillationObjective
    from tiekd.kd.teacher_cache import cached_teacher_inputs
    from tiekd.training.malloc_tuning import keep_freed_memory
    from tiekd.training.trainer import autocast_context, pick_device

    keep_freed_memory()  # as the tiekd command does (tiekd/training/malloc_tuning.py)
    device = pick_device(args.device)
    tokenizer, chosen, corpus = sample_real_batches(args.data, args.max_tokens, args.warmup + args.steps,
                                                    with_corpus=True)
    if len(chosen) <= args.warmup:
        raise SystemExit(f"{args.data}: {len(chosen)} batches of {args.max_tokens} tokens, not more than --warmup "
                         f"{args.warmup}; fix: a smaller --warmup or --max-tokens")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 2048)
    torch.manual_seed(0)
    teacher = load_model(args.teacher_model) if args.teacher_model else build_model(args.teacher, tokenizer)
    teacher = teacher.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        teacher = teacher.to(torch.bfloat16)
    cache = None
    if "+cache" in args.methods:
        from tiekd.kd.teacher_cache import open_or_build

        if not args.teacher_cache:
            raise SystemExit("NAME+cache methods need --teacher-cache DIR")
        teacher_dir = args.teacher_model
        if teacher_dir is None:  # a preset teacher (random weights): saved once, so that the cache can name it
            teacher_dir = Path(args.teacher_cache) / f"preset-teacher-{args.teacher}"
            if not (teacher_dir / "config.json").is_file():
                teacher.save_pretrained(teacher_dir)
        cache = open_or_build(args.teacher_cache, teacher_dir, teacher, corpus, args.max_tokens, device)
    results = []
    for spec in args.methods.split(","):
        method, cached = spec.removesuffix("+cache"), spec.endswith("+cache")
        method, _, passes = method.partition(":")
        passes = int(passes or 1)
        torch.manual_seed(0)
        student = load_model(args.student_model) if args.student_model else build_model(args.student, tokenizer)
        student = student.to(device).train()
        config = RunConfig(data=args.data, out="unused", method=method, teacher="t" if method != "none" else "",
                           iterative_passes=passes)
        objective = DistillationObjective(student, config, teacher if method != "none" else None)
        module = torch.compile(objective) if args.compile else objective
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-4, betas=(0.9, 0.98))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        tokens = flops = 0.0
        for k, batch in enumerate(chosen):
            if k == args.warmup:
                sync(device)
                started, cpu_started = time.perf_counter(), time.process_time()
                tokens = flops = 0.0
            extra = cached_teacher_inputs(cache if cached else None, batch, tokenizer.pad_token_id, device)
            batch = batch.to(device)
            with autocast_context(device, "auto"):
                loss, _ = module(batch.input_ids, batch.attention_mask, batch.labels, **extra)
            (loss / batch.num_target_tokens).backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += batch.num_target_tokens
            src_tokens = int(batch.attention_mask.sum())
            flops += step_flops(student, teacher, src_tokens, batch.num_target_tokens,
                                passes if method == "tie-kd" else 1, method != "none", cached)
        sync(device)
        seconds = time.perf_counter() - started
        # CPU seconds of this process per update: what the equal-compute view counts (update_costs.json)
        cpu_per_update = (time.process_time() - cpu_started) / (len(chosen) - args.warmup)
        row = {"method": spec, "tokens_per_s": tokens / seconds, "cpu_s_per_update": cpu_per_update,
               "model_tflops": flops / seconds / 1e12,
               "mfu": flops / seconds / peak, "student_params": parameter_count(student),
               "teacher_params": parameter_count(teacher)}
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        results.append(row)
        del student, objective, module, optimizer
    base = results[0]["tokens_per_s"]
    header = f"{'objective':12} {'tok/s':>10} {'vs none':>8} {'TFLOP/s':>8} {'MFU':>7}" + (
        f" {'peak GiB':>9}" if device.type == "cuda" else "")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device {name}; matmul peak {peak / 1e12:.2f} TFLOP/s ({dtype}); student {args.student_model or args.student} "
          f"({results[0]['student_params'] / 1e6:.1f}M), teacher {args.teacher_model or args.teacher} ({results[0]['teacher_params'] / 1e6:.1f}M); "
          f"max_tokens {args.max_tokens}, {args.steps} timed steps")
    print(header)
    for row in results:
        line = (f"{row['method']:12} {row['tokens_per_s']:10.0f} {row['tokens_per_s'] / base:8.2f} "
                f"{row['model_tflops']:8.3f} {100 * row['mfu']:6.2f}%")
        if "peak_memory_gib" in row:
            line += f" {row['peak_memory_gib']:9.2f}"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "matmul_peak_flops": peak, "results": results,
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
