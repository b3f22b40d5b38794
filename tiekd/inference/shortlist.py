"""Lexical shortlists: decode over the target words a sentence can plausibly need, not the whole vocabulary.

For a small student the projection onto the vocabulary is most of the work of each generated token
(with an 8k vocabulary and d_model 128 about 1.0M of 1.35M multiply-adds). Production CPU students
(Bergamot / Firefox Translations, Bogoychev et al. 2020; Marian's `--shortlist`) therefore restrict
the output layer, per batch, to the union of candidate target tokens of the batch's source tokens
plus the most frequent target tokens. CTranslate2 implements this as a vocabulary map (`vmap.txt`,
given to the converter; `use_vmap` at translation time), one rule per line:

    <source token>\t<target token> <target token> ...

and a rule with an empty source side lists the tokens that are always candidates.

The candidates come from sentence-level co-occurrence in parallel text (no word aligner needed):
with c(s) the number of sentence pairs whose source holds token s and c(s, t) those that also hold
target token t, a source token's candidates are its `per_token` targets of highest

    p(t | s) = c(s, t) / c(s),

leaving out the `frequent` most frequent target tokens, which are always candidates anyway (they
would otherwise fill every list: "the", ".", "a" co-occur with everything). Source tokens seen fewer
than `min_count` times get no rule. Bergamot builds its lists from an IBM-model lexical table
(fast_align) instead; co-occurrence needs nothing beyond the data, and the tests and the speed report
check the BLEU it costs.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ..errors import TiekdError
from ..io import atomic_write_text, count_lines, iter_lines

# torch is imported where it is used: `tiekd export --help` reads ShortlistOptions and should not wait for torch
if typing.TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ShortlistOptions:
    per_token: int = 50   # candidate target tokens per source token
    frequent: int = 100   # most frequent target tokens, candidates for every sentence
    min_count: int = 2    # source tokens seen in fewer sentence pairs get no rule

    def validate(self) -> None:
        bad = [f"{name} must be at least {low}, got {getattr(self, name)}"
               for name, low in (("per_token", 1), ("frequent", 0), ("min_count", 1)) if getattr(self, name) < low]
        if bad:
            raise TiekdError("shortlist: " + "; ".join(bad) + ". Fix: change those options")


@dataclass(frozen=True)
class _Side:
    """One side's token strings by id ("" where no token has the id) and its special token ids."""

    names: np.ndarray
    special: np.ndarray

    @property
    def size(self) -> int:
        return len(self.names)


def _side(tokenizer, target: bool) -> _Side:
    """The source or target side of `tokenizer`. A Marian tokenizer with separate vocabularies (some
    OPUS-MT models) numbers target tokens in a vocabulary of their own; added tokens are looked up first,
    as the tokenizer does."""
    from transformers import MarianTokenizer

    if isinstance(tokenizer, MarianTokenizer):
        own = tokenizer.target_encoder if target and tokenizer.separate_vocabs else tokenizer.encoder
        vocabulary = {**own, **tokenizer.added_tokens_encoder}
    else:
        vocabulary = tokenizer.get_vocab()
    names = np.full(max(vocabulary.values()) + 1, "", dtype=object)
    for token, i in sorted(vocabulary.items(), key=lambda item: item[0] in tokenizer.added_tokens_encoder):
        names[i] = token  # an added token's name wins, as in convert_ids_to_tokens
    specials = set(map(str, tokenizer.all_special_tokens))
    return _Side(names, np.asarray([i for i, name in enumerate(names) if name in specials], dtype=np.int64))


