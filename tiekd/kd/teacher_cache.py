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
from a live teacher's by rounding only (tests/test_teacher_cache.py bounds it). The build runs the
teacher as the run would: under the run's autocast (bf16 on GPUs) and on prefixes that start with the
student's decoder start id; both are part of the cache's key. Passes that feed the student's own
prefixes (TIE-KD's iterative passes, on-policy batches) still run the live teacher. Measured on CPUs
only: on a GPU, where the teacher's forward pass takes milliseconds, reading 100+ MB a batch may cost
more than it saves.

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


def cache_key(teacher_dir: str | Path, teacher, corpus, start_id: int, autocast: str | None) -> dict:
    """What a cache's rows depend on: the teacher's files and dtype, the autocast it ran under (None or
    "bfloat16": a run's live teacher computes under its run's autocast, so the cache must too), the
    decoder start id its gold prefixes begin with (the student's: the objective shifts the labels with
    it), the corpus's ids and the vocabulary."""
    return {"format": FORMAT, "teacher_sha256": teacher_digest(teacher_dir),
            "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch."), "autocast": autocast,
            "start_id": int(start_id), "vocab_size": int(teacher.config.vocab_size), "pairs": len(corpus),
            "corpus_sha256": corpus_digest(corpus)}


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

    def gold_logits(self, indices, labels: torch.Tensor, pad_id: int, pin_memory: bool = False) -> torch.Tensor:
        """float32 [B, T, V] logits of pairs `indices` at the positions of `labels` [B, T] (their padded
        gold targets, on the CPU); padding positions hold zeros, which the losses never read (they mask by
        pad id). `pin_memory` for a copy to a GPU that overlaps with compute."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = (labels != pad_id).sum(dim=1).numpy()
        differ = np.flatnonzero(ends - starts != lengths)
        if len(differ):
            pair = int(indices[differ[0]])
            raise TiekdError(f"{self.folder}: the stored rows do not match this batch's targets (pair {pair:,} has "
                             f"{int(lengths[differ[0]])} target positions, the cache {int((ends - starts)[differ[0]])};"
                             f" {len(differ)} of {len(indices)} pairs differ): the cache belongs to other data. Fix: "
                             "remove that folder, or give the run its own --teacher-cache folder")
        out = torch.empty((len(indices), labels.shape[1], self.vocab_size), dtype=torch.float32, pin_memory=pin_memory)
        rows = out.numpy()
        row_bytes = self.vocab_size * FLOAT_BYTES
        for row, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
            _read_fully(self._descriptor, memoryview(rows[row, :length]).cast("B"), start * row_bytes, self.path)
            rows[row, length:] = 0.0
        return out


def _read_fully(descriptor: int, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill `buffer` from `offset`; a read returns at most ~2 GiB on Linux, so short reads go on."""
    done = 0
    while done < len(buffer):
        read = os.preadv(descriptor, [buffer[done:]], offset + done)
        if read == 0:
            raise TiekdError(f"{path}: ended {offset + done:,} bytes in, inside a row it should hold (the file changed "
                             "under the run). Fix: remove its folder; the next run builds it again")
        done += read


