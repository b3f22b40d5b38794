"""Time and peak extra memory of tiekd.kd.losses vs naive full-tensor implementations.

    python benchmarks/bench_losses.py --tokens 4096 --vocab 8000 --repeat 3 [--device cuda] [--json out.json]

For each loss (label-smoothed CE, word-KD, TIE-KD) and each implementation (ours, naive) one forward +
backward over `[tokens, vocab]` logits is timed (best of --repeat) and its peak memory measured. The
naive versions mirror the reference code's style: every intermediate (p, q, logs, products) is a full
`[tokens, vocab]` tensor kept by autograd.

"Extra" memory is the peak during forward + backward minus what was live before (the logits, the
teacher logits, the targets) minus one `[tokens, vocab]` gradient, i.e. what the loss itself costs.
Every case runs in fresh subprocesses, one for memory and one for time. On CPU the peak is read from
the kernel (VmHWM, reset through /proc/self/clear_refs) with glibc told to mmap every large block, so a
freed tensor leaves the RSS at once (tracemalloc cannot see torch's allocations); the timing process
keeps glibc's default allocator behaviour, since forced mmaps would mostly time page faults. On CUDA
the peak is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import torch
import torch.nn.functional as F
from fresh_process import measure_in_fresh_process

from tiekd.kd.losses import default_chunk_size, label_smoothed_ce, tie_kd_loss, word_kd_loss

PAD = 0
LOSSES = ("ce", "word_kd", "tie_kd")


# ---------------------------------------------------------------- naive, full-tensor implementations


def naive_ce(student, teacher, target, eps=0.1):
    log_p = F.log_softmax(student, dim=-1)
    eps_i = eps / (student.shape[-1] - 1)
    nll = -log_p.gather(-1, target[:, None]).squeeze(-1)
    smooth = -log_p.sum(-1)
    pad = target == PAD
    return ((1 - eps - eps_i) * nll.masked_fill(pad, 0) + eps_i * smooth.masked_fill(pad, 0)).sum()


def naive_word_kd(student, teacher, target):
    log_p = F.log_softmax(student, dim=-1)
    q = F.softmax(teacher, dim=-1)
    kl = F.kl_div(log_p, q, reduction="none").sum(-1)
    return kl.masked_fill(target == PAD, 0).sum()


def naive_tie_kd(student, teacher, target, k=5):
    p = F.softmax(student, dim=-1)
    q = F.softmax(teacher, dim=-1)
    kl = (q * (torch.log(q + 1e-6) - torch.log(p + 1e-6))).sum(-1)
    q_t, t_ids = q.topk(k, dim=-1)
    s_ids = p.topk(k, dim=-1).indices
    p_t, p_s, q_s = p.gather(-1, t_ids), p.gather(-1, s_ids), q.gather(-1, s_ids)
    intra = torch.relu(p_t - p_t[:, :1]).sum(-1)
    inter = ((q_t[:, :, None] > q_s[:, None, :]) * torch.relu(p_s[:, None, :] - p_t[:, :, None])).sum((1, 2))
    return (kl + intra + inter).masked_fill(target == PAD, 0).sum()


def ours(loss: str, chunk_size: int):
    if loss == "ce":
        return lambda s, t, y: label_smoothed_ce(s, y, PAD, chunk_size=chunk_size)
    if loss == "word_kd":
        return lambda s, t, y: word_kd_loss(s, t, y, PAD, chunk_size=chunk_size)
    return lambda s, t, y: tie_kd_loss(s, t, y, PAD, chunk_size=chunk_size)


NAIVE = {"ce": naive_ce, "word_kd": naive_word_kd, "tie_kd": naive_tie_kd}


# ---------------------------------------------------------------- one case, in its own process


def _rss_mib() -> tuple[float, float]:
    status = open("/proc/self/status").read()
    current, peak = (int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))
    return current / 1024, peak / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def run_case(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(args.tokens, args.vocab, generator=gen)).to(device, dtype)
    teacher = (3 * torch.randn(args.tokens, args.vocab, generator=gen)).to(device, dtype)
    target = torch.randint(1, args.vocab, (args.tokens,), generator=gen)
    target[torch.rand(args.tokens, generator=gen) < args.pad_frac] = PAD
    target = target.to(device)
    student.requires_grad_(True)
    fn = ours(args.loss, args.chunk_size) if args.impl == "ours" else NAIVE[args.loss]
    cuda = device.type == "cuda"
    grad_mib = student.numel() * student.element_size() / 2**20

    def step():
        student.grad = None
        fn(student, teacher, target).backward()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up: thread pools, kernels, allocator
    student.grad = None
    if args.measure == "time":
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return {"time_ms": 1000 * min(times)}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        step()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        base, _ = _rss_mib()
        _reset_peak_rss()
        step()
        _, peak = _rss_mib()
    return {"peak_delta_mib": peak - base, "extra_mib": peak - base - grad_mib}


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk for ours (default: the library's)")
    parser.add_argument("--pad-frac", type=float, default=0.0, help="share of padding positions")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of the default")
    parser.add_argument("--json", help="also write the results to this file")
    # internal: run one case in this process and print its result as JSON
    parser.add_argument("--loss", choices=LOSSES, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.loss:
        print(json.dumps(run_case(args)))
        return

    # a fixed mmap threshold makes glibc return each freed large tensor to the OS, so RSS = live memory
    memory_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("tokens", "vocab", "repeat", "device", "dtype", "chunk_size", "pad_frac")
                   if getattr(args, k) is not None]
    results = []
    for loss in args.losses.split(","):
        for impl in ("naive", "ours"):
            result = {"loss": loss, "impl": impl}
            for measure, env in (("memory", memory_env), ("time", None)):
                result.update(measure_in_fresh_process(
                    __file__, [*passthrough, f"--loss={loss}", f"--impl={impl}", f"--measure={measure}"],
                    what=f"{loss} ({impl}, {measure})", env=env))
            results.append(result)

    chunk = args.chunk_size or default_chunk_size(args.vocab)
    print(f"tokens={args.tokens} vocab={args.vocab} dtype={args.dtype} device={args.device} chunk={chunk} "
          f"threads={torch.get_num_threads()} (time: best of {args.repeat}, forward + backward)")
    header = (f"{'loss':<8} {'naive ms':>9} {'ours ms':>8} {'time o/n':>8} "
              f"{'naive MiB':>10} {'ours MiB':>9} {'mem o/n':>8}")
    print(header)
    print("-" * len(header))
    by_key = {(r["loss"], r["impl"]): r for r in results}
    rows = []
    for loss in args.losses.split(","):
        naive, mine = by_key[(loss, "naive")], by_key[(loss, "ours")]
        row = {
            "loss": loss,
            "naive_ms": naive["time_ms"], "ours_ms": mine["time_ms"],
            "time_ratio": mine["time_ms"] / naive["time_ms"],
            "naive_extra_mib": naive["extra_mib"], "ours_extra_mib": mine["extra_mib"],
            "mem_ratio": mine["extra_mib"] / naive["extra_mib"],
        }
        rows.append(row)
        print(f"{loss:<8} {row['naive_ms']:>9.1f} {row['ours_ms']:>8.1f} {row['time_ratio']:>8.2f} "
              f"{row['naive_extra_mib']:>10.1f} {row['ours_extra_mib']:>9.1f} {row['mem_ratio']:>8.2f}")
    print("MiB = peak extra memory of the loss: beyond the inputs and one [tokens, vocab] gradient")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "cases": results, "table": rows}, f, indent=2)


if __name__ == "__main__":
    main()
