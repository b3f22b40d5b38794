"""Token ids on disk: encoded once by `tiekd prepare`, then read by training a sentence at a time.

Each side of a split is two files beside the cleaned text (the layout of fairseq's mmap datasets,
written by us):

    <split>.<lang>.ids   every sentence's ids, </s> included, one after the other (little-endian uint16
                         when the vocabulary has fewer than 65,536 entries, else uint32)
    <split>.<lang>.idx   a 24-byte header (b"TIEKDIDS", format version u32, bytes per id u32, sentences
                         u64), then sentences + 1 offsets (int64): sentence i is ids[offsets[i]:offsets[i+1]]

Opening checks the header and both file sizes against each other and against meta.json (constant
time); the SHA-256 of each file is in meta.json for `verify` to check in full. The files are written
with ordinary buffered writes through tiekd.writes (a full disk is an error, never the SIGBUS of a
writable map). Training reads a sentence with positioned reads (see StoredIds), so every torchrun rank
shares the kernel's one cached copy and a corpus of any size costs each process its sentence lengths
(2 bytes a side per pair) and the batch it collates.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import writes
from ..errors import input_error

MAGIC = b"TIEKDIDS"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per id, sentences
IDS_SUFFIX, INDEX_SUFFIX = ".ids", ".idx"


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 2 ** 16 else np.dtype("<u4")


class IdsWriter:
    """Writes the id sequences of one text file as `<text_path>.ids/.idx`, a chunk at a time (`add`),
    with ordinary buffered writes; `close` writes the index and returns what meta.json records."""

    def __init__(self, text_path: Path, vocab_size: int):
        self.dtype = id_dtype(vocab_size)
        self.ids_path, self.index_path = _paths(text_path)
        self.lengths: list[np.ndarray] = []
        with writes.guarded(self.ids_path):
            writes.write_point(self.ids_path)
            self.sink = open(self.ids_path, "wb")

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append sentences: their ids one after the other (`flat`) and how many each has (`lengths`)."""
        with writes.guarded(self.ids_path):
            self.sink.write(np.asarray(flat).astype(self.dtype).tobytes())
        self.lengths.append(np.asarray(lengths, dtype=np.int64))

    def close(self) -> dict:
        from ..io import sha256_file

        with writes.guarded(self.ids_path):
            self.sink.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<i8")
        header = HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, len(lengths))
        writes.call(self.index_path, self.index_path.write_bytes, header + offsets.tobytes())
        return {"sentences": len(lengths), "tokens": int(offsets[-1]), "bytes_per_id": self.dtype.itemsize,
                "ids_sha256": sha256_file(self.ids_path), "idx_sha256": sha256_file(self.index_path)}


def read_lengths(index_path: Path, count: int, block: int = 1 << 18) -> np.ndarray:
    """Ids per sentence from an index's offsets: length[i] = offsets[i + 1] - offsets[i].

    2 bytes a sentence (uint16) while every sentence has fewer than 65,536 ids, else 4 (int32), so a
    4.5M-pair corpus holds 18 MB of lengths for both sides, not the 72 MB of its int64 offsets. The
    offsets are read a block at a time with ordinary reads rather than through a map: mapped pages
    would count in this process's resident memory until unmapped (36 MB per side at 4.5M pairs).
    """
    lengths = np.empty(count, dtype=np.uint16)
    with open(index_path, "rb") as handle:
        handle.seek(HEADER.size)
        previous = np.fromfile(handle, dtype="<i8", count=1)
        for start in range(0, count, block):
            offsets = np.concatenate([previous, np.fromfile(handle, dtype="<i8", count=min(block, count - start))])
            diffs = np.diff(offsets)
            if lengths.dtype == np.uint16 and len(diffs) and diffs.max() >= 2 ** 16:
                lengths = lengths.astype(np.int32)  # a sentence of 65,536 ids or more: widen once
            lengths[start:start + len(diffs)] = diffs
            previous = offsets[-1:]
    return lengths


def _paths(text_path: Path) -> tuple[Path, Path]:
    text_path = Path(text_path)
    return text_path.with_name(text_path.name + IDS_SUFFIX), text_path.with_name(text_path.name + INDEX_SUFFIX)


