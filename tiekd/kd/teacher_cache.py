"""The frozen teacher's logits on a training corpus's gold prefixes, computed once and read from disk.

Why. Every method whose KD term sits on the gold prefix (word-level KD, Selective-KD, the divergences,
the analysis variants, TIE-KD's first pass, on-policy KD's off-policy batches) runs the teacher on the
same (source, gold prefix) inputs every epoch, and a frozen teacher in eval mode gives the same logits
each time. On a small student that forward pass is most of an update: on one thread a nano Word-KD
update took 1.32 s against 0.25 s for No-KD (results/capacity/README.md, bench_train_step.py). A
5,400-update Multi30k run (134 batches of 4k tokens an epoch) sees each pair 40 times; the cache runs
the teacher over it once.

Exactness. The stored rows are the teacher's own float32 logits, computed in length-sorted batches of
`max_tokens` tokens. A training batch pads differently, which can change the order of the floating-point
sums inside the teacher (not the masking: padded keys get zero attention weight), so the logits differ
from a live teacher's by rounding only (tests/test_teacher_cache.py bounds it). Passes that feed the
student's own prefixes (TIE-KD's iterative passes, on-policy batches) still run the live teacher.

Cost. Target positions (</s> included) x V x 4 bytes: Multi30k's 29,000 training pairs have 454,240,
at V = 8,000 14.5 GB, built in 3 minutes on one thread. It is read a batch at a time (100-130 MB for
4,096 tokens; 0.04-0.15 CPU seconds from the page cache), so the cache pays at this scale and not for
corpora of millions of pairs, whose cache would take terabytes: there, run the teacher live.

Layout. A cache folder holds one subfolder per (teacher, corpus, teacher dtype), named by a digest of
them, built in a temporary folder and renamed into place when complete (tiekd.writes.staged_folder):
    logits.f32     float32 rows [positions, V]; pair i's label positions are rows offsets[i]:offsets[i+1]
    offsets.npy    int64 [pairs + 1]
    cache.json     what the rows were computed from (the key of the digest), their count and size
Processes that want the same cache at once (experiment workers, torchrun ranks) take an flock: one builds,
the others wait and then read it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import writes
from ..errors import TiekdError

FORMAT = "tiekd-teacher-logits/1"
LOGITS_FILE, OFFSETS_FILE, RECORD_FILE = "logits.f32", "offsets.npy", "cache.json"
FLOAT_BYTES = 4


def corpus_digest(corpus) -> str:
    """SHA-256 over every pair's source and target ids as the run reads them (after any cut to the
    model's positions), in corpus order: the cache's rows belong to exactly these inputs."""
    digest = hashlib.sha256()
    for index in range(len(corpus)):
        for ids in (corpus.source(index), corpus.target(index)):
            array = np.asarray(ids, dtype=np.int32)
            digest.update(len(array).to_bytes(4, "little"))
            digest.update(array.tobytes())
    return digest.hexdigest()


def teacher_digest(teacher_dir: str | Path) -> str:
    """SHA-256 over the teacher folder's configuration and weight files (names and contents)."""
    from ..io import sha256_file

    folder = Path(teacher_dir)
    names = sorted(p.name for p in folder.iterdir()
                   if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    if not names:
        raise TiekdError(f"{folder}: no config.json or weights to identify the teacher by. Fix: give a model "
                         "folder written by save_pretrained")
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def cache_key(teacher_dir: str | Path, teacher, corpus) -> dict:
    """What a cache's rows depend on: the teacher's files and dtype, the corpus's ids, the vocabulary."""
    return {"format": FORMAT, "teacher_sha256": teacher_digest(teacher_dir),
            "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch."),
            "vocab_size": int(teacher.config.vocab_size), "pairs": len(corpus), "corpus_sha256": corpus_digest(corpus)}


def _key_name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def label_offsets(corpus) -> np.ndarray:
    """offsets[i]:offsets[i + 1] are pair i's rows: one per target id (the labels, </s> included)."""
    return np.concatenate([[0], np.cumsum(corpus.target_lengths(), dtype=np.int64)])


class TeacherLogitCache:
    """Reads the stored teacher logits of any batch of the corpus it was built on."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.record = json.loads((self.folder / RECORD_FILE).read_text(encoding="utf-8"))
        self.vocab_size = int(self.record["key"]["vocab_size"])
        self.offsets = np.load(self.folder / OFFSETS_FILE)
        self.path = self.folder / LOGITS_FILE
        expected = int(self.offsets[-1]) * self.vocab_size * FLOAT_BYTES
        if self.path.stat().st_size != expected:
            raise TiekdError(f"{self.path}: {self.path.stat().st_size:,} bytes where its record says {expected:,} "
                             f"(damaged). Fix: remove {self.folder}; the next run builds it again")
        self._descriptor = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        descriptor = getattr(self, "_descriptor", None)
        if descriptor is not None:
            os.close(descriptor)

    def gold_logits(self, indices, labels: torch.Tensor, pad_id: int) -> torch.Tensor:
        """float32 [B, T, V] logits of pairs `indices` at the positions of `labels` [B, T] (their padded
        gold targets); padding positions hold zeros, which the losses never read (they mask by pad id)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = (labels != pad_id).sum(dim=1).cpu().numpy()
        if not np.array_equal(ends - starts, lengths):
            raise TiekdError(f"{self.folder}: the stored rows do not match this batch's targets (lengths "
                             f"{(ends - starts)[:4].tolist()}... against {lengths[:4].tolist()}...): the cache "
                             "belongs to other data. Fix: remove it, or give the run its own --teacher-cache folder")
        out = torch.empty((len(indices), labels.shape[1], self.vocab_size), dtype=torch.float32)
        rows = out.numpy()
        row_bytes = self.vocab_size * FLOAT_BYTES
        for row, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
            target = memoryview(rows[row, :length]).cast("B")
            read = os.preadv(self._descriptor, [target], start * row_bytes)
            if read != length * row_bytes:
                raise OSError(f"{self.path}: short read ({read} of {length * row_bytes} bytes; changed under the run)")
            rows[row, length:] = 0.0
        return out