def _write_fully(descriptor: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(descriptor, data[done:], offset + done)


def open_or_build(cache_dir: str | Path, teacher_dir: str | Path, teacher, corpus, max_tokens: int,
                  device: torch.device, quiet: bool = False, start_id: int | None = None, precision: str = "auto",
                  key: dict | None = None) -> TeacherLogitCache:
    """The cache of `teacher` (loaded from `teacher_dir`) on `corpus` under `cache_dir`, built first when
    missing. Another process building the same one is waited for. `start_id` is the decoder start id of
    the gold prefixes (default the teacher's; a run passes its student's) and `precision` the run's
    (tiekd.training.devices.autocast_context), under which the teacher is run as live. `key`: from
    `cache_key`, when the caller has it already."""
    from ..training.devices import autocast_context

    start_id = teacher.config.decoder_start_token_id if start_id is None else start_id
    autocast = autocast_context(device, precision)
    autocast_dtype = str(autocast.fast_dtype).removeprefix("torch.") if isinstance(autocast, torch.autocast) else None
    key = key if key is not None else cache_key(teacher_dir, teacher, corpus, start_id, autocast_dtype)
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{key['teacher_dtype']}-{_key_name(key)}"
    if (folder / RECORD_FILE).is_file():  # complete: records are written last (no lock: the folder may be read-only)
        if not quiet:
            print(f"teacher-logit cache: reading {folder}", flush=True)
        return TeacherLogitCache(folder)
    with writes.guarded(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f".{folder.name}.lock"  # never removed: every process locks the same file
    try:
        lock = open(lock_path, "a")
    except OSError as error:
        raise TiekdError(f"{lock_path}: cannot be created to build the teacher-logit cache ({error.strerror}). Fix: "
                         "give --teacher-cache a folder you can write to") from error
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"teacher-logit cache: waiting for another process building {folder}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (folder / RECORD_FILE).is_file():
                _build(folder, key, teacher, corpus, max_tokens, device, autocast, quiet)
            elif not quiet:
                print(f"teacher-logit cache: reading {folder}", flush=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return TeacherLogitCache(folder)


def _build(folder: Path, key: dict, teacher, corpus, max_tokens: int, device: torch.device, autocast,
           quiet: bool) -> None:
    """Run the teacher over `corpus` in length-sorted batches and store its logits at every label position."""
    from tqdm import tqdm

    from ..data import batching
    from .objectives import shift_right

    offsets = label_offsets(corpus)
    vocab = key["vocab_size"]
    row_bytes = vocab * FLOAT_BYTES
    size = int(offsets[-1]) * row_bytes
    writes.sweep_leftovers(folder.parent)  # a killed build's half-written folder must not count as used space
    free = shutil.disk_usage(folder.parent).free
    others = other_caches(folder.parent, folder)
    held = (f" The folder holds {len(others)} other cache(s) of {sum(others.values()) / 1e9:,.1f} GB ("
            + ", ".join(path.name for path in others) + "), for other teachers or data: remove those no run uses."
            ) if others else ""
    if size > free:
        raise TiekdError(f"{folder}: the teacher-logit cache needs {size / 1e9:,.1f} GB ({int(offsets[-1]):,} target "
                         f"positions x {vocab:,} logits x 4 bytes) and {free / 1e9:,.1f} GB are free there.{held} Fix: "
                         "give --teacher-cache a folder on a larger disk, or drop --teacher-cache to run the teacher live")
    if held and not quiet:
        print(f"teacher-logit cache:{held}", flush=True)
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
                    batch = batching.collate(corpus, plan[batch_number])
                    lengths = (batch.labels != pad).sum(dim=1).tolist()
                    batch = batch.to(device)
                    with torch.inference_mode(), autocast:
                        logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                         decoder_input_ids=shift_right(batch.labels, key["start_id"]),
                                         use_cache=False).logits.float().cpu().numpy()
                    writes.write_point(logits_path)
                    for row, (index, length) in enumerate(zip(batch.indices, lengths)):
                        data = memoryview(np.ascontiguousarray(logits[row, :length])).cast("B")
                        _write_fully(descriptor, data, int(offsets[index]) * row_bytes)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            writes.write_point(staging / OFFSETS_FILE)
            np.save(staging / OFFSETS_FILE, offsets)
        writes.atomic_write_json(staging / RECORD_FILE, {"key": key, "positions": int(offsets[-1]), "bytes": size,
                                                         "max_tokens": max_tokens})


def other_caches(cache_dir: Path, but: Path) -> dict[Path, int]:
    """The complete caches in `cache_dir` other than `but`, with their sizes in bytes: a new teacher or new
    data gets a new cache beside the old ones, which nothing removes by itself."""
    found = {}
    for record in sorted(cache_dir.glob(f"*/{RECORD_FILE}")):
        if record.parent != but:
            found[record.parent] = sum(path.stat().st_size for path in record.parent.iterdir() if path.is_file())
    return found


def open_for_run(config, teacher, corpus, start_id: int, device: torch.device, dist, quiet: bool) -> TeacherLogitCache:
    """A training run's cache (`config.teacher_cache`), for gold prefixes that start with the student's
    `start_id` and a teacher under the run's precision: rank 0 builds it when missing while the other
    ranks wait (building takes minutes: past the default group's wait), then every rank opens it."""
    from ..training.distributed import open_long_waits, wait_for_all

    def open_cache(quiet: bool) -> TeacherLogitCache:
        return open_or_build(config.teacher_cache, config.teacher, teacher, corpus, config.max_tokens, device, quiet,
                             start_id=start_id, precision=config.precision)

    open_long_waits(dist)
    cache = open_cache(quiet) if dist.is_main else None
    wait_for_all(dist)
    return cache if cache is not None else open_cache(quiet=True)


def cached_teacher_inputs(cache: TeacherLogitCache | None, batch, pad_id: int, device: torch.device) -> dict:
    """The objective's keyword arguments for `batch` (a tiekd.data.batching.Batch): its cached gold-prefix
    logits, or nothing without a cache."""
    if cache is None:
        return {}
    logits = cache.gold_logits(batch.indices, batch.labels.cpu(), pad_id, pin_memory=device.type == "cuda")
    return {"gold_teacher_logits": logits.to(device, non_blocking=True)}
