"""What a run keeps in each checkpoint, and how it saves into and resumes from one.

A checkpoint folder (written atomically and verified by tiekd/training/checkpoint.py) is a Hugging Face model
folder plus `trainer_state.pt`, a dict with
    the TrainingState keys   step, epoch, update_in_epoch, best_score, ..., loss_window (state.py)
    optimizer, optimizer_layout
                             "ids": torch's own Adam state_dict, keyed by parameter index (no FSDP);
                             "names": unsharded and keyed by parameter name (written under FSDP;
                             resumes under any world size, with or without FSDP);
                             "empty": written under FSDP before the first step, nothing to restore
    scheduler                the learning-rate scheduler's state_dict
    rng                      python, numpy, torch and CUDA generator states
    config                   the run's RunConfig as a dict, so a checkpoint says how it was trained
Checkpoints older than a key resume with its default (TrainingState.from_dict, layout "ids").
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from ..config import RunConfig
from .distributed import DistInfo
from ..errors import TiekdError
from .replica import UnshardedStudent
from .state import TrainingState


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def find_resume_checkpoint(checkpoint_dir: Path, out: Path, announce: bool) -> Path | None:
    """The newest intact step checkpoint of a run, or None (said aloud) when it has none yet."""
    folder = checkpoint.latest_good_checkpoint(checkpoint_dir)
    if folder is None and announce:
        print(f"{out}: no checkpoint yet; starting from scratch", flush=True)
    return folder


def load_student_weights(student, folder: Path) -> None:
    """Load a checkpoint's weights into the (unsharded) student, refusing ones that do not fit it."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    missing, unexpected = student.load_state_dict(weights, strict=False)
    # tied weights are stored once and sinusoidal positions are recomputed, not stored; anything
    # else missing means the checkpoint does not fit
    real_missing = [k for k in missing if not any(s in k for s in ("lm_head", "embed_tokens", "embed_positions"))]
    if real_missing or unexpected:
        raise TiekdError(f"{folder}: checkpoint does not fit the model (missing {real_missing[:3]}, "
                         f"unexpected {unexpected[:3]}). Fix: resume with the run's own config")


class Checkpointer:
    """Saves a run's checkpoints into `checkpoint_dir` (step_NNNNNNN/, best/, the newest `keep_last`
    step folders kept) and restores optimizer, scheduler and RNG from one. Saving is a collective
    under FSDP: every rank calls `save`, rank 0 writes."""

    def __init__(self, checkpoint_dir: Path, unsharded: UnshardedStudent, optimizer, scheduler, tokenizer,
                 config: RunConfig, dist: DistInfo):
        self.checkpoint_dir = checkpoint_dir
        self.unsharded = unsharded
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.config = config
        self.dist = dist

    @property
    def sharded(self) -> bool:
        return self.unsharded.sharded

    def _optimizer_state(self) -> tuple[dict, str]:
        """The optimizer state and its layout (see the module docstring)."""
        if self.sharded and not self.optimizer.state:
            # nothing to keep yet; get_optimizer_state_dict would take a real (zero-gradient) Adam step
            return {}, "empty"
        if self.sharded:  # unsharded, keyed by parameter name: resumable under any world size (tiekd/training/fsdp.py)
            from .fsdp import full_optimizer_state

            return full_optimizer_state(self.unsharded.student, self.optimizer), "names"
        return self.optimizer.state_dict(), "ids"

    def trainer_state(self, state: TrainingState) -> dict:
        optimizer, layout = self._optimizer_state()
        return {**state.to_dict(), "optimizer": optimizer, "optimizer_layout": layout,
                "scheduler": self.scheduler.state_dict(), "rng": rng_states(), "config": self.config.to_dict()}

    def save(self, state: TrainingState, best: bool = False) -> Path | None:
        """Write step_<step>/ (and best/ with `best`), prune old step folders; rank 0's folder, else None."""
        model = self.unsharded.get(every_rank=False)  # collectives first: every rank takes part
        saved = self.trainer_state(state)
        if not self.dist.is_main:
            return None
        folder = self.checkpoint_dir / f"step_{state.step:07d}"
        checkpoint.save_checkpoint(folder, model, self.tokenizer, saved)
        if best:
            checkpoint.save_checkpoint(self.checkpoint_dir / "best", model, self.tokenizer, saved)
        checkpoint.prune_step_checkpoints(self.checkpoint_dir, self.config.keep_last)
        return folder

    def restore(self, folder: Path) -> TrainingState:
        """Load optimizer, scheduler and RNG states from `folder` (the weights are loaded before
        sharding, by `load_student_weights`); returns the saved TrainingState."""
        saved = checkpoint.load_trainer_state(folder)
        layout = saved.get("optimizer_layout", "ids")  # "empty": saved before the first step, nothing to restore
        if layout == "names":  # written under FSDP
            from .fsdp import load_full_optimizer_state

            load_full_optimizer_state(self.unsharded.student, self.optimizer, saved["optimizer"])
        elif layout == "ids" and self.sharded:
            raise TiekdError(f"{folder}: this checkpoint was written without --fsdp and its optimizer state "
                             "cannot be sharded. Fix: resume without --fsdp (checkpoints written with --fsdp "
                             "resume either way)")
        elif layout == "ids":
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        state = TrainingState.from_dict(saved)
        restore_rng_states(saved["rng"])
        return state
