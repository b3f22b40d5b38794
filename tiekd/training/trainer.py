"""The training loop shared by `tiekd train` and `tiekd distill`.

Loss normalisation follows torchtitan: each update sums the objective over every non-pad target
token of all its batches (all ranks, all accumulation steps) and divides by that global count, which
every rank computes from the batch list without communication. With DDP averaging gradients over
ranks, each rank scales its local sum by `world_size / global_tokens`, so the update is identical
however the batch is split. The whole state (model, optimizer, scheduler, data position, RNG) goes
into every checkpoint; `--resume` continues bit-for-bit on CPU in deterministic mode.
With `--fsdp` the student is sharded (tiekd/training/fsdp.py) instead of replicated; the same code runs.

The `Trainer` only composes the parts in tiekd/training/ (state, checkpointing, validation, metrics,
signals; see its __init__.py) and runs the loop.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import batching
from ..data.binarized import load_corpus
from ..data.tokenizer import load_tokenizer
from ..errors import TiekdError
from ..io import atomic_write_json
from ..kd.methods import get_method
from ..models import parameter_count, zero_pad_row_grad
from ..kd.objectives import DistillationObjective
from ..kd.teacher_cache import cached_teacher_inputs, open_for_run
from . import checkpoint
from .build import (build_student, check_model_arguments, load_teacher, make_optimizer,
                    make_run_scheduler, parallelise, seed_everything)
from .checkpointing import Checkpointer, find_resume_checkpoint, load_student_weights
from .devices import autocast_context, pick_device
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from .metrics import MetricsLog, train_record
from .replica import UnshardedStudent
from .runfolder import prepare_run_folder
from .signals import StopRequests
from .state import TrainingState
from .train_corpus import split_files, teacher_targets_file, training_pair_files, uses_teacher_targets
from .validation import Validator

__all__ = ["Trainer", "run_training", "pick_device", "autocast_context", "split_files"]


class Trainer:
    """One run: build everything from a `RunConfig`, then `fit()`."""

    def __init__(self, config: RunConfig, resume: bool = False, overwrite: bool = False, quiet: bool = False):
        from ..data.prepare import load_prepared

        self.device = pick_device(config.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.quiet = quiet or not self.dist.is_main  # only rank 0 prints
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.prepared = load_prepared(config.data)
        self.tokenizer = load_tokenizer(self.prepared.tokenizer_dir)
        self.pad_id = self.tokenizer.pad_token_id
        check_model_arguments(config)  # before the run folder is written, so a typo leaves nothing behind
        if self.dist.is_main:
            config = prepare_run_folder(config, resume, overwrite)
        barrier(self.dist)
        self.config = config
        self.out = Path(config.out)
        self.checkpoint_dir = self.out / "checkpoints"
        seed_everything(config.seed)

        # the RNG's order of use: the student's initialisation first. Reordering these steps changes
        # every run's initial weights and dropout masks
        vocab = (self.tokenizer, self.prepared.tokenizer_dir)
        # a resumed run loads its own weights: no teacher initialisation
        self.student = build_student(config, *vocab, self.device, from_teacher=config.init_from_teacher and not resume,
                                     announce=not self.quiet)
        self.resume_from = find_resume_checkpoint(self.checkpoint_dir, self.out, not self.quiet) if resume else None
        if self.resume_from is not None:
            load_student_weights(self.student, self.resume_from)  # before sharding: every rank loads the full weights
        # seq-kd trains on the teacher's translations with plain CE: the objective needs no teacher, and
        # only the pytorch engine decodes them with the loaded model (CTranslate2 reads the folder), once
        method = get_method(config.method)
        online = method.needs_teacher and method.online_teacher
        decodes = (uses_teacher_targets(config) and config.seq_kd_engine == "pytorch"
                   and not teacher_targets_file(self.out).is_file())
        self.teacher = load_teacher(config, *vocab, self.device) if online or decodes else None
        self.objective = DistillationObjective(self.student, config, self.teacher if online else None)
        self.objective.to(self.device)
        self.fsdp = config.fsdp and self.dist.enabled
        self.train_module = parallelise(self.objective, config, self.dist, self.device, announce=not self.quiet)
        self.unsharded = UnshardedStudent(self.student, self.device, self.fsdp)

        max_positions = self.student.config.max_position_embeddings
        train_files = training_pair_files(config, self.prepared, self.teacher, self.out, self.dist, self.quiet,
                                          self.tokenizer)
        if not online:
            self.teacher = None  # it has decoded the targets: training needs its memory more
        self.train_corpus = load_corpus(self.prepared, train_files, self.tokenizer, max_positions)
        self.teacher_cache = (open_for_run(config, self.teacher, self.train_corpus, self.objective.start_id,
                                           self.device, self.dist, self.quiet) if config.teacher_cache else None)
        self.validator = Validator(self.tokenizer, *split_files(self.prepared, config.valid_split), config, self.dist,
                                   self.device, max_positions, self.prepared)
        self.batches = batching.make_batches(self.train_corpus, config.max_tokens)
        target_lengths = self.train_corpus.target_lengths()
        self.batch_tokens = self.batches.tokens(target_lengths).tolist()

        self.optimizer = make_optimizer(self.student, config)
        self.scheduler = make_run_scheduler(self.optimizer, config,
                                            config.max_updates or self._updates_per_epoch() * config.max_epochs)
        self.checkpointer = Checkpointer(self.checkpoint_dir, self.unsharded, self.optimizer, self.scheduler,
                                         self.tokenizer, config, self.dist)
        self.metrics = MetricsLog(self.out, self.dist)
        self.stop = StopRequests()
        self.state = TrainingState()
        if self.resume_from is not None:
            self.state = self.checkpointer.restore(self.resume_from)
            self.metrics.truncate_after(self.state.step)
            if not self.quiet:
                print(f"resumed from {self.resume_from} (update {self.state.step}, epoch {self.state.epoch + 1})",
                      flush=True)
        if not self.quiet:
            print(f"student: {parameter_count(self.student) / 1e6:.2f}M parameters; {len(self.train_corpus)} training "
                  f"pairs in {len(self.batches)} batches; method {config.method}; device {self.device}"
                  + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""), flush=True)

    def _updates_per_epoch(self) -> int:
        return batching.updates_per_epoch(len(self.batches), self.dist.world_size, self.config.update_freq)

    def _done(self) -> bool:
        limits = ((self.config.max_updates, self.state.step), (self.config.max_epochs, self.state.epoch))
        return any(limit and reached >= limit for limit, reached in limits)

    # ----------------------------------------------------------------- one update
    def _update(self, order: list[int]) -> dict:
        """Forward and backward over this rank's batches of the next update (gradients only: the
        optimizer step is the caller's, after checking that the update is finite)."""
        config = self.config
        plan = batching.update_batches(order, self.state.update_in_epoch, self.dist.world_size, self.dist.rank,
                                       config.update_freq)
        global_tokens = sum(self.batch_tokens[b] for b, _ in plan)
        mine = [b for b, own in plan if own]
        scale = self.dist.world_size / global_tokens
        self.objective.updates_done = self.state.step
        loss_sum = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}
        for micro, batch_id in enumerate(mine):
            batch = batching.collate(self.train_corpus, self.batches[batch_id])
            cached = cached_teacher_inputs(self.teacher_cache, batch, self.pad_id, self.device)  # read on the CPU
            batch, sync = batch.to(self.device), micro == len(mine) - 1
            no_sync = contextlib.nullcontext
            if self.fsdp:  # reduce-scatter the gradients once, after the last micro-batch
                self.student.set_requires_gradient_sync(sync)
            elif self.dist.enabled and not sync:
                no_sync = self.train_module.no_sync
            with no_sync(), autocast_context(self.device, config.precision):
                loss, stats = self.train_module(batch.input_ids, batch.attention_mask, batch.labels, **cached)
            with no_sync():
                (loss * scale).backward()
            loss_sum += loss.detach().float()
            for key, value in stats.items():
                parts[key] = parts.get(key, 0) + value.float()
        # the <pad> row is the decoder's start state and stays zero (models.keep_pad_embedding_zero)
        zero_pad_row_grad(self.student)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.student.parameters(), config.clip_norm if config.clip_norm > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        # the stop flag rides along so that every rank stops after the same update
        stop = torch.tensor(float(self.stop.requested), device=self.device)
        totals = all_reduce_sum(torch.stack([loss_sum, *parts.values(), stop]), self.dist)
        # one host sync per update (not per micro-batch): needed to refuse a non-finite update
        finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(totals[0]))
        return {"finite": finite, "global_tokens": global_tokens, "grad_norm": grad_norm, "totals": totals[:-1],
                "part_names": list(parts), "stop": bool(totals[-1] > 0)}

    def _refuse_nonfinite(self, per_epoch: int) -> None:
        """Drop a non-finite update's gradients; stop the run, or (--on-nonfinite skip) count it and go on."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.on_nonfinite == "error":
            raise _nonfinite_error(self.state, self.checkpoint_dir)
        self.state.skipped_nonfinite += 1
        if self.state.update_in_epoch >= per_epoch:  # the skipped update ended the epoch
            self.state.finish_epoch()

    def _apply(self, result: dict, wall: float, cpu: float, per_epoch: int, total: int, bar) -> bool:
        """Step optimizer and schedule, count, log, validate and save as due; returns whether it saved."""
        config, state = self.config, self.state
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.train_seconds += time.perf_counter() - wall
        state.train_core_seconds += (time.process_time() - cpu) * self.dist.world_size
        state.step += 1
        state.target_tokens_seen += result["global_tokens"]
        totals = result["totals"].tolist()  # the loss sum, then each part's
        state.loss_window.add(totals[0], result["part_names"], totals[1:], result["global_tokens"])
        bar.update(1)
        if state.step % config.log_every == 0 or state.step == total:
            record = train_record(state.loss_window, state.step, state.epoch + 1, self.scheduler.get_last_lr()[0],
                                  float(result["grad_norm"]))
            self.metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            state.loss_window.reset()
        end_of_epoch = state.update_in_epoch >= per_epoch
        if end_of_epoch:
            state.finish_epoch()
        if state.step % config.valid_every == 0 or (end_of_epoch and config.valid_each_epoch) or self._done():
            started = time.perf_counter()
            self._validate_and_save()
            state.loss_window.started += time.perf_counter() - started  # tokens/s counts training only
            return True
        if config.save_every and state.step % config.save_every == 0:
            self.save()
            return True
        return False

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Train until max_updates/max_epochs or a stop signal; returns a summary dict."""
        from tqdm.auto import tqdm

        config, state = self.config, self.state
        if not config.max_updates and not config.max_epochs:
            raise TiekdError("neither max_updates nor max_epochs is set. Fix: pass --max-updates or --max-epochs")
        per_epoch = self._updates_per_epoch()
        if per_epoch == 0:
            raise TiekdError(f"{config.data}: too little training data for one update of {self.dist.world_size} "
                             "process(es). Fix: lower --max-tokens or --update-freq")
        self.metrics.open_tensorboard()  # after the checks: the `finally` below closes it
        total = config.max_updates or per_epoch * config.max_epochs
        bar = tqdm(total=total, initial=state.step, desc="train", unit="upd", disable=self.quiet, dynamic_ncols=True)
        state.loss_window.started = time.perf_counter()  # a resumed window keeps its sums, not its clock
        last_saved = state.step if state.step else None
        interrupted = False
        try:
            with self.stop:
                while not self._done() and not interrupted:
                    epoch = state.epoch
                    order = batching.epoch_order(len(self.batches), config.seed, epoch)  # a new order every epoch
                    while state.epoch == epoch and not self._done() and not interrupted:
                        wall, cpu = time.perf_counter(), time.process_time()
                        result = self._update(order)
                        state.update_in_epoch += 1
                        if not result["finite"]:
                            self._refuse_nonfinite(per_epoch)
                            continue
                        if self._apply(result, wall, cpu, per_epoch, total, bar):
                            last_saved = state.step
                        interrupted = result["stop"]
                if last_saved != state.step:
                    # interrupted, or the run's last update was skipped as non-finite: keep what was trained
                    if interrupted:
                        self.save()
                    else:
                        self._validate_and_save()
        finally:
            bar.close()
            self.metrics.close()
        return self._summarise(interrupted)

    def _summarise(self, interrupted: bool) -> dict:
        state = self.state
        summary = {"step": state.step, "epoch": state.epoch, "best_score": state.best_score,
                   "best_step": state.best_step, "skipped_nonfinite": state.skipped_nonfinite,
                   "interrupted": interrupted, "run": str(self.out)}
        if self.dist.is_main:
            atomic_write_json(self.out / "summary.json", summary)
            if interrupted and not self.quiet:
                print(f"stopped by {self.stop.source} at update {state.step}; checkpoint saved. "
                      f"Continue with --resume --out {self.out}", flush=True)
        barrier(self.dist)
        return summary

    # ----------------------------------------------------------------- validation and checkpoints
    def validate(self) -> dict:
        """Loss, perplexity and (greedy) BLEU on the validation split, each rank taking a share
        (tiekd/training/validation.py); under FSDP with an unsharded copy of the student."""
        record = self.validator.run(self.unsharded.get(every_rank=True), self.state)
        self.unsharded.release()
        return record

    def save(self, best: bool = False) -> Path | None:
        return self.checkpointer.save(self.state, best=best)

    def _validate_and_save(self) -> None:
        record = self.validate()
        best = self.state.record_validation(record.get("bleu", -record["loss"]))
        record["best"] = best
        self.metrics.write(record)
        if not self.quiet:
            shown = f" bleu {record['bleu']:.2f}" if "bleu" in record else ""
            print(f"\nvalid @ {record['step']}: loss {record['loss']:.3f} ppl {record['ppl']:.2f}{shown}"
                  + (" (best)" if best else ""), flush=True)
        self.save(best=best)


def _nonfinite_error(state, checkpoint_dir: Path) -> TiekdError:
    good = checkpoint.latest_good_checkpoint(checkpoint_dir)
    return TiekdError(f"non-finite loss or gradient at update {state.step + 1} (epoch {state.epoch + 1}); the run "
                      f"stopped without saving. Last good checkpoint: {good or 'none yet'}. Fix: lower --lr, raise "
                      "--warmup-updates, use --precision fp32, or pass --on-nonfinite skip")


def run_training(config: RunConfig, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    try:
        return Trainer(config, resume=resume, overwrite=overwrite, quiet=quiet).fit()
    finally:
        shutdown()  # leave the process group cleanly (NCCL warns otherwise), also after an error
