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

import torch

from .errors import TiekdError
from .io import read_lines


@dataclass
class EncodedCorpus:
    """Token ids of each pair: sources end with `</s>`, targets end with `</s>`."""

    sources: list[list[int]]
    targets: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.sources)


def encode_texts(tokenizer, lines: list[str], batch: int = 2000, target: bool = False) -> list[list[int]]:
    """Token ids of each line, `</s>` appended; `target` lines go through the tokenizer's target model
    (a Marian tokenizer with separate source and target SentencePiece models, as OPUS-MT's).

    A Marian tokenizer's own call runs its pieces through Python one line at a time; the same ids come
    about 5x faster from SentencePiece's batch encoder and one dictionary lookup per piece
    (`_marian_encoder`), which matters for a large corpus at every run's start. Other tokenizers go
    through their own call. Either way `batch` lines at a time, so only one batch's pieces exist at once."""
    fast = _marian_encoder(tokenizer, target)
    ids: list[list[int]] = []
    for start in range(0, len(lines), batch):
        chunk = list(lines[start:start + batch])
        ids.extend(fast(chunk) if fast is not None else _own_ids(tokenizer, chunk, target))
    return ids


def _own_ids(tokenizer, lines: list[str], target: bool) -> list[list[int]]:
    """The ids of the tokenizer's own call (source side, or target side with `target`)."""
    encoded = tokenizer(text_target=lines) if target else tokenizer(lines, add_special_tokens=True)
    return encoded["input_ids"]


def _marian_encoder(tokenizer, target: bool):
    """For a `MarianTokenizer`, a function giving a list of lines the very ids of the tokenizer's own call
    (pieces of the source or target SentencePiece model, looked up among the added tokens, then in that
    side's vocabulary, then as <unk>; then </s>); None for another tokenizer.

    Lines that the tokenizer treats specially go through its own call: a leading language code
    (`>>fr<<`) and any special or added token written out in the text (`</s>`, `<pad>`, ...)."""
    from transformers import MarianTokenizer

    if not isinstance(tokenizer, MarianTokenizer):
        return None
    model = tokenizer.spm_target if target else tokenizer.spm_source
    vocabulary = tokenizer.target_encoder if target and tokenizer.separate_vocabs else tokenizer.encoder
    lookup = {**vocabulary, **tokenizer.added_tokens_encoder}  # the tokenizer looks added tokens up first
    unknown, end = vocabulary[tokenizer.unk_token], tokenizer.eos_token_id
    marked = [str(t) for t in (*tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder)]

    def encode(lines: list[str]) -> list[list[int]]:
        ids = [[lookup.get(piece, unknown) for piece in pieces] + [end]
               for pieces in model.encode(lines, out_type=str)]
        special = [k for k, line in enumerate(lines) if line.startswith(">>") or any(m in line for m in marked)]
        if special:
            for k, one in zip(special, _own_ids(tokenizer, [lines[k] for k in special], target)):
                ids[k] = one
        return ids

    return encode


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


def make_batches(corpus: EncodedCorpus, max_tokens: int) -> list[list[int]]:
    """Group pair indices into batches of at most `max_tokens` padded tokens, sorted by length.

    Sorting by (target, source) length before cutting keeps padding low (length bucketing); a single
    pair longer than `max_tokens` gets a batch of its own.
    """
    order = sorted(range(len(corpus)), key=lambda i: (len(corpus.targets[i]), len(corpus.sources[i]), i))
    batches, current, longest = [], [], 0
    for index in order:
        length = max(len(corpus.sources[index]), len(corpus.targets[index]))
        if current and max(longest, length) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def epoch_order(num_batches: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_batches, generator=generator).tolist()


def collate(corpus: EncodedCorpus, indices: list[int]) -> Batch:
    pad = corpus.pad_id
    src_len = max(len(corpus.sources[i]) for i in indices)
    tgt_len = max(len(corpus.targets[i]) for i in indices)
    input_ids = torch.full((len(indices), src_len), pad, dtype=torch.long)
    labels = torch.full((len(indices), tgt_len), pad, dtype=torch.long)
    for row, i in enumerate(indices):
        input_ids[row, : len(corpus.sources[i])] = torch.tensor(corpus.sources[i])
        labels[row, : len(corpus.targets[i])] = torch.tensor(corpus.targets[i])
    return Batch(input_ids, (input_ids != pad).long(), labels, indices,
                 sum(len(corpus.targets[i]) for i in indices))


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
