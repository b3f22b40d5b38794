"""Encoded parallel data and token-count batches with length bucketing.

Batches are built once per run (deterministically from the data), then shuffled per epoch with a
seeded generator, so the whole data position is `(epoch, index into that epoch's batch order)` and a
resumed run sees exactly the batches an uninterrupted one would. For data parallelism the batches of
one update are dealt out over ranks and accumulation steps (see `update_batches`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TiekdError
from .encoding import _marian_encoder, encode_flat, encode_texts  # noqa: F401  (their home before)
from ..io import read_lines


@dataclass
class EncodedCorpus:
    """Token ids of each pair: sources end with `</s>`, targets end with `</s>`."""

    sources: list[list[int]]
    targets: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.sources)

    # the interface EncodedCorpus shares with tiekd.data.binarized.BinarizedCorpus (ids on disk)
    def source(self, index: int) -> list[int]:
        return self.sources[index]

    def target(self, index: int) -> list[int]:
        return self.targets[index]

    def source_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.sources), dtype=np.int64, count=len(self.sources))

    def target_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.targets), dtype=np.int64, count=len(self.targets))


def encode_pair_files(tokenizer, source_path: Path, target_path: Path, max_positions: int = 512) -> EncodedCorpus:
    """Encode two line-aligned files; lines longer than the model's positions are truncated (with a
    warning that counts them)."""
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise TiekdError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}. "
                         "Fix: give line-aligned files (re-run `tiekd prepare`)")
    src_ids, tgt_ids = encode_texts(tokenizer, sources), encode_texts(tokenizer, targets, target=True)
    for path, ids in ((source_path, src_ids), (target_path, tgt_ids)):
        long = sum(len(seq) > max_positions for seq in ids)
        if long:
            warnings.warn(f"{path}: {long} of {len(ids)} lines have more than the model's {max_positions} "
                          "positions and are cut to fit. Fix: drop long pairs when preparing the data "
                          "(`tiekd prepare --max-tokens`)", stacklevel=2)
    eos = tokenizer.eos_token_id
    truncate = lambda seq: seq if len(seq) <= max_positions else seq[: max_positions - 1] + [eos]
    return EncodedCorpus([truncate(s) for s in src_ids], [truncate(t) for t in tgt_ids], tokenizer.pad_token_id)


@dataclass
class Batch:
    """A padded batch. `labels` use `pad_id` at padding (our losses mask by pad id)."""

    input_ids: torch.Tensor       # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    labels: torch.Tensor          # [B, T]
    indices: list[int]            # positions of these pairs in the corpus
    num_target_tokens: int        # non-pad target tokens (the loss normaliser's share)

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device, non_blocking=True), self.attention_mask.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True), self.indices, self.num_target_tokens)


class BatchPlan:
    """The batches of a corpus as one array of pair indices in length-sorted order, cut at `bounds`:
    batch k is order[bounds[k]:bounds[k + 1]]. Two arrays instead of a Python list per batch, so a
    corpus of millions of pairs costs a few bytes per pair (Python lists of its indices took ~70)."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray):
        self.order, self.bounds = order, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k: int) -> list[int]:
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        return self.order[self.bounds[k]:self.bounds[k + 1]].tolist()

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def tokens(self, lengths: np.ndarray) -> np.ndarray:
        """The sum of `lengths` (one per pair) over each batch."""
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        # int64 sums: lengths may be uint16 (tiekd.data.binarized), whose own sums would wrap
        return np.add.reduceat(np.asarray(lengths)[self.order], self.bounds[:-1], dtype=np.int64)


