"""Where a run stands, as saved in every checkpoint next to the weights, optimizer, scheduler and RNG.

`TrainingState.to_dict()` gives the keys of `trainer_state.pt` that describe progress (see
tiekd/training/checkpointing.py for the rest). Loading tolerates checkpoints written before a key
existed: such a key starts at its default (`target_tokens_seen` 0, an empty `loss_window`, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields


@dataclass
class LossWindow:
    """Sums over the updates since the last train record of metrics.jsonl.

    A train record logs `loss / tokens` and `parts[name] / tokens`: the mean per target token over the
    whole window (a token-weighted mean, not a mean of per-update means), so a record's loss does not
    depend on how the window's tokens were split into updates. The sums are saved in checkpoints, so a
    resumed run logs the same first loss as an uninterrupted one; `started` (the `time.perf_counter()`
    the window's tokens/s counts from) is not saved: it means nothing in another process. Nor is
    `timed_tokens`, the tokens added since `started`: a window resumed half-way counts its tokens/s over
    the updates this process ran, not over tokens an earlier process trained in its own time.
    """

    loss: float = 0.0  # the objective summed over the window's target tokens (all ranks)
    tokens: int = 0  # non-pad target tokens of the window's updates (all ranks)
    parts: dict[str, float] = field(default_factory=dict)  # each named part of the objective, summed
    started: float = field(default_factory=time.perf_counter)
    timed_tokens: int = 0  # tokens added since `started`

    def add(self, loss_sum: float, part_names: list[str], part_sums: list[float], tokens: int) -> None:
        self.loss += loss_sum
        self.tokens += tokens
        self.timed_tokens += tokens
        for name, value in zip(part_names, part_sums):
            self.parts[name] = self.parts.get(name, 0.0) + value

    def reset(self) -> None:
        """An empty window whose clock starts now."""
        self.loss, self.tokens, self.parts, self.started, self.timed_tokens = 0.0, 0, {}, time.perf_counter(), 0

    def to_dict(self) -> dict:
        return {"loss": self.loss, "tokens": self.tokens, "parts": dict(self.parts)}

    @classmethod
    def from_dict(cls, saved: dict | None) -> "LossWindow":
        """The saved sums; None (a checkpoint from before windows were saved) gives an empty window."""
        if saved is None:
            return cls()
        return cls(loss=saved["loss"], tokens=saved["tokens"], parts=dict(saved["parts"]))


@dataclass
class TrainingState:
    """A run's progress. `step` counts applied updates; `update_in_epoch` counts the updates tried in
    the current epoch, skipped non-finite ones too, and so is the position in that epoch's batch order."""

    step: int = 0
    epoch: int = 0  # epochs completed
    update_in_epoch: int = 0
    best_score: float | None = None  # the best validation's BLEU, or minus its loss when BLEU is off
    best_step: int | None = None
    skipped_nonfinite: int = 0  # updates refused for a non-finite loss or gradient (--on-nonfinite skip)
    target_tokens_seen: int = 0  # non-pad target tokens of all applied updates, all ranks
    # training compute so far, validation excluded, summed over resumes: wall seconds, and CPU
    # core-seconds of all processes (this one's CPU time x world size)
    train_seconds: float = 0.0
    train_core_seconds: float = 0.0
    loss_window: LossWindow = field(default_factory=LossWindow)

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.update_in_epoch = 0

    def record_validation(self, score: float) -> bool:
        """Keep `score` as the best if it is; returns whether it is."""
        best = self.best_score is None or score > self.best_score
        if best:
            self.best_score, self.best_step = score, self.step
        return best

    def compute_spent(self) -> dict:
        """What the run has consumed so far, as validation records report it (tiekd/experiment/compute_view.py)."""
        return {"target_tokens_seen": self.target_tokens_seen, "train_seconds": self.train_seconds,
                "train_core_seconds": self.train_core_seconds}

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "loss_window"}
        return {**values, "loss_window": self.loss_window.to_dict()}

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainingState":
        """The state in a saved trainer-state dict (other keys, such as "optimizer", are ignored)."""
        defaults = cls()
        values = {f.name: saved.get(f.name, getattr(defaults, f.name)) for f in fields(cls) if f.name != "loss_window"}
        return cls(**values, loss_window=LossWindow.from_dict(saved.get("loss_window")))
