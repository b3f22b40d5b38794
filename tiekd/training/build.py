"""The models and the optimizer of a run, built from its `RunConfig`, and the parallel wrapping of the student."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.tokenizer import load_tokenizer, vocab_fingerprint
from ..errors import TiekdError
from ..models import DROPOUT_FIELDS, build_model, load_model
from .distributed import DistInfo
from .schedule import make_scheduler


def check_model_arguments(config: RunConfig) -> None:
    """Refuse a --model that is neither a preset nor a model folder, and a --teacher that is no model folder."""
    from ..models import PRESETS, check_model_folder

    if config.model not in PRESETS and not (Path(config.model) / "config.json").is_file():
        raise TiekdError(f"--model {config.model}: not a model preset and not a model folder (no config.json). "
                         f"Fix: use a preset ({', '.join(PRESETS)}) or a folder written by tiekd train/distill/average")
    if config.uses_teacher or config.init_from_teacher:
        check_model_folder(config.teacher)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_vocab(model_dir: str, role: str, tokenizer, tokenizer_dir) -> None:
    """Refuse a model whose vocabulary is not the data's (`tokenizer`, loaded from `tokenizer_dir`)."""
    other = load_tokenizer(model_dir)
    if vocab_fingerprint(other) != vocab_fingerprint(tokenizer):
        size, _ = vocab_fingerprint(other)
        raise TiekdError(
            f"{model_dir}: the {role}'s vocabulary ({size} tokens) differs from the data's tokenizer "
            f"({tokenizer_dir}, {len(tokenizer.get_vocab())} tokens). Fix: use a {role} "
            "trained on data prepared with the same tokenizer")


def build_student(config: RunConfig, tokenizer, tokenizer_dir, device: torch.device, from_teacher: bool,
                  announce: bool):
    """The student in training mode on `device`: a preset initialised from the RNG, or a model folder;
    with `from_teacher`, it then takes the teacher's embeddings and evenly spaced layers."""
    dropouts = {name: getattr(config, name) for name in DROPOUT_FIELDS}
    if Path(config.model).is_dir():
        student = load_model(config.model, **dropouts)
        check_vocab(config.model, "student", tokenizer, tokenizer_dir)
    else:
        student = build_model(config.model, tokenizer, **dropouts)
    if from_teacher:
        from ..models import init_from_teacher

        check_vocab(config.teacher, "teacher", tokenizer, tokenizer_dir)
        copied = init_from_teacher(student, load_model(config.teacher))
        if announce:
            print(f"student initialised from {config.teacher}: embeddings, encoder layers {copied['encoder']}, "
                  f"decoder layers {copied['decoder']}", flush=True)
    return student.to(device).train()


def load_teacher(config: RunConfig, tokenizer, tokenizer_dir, device: torch.device):
    """The frozen teacher in eval mode on `device`."""
    check_vocab(config.teacher, "teacher", tokenizer, tokenizer_dir)
    teacher = load_model(config.teacher, device).eval().requires_grad_(False)
    if device.type == "cuda":
        teacher = teacher.to(torch.bfloat16)  # frozen: bf16 weights halve its memory and time
    return teacher


def make_optimizer(student, config: RunConfig) -> torch.optim.Adam:
    return torch.optim.Adam(student.parameters(), lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
                            weight_decay=config.weight_decay)


def make_run_scheduler(optimizer, config: RunConfig, total_updates: int):
    """The learning-rate schedule (tiekd/training/schedule.py) over a run of `total_updates` updates."""
    if config.lr_schedule != "inverse-sqrt" and total_updates <= config.warmup_updates:
        raise TiekdError(f"--lr-schedule {config.lr_schedule}: the run has {total_updates} updates, no more than "
                         f"its {config.warmup_updates} warm-up updates. Fix: lower --warmup-updates or train longer")
    return make_scheduler(optimizer, config.lr, config.warmup_updates, config.warmup_init_lr, config.lr_schedule,
                          total_updates, config.min_lr)


def parallelise(objective, config: RunConfig, dist: DistInfo, device: torch.device, announce: bool):
    """The module that runs the updates: the objective, compiled with --compile, wrapped in DDP under
    torchrun; with --fsdp under torchrun the student is sharded in place instead (tiekd/training/fsdp.py)."""
    sharded = config.fsdp and dist.enabled
    if config.fsdp and not dist.enabled and announce:
        print("--fsdp: one process, so nothing to shard; training unsharded", flush=True)
    if sharded:
        from .fsdp import shard_model

        shard_model(objective.student, device, dist.world_size)
    module = torch.compile(objective) if config.compile else objective
    if dist.enabled and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module