def open_or_build(cache_dir: str | Path, teacher_dir: str | Path, teacher, corpus, max_tokens: int,
                  device: torch.device, quiet: bool = False) -> TeacherLogitCache:
    """The cache of `teacher` (loaded from `teacher_dir`) on `corpus` under `cache_dir`, built first when
    missing. Another process building the same one is waited for."""
    key = cache_key(teacher_dir, teacher, corpus)
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{key['teacher_dtype']}-{_key_name(key)}"
    with writes.guarded(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
    # never removed, so every process locks the same file (no race with a holder's cleanup)
    with open(cache_dir / f".{folder.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"teacher-logit cache: waiting for another process building {folder}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (folder / RECORD_FILE).is_file():
                _build(folder, key, teacher, corpus, max_tokens, device, quiet)
            elif not quiet:
                print(f"teacher-logit cache: reading {folder}", flush=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return TeacherLogitCache(folder)


def _build(folder: Path, key: dict, teacher, corpus, max_tokens: int, device: torch.device, quiet: bool) -> None:
    """Run the teacher over `corpus` in length-sorted batches and store its logits at every label position."""
    from tqdm import tqdm

    from ..data import batching
    from .objectives import shift_right

    offsets = label_offsets(corpus)
    vocab = key["vocab_size"]
    row_bytes = vocab * FLOAT_BYTES
    size = int(offsets[-1]) * row_bytes
    free = shutil.disk_usage(folder.parent).free
    if size > free:
        raise TiekdError(f"{folder}: the teacher-logit cache needs {size / 1e9:,.1f} GB ({int(offsets[-1]):,} target "
                         f"positions x {vocab:,} logits x 4 bytes) and {free / 1e9:,.1f} GB are free there. Fix: give "
                         "--teacher-cache a folder on a larger disk, or drop --teacher-cache to run the teacher live")
    plan = batching.make_batches(corpus, max_tokens)
    if not quiet:
        print(f"teacher-logit cache: computing the teacher's logits on {len(corpus):,} pairs ({size / 1e9:,.1f} GB) "
              f"into {folder}", flush=True)
    pad = corpus.pad_id
    with writes.staged_folder(folder, role="building") as staging:
        logits_path = staging / LOGITS_FILE
        with writes.guarded(folder, f"{size / 1e6:,.1f} MB"):
            descriptor = os.open(logits_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(descriptor, size)
                for batch_number in tqdm(range(len(plan)), desc="teacher logits", unit="batch", disable=quiet):
                    batch = batching.collate(corpus, plan[batch_number]).to(device)
                    with torch.inference_mode():
                        logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                         decoder_input_ids=shift_right(batch.labels, teacher.config.decoder_start_token_id),
                                         use_cache=False).logits.float().cpu().numpy()
                    lengths = (batch.labels != pad).sum(dim=1).tolist()
                    writes.write_point(logits_path)
                    for row, (index, length) in enumerate(zip(batch.indices, lengths)):
                        data = memoryview(np.ascontiguousarray(logits[row, :length])).cast("B")
                        if os.pwrite(descriptor, data, int(offsets[index]) * row_bytes) != len(data):
                            raise OSError(28, "short write", str(logits_path))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            writes.write_point(staging / OFFSETS_FILE)
            np.save(staging / OFFSETS_FILE, offsets)
        writes.atomic_write_json(staging / RECORD_FILE, {"key": key, "positions": int(offsets[-1]), "bytes": size,
                                                         "max_tokens": max_tokens})


def open_for_run(config, teacher, corpus, device: torch.device, dist, quiet: bool) -> TeacherLogitCache:
    """A training run's cache (`config.teacher_cache`): rank 0 builds it when missing while the other
    ranks wait (building takes minutes: past the default group's wait), then every rank opens it."""
    from ..training.distributed import open_long_waits, wait_for_all

    open_long_waits(dist)
    if dist.is_main:
        open_or_build(config.teacher_cache, config.teacher, teacher, corpus, config.max_tokens, device, quiet)
    wait_for_all(dist)
    return open_or_build(config.teacher_cache, config.teacher, teacher, corpus, config.max_tokens, device, quiet=True)


def cached_teacher_inputs(cache: TeacherLogitCache | None, batch, pad_id: int, device: torch.device) -> dict:
    """The objective's keyword arguments for `batch` (a tiekd.data.batching.Batch): its cached gold-prefix
    logits, or nothing without a cache."""
    if cache is None:
        return {}
    return {"gold_teacher_logits": cache.gold_logits(batch.indices, batch.labels, pad_id).to(device, non_blocking=True)}
