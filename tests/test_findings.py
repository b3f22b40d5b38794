"""tiekd.experiment.findings: the paper's claims read from an experiment's rows (roles, verdicts, shares of
KD's gain)."""

from __future__ import annotations

import pytest

from tiekd.experiment.findings import Comparison, check, markdown, row_role

MAIN = "test_2016_flickr"


def row(method: str, seed: int, bleu: float, options: dict | None = None, size: str = "tiny") -> dict:
    return {"name": f"{method} {options or ''}", "method": method, "options": options or {}, "size": size,
            "seed": seed, "scores": {MAIN: {"bleu": bleu}}}


def test_roles_come_from_method_and_the_options_that_make_an_ablation():
    assert row_role("none", {}) == "no-kd"
    assert row_role("tie-kd", {}) == "tie-kd"
    assert row_role("tie-kd", {"iterative_passes": 3, "ranking": True}) == "tie-kd"  # defaults change nothing
    assert row_role("tie-kd", {"iterative_passes": 1}) == "ranking-only"
    assert row_role("tie-kd", {"ranking": False}) == "iterative-only"
    assert row_role("tie-kd", {"iterative_start_update": 600}) is None  # another recipe, not the paper's row
    assert row_role("word-kd", {"lr": 0.1}) is None
    assert row_role("jsd", {}) is None


@pytest.mark.parametrize("per_seed, verdict", [
    ([(1, 1.0, 0.01), (2, 0.5, 0.02)], "holds (2 of 2 seeds significant)"),
    ([(1, 1.0, 0.01), (2, 0.2, 0.40)], "holds on the mean (1 of 2 seeds significant)"),
    ([(1, 0.3, 0.30)], "direction only (0 of 1 seed significant)"),
    ([(1, -0.3, 0.30), (2, 0.1, 0.8)], "does not hold (not significant in 2 seeds)"),
    ([(1, -1.2, 0.001), (2, 0.4, 0.3)], "reversed (1 of 2 significantly worse)"),
    # a significant seed that goes the other way does not count as support
    ([(1, -0.2, 0.01), (2, 1.0, 0.30)], "direction only (0 of 2 seeds significant)"),
])
def test_comparison_verdicts(per_seed, verdict):
    assert Comparison("x", "y", per_seed).verdict() == verdict


def paired_from_scores(x: dict, y: dict) -> tuple[float, float]:
    """A stand-in for sacreBLEU's test: the BLEU difference, significant when it exceeds 0.5."""
    diff = x["scores"][MAIN]["bleu"] - y["scores"][MAIN]["bleu"]
    return diff, 0.01 if abs(diff) > 0.5 else 0.5


def test_check_reads_every_finding_on_the_shared_seeds():
    rows = [row("none", 1, 30.0), row("none", 2, 31.0), row("word-kd", 1, 32.0), row("word-kd", 2, 33.0),
            row("tie-kd", 1, 33.0), row("tie-kd", 2, 33.2),
            row("kd-top1-only", 1, 31.8),            # 90% of seed 1's gain of 2.0
            row("kd-without-top1", 1, 31.2),         # 60%: keeps more than half
            row("tie-kd", 1, 32.1, {"iterative_passes": 1}), row("tie-kd", 1, 31.0, {"ranking": False}),
            row("tie-kd", 1, 99.0, size="small")]   # another size never enters
    calls = []

    def paired(x, y):
        calls.append((x["name"], y["name"], x["seed"]))
        return paired_from_scores(x, y)

    found = {f["claim"]: f for f in check(rows, "tiny", MAIN, paired)}
    assert found["TIE-KD beats No-KD"]["verdict"] == "holds (2 of 2 seeds significant)"
    assert found["TIE-KD beats No-KD"]["measured"].startswith("33.10 against 30.50: +2.60")
    assert found["TIE-KD beats Word-KD"]["verdict"] == "holds on the mean (1 of 2 seeds significant)"  # +1.0, +0.2
    assert found["(b) keeps almost all of Word-KD's gain"]["verdict"] == "holds"
    assert "90% of the gain" in found["(b) keeps almost all of Word-KD's gain"]["measured"]
    assert found["(c) loses most of Word-KD's gain"]["verdict"] == "does not hold"
    assert "60% of the gain" in found["(c) loses most of Word-KD's gain"]["measured"]
    assert found["Ranking loss alone beats Word-KD"]["verdict"] == "direction only (0 of 1 seed significant)"
    assert found["Iterative KD alone beats Word-KD"]["verdict"] == "reversed (1 of 1 significantly worse)"
    assert found["Both together beat ranking alone"]["verdict"] == "holds (1 of 1 seed significant)"
    # every test pairs rows of one seed and of the main size
    assert all(seed in (1, 2) for _, _, seed in calls) and not any("99" in name for name, _, _ in calls)


def test_missing_rows_read_not_run_and_a_kd_loss_leaves_shares_unread():
    rows = [row("none", 1, 30.0), row("word-kd", 1, 29.0), row("kd-top1-only", 1, 29.5)]
    found = {f["claim"]: f for f in check(rows, "tiny", MAIN, paired_from_scores)}
    assert found["TIE-KD beats No-KD"]["verdict"] == "not run"
    assert found["(b) keeps almost all of Word-KD's gain"]["verdict"].startswith("cannot be read")
    assert found["(c) loses most of Word-KD's gain"]["verdict"] == "not run"


def test_markdown_gives_a_table_and_the_teacher_student_gap():
    rows = [row("none", 1, 30.0), row("tie-kd", 1, 33.0), row("tie-kd", 2, 34.0)]
    text = "\n".join(markdown(check(rows, "tiny", MAIN, paired_from_scores), 35.0, rows, "tiny", MAIN))
    assert "| TIE-KD beats No-KD |" in text
    assert "TIE-KD 33.50 (mean of 2 seeds) against the teacher's 35.00: -1.50 BLEU" in text
