"""The paper's findings, checked against the rows of one experiment.

Zhang et al. (ACL 2023, "Towards Understanding and Improving Knowledge Distillation for Neural Machine
Translation") make claims that a reproduction should confirm or refute one by one (docs/method.md §4 and §11):

1. TIE-KD improves the student over No-KD (+1.04 / +0.60 / +1.11 BLEU on WMT14 En-De, En-Fr, WMT16 En-Ro)
   and over word-level KD; word-level KD itself improves over No-KD (its analysis table, (a) against (d)).
2. Analysis (b), KD on the teacher's top-1 alone, keeps almost all of word-level KD's gain over No-KD;
   analysis (c), KD with the top-1 information removed, loses most of it.
3. Ablations (En-De): the ranking loss alone gains about 0.2-0.3 BLEU over word-level KD, iterative KD
   alone about 0.25-0.36, and the two together more than either.

"X beats Y" is read over the seeds both rows have, from paired tests on the main test set
(sacreBLEU's approximate randomization, `tiekd.evaluation.evaluate.paired_significance`): it holds when the mean
difference is positive, and each seed's p < 0.05 says how firmly. A share of KD's gain, for 2, is

    share(X) = (BLEU(X) - BLEU(No-KD)) / (BLEU(Word-KD) - BLEU(No-KD)),  on X's seeds,

and we read "almost all" as share >= 0.75 and "loses most" as share <= 0.5 (our thresholds: the paper
gives its numbers, not a rule).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields
from functools import cache
from typing import Callable

SIGNIFICANT = 0.05
ALMOST_ALL, AT_MOST_HALF = 0.75, 0.5

# the rows a finding needs, recognised by method and by the options that make an ablation
ROLES = {
    "no-kd": ("none", {}),
    "word-kd": ("word-kd", {}),
    "tie-kd": ("tie-kd", {}),
    "analysis-b": ("kd-top1-only", {}),
    "analysis-c": ("kd-without-top1", {}),
    "ranking-only": ("tie-kd", {"iterative_passes": 1}),
    "iterative-only": ("tie-kd", {"ranking": False}),
}


@cache
def _run_defaults() -> dict:
    from ..config import RunConfig

    return {f.name: f.default for f in fields(RunConfig)}


def row_role(method: str, options: dict) -> str | None:
    """Which of ROLES a row plays, or None (another method, or options that change its recipe).
    Options set to their default values do not change the recipe."""
    defaults = _run_defaults()
    changed = {key: value for key, value in options.items() if defaults.get(key, object()) != value}
    for role, (role_method, role_options) in ROLES.items():
        if method == role_method and changed == role_options:
            return role
    return None


# (diff, p) of BLEU(row x) - BLEU(row y) on the main test set, for two rows of the same seed
PairedTest = Callable[[dict, dict], tuple[float, float]]


@dataclass
class Comparison:
    """Row X against row Y over the seeds both have: per seed (seed, BLEU difference, p)."""

    x: str
    y: str
    per_seed: list[tuple[int, float, float]]

    @property
    def mean_diff(self) -> float:
        return statistics.fmean(diff for _, diff, _ in self.per_seed)

    def verdict(self) -> str:
        n = len(self.per_seed)
        if self.mean_diff > 0:
            wins = sum(1 for _, diff, p in self.per_seed if diff > 0 and p < SIGNIFICANT)
            return ("holds" if wins == n else "holds on the mean" if wins else "direction only") + \
                f" ({wins} of {n} seed{'s' if n > 1 else ''} significant)"
        losses = sum(1 for _, diff, p in self.per_seed if diff < 0 and p < SIGNIFICANT)
        return f"reversed ({losses} of {n} significantly worse)" if losses else \
            f"does not hold (not significant in {n} seed{'s' if n > 1 else ''})"

    def measured(self, bleu: dict) -> str:
        seeds = [seed for seed, _, _ in self.per_seed]
        means = [statistics.fmean(bleu[role][seed] for seed in seeds) for role in (self.x, self.y)]
        detail = "; ".join(f"seed {seed} {diff:+.2f} ({'p<0.001' if p < 0.0005 else f'p={p:.3f}'})"
                           for seed, diff, p in self.per_seed)
        return f"{means[0]:.2f} against {means[1]:.2f}: {self.mean_diff:+.2f} ({detail})"


def _compare(x: str, y: str, rows: dict, paired: PairedTest) -> Comparison | None:
    seeds = sorted(set(rows.get(x, {})) & set(rows.get(y, {})))
    if not seeds:
        return None
    return Comparison(x, y, [(seed, *paired(rows[x][seed], rows[y][seed])) for seed in seeds])


def rows_by_role(students: list[dict], size: str) -> dict[str, dict[int, dict]]:
    """{role: {seed: row}} of the rows of student size `size` that play one of ROLES."""
    rows: dict[str, dict[int, dict]] = {}
    for row in students:
        role = row_role(row["method"], row.get("options") or {})
        if role is not None and row["size"] == size:
            rows.setdefault(role, {})[row["seed"]] = row
    return rows


def check(students: list[dict], size: str, main_test: str, paired: PairedTest) -> list[dict]:
    """Each finding as {claim, paper, measured, verdict}, from the rows of student size `size`;
    findings whose rows the experiment lacks read "not run"."""
    rows = rows_by_role(students, size)
    bleu = {role: {seed: row["scores"][main_test]["bleu"] for seed, row in by_seed.items()}
            for role, by_seed in rows.items()}
    findings = []

    def beats(claim: str, paper: str, x: str, y: str) -> None:
        comparison = _compare(x, y, rows, paired)
        findings.append({"claim": claim, "paper": paper,
                         "measured": comparison.measured(bleu) if comparison else "–",
                         "verdict": comparison.verdict() if comparison else "not run"})

    beats("TIE-KD beats No-KD", "+1.04 / +0.60 / +1.11 BLEU (En-De, En-Fr, En-Ro)", "tie-kd", "no-kd")
    beats("TIE-KD beats Word-KD", "better than word-level KD on every pair", "tie-kd", "word-kd")
    beats("Word-KD beats No-KD", "analysis (a) above (d)", "word-kd", "no-kd")
    findings.append(_share("(b) keeps almost all of Word-KD's gain", "(b) about as good as (a)",
                           "analysis-b", bleu, keeps=True))
    findings.append(_share("(c) loses most of Word-KD's gain", "(c) close to (d)", "analysis-c", bleu, keeps=False))
    beats("Ranking loss alone beats Word-KD", "+0.2-0.3 BLEU (En-De)", "ranking-only", "word-kd")
    beats("Iterative KD alone beats Word-KD", "+0.25-0.36 BLEU (En-De)", "iterative-only", "word-kd")
    beats("Both together beat ranking alone", "complementary", "tie-kd", "ranking-only")
    beats("Both together beat iterative alone", "complementary", "tie-kd", "iterative-only")
    return findings


def _share(claim: str, paper: str, role: str, bleu: dict, keeps: bool) -> dict:
    seeds = sorted(set(bleu.get(role, {})) & set(bleu.get("word-kd", {})) & set(bleu.get("no-kd", {})))
    if not seeds:
        return {"claim": claim, "paper": paper, "measured": "–", "verdict": "not run"}
    x, word, none = (statistics.fmean(bleu[r][s] for s in seeds) for r in (role, "word-kd", "no-kd"))
    gain = word - none
    measured = (f"{x:.2f}; Word-KD {word:.2f}, No-KD {none:.2f} on seed{'s' if len(seeds) > 1 else ''} "
                f"{', '.join(map(str, seeds))}")
    if gain <= 0:
        return {"claim": claim, "paper": paper, "measured": measured,
                "verdict": "cannot be read (Word-KD does not beat No-KD on these seeds)"}
    share = (x - none) / gain
    measured += f": {100 * share:.0f}% of the gain"
    if keeps:
        verdict = "holds" if share >= ALMOST_ALL else "partly" if share >= AT_MOST_HALF else "does not hold"
    else:
        verdict = "holds" if share <= AT_MOST_HALF else "does not hold"
    return {"claim": claim, "paper": paper, "measured": measured, "verdict": verdict}


def markdown(findings: list[dict], teacher_bleu: float, students: list[dict], size: str, main_test: str) -> list[str]:
    """The section of results.md: a table of the findings, then the teacher-student gap."""
    lines = ["## The paper's findings, checked", "",
             f"Rows of student size `{size}`, BLEU on "
             f"{'all test sets pooled' if main_test == 'pooled' else main_test}. \"X beats Y\": mean difference over the seeds "
             f"both rows have, each seed's paired approximate-randomization p (significant: p < {SIGNIFICANT}). "
             f"Shares of Word-KD's gain over No-KD: \"almost all\" read as ≥ {ALMOST_ALL:.0%}, \"most lost\" "
             f"as ≤ {AT_MOST_HALF:.0%} kept (tiekd/experiment/findings.py).", "",
             "| finding | the paper | measured here | verdict |", "|---|---|---|---|"]
    lines += [f"| {f['claim']} | {f['paper']} | {f['measured']} | {f['verdict']} |" for f in findings]
    tie = [row["scores"][main_test]["bleu"] for row in rows_by_role(students, size).get("tie-kd", {}).values()]
    if tie:
        mean = statistics.fmean(tie)
        lines += ["", f"Teacher–student gap: TIE-KD {mean:.2f} (mean of {len(tie)} seed{'s' if len(tie) > 1 else ''}) "
                      f"against the teacher's {teacher_bleu:.2f}: {mean - teacher_bleu:+.2f} BLEU (student minus teacher)."]
    return lines + [""]
