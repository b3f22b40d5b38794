"""tiekd.evaluate against sacreBLEU on real Multi30k references, corrupted deterministically."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import sacrebleu

from tiekd.errors import TiekdError
from tiekd.evaluate import (
    add_evaluate_arguments, bootstrap_ci, check_line_counts, corpus_statistics, paired_bootstrap, read_lines,
    run_evaluate, score, score_from_statistics,
)


def corrupt(lines: list[str], drop: float, shuffle: float, seed: int) -> list[str]:
    """Drop each word with probability `drop`; shuffle a sentence's words with probability `shuffle`."""
    rng = random.Random(seed)
    out = []
    for line in lines:
        words = [w for w in line.split() if rng.random() >= drop]
        if rng.random() < shuffle:
            rng.shuffle(words)
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def refs(multi30k) -> list[str]:
    return read_lines(multi30k / "test_2016_flickr.en")[:200]


@pytest.fixture(scope="module")
def good(refs) -> list[str]:
    return corrupt(refs, drop=0.1, shuffle=0.1, seed=1)


@pytest.fixture(scope="module")
def bad(refs) -> list[str]:
    return corrupt(refs, drop=0.4, shuffle=0.5, seed=2)


def test_score_equals_sacrebleu(good, refs):
    result = score(good, refs)
    bleu, chrf = sacrebleu.corpus_bleu(good, [refs]), sacrebleu.corpus_chrf(good, [refs])
    assert result["bleu"] == bleu.score and result["chrf"] == chrf.score
    assert 30 < result["bleu"] < 95  # corrupted, not destroyed
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert result["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert result["bleu_details"]["hyp_len"] < result["bleu_details"]["ref_len"] and result["sentences"] == 200


def test_perfect_hypotheses_score_100(refs):
    result = score(refs, refs, tokenized_bleu=True)
    assert result["bleu"] == pytest.approx(100) and result["chrf"] == pytest.approx(100)
    assert result["tokenized_bleu"] == pytest.approx(100)


def test_tokenized_bleu_is_unsmoothed_bleu_over_13a_tokens(good, bad, refs):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    result = score(good, refs, tokenized_bleu=True)
    expected = sacrebleu.corpus_bleu([tokenize(h) for h in good], [[tokenize(r) for r in refs]],
                                     tokenize="none", smooth_method="none")
    assert result["tokenized_bleu"] == expected.score
    assert "tok:none" in result["tokenized_bleu_signature"] and "pretok:13a" in result["tokenized_bleu_signature"]
    # 13a is idempotent, so on corpus level it only differs from sacreBLEU's default by smoothing
    assert result["tokenized_bleu"] == pytest.approx(result["bleu"])
    # ... which shows when no 4-gram matches: multi-bleu gives 0, sacreBLEU's exp smoothing does not
    three_words = [" ".join(h.split()[:3]) for h in bad]
    short = score(three_words, refs, tokenized_bleu=True)
    assert short["tokenized_bleu"] == 0.0 < short["bleu"]


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_statistics_reproduce_sacrebleu(metric, good, bad, refs):
    """Summed per-sentence statistics through our vectorised formulas equal sacreBLEU's corpus scores,
    also in the edge cases of BLEU's smoothing (no 4-gram match, sentences too short for 4-grams)."""
    corpus_score = sacrebleu.corpus_bleu if metric == "bleu" else sacrebleu.corpus_chrf
    systems = {
        "good": good, "bad": bad, "reversed": [r[::-1] for r in refs],
        "three words": [" ".join(h.split()[:3]) for h in good],
        "one word": [h.split()[0] if h else "" for h in good], "empty": [""] * len(refs),
    }
    for name, hyps in systems.items():
        stats = corpus_statistics(hyps, refs, metric)
        assert stats.shape == (len(refs), 10 if metric == "bleu" else 18)
        ours = float(score_from_statistics(stats.sum(0), metric))
        assert ours == pytest.approx(corpus_score(hyps, [refs]).score, rel=1e-12, abs=1e-12), name
    # a batch of summed statistics is scored row by row
    stats = corpus_statistics(good, refs, metric)
    halves = np.stack([stats[:100].sum(0), stats[100:].sum(0)])
    expected = [corpus_score(good[:100], [refs[:100]]).score, corpus_score(good[100:], [refs[100:]]).score]
    assert score_from_statistics(halves, metric) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_bootstrap_against_itself(metric, good, refs):
    test = paired_bootstrap(good, good, refs, metric=metric, resamples=200)
    assert test["diff"]["score"] == 0 and test["diff"]["mean"] == 0 and test["diff"]["ci"] == [0, 0]
    assert test["p_value"] == 1.0 and test["b_better"] == 0.0
    assert test["a"] == test["b"]


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_bootstrap_against_a_much_worse_system(metric, good, bad, refs):
    corpus_score = sacrebleu.corpus_bleu if metric == "bleu" else sacrebleu.corpus_chrf
    test = paired_bootstrap(bad, good, refs, metric=metric, resamples=1000, seed=3)
    assert test["a"]["score"] == pytest.approx(corpus_score(bad, [refs]).score, rel=1e-12)
    assert test["b"]["score"] == pytest.approx(corpus_score(good, [refs]).score, rel=1e-12)
    assert test["diff"]["score"] > 10 and test["diff"]["ci"][0] > 0 and test["b_better"] == 1.0
    assert test["p_value"] < 0.05
    assert test["p_value"] == pytest.approx(2 / 1001)  # no resample flips the sign: the +1 floor
    for system in ("a", "b", "diff"):
        low, high = test[system]["ci"]
        assert low <= test[system]["mean"] <= high
    # swapping the systems mirrors the difference and keeps the p-value
    swapped = paired_bootstrap(good, bad, refs, metric=metric, resamples=1000, seed=3)
    assert swapped["diff"]["mean"] == pytest.approx(-test["diff"]["mean"])
    assert swapped["p_value"] == test["p_value"] and swapped["b_better"] == 0.0


def test_bootstrap_of_close_systems_is_not_significant(good, refs):
    # two different but equally corrupted systems: p far from 0, interval straddles 0
    other = corrupt(refs, drop=0.1, shuffle=0.1, seed=11)
    test = paired_bootstrap(good, other, refs, metric="bleu", resamples=1000)
    assert test["p_value"] > 0.05 and test["diff"]["ci"][0] < 0 < test["diff"]["ci"][1]


def test_bootstrap_is_seeded_and_matches_sacrebleus_draws(good, refs, monkeypatch):
    first, second = paired_bootstrap(good, refs, refs, resamples=300), paired_bootstrap(good, refs, refs, resamples=300)
    assert first == second
    # sacreBLEU draws its resamples from numpy's default_rng(12345) too, so the bootstrap means agree
    # (up to its float32 statistics), although sacreBLEU rescores every resample one by one
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    from sacrebleu.metrics import BLEU

    theirs = BLEU().corpus_score(good, [refs], n_bootstrap=300)
    ours = bootstrap_ci(good, refs, "bleu", resamples=300, seed=12345)
    assert ours["mean"] == pytest.approx(theirs._mean, rel=1e-6)
    assert 0.5 * (ours["ci"][1] - ours["ci"][0]) == pytest.approx(theirs._ci, rel=0.05)


def test_read_lines_errors(tmp_path):
    with pytest.raises(TiekdError, match=r"missing\.txt: no such file"):
        read_lines(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("a good line\nanother\nein Mädchen\n".encode("latin-1"))
    with pytest.raises(TiekdError, match=r"latin1\.txt:3: invalid UTF-8.*Fix: re-encode"):
        read_lines(bad)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\r\n\r\nthree")
    assert read_lines(crlf) == ["one", "two", "", "three"]


def test_line_count_mismatch_names_both_files(tmp_path, good, refs):
    with pytest.raises(TiekdError, match=r"hyp\.en has 199 lines but \S*ref\.en has 200"):
        check_line_counts(tmp_path / "hyp.en", good[:199], tmp_path / "ref.en", refs)
    with pytest.raises(TiekdError, match="sentence counts differ"):
        score(good[:199], refs)
    with pytest.raises(TiekdError, match="sentence counts differ"):
        paired_bootstrap(good, good[:10], refs)
    with pytest.raises(TiekdError, match="no sentences"):
        score([], [])
    with pytest.raises(TiekdError, match="unknown metric"):
        paired_bootstrap(good, good, refs, metric="ter")


def _cli(*argv):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_scores_bootstraps_and_writes_json(tmp_path, good, bad, refs, capsys):
    for name, lines in (("hyp.en", good), ("base.en", bad), ("ref.en", refs)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "scores.json"
    run_evaluate(_cli("--hyp", str(tmp_path / "hyp.en"), "--ref", str(tmp_path / "ref.en"), "--baseline-hyp",
                      str(tmp_path / "base.en"), "--tokenized-bleu", "--bootstrap", "200", "--json", str(out)))
    printed = capsys.readouterr().out
    assert "BLEU = " in printed and "chrF2 = " in printed and "tokenized BLEU = " in printed and "p = " in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["bleu"] == sacrebleu.corpus_bleu(good, [refs]).score
    assert saved["paired_bootstrap"]["bleu"]["resamples"] == 200
    tests = saved["paired_bootstrap"]
    assert tests["chrf"]["diff"]["score"] > 0 and tests["bleu"]["p_value"] < 0.05

    (tmp_path / "short.en").write_text("\n".join(good[:150]) + "\n", encoding="utf-8")
    with pytest.raises(TiekdError, match=r"short\.en has 150 lines but .*ref\.en has 200"):
        run_evaluate(_cli("--hyp", str(tmp_path / "short.en"), "--ref", str(tmp_path / "ref.en")))
