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

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import TiekdError
from .io import atomic_write_text, read_lines


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


def _token_sets(tokenizer, lines: list[str], target: bool) -> list[set[str]]:
    """Each line's set of subword tokens as the model's tokenizer writes them (targets with the target
    side's SentencePiece model where the two differ, as in OPUS-MT), special tokens left out."""
    from .batching import encode_texts

    special = set(tokenizer.all_special_tokens)
    return [{t for t in tokenizer.convert_ids_to_tokens(ids) if t not in special}
            for ids in encode_texts(tokenizer, lines, target=target)]


def vocabulary_map_rules(tokenizer, source_path: str | Path, target_path: str | Path,
                         options: ShortlistOptions = ShortlistOptions()) -> tuple[list[str], dict[str, list[str]]]:
    """(always-candidate target tokens, {source token: its candidate target tokens}) from parallel text."""
    options.validate()
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise TiekdError(f"{target_path}: {len(targets)} lines, but {source_path} has {len(sources)}. "
                         "Fix: give the two sides of one parallel corpus, aligned line by line")
    if not sources:
        raise TiekdError(f"{source_path}: no sentences. Fix: give the training data's parallel text")
    source_sets, target_sets = _token_sets(tokenizer, sources, False), _token_sets(tokenizer, targets, True)
    target_count = Counter(t for tokens in target_sets for t in tokens)
    # ties by token: Counter keeps first-seen order, which for tokens from sets depends on the hash seed
    always = [t for t, _ in sorted(target_count.items(), key=lambda item: (-item[1], item[0]))[:options.frequent]]
    excluded = set(always)
    source_count: Counter = Counter()
    pair_count: dict[str, Counter] = {}
    for source_tokens, target_tokens in zip(source_sets, target_sets):
        content = target_tokens - excluded
        for s in source_tokens:
            source_count[s] += 1
            pair_count.setdefault(s, Counter()).update(content)
    rules = {}
    for s, seen in source_count.items():
        if seen >= options.min_count and pair_count[s]:
            # p(t | s) = c(s, t) / c(s): for one s the order is that of c(s, t); ties by token for determinism
            ranked = sorted(pair_count[s].items(), key=lambda item: (-item[1], item[0]))
            rules[s] = [t for t, _ in ranked[:options.per_token]]
    return always, rules


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
