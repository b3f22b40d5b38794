"""The student as a plain model, for validation and saving.

Without FSDP that is the student itself. Under FSDP (tiekd/training/fsdp.py) each rank holds a shard only, so
an unsharded replica, built once and reused, is filled with the full weights each time it is needed.
Validation needs it on every rank (ranks decode different numbers of steps, which sharded layers, each
forward a collective, cannot do); saving needs it on rank 0 only, on the CPU.
"""

from __future__ import annotations

import copy

import torch


class UnshardedStudent:
    def __init__(self, student, device: torch.device, sharded: bool):
        self.student = student
        self.device = device
        self.sharded = sharded
        self._replica = None

    def get(self, every_rank: bool):
        """The plain student: itself, or under FSDP the replica with the full weights (a collective:
        every rank must call it). With `every_rank` each rank gets it on its device (`release` moves it
        off again); without, only rank 0 gets it, on the CPU, and the other ranks get None."""
        if not self.sharded:
            return self.student
        from .fsdp import full_model_state

        weights = full_model_state(self.student, every_rank)
        if not weights:
            return None
        if self._replica is None:
            from transformers import AutoModelForSeq2SeqLM

            # its random initialisation must not advance the training RNG (dropout masks)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self._replica = AutoModelForSeq2SeqLM.from_config(self.student.config)
            self._replica.generation_config = copy.deepcopy(self.student.generation_config)
        device = self.device if every_rank else torch.device("cpu")
        self._replica.to(device).load_state_dict(weights)
        return self._replica

    def release(self) -> None:
        if self._replica is not None:
            self._replica.to("cpu")  # give the device memory back to the sharded training state
