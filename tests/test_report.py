"""`tiekd experiment`'s results table: aggregation over seeds and the baselines each row is tested against."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest


def row(name, method, seed, bleu, size="micro", agreement=0.5, folder=""):
    scores = {test: {"bleu": bleu + offset, "chrf": 2 * bleu + offset, "tokenized_bleu": bleu + 1 + offset}
              for test, offset in (("valid", 0.0), ("other", 10.0), ("pooled", 5.0))}
    return {"name": name, "method": method, "size": size, "seed": seed, "folder": folder, "scores": scores,
            "analysis": {"top1_agreement": agreement, "teacher_gold_overlap": 0.1 * seed}}


def test_aggregate_reports_mean_and_sample_std_over_seeds():
    from tiekd.experiment.report import aggregate

    rows = [row("TIE-KD", "tie-kd", 3, 30.0, agreement=0.7), row("No-KD", "none", 1, 20.0, agreement=0.2),
            row("TIE-KD", "tie-kd", 1, 33.0, agreement=0.6), row("TIE-KD", "tie-kd", 1, 10.0, size="small"),
            row("TIE-KD", "tie-kd", 2, 24.0, agreement=0.8)]
    rows[0]["significance"] = {"vs_no_kd": {"diff": 3.0, "p_value": 0.03}}
    rows[2]["significance"] = {"vs_no_kd": {"diff": 1.0, "p_value": 0.2}, "vs_word_kd": {"diff": -0.5, "p_value": 0.6}}
    rows[4]["significance"] = {}
    config = SimpleNamespace(test_sets=["valid", "other"])
    lines = aggregate({"students": rows}, config)

    # one line per (name, size), in order of first appearance
    assert [(line["name"], line["size"], line["seeds"]) for line in lines] == [
        ("TIE-KD", "micro", 3), ("No-KD", "micro", 1), ("TIE-KD", "small", 1)]
    tie = lines[0]
    bleu = [30.0, 33.0, 24.0]
    assert tie["valid:bleu"] == pytest.approx((sum(bleu) / 3, statistics.stdev(bleu)))  # sample std (n - 1)
    # the naive formula, not statistics.stdev again
    mean = sum(bleu) / 3
    assert tie["valid:bleu"][1] == pytest.approx((sum((b - mean) ** 2 for b in bleu) / 2) ** 0.5)
    assert tie["other:chrf"][0] == pytest.approx(sum(2 * b + 10 for b in bleu) / 3)
    assert tie["valid:tokenized_bleu"][0] == pytest.approx(sum(b + 1 for b in bleu) / 3)
    # with two test sets the rows are compared on both pooled
    assert tie["main"] == tie["pooled:bleu"] == pytest.approx((sum(bleu) / 3 + 5, statistics.stdev(bleu)))
    assert aggregate({"students": rows}, SimpleNamespace(test_sets=["valid"]))[0]["main"] == tie["valid:bleu"]
    assert tie["top1_agreement"] == pytest.approx((0.7, statistics.stdev([0.7, 0.6, 0.8])))
    assert lines[1]["valid:bleu"] == (20.0, None)  # one seed: no spread to report
    # significance: mean difference over the seeds that have a test, each seed's listed by seed
    assert tie["significance"]["vs_no_kd"]["diff"] == pytest.approx(2.0)
    assert [(t["seed"], t["diff"]) for t in tie["significance"]["vs_no_kd"]["per_seed"]] == [(1, 1.0), (3, 3.0)]
    assert [t["seed"] for t in tie["significance"]["vs_word_kd"]["per_seed"]] == [1]
    assert tie["significance"]["vs_word_kd"]["diff"] == pytest.approx(-0.5)


def degraded(references: list[str], drop: int) -> list[str]:
    """A system of its own quality: each reference without its last `drop` words."""
    return [" ".join(ref.split()[: max(1, len(ref.split()) - drop)]) for ref in references]


def test_significance_uses_the_marked_baselines_of_the_same_size_and_seed(prepared, tmp_path):
    """Each row is compared with the rows marked as baselines, of its size and seed; a row with method none
    or word-kd that is not marked is never one, and a marked row may join another's column by its label."""
    import sacrebleu

    from tiekd.data.prepare import load_prepared
    from tiekd.io import read_lines
    from tiekd.experiment.report import add_significance

    out = tmp_path / "exp"
    out.mkdir()
    (out / "data").symlink_to(prepared, target_is_directory=True)
    refs = read_lines(load_prepared(prepared).splits["valid"][1])[:40]
    specs = [("Ablation: long No-KD", "none", 1, "micro", None), ("Analysis: top-1 only", "word-kd", 1, "micro", None),
             ("No-KD", "none", 1, "micro", "No-KD"), ("No-KD", "none", 2, "micro", "No-KD"),
             ("Word-KD", "word-kd", 1, "micro", "Word-KD"), ("TIE-KD", "tie-kd", 1, "micro", None),
             ("TIE-KD", "tie-kd", 2, "micro", None), ("Capacity: No-KD", "none", 1, "small", "No-KD"),
             ("TIE-KD", "tie-kd", 1, "small", None)]
    rows, hyps = [], {}
    for drop, (name, method, seed, size, label) in enumerate(specs):  # every system of a different quality
        folder = tmp_path / f"{name}-{seed}-{size}".replace(" ", "").replace(":", "")
        folder.mkdir()
        hyps[(name, seed, size)] = degraded(refs, drop)
        (folder / "valid.hyp").write_text("".join(h + "\n" for h in hyps[(name, seed, size)]), encoding="utf-8")
        rows.append({"name": name, "method": method, "baseline": label, "seed": seed, "size": size,
                     "folder": str(folder)})
    # which baseline is tested is the point here, not the p-values: fewer randomization trials (default 10,000)
    config = SimpleNamespace(test_sets=["valid"], test_max_sentences=40, bootstrap_resamples=20,
                             randomization_trials=200)
    add_significance({"students": rows}, out, config)

    bleu = {key: sacrebleu.corpus_bleu(lines, [refs]).score for key, lines in hyps.items()}
    both = {"vs_no_kd": ("No-KD", 1, "micro"), "vs_word_kd": ("Word-KD", 1, "micro")}
    expected = {  # row -> {test: its baseline}
        ("Ablation: long No-KD", 1, "micro"): both,
        ("Analysis: top-1 only", 1, "micro"): both,
        ("No-KD", 1, "micro"): {"vs_word_kd": ("Word-KD", 1, "micro")},
        ("No-KD", 2, "micro"): {},
        ("Word-KD", 1, "micro"): {"vs_no_kd": ("No-KD", 1, "micro")},
        ("TIE-KD", 1, "micro"): both,
        ("TIE-KD", 2, "micro"): {"vs_no_kd": ("No-KD", 2, "micro")},
        ("Capacity: No-KD", 1, "small"): {},
        ("TIE-KD", 1, "small"): {"vs_no_kd": ("Capacity: No-KD", 1, "small")},
    }
    for r in rows:
        key = (r["name"], r["seed"], r["size"])
        assert set(r["significance"]) == set(expected[key]), key
        for test, base in expected[key].items():
            # the difference identifies the baseline: every system has its own BLEU
            assert r["significance"][test]["diff"] == pytest.approx(bleu[key] - bleu[base], abs=1e-6), (key, test)
            assert 0 < r["significance"][test]["p_value"] <= 1
    assert len(set(round(b, 6) for b in bleu.values())) == len(bleu)