class StoredIds:
    """The id sequences of one text file on disk: `len`, `[i]` (a numpy array), `lengths` (ids per
    sentence, </s> included, held in memory: 2 bytes a sentence).

    Sentence i is read when asked for, with two positioned reads (pread): its two offsets from the
    index, then its ids. Not through a memory map: the pages a map touches count in the process's
    resident memory (and, in a rank that alone maps them, in its private memory) until unmapped, so
    a mapped corpus grows a run's RSS with every batch read, up to the whole file (measured at 4.5M
    pairs: +53 MB after 3 random batches, +326 MB after 30). Read this way the kernel's page cache
    still serves every rank from one copy, and no process holds more than the batch it collates.
    """

    def __init__(self, text_path: Path, record: dict | None = None):
        ids_path, index_path = _paths(text_path)
        rebuild = f"rebuild the folder with `tiekd prepare --overwrite` and its options, or delete {ids_path.name}"
        for path in (ids_path, index_path):
            if not path.is_file():
                raise input_error(path, "missing", rebuild)
        with open(index_path, "rb") as handle:
            raw = handle.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise input_error(index_path, "truncated (no header)", rebuild)
        magic, version, width, count = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or width not in (2, 4):
            raise input_error(index_path, f"not a tiekd id index (header {magic!r}, version {version})", rebuild)
        expected_index = HEADER.size + 8 * (count + 1)
        if index_path.stat().st_size != expected_index:
            raise input_error(index_path, f"{index_path.stat().st_size:,} bytes where {count:,} sentences need "
                              f"{expected_index:,} (truncated or damaged)", rebuild)
        tokens = int(np.fromfile(index_path, dtype="<i8", count=1, offset=HEADER.size + 8 * count)[0])
        if ids_path.stat().st_size != tokens * width:
            raise input_error(ids_path, f"{ids_path.stat().st_size:,} bytes where its index says {tokens:,} ids of "
                              f"{width} bytes (truncated or damaged)", rebuild)
        if record is not None and (record.get("sentences"), record.get("tokens")) != (count, tokens):
            raise input_error(ids_path, f"holds {count:,} sentences and {tokens:,} ids, meta.json says "
                              f"{record.get('sentences')} and {record.get('tokens')}", rebuild)
        self._paths = (index_path, ids_path)
        self._dtype = np.dtype("<u2") if width == 2 else np.dtype("<u4")
        self._files: tuple[int, int] | None = None  # (index, ids) descriptors, opened on the first read
        self._owner = None  # the process that opened them (a forked or unpickled copy opens its own)
        self.lengths = read_lengths(index_path, count)

    def _descriptors(self) -> tuple[int, int]:
        if self._files is None or self._owner != os.getpid():
            self._files = tuple(os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)) for path in self._paths)
            self._owner = os.getpid()
        return self._files

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": None, "_owner": None}

    def __del__(self) -> None:
        if getattr(self, "_files", None) is not None and self._owner == os.getpid():
            for descriptor in self._files:
                os.close(descriptor)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        index_file, ids_file = self._descriptors()
        start, end = np.frombuffer(_read_at(index_file, 16, HEADER.size + 8 * index), dtype="<i8")
        size = self._dtype.itemsize
        return np.frombuffer(_read_at(ids_file, int(end - start) * size, int(start) * size), dtype=self._dtype)


def _read_at(descriptor: int, size: int, offset: int) -> bytes:
    """`size` bytes at `offset`: one positioned read (no shared file position, so forked readers are safe)."""
    data = os.pread(descriptor, size, offset) if size else b""
    if len(data) != size:
        raise OSError(f"short read: {len(data)} of {size} bytes at offset {offset} (the file changed under the run)")
    return data


@dataclass
class BinarizedCorpus:
    """A split's sources and targets as `StoredIds`, with EncodedCorpus's interface (tiekd.data.batching);
    sequences longer than `max_positions` are cut to fit (the last id kept as </s>) when collated."""

    sources: StoredIds
    targets: StoredIds
    pad_id: int
    eos_id: int
    max_positions: int = 512

    def __len__(self) -> int:
        return len(self.sources)

    def source_lengths(self) -> np.ndarray:
        return self._fitted(self.sources.lengths)

    def target_lengths(self) -> np.ndarray:
        return self._fitted(self.targets.lengths)

    def _fitted(self, lengths: np.ndarray) -> np.ndarray:
        """The lengths after cutting to the model's positions (the array itself when none is longer)."""
        return lengths if not len(lengths) or lengths.max() <= self.max_positions else \
            np.minimum(lengths, self.max_positions)

    def source(self, index: int) -> np.ndarray:
        return self._fit(self.sources[index])

    def target(self, index: int) -> np.ndarray:
        return self._fit(self.targets[index])

    def _fit(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) <= self.max_positions:
            return ids
        return np.concatenate([ids[: self.max_positions - 1], np.asarray([self.eos_id], dtype=ids.dtype)])


