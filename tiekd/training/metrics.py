"""The run's log: `metrics.jsonl` in the run folder, one JSON record a line, mirrored to tensorboard
when it is installed. Only rank 0 writes.

    {"kind": "train", "step", "epoch" (1-based, the epoch the step belongs to), "loss", one key per
     part of the objective, "lr", "grad_norm", "tokens_per_s"}      every log_every updates
    {"kind": "valid", "step", "epochs_completed", "loss", "nll", "target_tokens_seen", "train_seconds",
     "train_core_seconds", "ppl", ["bleu"], "best"}                  at each validation
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .distributed import DistInfo
from .. import writes
from ..writes import atomic_write_text
from .state import LossWindow


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line torn by a crash (always the last one written)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


def train_record(window: LossWindow, step: int, epoch: int, lr: float, grad_norm: float) -> dict:
    """The "train" record of a loss window: its losses per target token, and its tokens/s since
    `window.started` (validation time excluded by the trainer)."""
    elapsed = time.perf_counter() - window.started
    return {"kind": "train", "step": step, "epoch": epoch, "loss": window.loss / window.tokens,
            **{name: value / window.tokens for name, value in window.parts.items()},
            "lr": lr, "grad_norm": grad_norm, "tokens_per_s": window.timed_tokens / max(elapsed, 1e-9)}


class MetricsLog:
    def __init__(self, out: Path, dist: DistInfo):
        self.path = Path(out) / "metrics.jsonl"
        self.out = Path(out)
        self.dist = dist
        self._tensorboard = None

    def truncate_after(self, step: int) -> None:
        """Drop records written after `step` (the checkpoint a run resumes from), so the log has no duplicates."""
        if not self.dist.is_main or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and _record_step(line) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))  # a kill here loses nothing

    def open_tensorboard(self) -> None:
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        writes.append_line(self.path, json.dumps(record))
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tensorboard.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
