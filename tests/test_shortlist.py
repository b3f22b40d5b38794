"""Lexical shortlists (CTranslate2 vocabulary maps): the rules, and decoding restricted to them."""

from __future__ import annotations

import argparse

import pytest

from conftest import head
from tiekd.errors import TiekdError
from tiekd.inference.export import CTranslate2Translator, add_export_arguments, export_ctranslate2, run_export
from tiekd.inference.shortlist import ShortlistOptions, vocabulary_map_rules, write_vocabulary_map


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, multi30k):
    root = tmp_path_factory.mktemp("shortlist")
    for lang in ("de", "en"):
        (root / f"train.{lang}").write_text("\n".join(head(multi30k / f"train.{lang}", 1000)) + "\n", encoding="utf-8")
    return root / "train.de", root / "train.en"


def test_candidates_are_the_most_frequent_targets_and_each_tokens_co_occurring_ones(tmp_path, teacher_dir):
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(teacher_dir)
    # "Hund" always comes with "dog", "Katze" with "cat"; "a" and "." are in every target
    (tmp_path / "s.de").write_text("Ein Hund.\nEin Hund.\nEine Katze.\nEine Katze.\nEin Hund.\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("a dog.\na dog.\na cat.\na cat.\na dog.\n", encoding="utf-8")
    always, rules = vocabulary_map_rules(tokenizer, tmp_path / "s.de", tmp_path / "t.en",
                                         ShortlistOptions(per_token=1, frequent=2, min_count=2))
    target_tokens = lambda text: [t for t in tokenizer.convert_ids_to_tokens(tokenizer(text_target=text).input_ids)
                                  if t not in tokenizer.all_special_tokens]
    assert set(always) == set(target_tokens("a dog.")) & set(target_tokens("a cat."))  # in all five targets
    assert all(len(c) == 1 for c in rules.values())
    for source, target in (("Hund", "dog"), ("Katze", "cat")):
        for token in tokenizer.convert_ids_to_tokens(tokenizer(source).input_ids)[:-1]:
            # a source token seen only with one word: its single candidate is a piece of that word
            assert rules[token][0] in target_tokens(target), (token, rules[token])


def naive_rules(tokenizer, sources: list[str], targets: list[str], options: ShortlistOptions):
    """The definition in the module docstring, counted pair by pair in Python (the first implementation)."""
    from collections import Counter

    special = set(tokenizer.all_special_tokens)
    token_sets = lambda lines, target: [
        {t for t in tokenizer.convert_ids_to_tokens(ids) if t not in special}
        for ids in (tokenizer(text_target=lines) if target else tokenizer(lines))["input_ids"]]
    source_sets, target_sets = token_sets(sources, False), token_sets(targets, True)
    target_count = Counter(t for tokens in target_sets for t in tokens)
    always = [t for t, _ in sorted(target_count.items(), key=lambda item: (-item[1], item[0]))[:options.frequent]]
    source_count, pair_count = Counter(), {}
    for source_tokens, target_tokens in zip(source_sets, target_sets):
        for s in source_tokens:
            source_count[s] += 1
            pair_count.setdefault(s, Counter()).update(target_tokens - set(always))
    rules = {s: [t for t, _ in sorted(pair_count[s].items(), key=lambda item: (-item[1], item[0]))[:options.per_token]]
             for s, seen in source_count.items() if seen >= options.min_count and pair_count[s]}
    return always, rules


def test_sparse_counting_over_chunks_gives_the_pairwise_definition(tmp_path, teacher_dir, multi30k):
    """Counts accumulated as sparse products over chunks of 300 pairs give the very rules (ties included)
    of counting every (source token, target token) pair in Python, on 2,000 Multi30k pairs."""
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(teacher_dir)
    sources, targets = head(multi30k / "train.de", 2000), head(multi30k / "train.en", 2000)
    (tmp_path / "s.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("\n".join(targets) + "\n", encoding="utf-8")
    options = ShortlistOptions(per_token=7, frequent=20, min_count=3)
    got = vocabulary_map_rules(tokenizer, tmp_path / "s.de", tmp_path / "t.en", options, chunk_lines=300)
    want = naive_rules(tokenizer, sources, targets, options)
    assert got[0] == want[0] and len(got[0]) == 20
    assert got[1] == want[1] and len(got[1]) > 500


def test_bad_input_names_the_file_and_the_fix(tmp_path, teacher_dir):
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(teacher_dir)
    (tmp_path / "s.de").write_text("Ein Hund.\nEine Katze.\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("a dog.\n", encoding="utf-8")
    with pytest.raises(TiekdError, match=r"t\.en: 1 lines, but .*s\.de has 2.*Fix"):
        vocabulary_map_rules(tokenizer, tmp_path / "s.de", tmp_path / "t.en")
    with pytest.raises(TiekdError, match="per_token must be at least 1"):
        vocabulary_map_rules(tokenizer, tmp_path / "s.de", tmp_path / "s.de", ShortlistOptions(per_token=0))


def test_decoding_with_a_shortlist_emits_only_candidates_and_a_full_one_changes_nothing(
        tmp_path, teacher_dir, parallel, multi30k):
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(teacher_dir)
    sources = head(multi30k / "val.de", 30)
    plain = CTranslate2Translator(export_ctranslate2(teacher_dir, tmp_path / "plain", quantization="float32"))
    assert not plain.use_shortlist

    # every token of the vocabulary a candidate: greedy search takes the same argmax as without a map
    (tmp_path / "all.txt").write_text("\t" + " ".join(tokenizer.get_vocab()) + "\n", encoding="utf-8")
    full = CTranslate2Translator(export_ctranslate2(teacher_dir, tmp_path / "full", quantization="float32",
                                                    vocabulary_map=tmp_path / "all.txt"))
    assert full.use_shortlist
    assert full.translate_tokens(sources, beam_size=1, max_length=24) == \
        plain.translate_tokens(sources, beam_size=1, max_length=24)

    # a small map: each output token is a candidate of its batch (batch of one sentence here)
    small = ShortlistOptions(per_token=3, frequent=20)
    always, rules = vocabulary_map_rules(tokenizer, *parallel, small)
    write_vocabulary_map(tokenizer, *parallel, tmp_path / "small.txt", small)
    restricted = CTranslate2Translator(export_ctranslate2(teacher_dir, tmp_path / "small", quantization="float32",
                                                          vocabulary_map=tmp_path / "small.txt"))
    for sentence in sources[:10]:
        allowed = set(always) | set(tokenizer.all_special_tokens)
        for token in tokenizer.convert_ids_to_tokens(tokenizer(sentence).input_ids):
            allowed |= set(rules.get(token, []))
        output = restricted.translate_tokens([sentence], max_length=24)[0][0]
        assert set(output) <= allowed, set(output) - allowed
    # and the whole vocabulary again on request
    unrestricted = CTranslate2Translator(tmp_path / "small", use_shortlist=False)
    assert unrestricted.translate_tokens(sources, beam_size=1, max_length=24) == \
        plain.translate_tokens(sources, beam_size=1, max_length=24)
    with pytest.raises(TiekdError, match="no vocabulary map"):
        CTranslate2Translator(tmp_path / "plain", use_shortlist=True)


def test_export_command_builds_and_stores_the_shortlist(tmp_path, teacher_dir, parallel, capsys):
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    run_export(parser.parse_args([str(teacher_dir), "--out", str(tmp_path / "ct2"), "--shortlist", *map(str, parallel),
                                  "--shortlist-per-token", "10"]))
    out = capsys.readouterr().out
    assert "shortlist:" in out and "100 always" in out
    assert (tmp_path / "ct2" / "vmap.txt").is_file() and CTranslate2Translator(tmp_path / "ct2").use_shortlist