def verify(text_path: Path, record: dict) -> str | None:
    """None when both files of `text_path` match the SHA-256 in `record` (meta.json), else what differs."""
    from ..io import sha256_file

    for path, key in zip(_paths(text_path), ("ids_sha256", "idx_sha256")):
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != record.get(key):
            return f"{path} does not match its checksum in meta.json (damaged or modified)"
    return None


def load_corpus(prepared, files: tuple[Path, Path], tokenizer, max_positions: int):
    """The pairs of two text files: read from disk as needed when their ids are stored (a prepared folder's
    files that `tiekd prepare` binarized, meta.json's "binarized"; or a file with current ids beside it,
    `binarize_beside`, as sequence-level KD's targets), else encoded now as before (folders from before
    binarizing)."""
    from .batching import encode_pair_files

    records = (prepared.meta.get("binarized", {}) if prepared is not None else {})
    found = {}
    for side, path in enumerate(map(Path, files)):
        if prepared is not None and path.parent.resolve() == Path(prepared.path).resolve():
            found[path] = records.get(path.name)
        else:
            found[path] = record_beside(path, len(tokenizer), target=side == 1)
    if len(found) == 2 and all(found.values()):
        source, target = (StoredIds(path, found[path]) for path in files)
        if len(source) != len(target):
            raise input_error(files[1], f"{len(target):,} sentences beside {len(source):,} in {files[0]}",
                              "rebuild the folder with `tiekd prepare --overwrite`")
        for path, side in zip(files, (source, target)):
            long = int((side.lengths > max_positions).sum())
            if long:
                import warnings

                warnings.warn(f"{path}: {long} of {len(side)} lines have more than the model's {max_positions} "
                              "positions and are cut to fit. Fix: drop long pairs when preparing the data "
                              "(`tiekd prepare --max-tokens`)", stacklevel=2)
        return BinarizedCorpus(source, target, tokenizer.pad_token_id, tokenizer.eos_token_id, max_positions)
    return encode_pair_files(tokenizer, *files, max_positions)


# --- ids beside a text file a run writes itself (sequence-level KD's teacher targets) ---------------------

BESIDE_SUFFIX = ".ids.json"  # <text>.ids.json: which text the .ids/.idx beside it encode, written last
BESIDE_CHUNK = 10_000  # lines encoded and written at a time


def _beside_record_path(text_path: Path) -> Path:
    return text_path.with_name(text_path.name + BESIDE_SUFFIX)


def _text_state(text_path: Path, vocab_size: int, target: bool) -> dict:
    """What a record beside `text_path` must match for its ids to count: the text's size and modification
    time now, the vocabulary size and the side (source or target model)."""
    stat = text_path.stat()
    return {"text_bytes": stat.st_size, "text_mtime_ns": stat.st_mtime_ns, "vocab_size": vocab_size,
            "target": target}


def record_beside(text_path: Path, vocab_size: int, target: bool) -> dict | None:
    """The record of the ids written beside `text_path` by `binarize_beside`, if they encode the text as
    it is now (`_text_state`, checked in constant time); else None."""
    import json

    text_path = Path(text_path)
    try:
        record = json.loads(_beside_record_path(text_path).read_text())
        current = _text_state(text_path, vocab_size, target)
    except (OSError, ValueError):
        return None
    return record if all(record.get(key) == value for key, value in current.items()) else None


def binarize_beside(text_path: Path, tokenizer, target: bool) -> dict:
    """Encode a text file a run wrote itself (e.g. `seqkd/train.hyp`) once, a chunk of lines at a time, into
    `.ids`/`.idx` beside it, so that every later start reads its ids from disk instead of encoding the
    whole file into Python lists again. The lines are `tiekd.io.iter_lines`' (those `encode_pair_files`
    reads) and the ids `encode_flat`'s (those of `encode_texts`).

    The record (`<text>.ids.json`) is removed first and written last, atomically: ids left half-written
    by an interrupted run never look current, and the next start encodes them again."""
    import itertools

    from ..io import iter_lines
    from .encoding import encode_flat

    text_path = Path(text_path)
    record_path = _beside_record_path(text_path)
    record_path.unlink(missing_ok=True)
    state = _text_state(text_path, len(tokenizer), target)  # before reading: a later change must not count
    writer = IdsWriter(text_path, len(tokenizer))
    lines = iter_lines(text_path)
    while chunk := list(itertools.islice(lines, BESIDE_CHUNK)):
        writer.add(*encode_flat(tokenizer, chunk, target=target))
    record = {**writer.close(), **state}
    writes.atomic_write_json(record_path, record)
    return record
