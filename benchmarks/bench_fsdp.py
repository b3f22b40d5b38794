"""Per-rank memory of a student's training state and time per update: DDP replicas vs FSDP2 shards.

Run under torchrun (gloo on CPUs, NCCL on GPUs); both modes run side by side in one launch:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/bench_fsdp.py \\
        --data runs/quick/data --model base --steps 4

Training state = parameters + gradients + Adam moments held by each rank (DTensor shards counted by
their local part). With N ranks FSDP should hold about 1/N of DDP's; the time ratio shows what the
all-gathers and reduce-scatters cost on this interconnect. On CUDA the peak allocated memory is
printed too. Batches are random token ids of the data's vocabulary (memory and time do not depend on
the text).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def measure(mode: str, args, tokenizer, device, world_size: int) -> dict:
    from tiekd.models import build_model
    from tiekd.training.fsdp import shard_model

    torch.manual_seed(0)
    model = build_model(args.model, tokenizer).to(device).train()
    if mode == "fsdp":
        shard_model(model, device, world_size)
        module = model
    else:
        module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(dist.get_rank())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.steps + 1):  # the first update (allocations, Adam state) is not timed
        source = torch.randint(3, vocab - 1, (args.batch, args.length), generator=generator).to(device)
        target = torch.randint(3, vocab - 1, (args.batch, args.length), generator=generator).to(device)
        started = time.perf_counter()
        loss = module(input_ids=source, attention_mask=torch.ones_like(source), labels=target).loss
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - started)
        if step < args.steps:
            optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated for the count below
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    result = {"mode": mode, "params": local_bytes(model.parameters()),
              "grads": local_bytes(p.grad for p in model.parameters()), "adam": local_bytes(state),
              "seconds_per_update": sorted(times)[len(times) // 2]}
    if device.type == "cuda":
        result["peak_allocated"] = torch.cuda.max_memory_allocated(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared data folder (for its tokenizer)")
    parser.add_argument("--model", default="base")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    tokenizer = load_tokenizer(load_prepared(args.data).tokenizer_dir)
    rows = [measure(mode, args, tokenizer, device, world_size) for mode in ("ddp", "fsdp")]
    everyone = [None] * world_size
    dist.all_gather_object(everyone, rows)
    if rank == 0:
        mib = 2 ** 20
        print(f"{args.model}: {world_size} ranks, {device.type}, batch {args.batch} x {args.length} tokens")
        print("| mode | params MiB/rank | grads MiB/rank | Adam MiB/rank | state vs DDP | s/update | time vs DDP |")
        print("|---|---|---|---|---|---|---|")
        base = rows[0]
        for row in rows:
            worst = max((r for ranks in everyone for r in ranks if r["mode"] == row["mode"]),
                        key=lambda r: r["params"] + r["grads"] + r["adam"])
            total = worst["params"] + worst["grads"] + worst["adam"]
            base_total = base["params"] + base["grads"] + base["adam"]
            print(f"| {row['mode']} | {worst['params'] / mib:.1f} | {worst['grads'] / mib:.1f} | "
                  f"{worst['adam'] / mib:.1f} | {total / base_total:.2f} | {row['seconds_per_update']:.3f} | "
                  f"{row['seconds_per_update'] / base['seconds_per_update']:.2f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(everyone, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    from tiekd.training.process_exit import run_and_exit

    run_and_exit(main)  # a rank skips interpreter shutdown, where leftover gloo threads can abort it (see there)
