"""Token ids of text lines with a Hugging Face (Marian) tokenizer, without torch: what `prepare` writes
and what training would otherwise encode at its start (tiekd.data.batching)."""

from __future__ import annotations

import itertools
import os

import numpy as np


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
    marked = _written_specials(tokenizer)

    def encode(lines: list[str]) -> list[list[int]]:
        ids = [[lookup.get(piece, unknown) for piece in pieces] + [end]
               for pieces in model.encode(lines, out_type=str)]
        special = _special_lines(lines, marked)
        if special:
            for k, one in zip(special, _own_ids(tokenizer, [lines[k] for k in special], target)):
                ids[k] = one
        return ids

    return encode


def encode_flat(tokenizer, lines: list[str], target: bool = False, threads: int | None = None,
                with_pieces: bool = False):
    """The ids of `encode_texts` for `lines` as one flat int64 array (each line's ids, </s> included,
    one after the other) and each line's length; for a corpus, `threads` of SentencePiece's own C++
    batch encoder (default: every core) do the work, and numpy maps its ids to the tokenizer's.

    SentencePiece's id i is the tokenizer's id of piece i (`_spm_id_map`). Lines that decide otherwise go
    through `encode_texts`' own path: those with a piece SentencePiece does not know (its surface text
    may still be in a joint vocabulary, as OPUS-MT's), a language code or a written-out special token.
    With `with_pieces`, also each line's count of SentencePiece pieces (</s> not counted; what the
    training-data filters read), from the same encoding."""
    fast = _marian_encoder(tokenizer, target)
    if fast is None or not lines:
        sequences = encode_texts(tokenizer, lines, target=target)
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        return (flat, lengths, lengths - 1) if with_pieces else (flat, lengths)
    model, id_map, unk, marked = _spm_id_map(tokenizer, target)
    pieces = model.encode(lines, out_type=int, num_threads=threads or os.cpu_count() or 1)
    lengths = np.fromiter((len(ids) + 1 for ids in pieces), dtype=np.int64, count=len(pieces))
    piece_counts = lengths - 1
    values = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=int(piece_counts.sum()))
    own = _own_path_lines(lines, values, piece_counts, unk, marked)
    if own:  # rare lines: the exact path, then the same flat layout
        for k, ids in zip(own, fast([lines[k] for k in own])):
            pieces[k] = ids[:-1]
            lengths[k] = len(ids)
        values = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=int((lengths - 1).sum()))
    ends = np.cumsum(lengths)
    flat = np.empty(int(ends[-1]), dtype=np.int64)
    body = np.ones(len(flat), dtype=bool)
    body[ends - 1] = False
    if own:  # the exact path's ids are the tokenizer's already; only SentencePiece's need mapping
        mapped = np.ones(len(lines), dtype=bool)
        mapped[own] = False
        needs_map = np.repeat(mapped, lengths - 1)
        values[needs_map] = id_map[values[needs_map]]
    else:
        values = id_map[values]
    flat[body] = values
    flat[ends - 1] = tokenizer.eos_token_id
    return (flat, lengths, piece_counts) if with_pieces else (flat, lengths)


def _own_path_lines(lines: list[str], values: np.ndarray, piece_counts: np.ndarray, unk: int | None,
                    marked: list[str]) -> list[int]:
    """Indices of the lines `encode_flat` sends through the tokenizer's own path: a SentencePiece unknown
    among its pieces (`values`, every line's pieces one after the other), a language code (">>xx<<")
    at its start, or a written-out special token. Found in numpy and in the chunk's joined text, not
    line by line in Python: this scan was 10-25% of `tiekd prepare`'s encoding time, and it finds
    nothing in almost every chunk."""
    hits = set(_special_lines(lines, marked))
    if unk is not None:
        positions = np.flatnonzero(values == unk)
        if len(positions):
            hits.update(np.searchsorted(np.cumsum(piece_counts), positions, side="right").tolist())
    return sorted(hits)


def _special_lines(lines: list[str], marked: list[str]) -> list[int]:
    """Indices of the lines that start with a language code (">>xx<<") or hold a written-out special
    token; the chunk's joined text is searched first, and lines one by one only when it has a hit."""
    text = "\n".join(lines)
    if not (text.startswith(">>") or "\n>>" in text or any(m in text for m in marked)):
        return []
    return [k for k, line in enumerate(lines) if line.startswith(">>") or any(m in line for m in marked)]


def _written_specials(tokenizer) -> list[str]:
    """The special and added tokens' texts, each once (a line that writes one out takes the exact path)."""
    return list(dict.fromkeys(str(t) for t in (*tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder)))


def _spm_id_map(tokenizer, target: bool):
    """(SentencePiece model, array: its id -> the tokenizer's id, its unknown id, the texts that make a
    line special) of one side of a Marian tokenizer, built once per tokenizer."""
    cache = tokenizer.__dict__.setdefault("_tiekd_id_maps", {})
    if target not in cache:
        model = tokenizer.spm_target if target else tokenizer.spm_source
        vocabulary = tokenizer.target_encoder if target and tokenizer.separate_vocabs else tokenizer.encoder
        lookup = {**vocabulary, **tokenizer.added_tokens_encoder}
        unknown = vocabulary[tokenizer.unk_token]
        id_map = np.array([lookup.get(model.id_to_piece(i), unknown) for i in range(model.get_piece_size())],
                          dtype=np.int64)
        cache[target] = (model, id_map, model.unk_id(), _written_specials(tokenizer))
    return cache[target]