def _incidence(tokenizer, lines: list[str], target: bool, side: _Side) -> torch.Tensor:
    """The lines' token incidence matrix (len(lines) x side.size, sparse, float64): 1 where a line holds a
    token as the model's tokenizer writes it (targets with the target side's SentencePiece model where
    the two differ, as in OPUS-MT), special tokens left out."""
    import torch

    from ..data.batching import encode_texts

    ids = encode_texts(tokenizer, lines, target=target)
    tokens = np.fromiter((t for line in ids for t in line), dtype=np.int64)
    if len(tokens) and not 0 <= tokens.min() <= tokens.max() < side.size:  # would land in another line's cells
        raise TiekdError(f"the tokenizer gave id {tokens.max()} outside its {'target' if target else 'source'} "
                         f"vocabulary of {side.size}. Fix: use the model's own tokenizer folder")
    rows = np.repeat(np.arange(len(ids), dtype=np.int64), [len(line) for line in ids])
    cells = np.sort(rows * side.size + tokens)
    first = np.ones(len(cells), dtype=bool)  # a token counts once per line (np.unique, which hashes, is 10x slower)
    first[1:] = cells[1:] != cells[:-1]
    cells = cells[first]
    cells = cells[~np.isin(cells % side.size, side.special)]
    index = torch.from_numpy(np.stack([cells // side.size, cells % side.size]))
    return torch.sparse_coo_tensor(index, torch.ones(len(cells), dtype=torch.float64), (len(ids), side.size),
                                   is_coalesced=True, check_invariants=False)


def _parallel_chunks(source_path: Path, target_path: Path, lines: int) -> Iterator[tuple[list[str], list[str]]]:
    """Aligned chunks of up to `lines` sentence pairs, read as streams: a WMT-sized corpus need not fit
    in memory. Files of different lengths are refused before any work, with both counts."""
    sources, targets = count_lines(source_path), count_lines(target_path)
    if sources != targets:
        raise TiekdError(f"{target_path}: {targets} lines, but {source_path} has {sources}. "
                         "Fix: give the two sides of one parallel corpus, aligned line by line")
    pairs = zip(iter_lines(source_path), iter_lines(target_path))
    while chunk := list(islice(pairs, lines)):
        yield [source for source, _ in chunk], [target for _, target in chunk]


class _SparseSum:
    """A sum of sparse matrices, added like a binary counter (two partial sums of as many chunks are
    merged): each count is re-sorted about log2(chunks) times, where adding every chunk to one running
    total would re-sort the whole total once per chunk."""

    def __init__(self) -> None:
        self.partial: list[tuple[int, torch.Tensor]] = []  # (chunks summed, their sum)

    def add(self, matrix: torch.Tensor) -> None:
        self.partial.append((1, matrix))
        while len(self.partial) > 1 and self.partial[-1][0] == self.partial[-2][0]:
            (a, x), (b, y) = self.partial.pop(), self.partial.pop()
            self.partial.append((a + b, (x + y).coalesce()))

    def total(self, shape: tuple[int, int]) -> torch.Tensor:
        import torch

        result = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64),
                                         shape, check_invariants=False)
        for _, matrix in self.partial:
            result = result + matrix
        return result.coalesce()


def vocabulary_map_rules(tokenizer, source_path: str | Path, target_path: str | Path,
                         options: ShortlistOptions = ShortlistOptions(),
                         chunk_lines: int = 50_000) -> tuple[list[str], dict[str, list[str]]]:
    """(always-candidate target tokens, {source token: its candidate target tokens}) from parallel text.

    With S and T the sentences' 0/1 source and target token incidence matrices (sentences x vocabulary),
    c(s) and c(t) are the column sums and c(s, t) = (S^T T)[s, t], summed over chunks of `chunk_lines`
    pairs as sparse products. That is the same sum over sentences of |S_i| * |T_i| pairs as counting pair
    by pair, in compiled code; memory holds one chunk and the distinct (s, t) pairs (up to about twice,
    in the partial sums), not the whole corpus's token sets."""
    import torch

    options.validate()
    source_side, target_side = _side(tokenizer, False), _side(tokenizer, True)
    source_count = np.zeros(source_side.size, dtype=np.int64)
    target_count = np.zeros(target_side.size, dtype=np.int64)
    pair_count = _SparseSum()
    pairs = 0
    for sources, targets in _parallel_chunks(Path(source_path), Path(target_path), chunk_lines):
        pairs += len(sources)
        in_source = _incidence(tokenizer, sources, False, source_side)
        in_target = _incidence(tokenizer, targets, True, target_side)
        source_count += np.bincount(in_source.indices()[1].numpy(), minlength=source_side.size)
        target_count += np.bincount(in_target.indices()[1].numpy(), minlength=target_side.size)
        with warnings.catch_warnings():  # torch.sparse.mm goes through CSR internally and says it is "beta"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            pair_count.add(torch.sparse.mm(in_source.t().coalesce(), in_target))
    if not pairs:
        raise TiekdError(f"{source_path}: no sentences. Fix: give the training data's parallel text")

    names = target_side.names
    by_name = np.empty(len(names), dtype=np.int64)  # each target token's place in sorted order, for ties
    by_name[np.argsort(names.astype(str), kind="stable")] = np.arange(len(names))
    seen = np.flatnonzero(target_count)
    always_ids = seen[np.lexsort((by_name[seen], -target_count[seen]))][:options.frequent]

    counted = pair_count.total((source_side.size, target_side.size))
    (s, t), count = counted.indices().numpy(), counted.values().numpy()
    keep = ~np.isin(t, always_ids) & (source_count[s] >= options.min_count)
    s, t, count = s[keep], t[keep], count[keep]
    # p(t | s) = c(s, t) / c(s): for one s the order is that of c(s, t); ties by token for determinism
    order = np.lexsort((by_name[t], -count, s))
    s, t = s[order], t[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    place = np.arange(len(s)) - np.repeat(starts, np.diff(np.r_[starts, len(s)]))
    s, t = s[place < options.per_token], t[place < options.per_token]
    rules: dict[str, list[str]] = {}
    for source_id, target_id in zip(s.tolist(), t.tolist()):
        rules.setdefault(source_side.names[source_id], []).append(names[target_id])
    return [names[i] for i in always_ids.tolist()], rules


def write_vocabulary_map(tokenizer, source_path: str | Path, target_path: str | Path, out_path: str | Path,
                         options: ShortlistOptions = ShortlistOptions()) -> dict:
    """Write CTranslate2's `vmap.txt` for `tokenizer` from parallel text; return counts for a report."""
    always, rules = vocabulary_map_rules(tokenizer, source_path, target_path, options)
    lines = ["\t" + " ".join(always)] + [f"{s}\t{' '.join(candidates)}" for s, candidates in sorted(rules.items())]
    atomic_write_text(Path(out_path), "\n".join(lines) + "\n")
    vocabulary = len(tokenizer.get_vocab())
    mean = sum(len(c) for c in rules.values()) / max(len(rules), 1)
    return {**asdict(options), "source_tokens_with_rules": len(rules), "always": len(always),
            "mean_candidates_per_rule": mean, "vocabulary": vocabulary}
