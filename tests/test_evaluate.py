"""tiekd.evaluation.evaluate against sacreBLEU on real Multi30k references, corrupted deterministically."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import sacrebleu

from tiekd.errors import TiekdError
from tiekd.evaluation.evaluate import (
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


def test_tokenized_bleu_is_unsmoothed_bleu_over_moses_tokens(good, bad, refs):
    from sacremoses import MosesTokenizer

    moses = MosesTokenizer(lang="en")
    tokenize = lambda text: moses.tokenize(text, return_str=True, escape=False)
    result = score(good, refs, tokenized_bleu=True)
    expected = sacrebleu.corpus_bleu([tokenize(h) for h in good], [[tokenize(r) for r in refs]],
                                     tokenize="none", smooth_method="none")
    assert result["tokenized_bleu"] == expected.score
    assert "tok:none" in result["tokenized_bleu_signature"] and "pretok:moses-en" in result["tokenized_bleu_signature"]
    # Moses splits clitics ("man 's") that 13a keeps whole, so the two conventions really differ
    assert result["tokenized_bleu"] != pytest.approx(result["bleu"], abs=1e-6)
    assert tokenize("A man's hat.") == "A man 's hat ."
    # multi-bleu gives 0 when no 4-gram matches; sacreBLEU's exp smoothing does not
    three_words = [" ".join(h.split()[:3]) for h in bad]
    short = score(three_words, refs, tokenized_bleu=True)
    assert short["tokenized_bleu"] == 0.0 < short["bleu"]


def test_paired_significance_is_sacrebleus_own_test(good, bad, refs, monkeypatch):
    """Our p-values are exactly those of `sacrebleu --paired-bs` and `--paired-ar`."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    from tiekd.evaluation.evaluate import paired_significance

    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    result = paired_significance(bad, good, refs, resamples=300, trials=500)
    for kind, samples in (("bs", 300), ("ar", 500)):
        _, theirs = PairedTest([("a", bad), ("b", good)], {"BLEU": BLEU(), "chrF2": CHRF()}, [refs],
                               test_type=kind, n_samples=samples)()
        assert result["bleu"][f"p_{kind}"] == theirs["BLEU"][1].p_value
        assert result["chrf"][f"p_{kind}"] == theirs["chrF2"][1].p_value
        assert f"{kind}:{samples}" in result["signatures"][kind]["bleu"]
    # a clearly better system is significant; a system against itself is not
    assert result["bleu"]["p_bs"] < 0.01 and result["bleu"]["p_ar"] < 0.01
    same = paired_significance(good, good, refs, resamples=200, trials=200)
    # sacreBLEU alone would give identical systems its floor 1 / (samples + 1)
    assert same["bleu"]["p_ar"] == 1.0 and same["bleu"]["p_bs"] == 1.0 and same["chrf"]["p_ar"] == 1.0


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
    assert "p (paired bootstrap) = " in printed and "p (approximate randomization) = " in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["bleu"] == sacrebleu.corpus_bleu(good, [refs]).score
    assert saved["paired_bootstrap"]["bleu"]["resamples"] == 200
    tests = saved["paired_bootstrap"]
    assert tests["chrf"]["diff"]["score"] > 0 and tests["bleu"]["p_value"] < 0.05
    assert saved["sacrebleu_paired_tests"]["bleu"]["p_bs"] < 0.05 and saved["sacrebleu_paired_tests"]["bleu"]["p_ar"] < 0.05

    (tmp_path / "short.en").write_text("\n".join(good[:150]) + "\n", encoding="utf-8")
    with pytest.raises(TiekdError, match=r"short\.en has 150 lines but .*ref\.en has 200"):
        run_evaluate(_cli("--hyp", str(tmp_path / "short.en"), "--ref", str(tmp_path / "ref.en")))
