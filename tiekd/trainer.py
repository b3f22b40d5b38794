"""The training loop shared by `tiekd train` and `tiekd distill`.

Loss normalisation follows torchtitan: each update sums the objective over every non-pad target
token of all its batches (all ranks, all accumulation steps) and divides by that global count, which
every rank computes from the batch list without communication. With DDP averaging gradients over
ranks, each rank scales its local sum by `world_size / global_tokens`, so the update is identical
however the batch is split. The whole state (model, optimizer, scheduler, data position, RNG) goes
into every checkpoint; `--resume` continues bit-for-bit on CPU in deterministic mode.
With `--fsdp` the student is sharded (tiekd/fsdp.py) instead of replicated; the same code runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import batching, checkpoint
from .config import RunConfig
from .distributed import DistInfo, all_reduce_sum, barrier, gather_objects, init_distributed, shutdown
from .errors import TiekdError
from .io import atomic_write_json, atomic_write_text, read_lines
from .models import DROPOUT_FIELDS, build_model, load_model, parameter_count, zero_pad_row_grad
from .objectives import DistillationObjective, shift_right
from .runfolder import prepare_run_folder
from .schedule import make_scheduler
from .tokenizer import load_tokenizer, vocab_fingerprint
from .translate import DecodeOptions, translate_sentences

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TiekdError(f"device {name} asked for, but no CUDA GPU is visible. Fix: use --device cpu")
    return torch.device(name)


def split_files(prepared, name: str) -> tuple[Path, Path]:
    """(source, target) files of split `name` of a prepared-data folder."""
    if name not in prepared.splits:
        raise TiekdError(f"{prepared.path}: no split {name!r} (it has {', '.join(prepared.splits)}). "
                         "Fix: name one of those splits")
    return prepared.splits[name]


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on GPUs (fp32 on CPUs, where bf16 is slow), as nanoGPT does."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line torn by a crash (always the last one written)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


def _check_model_arguments(config: RunConfig) -> None:
    """Refuse a --model that is neither a preset nor a model folder, and a --teacher that is no model folder."""
    from .models import PRESETS, check_model_folder

    if config.model not in PRESETS and not (Path(config.model) / "config.json").is_file():
        raise TiekdError(f"--model {config.model}: not a model preset and not a model folder (no config.json). "
                         f"Fix: use a preset ({', '.join(PRESETS)}) or a folder written by tiekd train/distill/average")
    if config.uses_teacher or config.init_from_teacher:
        check_model_folder(config.teacher)


class Trainer:
    """One run: build everything from a `RunConfig`, then `fit()`."""

    def __init__(self, config: RunConfig, resume: bool = False, overwrite: bool = False, quiet: bool = False):
        from .data.prepare import load_prepared

        self.device = pick_device(config.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.quiet = quiet or not self.dist.is_main
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        prepared = load_prepared(config.data)
        self.prepared = prepared
        self.tokenizer = load_tokenizer(prepared.tokenizer_dir)
        self.pad_id = self.tokenizer.pad_token_id
        _check_model_arguments(config)  # before the run folder is written, so a typo leaves nothing behind
        if self.dist.is_main:
            config = prepare_run_folder(config, resume, overwrite)
        barrier(self.dist)
        self.config = config
        self.out = Path(config.out)
        self.checkpoint_dir = self.out / "checkpoints"
        self._seed_everything(config.seed)

        self._resuming = resume  # a resumed run loads its own weights: no teacher initialisation
        self.student = self._build_student()
        self.resume_from = self._find_resume_checkpoint() if resume else None
        if self.resume_from is not None:
            self._load_weights(self.resume_from)  # before sharding: every rank loads the full weights
        self.teacher = self._load_teacher() if config.uses_teacher else None
        self.objective = DistillationObjective(self.student, config, self.teacher if config.method != "seq-kd" else None)
        self.objective.to(self.device)
        self.fsdp = config.fsdp and self.dist.enabled
        if config.fsdp and not self.dist.enabled and not self.quiet:
            print("--fsdp: one process, so nothing to shard; training unsharded", flush=True)
        if self.fsdp:
            from .fsdp import shard_model

            shard_model(self.student, self.device, self.dist.world_size)
        self.train_module = self.objective
        if config.compile:
            self.train_module = torch.compile(self.train_module)
        if self.dist.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            self.train_module = DistributedDataParallel(
                self.train_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._replica = None  # an unsharded copy of an FSDP student, for validation and saving

        self.train_corpus = self._load_train_corpus()
        src, tgt = split_files(prepared, config.valid_split)
        self.valid_sources = read_lines(src)
        self.valid_references = read_lines(tgt)
        self.valid_corpus = batching.encode_pair_files(self.tokenizer, src, tgt, self.student.config.max_position_embeddings)
        self.batches = batching.make_batches(self.train_corpus, config.max_tokens)
        self.batch_tokens = [sum(len(self.train_corpus.targets[i]) for i in ids) for ids in self.batches]

        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr, betas=config.adam_betas,
                                          eps=config.adam_eps, weight_decay=config.weight_decay)
        total_updates = config.max_updates or self._updates_per_epoch() * config.max_epochs
        if config.lr_schedule != "inverse-sqrt" and total_updates <= config.warmup_updates:
            raise TiekdError(f"--lr-schedule {config.lr_schedule}: the run has {total_updates} updates, no more than "
                             f"its {config.warmup_updates} warm-up updates. Fix: lower --warmup-updates or train longer")
        self.scheduler = make_scheduler(self.optimizer, config.lr, config.warmup_updates, config.warmup_init_lr,
                                        config.lr_schedule, total_updates, config.min_lr)
        self.state = {"step": 0, "epoch": 0, "update_in_epoch": 0, "best_score": None, "best_step": None,
                      "skipped_nonfinite": 0, "target_tokens_seen": 0,
                      # training compute so far, validation excluded, summed over resumes: wall seconds,
                      # and CPU core-seconds of all processes (this one's CPU time x world size)
                      "train_seconds": 0.0, "train_core_seconds": 0.0}
        self.stop_signal: int | None = None
        if self.resume_from is not None:
            self._resume_state(self.resume_from)
        if self.dist.is_main and not self.quiet:
            n = parameter_count(self.student)
            print(f"student: {n / 1e6:.2f}M parameters; {len(self.train_corpus)} training pairs in "
                  f"{len(self.batches)} batches; method {config.method}; device {self.device}"
                  + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""), flush=True)

    # ----------------------------------------------------------------- set-up
    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _build_student(self):
        config = self.config
        dropouts = {name: getattr(config, name) for name in DROPOUT_FIELDS}
        if Path(config.model).is_dir():
            student = load_model(config.model, **dropouts)
            self._check_vocab(config.model, "student")
        else:
            student = build_model(config.model, self.tokenizer, **dropouts)
        if config.init_from_teacher and not self._resuming:
            from .models import init_from_teacher

            self._check_vocab(config.teacher, "teacher")
            copied = init_from_teacher(student, load_model(config.teacher))
            if self.dist.is_main and not self.quiet:
                print(f"student initialised from {config.teacher}: embeddings, encoder layers {copied['encoder']}, "
                      f"decoder layers {copied['decoder']}", flush=True)
        return student.to(self.device).train()

    def _check_vocab(self, model_dir: str, role: str) -> None:
        other = load_tokenizer(model_dir)
        if vocab_fingerprint(other) != vocab_fingerprint(self.tokenizer):
            size, _ = vocab_fingerprint(other)
            raise TiekdError(
                f"{model_dir}: the {role}'s vocabulary ({size} tokens) differs from the data's tokenizer "
                f"({self.prepared.tokenizer_dir}, {len(self.tokenizer.get_vocab())} tokens). Fix: use a {role} "
                "trained on data prepared with the same tokenizer")

    def _load_teacher(self):
        config = self.config
        self._check_vocab(config.teacher, "teacher")
        teacher = load_model(config.teacher, self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":
            teacher = teacher.to(torch.bfloat16)  # frozen: bf16 weights halve its memory and time
        return teacher

    def _load_train_corpus(self) -> batching.EncodedCorpus:
        config = self.config
        src, tgt = split_files(self.prepared, config.train_split)
        if config.seq_kd_targets or config.method == "seq-kd":
            from .seqkd import teacher_targets

            tgt = teacher_targets(self.teacher, self.tokenizer, src, self.out / "seqkd", beam=config.seq_kd_beam,
                                  dist=self.dist, quiet=self.quiet)
        return batching.encode_pair_files(self.tokenizer, src, tgt, self.student.config.max_position_embeddings)

    # ----------------------------------------------------------------- checkpoints
    def _trainer_state(self) -> dict:
        if self.fsdp and not self.optimizer.state:
            # nothing to keep yet; get_optimizer_state_dict would take a real (zero-gradient) Adam step
            optimizer, layout = {}, "empty"
        elif self.fsdp:  # unsharded, keyed by parameter name: resumable under any world size (tiekd/fsdp.py)
            from .fsdp import full_optimizer_state

            optimizer, layout = full_optimizer_state(self.student, self.optimizer), "names"
        else:
            optimizer, layout = self.optimizer.state_dict(), "ids"
        return {
            **self.state,
            "optimizer": optimizer,
            "optimizer_layout": layout,
            "scheduler": self.scheduler.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": self.config.to_dict(),
        }

    def _unsharded_student(self, every_rank: bool):
        """The student as a plain model: itself, or under FSDP a replica filled with the full weights
        (a collective). With `every_rank` on, each rank gets the replica on its device (for validation;
        `_release_replica` moves it off again); off, only rank 0 gets it, on the CPU (for saving)."""
        if not self.fsdp:
            return self.student
        import copy

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

    def _release_replica(self) -> None:
        if self._replica is not None:
            self._replica.to("cpu")  # give the device memory back to the sharded training state

    def save(self, best: bool = False) -> Path | None:
        model = self._unsharded_student(every_rank=False)  # collectives first: every rank takes part
        state = self._trainer_state()
        if not self.dist.is_main:
            return None
        folder = self.checkpoint_dir / f"step_{self.state['step']:07d}"
        checkpoint.save_checkpoint(folder, model, self.tokenizer, state)
        if best:
            checkpoint.save_checkpoint(self.checkpoint_dir / "best", model, self.tokenizer, state)
        checkpoint.prune_step_checkpoints(self.checkpoint_dir, self.config.keep_last)
        return folder

    def _find_resume_checkpoint(self) -> Path | None:
        folder = checkpoint.latest_good_checkpoint(self.checkpoint_dir)
        if folder is None and self.dist.is_main and not self.quiet:
            print(f"{self.out}: no checkpoint yet; starting from scratch", flush=True)
        return folder

    def _load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"))
        missing, unexpected = self.student.load_state_dict(weights, strict=False)
        # tied weights are stored once and sinusoidal positions are recomputed, not stored; anything
        # else missing means the checkpoint does not fit
        real_missing = [k for k in missing if not any(s in k for s in ("lm_head", "embed_tokens", "embed_positions"))]
        if real_missing or unexpected:
            raise TiekdError(f"{folder}: checkpoint does not fit the model (missing {real_missing[:3]}, "
                             f"unexpected {unexpected[:3]}). Fix: resume with the run's own config")

    def _resume_state(self, folder: Path) -> None:
        saved = checkpoint.load_trainer_state(folder)
        layout = saved.get("optimizer_layout", "ids")  # "empty": saved before the first step, nothing to restore
        if layout == "names":  # written under FSDP
            from .fsdp import load_full_optimizer_state

            load_full_optimizer_state(self.student, self.optimizer, saved["optimizer"])
        elif layout == "ids" and self.fsdp:
            raise TiekdError(f"{folder}: this checkpoint was written without --fsdp and its optimizer state "
                             "cannot be sharded. Fix: resume without --fsdp (checkpoints written with --fsdp "
                             "resume either way)")
        elif layout == "ids":
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        for key in self.state:
            self.state[key] = saved.get(key, self.state[key])  # checkpoints older than a key start it at 0
        rng = saved["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._truncate_metrics(self.state["step"])
        if self.dist.is_main and not self.quiet:
            print(f"resumed from {folder} (update {self.state['step']}, epoch {self.state['epoch'] + 1})", flush=True)

    # ----------------------------------------------------------------- logging
    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _truncate_metrics(self, step: int) -> None:
        """Drop records written after the checkpoint we resume from, so the log has no duplicates."""
        if not self.dist.is_main or not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and _record_step(line) <= step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))  # a kill here loses nothing

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tensorboard.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    _tensorboard = None

    def _open_tensorboard(self) -> None:
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))

    # ----------------------------------------------------------------- one update
    def _updates_per_epoch(self) -> int:
        per_update = self.dist.world_size * self.config.update_freq
        if self.dist.enabled:  # every rank must take part in every update
            return len(self.batches) // per_update
        return math.ceil(len(self.batches) / per_update)

    def _update(self, order: list[int]) -> dict:
        config = self.config
        plan = batching.update_batches(order, self.state["update_in_epoch"], self.dist.world_size,
                                       self.dist.rank, config.update_freq)
        global_tokens = sum(self.batch_tokens[b] for b, _ in plan)
        mine = [b for b, own in plan if own]
        scale = self.dist.world_size / global_tokens
        self.objective.updates_done = self.state["step"]
        loss_sum = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}
        for micro, batch_id in enumerate(mine):
            batch = batching.collate(self.train_corpus, self.batches[batch_id]).to(self.device)
            sync = micro == len(mine) - 1
            no_sync = contextlib.nullcontext
            if self.fsdp:  # reduce-scatter the gradients once, after the last micro-batch
                self.student.set_requires_gradient_sync(sync)
            elif self.dist.enabled and not sync:
                no_sync = self.train_module.no_sync
            with no_sync(), autocast_context(self.device, config.precision):
                loss, stats = self.train_module(batch.input_ids, batch.attention_mask, batch.labels)
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
        stop = torch.tensor(float(self.stop_signal is not None), device=self.device)
        totals = all_reduce_sum(torch.stack([loss_sum, *parts.values(), stop]), self.dist)
        # one host sync per update (not per micro-batch): needed to refuse a non-finite update
        finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(totals[0]))
        return {"finite": finite, "global_tokens": global_tokens, "grad_norm": grad_norm, "totals": totals[:-1],
                "part_names": list(parts), "stop": bool(totals[-1] > 0)}

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Loss, perplexity and (greedy) BLEU on the validation split, each rank taking a share.

        Under FSDP every rank validates with an unsharded copy: ranks run different numbers of forward
        passes here (generation stops when its sentences end), which sharded layers cannot do."""
        config = self.config
        model = self._unsharded_student(every_rank=True)
        model.eval()
        valid_batches = batching.make_batches(self.valid_corpus, config.max_tokens)
        sums = torch.zeros(3, device=self.device)  # ls_ce sum, nll sum, tokens
        from .losses import label_smoothed_ce

        for k, ids in enumerate(valid_batches):
            if k % self.dist.world_size != self.dist.rank:
                continue
            batch = batching.collate(self.valid_corpus, ids).to(self.device)
            with autocast_context(self.device, config.precision):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               decoder_input_ids=shift_right(batch.labels, model.config.decoder_start_token_id),
                               use_cache=False).logits
            sums[0] += label_smoothed_ce(logits, batch.labels, self.pad_id, epsilon=config.label_smoothing).float()
            sums[1] += label_smoothed_ce(logits, batch.labels, self.pad_id, epsilon=0.0).float()
            sums[2] += batch.num_target_tokens
        sums = all_reduce_sum(sums, self.dist)
        record = {"kind": "valid", "step": self.state["step"], "epochs_completed": self.state["epoch"],
                  "loss": float(sums[0] / sums[2]), "nll": float(sums[1] / sums[2]),
                  **{key: self.state[key] for key in ("target_tokens_seen", "train_seconds", "train_core_seconds")}}
        record["ppl"] = math.exp(min(record["nll"], 50))
        if config.valid_bleu:
            import sacrebleu

            count = config.valid_max_sentences or len(self.valid_sources)
            indices = list(range(min(count, len(self.valid_sources))))
            mine = indices[self.dist.rank::self.dist.world_size]
            hyps = translate_sentences(model, self.tokenizer, [self.valid_sources[i] for i in mine],
                                       DecodeOptions(beam=config.valid_beam, progress=False, max_length=200))
            pairs = sorted(gather_objects(list(zip(mine, hyps)), self.dist))
            refs = [self.valid_references[i] for i, _ in pairs]
            record["bleu"] = sacrebleu.corpus_bleu([h for _, h in pairs], [refs]).score
        model.train()
        self._release_replica()
        return record

    # ----------------------------------------------------------------- the loop
    def _install_signal_handlers(self):
        def request_stop(signum, _frame):
            self.stop_signal = signum

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread
                pass
        return previous

    def _done(self) -> bool:
        config = self.config
        return ((config.max_updates and self.state["step"] >= config.max_updates)
                or (config.max_epochs and self.state["epoch"] >= config.max_epochs))

    def fit(self) -> dict:
        """Train until max_updates/max_epochs or a stop signal; returns a summary dict."""
        from tqdm.auto import tqdm

        config = self.config
        if not config.max_updates and not config.max_epochs:
            raise TiekdError("neither max_updates nor max_epochs is set. Fix: pass --max-updates or --max-epochs")
        self._open_tensorboard()
        previous_handlers = self._install_signal_handlers()
        per_epoch = self._updates_per_epoch()
        if per_epoch == 0:
            raise TiekdError(f"{config.data}: too little training data for one update of {self.dist.world_size} "
                             "process(es). Fix: lower --max-tokens or --update-freq")
        total = config.max_updates or per_epoch * config.max_epochs
        bar = tqdm(total=total, initial=self.state["step"], desc="train", unit="upd", disable=self.quiet,
                   dynamic_ncols=True)
        window = {"loss": 0.0, "tokens": 0, "time": time.perf_counter(), "parts": {}}
        last_saved = self.state["step"] if self.state["step"] else None
        interrupted = False
        try:
            while not self._done():
                epoch = self.state["epoch"]
                order = batching.epoch_order(len(self.batches), config.seed, epoch)  # a new order every epoch
                while self.state["epoch"] == epoch and not self._done():
                    wall, cpu = time.perf_counter(), time.process_time()
                    result = self._update(order)
                    self.state["update_in_epoch"] += 1
                    if not result["finite"]:
                        self.optimizer.zero_grad(set_to_none=True)
                        if config.on_nonfinite == "error":
                            good = checkpoint.latest_good_checkpoint(self.checkpoint_dir)
                            raise TiekdError(
                                f"non-finite loss or gradient at update {self.state['step'] + 1} "
                                f"(epoch {self.state['epoch'] + 1}); the run stopped without saving. Last good "
                                f"checkpoint: {good or 'none yet'}. Fix: lower --lr, raise --warmup-updates, "
                                "use --precision fp32, or pass --on-nonfinite skip")
                        self.state["skipped_nonfinite"] += 1
                        if self.state["update_in_epoch"] >= per_epoch:  # the skipped update ended the epoch
                            self.state["epoch"] += 1
                            self.state["update_in_epoch"] = 0
                        continue
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state["train_seconds"] += time.perf_counter() - wall
                    self.state["train_core_seconds"] += (time.process_time() - cpu) * self.dist.world_size
                    self.state["step"] += 1
                    self.state["target_tokens_seen"] += result["global_tokens"]
                    totals = result["totals"].tolist()
                    window["loss"] += totals[0]
                    window["tokens"] += result["global_tokens"]
                    for name, value in zip(result["part_names"], totals[1:]):
                        window["parts"][name] = window["parts"].get(name, 0.0) + value
                    bar.update(1)
                    step = self.state["step"]
                    if step % config.log_every == 0 or step == total:
                        elapsed = time.perf_counter() - window["time"]
                        record = {"kind": "train", "step": step, "epoch": self.state["epoch"] + 1,
                                  "loss": window["loss"] / window["tokens"],
                                  **{k: v / window["tokens"] for k, v in window["parts"].items()},
                                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(result["grad_norm"]),
                                  "tokens_per_s": window["tokens"] / max(elapsed, 1e-9)}
                        self._log(record)
                        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                        tok_s=f"{record['tokens_per_s']:.0f}")
                        window = {"loss": 0.0, "tokens": 0, "time": time.perf_counter(), "parts": {}}
                    end_of_epoch = self.state["update_in_epoch"] >= per_epoch
                    if end_of_epoch:
                        self.state["epoch"] += 1
                        self.state["update_in_epoch"] = 0
                    if step % config.valid_every == 0 or (end_of_epoch and config.valid_each_epoch) or self._done():
                        started = time.perf_counter()
                        self._validate_and_save()
                        window["time"] += time.perf_counter() - started  # tokens/s counts training only
                        last_saved = step
                    elif config.save_every and step % config.save_every == 0:
                        self.save()
                        last_saved = step
                    if result["stop"]:
                        interrupted = True
                        break
                if interrupted:
                    break
            if last_saved != self.state["step"]:
                # interrupted, or the run's last update was skipped as non-finite: keep what was trained
                if interrupted:
                    self.save()
                else:
                    self._validate_and_save()
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if self._tensorboard is not None:
                self._tensorboard.close()
        summary = {"step": self.state["step"], "epoch": self.state["epoch"], "best_score": self.state["best_score"],
                   "best_step": self.state["best_step"], "skipped_nonfinite": self.state["skipped_nonfinite"],
                   "interrupted": interrupted, "run": str(self.out)}
        if self.dist.is_main:
            atomic_write_json(self.out / "summary.json", summary)
            if interrupted and not self.quiet:
                # under torchrun the signal may have reached another rank only (the stop flag is all-reduced)
                by = f"signal {self.stop_signal}" if self.stop_signal is not None else "a signal to another rank"
                print(f"stopped by {by} at update {self.state['step']}; checkpoint saved. "
                      f"Continue with --resume --out {self.out}", flush=True)
        barrier(self.dist)
        return summary

    def _validate_and_save(self) -> None:
        record = self.validate()
        score = record.get("bleu", -record["loss"])
        best = self.state["best_score"] is None or score > self.state["best_score"]
        if best:
            self.state["best_score"], self.state["best_step"] = score, self.state["step"]
        record["best"] = best
        self._log(record)
        if self.dist.is_main and not self.quiet:
            shown = f" bleu {record['bleu']:.2f}" if "bleu" in record else ""
            print(f"\nvalid @ {record['step']}: loss {record['loss']:.3f} ppl {record['ppl']:.2f}{shown}"
                  + (" (best)" if best else ""), flush=True)
        self.save(best=best)


def run_training(config: RunConfig, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    try:
        return Trainer(config, resume=resume, overwrite=overwrite, quiet=quiet).fit()
    finally:
        shutdown()  # leave the process group cleanly (NCCL warns otherwise), also after an error