def test_baseline_columns_come_from_the_marked_rows():
    from tiekd.experiment.report import baseline_key, baseline_names

    rows = [{"name": "TIE-KD"}, {"name": "Word-KD", "baseline": "Word-KD"}, {"name": "No-KD", "baseline": "No-KD"},
            {"name": "Capacity: No-KD", "baseline": "No-KD"}, {"name": "JSD", "baseline": None}]
    assert baseline_names(rows) == ["Word-KD", "No-KD"]
    assert [baseline_key(n) for n in ("No-KD", "Word-KD", "Seq-KD (beam 4)")] == ["vs_no_kd", "vs_word_kd",
                                                                                 "vs_seq_kd_beam_4"]


def test_p_values_below_three_decimals_read_as_below_a_bound():
    from tiekd.experiment.report import _p

    sig = {"vs_no_kd": {"diff": 1.5, "per_seed": [{"diff": 1.58, "p_value": 0.0002}, {"diff": 1.42, "p_value": 0.012}]}}
    assert _p(sig, "vs_no_kd") == "+1.50 mean (seeds: +1.58 p<0.001; +1.42 p=0.012)"
    sig = {"vs_no_kd": {"diff": 0.3, "per_seed": [{"diff": 0.3, "p_value": 0.0005}]}}
    assert _p(sig, "vs_no_kd") == "+0.30 (p=0.001)"  # rounds to 0.001, so it is shown as such
    assert _p(sig, "vs_word_kd") == "–"