def length_order(source_lengths: np.ndarray, target_lengths: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """The pair indices sorted by (target length, source length, index): `sorted(range(n), key=...)`.

    A counting sort on the key k = target * (longest source + 1) + source, written straight into an
    int32 array (int64 from 2^31 pairs): a histogram of k gives each key's first slot, then each chunk
    of pairs, in index order, fills its keys' next slots, which keeps equal keys in index order. Its
    memory is that array (4 bytes a pair) plus per-chunk scratch, where np.lexsort returns int64 and
    needs temporaries besides (measured at 4.5M pairs: 18 MB above its inputs for lexsort's result
    alone). Keys beyond 2^24 (sentences of thousands of ids) fall back to np.lexsort.
    """
    count = len(target_lengths)
    index_dtype = np.int32 if count < 2 ** 31 else np.int64
    if not count:
        return np.zeros(0, dtype=index_dtype)
    width = int(source_lengths.max()) + 1
    keys = (int(target_lengths.max()) + 1) * width
    if keys > 1 << 24:
        return np.lexsort((source_lengths, target_lengths)).astype(index_dtype)

    def chunk_keys(start: int) -> np.ndarray:
        return target_lengths[start:start + chunk].astype(np.int64) * width + source_lengths[start:start + chunk]

    histogram = np.zeros(keys, dtype=np.int64)
    for start in range(0, count, chunk):
        histogram += np.bincount(chunk_keys(start), minlength=keys)
    next_slot = np.cumsum(histogram) - histogram
    order = np.empty(count, dtype=index_dtype)
    for start in range(0, count, chunk):
        key = chunk_keys(start)
        within = np.argsort(key, kind="stable")
        sorted_key = key[within]
        # a pair's rank among the equal keys of its chunk: its sorted position minus its key's first one
        rank = np.arange(len(key)) - np.searchsorted(sorted_key, sorted_key, side="left")
        order[next_slot[sorted_key] + rank] = within + start
        next_slot += np.bincount(key, minlength=keys)
    return order


def make_batches(corpus, max_tokens: int, chunk: int = 1 << 16) -> BatchPlan:
    """Group pair indices into batches of at most `max_tokens` padded tokens, sorted by length.

    Sorting by (target, source) length before cutting keeps padding low (length bucketing); a single
    pair longer than `max_tokens` gets a batch of its own. The sort is numpy's; the greedy cut walks the
    sorted lengths `chunk` at a time, so no list as long as the corpus is ever built.
    """
    source_lengths, target_lengths = corpus.source_lengths(), corpus.target_lengths()
    order = length_order(source_lengths, target_lengths)
    bounds, count, longest = [0], 0, 0
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        for offset, length in enumerate(np.maximum(source_lengths[part], target_lengths[part]).tolist()):
            if count and max(longest, length) * (count + 1) > max_tokens:
                bounds.append(start + offset)
                count, longest = 0, 0
            count += 1
            longest = max(longest, length)
    if count:
        bounds.append(len(order))
    return BatchPlan(order, np.asarray(bounds, dtype=np.int64))


def epoch_order(num_batches: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_batches, generator=generator).tolist()


def collate(corpus, indices: list[int]) -> Batch:
    """The padded batch of pairs `indices` of an EncodedCorpus or a BinarizedCorpus."""
    pad = corpus.pad_id
    sources = [corpus.source(i) for i in indices]
    targets = [corpus.target(i) for i in indices]
    input_ids = torch.full((len(indices), max(map(len, sources))), pad, dtype=torch.long)
    labels = torch.full((len(indices), max(map(len, targets))), pad, dtype=torch.long)
    for row, (source, target) in enumerate(zip(sources, targets)):
        input_ids[row, : len(source)] = torch.from_numpy(np.asarray(source, dtype=np.int64))
        labels[row, : len(target)] = torch.from_numpy(np.asarray(target, dtype=np.int64))
    return Batch(input_ids, (input_ids != pad).long(), labels, indices, sum(map(len, targets)))


def update_batches(batch_ids: list[int], update_index_in_epoch: int, world_size: int, rank: int,
                   update_freq: int) -> list[tuple[int, bool]]:
    """The batches rank `rank` processes for one update, and which are its own.

    One update consumes `world_size * update_freq` consecutive batches of the epoch order; micro-step m
    of rank r takes batch `m * world_size + r`. Every rank also knows the other ranks' batches, so the
    global token count (the loss normaliser) needs no communication.
    """
    per_update = world_size * update_freq
    start = update_index_in_epoch * per_update
    chunk = batch_ids[start:start + per_update]
    return [(b, k % world_size == rank) for k, b in enumerate(chunk)]


def updates_per_epoch(num_batches: int, world_size: int, update_freq: int) -> int:
    """Updates in one epoch of `num_batches` batches. One process takes a short last update; several
    drop the epoch's last batches instead, since every rank must take part in every update."""
    per_update = world_size * update_freq
    if world_size > 1:
        return num_batches // per_update
    return math.ceil(num_batches / per_update)
