"""Corpus BLEU and chrF with sacreBLEU, and paired bootstrap resampling between two systems.

- Scores are sacreBLEU's (Post 2018, "A Call for Clarity in Reporting BLEU Scores") with default
  settings, reported with their signatures so that a number can be reproduced.
- "Tokenized BLEU" is the number older papers, TIE-KD's among them (docs/method.md §11), report with
  multi-bleu.perl: both sides are tokenized with the Moses tokenizer (sacremoses, the Python port of
  tokenizer.perl, without its HTML escaping), then BLEU is taken over whitespace tokens, case-sensitive,
  with no smoothing, as multi-bleu.perl does.
- Significance: `paired_significance` runs sacreBLEU's own paired tests (`sacrebleu.significance`,
  the ones behind `sacrebleu --paired-bs` and `--paired-ar`), so our p-values read like published ones:
  paired bootstrap resampling (Koehn 2004; 1,000 resamples) and approximate randomization (Riezler &
  Maxwell 2005; 10,000 trials). `paired_bootstrap` adds what sacreBLEU does not give: the 95% interval
  of the difference b - a. It resamples the test set's sentences with replacement and scores both
  systems on the same draw; per-sentence sufficient statistics are extracted once with sacreBLEU, each
  resample is a weighted sum of them (a matrix product) and the corpus score a vectorised formula.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..io import read_lines  # noqa: F401  (part of this module's API)
from ..errors import TiekdError

METRICS = ("bleu", "chrf")


# ---------------------------------------------------------------------------------------------------
# files


def check_line_counts(hyp_path: str | Path, hyps: list[str], ref_path: str | Path, refs: list[str]) -> None:
    """Refuse hypotheses and references of different lengths, naming both files."""
    if len(hyps) != len(refs):
        raise TiekdError(
            f"{hyp_path} has {len(hyps)} lines but {ref_path} has {len(refs)}. "
            "Fix: pass the translations of exactly the reference's source file, one line per sentence "
            "(an empty line for an empty translation)"
        )


def _check_lists(named: dict[str, list[str]]) -> int:
    lengths = {name: len(lines) for name, lines in named.items()}
    if len(set(lengths.values())) > 1:
        counts = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise TiekdError(f"sentence counts differ ({counts}). Fix: pass lists of equal length, aligned by line")
    n = next(iter(lengths.values()))
    if n == 0:
        raise TiekdError("no sentences to score. Fix: pass at least one hypothesis and its reference")
    return n


# ---------------------------------------------------------------------------------------------------
# corpus scores


def score(hypotheses: list[str], references: list[str], tokenized_bleu: bool = False, lang: str = "en") -> dict:
    """sacreBLEU corpus BLEU and chrF (default settings, one reference per sentence).

    Returns `bleu`, `bleu_signature`, `bleu_details` (n-gram precisions, brevity penalty, lengths),
    `chrf`, `chrf_signature`, `sentences`, and with `tokenized_bleu` also `tokenized_bleu` and
    `tokenized_bleu_signature` (Moses-tokenized for language `lang`; see the module docstring).
    """
    from sacrebleu.metrics import BLEU, CHRF

    n = _check_lists({"hypotheses": hypotheses, "references": references})
    bleu = BLEU()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf = CHRF()
    chrf_score = chrf.corpus_score(hypotheses, [references])
    result = {
        "sentences": n,
        "bleu": bleu_score.score,
        "bleu_signature": str(bleu.get_signature()),
        "bleu_details": {
            "precisions": list(bleu_score.precisions), "bp": bleu_score.bp,
            "hyp_len": bleu_score.sys_len, "ref_len": bleu_score.ref_len,
        },
        "chrf": chrf_score.score,
        "chrf_signature": str(chrf.get_signature()),
    }
    if tokenized_bleu:
        result["tokenized_bleu"], result["tokenized_bleu_signature"] = _tokenized_bleu(hypotheses, references, lang)
    return result


def _tokenized_bleu(hypotheses: list[str], references: list[str], lang: str = "en") -> tuple[float, str]:
    from sacrebleu.metrics import BLEU
    from sacremoses import MosesTokenizer

    moses = MosesTokenizer(lang=lang)
    tokenize = lambda text: moses.tokenize(text, return_str=True, escape=False)
    bleu = BLEU(tokenize="none", smooth_method="none", force=True)  # force: the input *is* tokenized
    value = bleu.corpus_score([tokenize(h) for h in hypotheses], [[tokenize(r) for r in references]]).score
    return value, f"{bleu.get_signature()}|pretok:moses-{lang}"


# ---------------------------------------------------------------------------------------------------
# sufficient statistics


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    if name not in METRICS:
        raise TiekdError(f"unknown metric {name!r}. Fix: use one of {', '.join(METRICS)}")
    return BLEU() if name == "bleu" else CHRF()


def corpus_statistics(hypotheses: list[str], references: list[str], metric: str = "bleu") -> np.ndarray:
    """Per-sentence sufficient statistics, shape [sentences, k], whose column sums give the corpus score.

    bleu (k = 10): hyp length, ref length, matches of 1..4-grams, hyp 1..4-gram counts.
    chrf (k = 18): (hyp, ref, match) counts for character 1..6-grams.
    """
    _check_lists({"hypotheses": hypotheses, "references": references})
    scorer = _metric(metric)
    if metric == "bleu":
        # public API: a sentence's BLEUScore carries its lengths and n-gram counts
        scorer = type(scorer)(effective_order=True)  # the counts are the same; this only quiets a warning
        rows = []
        for hypothesis, reference in zip(hypotheses, references):
            sentence = scorer.sentence_score(hypothesis, [reference])
            rows.append([sentence.sys_len, sentence.ref_len, *sentence.counts, *sentence.totals])
        return np.asarray(rows, dtype=np.float64).reshape(len(hypotheses), 10)
    # chrF's sentence scores do not expose their counts, so this one uses sacreBLEU's own per-segment
    # extraction (the one its significance tests use); tests/test_evaluate.py checks its layout against
    # sacreBLEU's corpus scores, so a change in a new sacreBLEU version fails there, not silently
    stats = scorer._extract_corpus_statistics(hypotheses, [references])
    return np.asarray(stats, dtype=np.float64)


def score_from_statistics(summed: np.ndarray, metric: str = "bleu") -> np.ndarray:
    """Corpus scores from summed statistics, shape [..., k] -> [...]; sacreBLEU's default formulas.

    bleu: exp-smoothed BLEU (mteval-v13a smoothing: the i-th order with no match gets precision
    1 / (2^i * total)), brevity penalty exp(1 - ref/hyp) when hyp < ref.
    chrf: chrF2 from precision and recall averaged over the orders that occur on both sides.
    """
    summed = np.asarray(summed, dtype=np.float64)
    if metric == "bleu":
        return _bleu_from_statistics(summed)
    if metric == "chrf":
        return _chrf_from_statistics(summed)
    raise TiekdError(f"unknown metric {metric!r}. Fix: use one of {', '.join(METRICS)}")


def _bleu_from_statistics(summed: np.ndarray, order: int = 4) -> np.ndarray:
    hyp_len, ref_len = summed[..., 0], summed[..., 1]
    correct, total = summed[..., 2:2 + order], summed[..., 2 + order:2 + 2 * order]
    with np.errstate(divide="ignore", invalid="ignore"):
        brevity = np.where(hyp_len < ref_len, np.exp(1.0 - ref_len / hyp_len), 1.0)
        brevity = np.where(hyp_len > 0, brevity, 0.0)
        smooth = np.ones_like(hyp_len)
        log_precision = np.zeros_like(hyp_len)
        for n in range(order):
            no_match = correct[..., n] == 0
            smooth = np.where(no_match, smooth * 2, smooth)
            precision = np.where(no_match, 100.0 / (smooth * total[..., n]), 100.0 * correct[..., n] / total[..., n])
            log_precision = log_precision + np.log(precision)
        bleu = brevity * np.exp(log_precision / order)
    # sacreBLEU scores 0 when nothing matches at all, or when some order has no n-gram to count
    return np.where((correct.sum(-1) == 0) | (total == 0).any(-1), 0.0, bleu)


def _chrf_from_statistics(summed: np.ndarray, beta: float = 2.0) -> np.ndarray:
    counts = summed.reshape(*summed.shape[:-1], -1, 3)  # [..., orders, (hyp, ref, match)]
    hyp, ref, match = counts[..., 0], counts[..., 1], counts[..., 2]
    present = (hyp > 0) & (ref > 0)  # sacreBLEU averages only over orders seen on both sides
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(present, match / hyp, 0.0).sum(-1)
        recall = np.where(present, match / ref, 0.0).sum(-1)
        orders = present.sum(-1)
        precision = np.where(orders > 0, precision / orders, 0.0)
        recall = np.where(orders > 0, recall / orders, 0.0)
        factor = beta**2
        f_score = (1 + factor) * precision * recall / (factor * precision + recall) * 100
    return np.where(precision + recall > 0, f_score, 0.0)


# ---------------------------------------------------------------------------------------------------
# bootstrap


def _resampled_sums(stats: list[np.ndarray], resamples: int, seed: int, max_cells: int = 4_000_000):
    """Yield, block by block, the column sums of each array in `stats` over the same bootstrap draws.

    A draw is represented by how often it picks each sentence (`counts`, [block, sentences]), so a
    resample's sums are `counts @ stats`; float64 keeps the integer sums exact.
    """
    rng = np.random.default_rng(seed)
    n = stats[0].shape[0]
    block = max(1, min(resamples, max_cells // n))
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        picks = rng.integers(0, n, size=(rows, n)) + np.arange(rows)[:, None] * n
        counts = np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)
        yield [counts @ s for s in stats]


def _summary(full: float, samples: np.ndarray) -> dict:
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"score": float(full), "mean": float(samples.mean()), "ci": [float(low), float(high)]}


def bootstrap_ci(hypotheses: list[str], references: list[str], metric: str = "bleu",
                 resamples: int = 1000, seed: int = 12345) -> dict:
    """Score, bootstrap mean and 95% percentile interval of one system: {score, mean, ci}."""
    if resamples < 1:
        raise TiekdError(f"resamples {resamples} must be at least 1. Fix: use e.g. 1000")
    stats = corpus_statistics(hypotheses, references, metric)
    samples = np.concatenate([score_from_statistics(s, metric) for (s,) in _resampled_sums([stats], resamples, seed)])
    return {"metric": metric, "resamples": resamples, "seed": seed,
            **_summary(score_from_statistics(stats.sum(0), metric), samples)}


def paired_bootstrap(hyps_a: list[str], hyps_b: list[str], refs: list[str], metric: str = "bleu",
                     resamples: int = 1000, seed: int = 12345) -> dict:
    """Paired bootstrap resampling (Koehn 2004) of system b against system a.

    Returns `a`, `b` and `diff` (= b - a), each {score on the full test set, mean over resamples,
    95% percentile interval `ci`}; `b_better` = share of resamples where b scores higher; and `p_value`,
    two-sided: p = min(1, 2 * min(#{d <= 0} + 1, #{d >= 0} + 1) / (resamples + 1)) over the resampled
    differences d, i.e. twice the share of resamples on the less frequent side of zero (a difference
    whose sign flips, or a tie, counts against it), with the usual +1 correction so p is never 0.
    So p < 0.05 goes (up to that correction) with a 95% interval of the difference that excludes 0.
    Identical systems give d = 0 everywhere, hence p = 1. (sacreBLEU's `--paired-bs` is a different,
    one-sided test: it centres the resampled differences on 0 and counts those above the observed one;
    its p-values are typically about half of these.)
    """
    _check_lists({"hyps_a": hyps_a, "hyps_b": hyps_b, "refs": refs})
    if resamples < 1:
        raise TiekdError(f"resamples {resamples} must be at least 1. Fix: use e.g. 1000")
    stats_a = corpus_statistics(hyps_a, refs, metric)
    stats_b = corpus_statistics(hyps_b, refs, metric)
    scores_a, scores_b = [], []
    for sums_a, sums_b in _resampled_sums([stats_a, stats_b], resamples, seed):
        scores_a.append(score_from_statistics(sums_a, metric))
        scores_b.append(score_from_statistics(sums_b, metric))
    scores_a, scores_b = np.concatenate(scores_a), np.concatenate(scores_b)
    diffs = scores_b - scores_a
    full_a = float(score_from_statistics(stats_a.sum(0), metric))
    full_b = float(score_from_statistics(stats_b.sum(0), metric))
    not_above, not_below = int((diffs <= 0).sum()), int((diffs >= 0).sum())
    p_value = min(1.0, 2 * (min(not_above, not_below) + 1) / (resamples + 1))
    return {
        "metric": metric, "resamples": resamples, "seed": seed, "sentences": len(refs),
        "a": _summary(full_a, scores_a), "b": _summary(full_b, scores_b),
        "diff": _summary(full_b - full_a, diffs),
        "b_better": float((diffs > 0).mean()),
        "p_value": p_value, "p_value_kind": "two-sided paired bootstrap (Koehn 2004), sign of b - a",
    }


def paired_significance(baseline: list[str], system: list[str], refs: list[str], resamples: int = 1000,
                        trials: int = 10000) -> dict:
    """sacreBLEU's paired tests of `system` against `baseline`, for BLEU and chrF.

    Returns {"bleu": {"p_bs", "p_ar"}, "chrf": {...}, "signatures": {"bs": {...}, "ar": {...}}}:
    p_bs from paired bootstrap resampling (`resamples`), p_ar from approximate randomization (`trials`),
    both as `sacrebleu --paired-bs` / `--paired-ar` compute them (seed $SACREBLEU_SEED, default 12345),
    except that identical outputs get p = 1 (see below).
    """
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    _check_lists({"baseline": baseline, "system": system, "refs": refs})
    result: dict = {"bleu": {}, "chrf": {}, "signatures": {}}
    for kind, samples in (("bs", resamples), ("ar", trials)):
        if samples < 1:
            raise TiekdError(f"{samples} {'resamples' if kind == 'bs' else 'trials'} must be at least 1. Fix: use "
                             "e.g. 1000 resamples and 10000 trials")
        if list(baseline) == list(system):
            # sacreBLEU counts sampled differences strictly above the observed one, so identical outputs
            # would get its floor 1 / (samples + 1), "significant"; identical systems cannot differ: p = 1
            for metric in ("bleu", "chrf"):
                result[metric][f"p_{kind}"] = 1.0
            result["signatures"][kind] = {"bleu": "identical outputs", "chrf": "identical outputs"}
            continue
        test = PairedTest([("baseline", baseline), ("system", system)], {"bleu": BLEU(), "chrf": CHRF()}, [refs],
                          test_type=kind, n_samples=samples)
        signatures, scores = test()
        # sacreBLEU renames the metrics (BLEU, chrF2); each first entry is the baseline's, without a p-value
        for metric, name in zip(("bleu", "chrf"), [k for k in scores if k != "System"]):
            result[metric][f"p_{kind}"] = float(scores[name][1].p_value)
        result["signatures"][kind] = {metric: str(sig) for metric, sig in zip(("bleu", "chrf"), signatures.values())}
    return result


# ---------------------------------------------------------------------------------------------------
# command line: tiekd evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hyp", required=True, help="translations, one detokenized sentence per line")
    parser.add_argument("--ref", required=True, help="references, aligned with --hyp by line")
    parser.add_argument("--baseline-hyp", help="a baseline's translations: adds a paired bootstrap test "
                                               "of --hyp against it")
    parser.add_argument("--tokenized-bleu", action="store_true",
                        help="also report multi-bleu.perl-style BLEU over Moses-tokenized text (no smoothing)")
    parser.add_argument("--lang", default="en", help="target language, for the Moses tokenizer of --tokenized-bleu")
    parser.add_argument("--bootstrap", type=int, metavar="N", default=None,
                        help="bootstrap resamples (default 1000 with --baseline-hyp; alone: 95%% intervals)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the bootstrap draws")
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this JSON file")


def run_evaluate(args: argparse.Namespace) -> None:
    hyps, refs = read_lines(args.hyp), read_lines(args.ref)
    check_line_counts(args.hyp, hyps, args.ref, refs)
    baseline = None
    if args.baseline_hyp:
        baseline = read_lines(args.baseline_hyp)
        check_line_counts(args.baseline_hyp, baseline, args.ref, refs)
    if args.bootstrap is not None and args.bootstrap < 1:
        raise TiekdError(f"--bootstrap {args.bootstrap} must be at least 1. Fix: use e.g. 1000")

    result = {"hyp": str(args.hyp), "ref": str(args.ref), **score(hyps, refs, args.tokenized_bleu, args.lang)}
    print(f"BLEU = {result['bleu']:.2f}  {result['bleu_signature']}")
    print(f"chrF2 = {result['chrf']:.2f}  {result['chrf_signature']}")
    if args.tokenized_bleu:
        print(f"tokenized BLEU = {result['tokenized_bleu']:.2f}  {result['tokenized_bleu_signature']}")

    if baseline is not None:
        resamples = args.bootstrap or 1000
        result["baseline_hyp"] = str(args.baseline_hyp)
        result["paired_bootstrap"] = {}
        print(f"paired bootstrap, {args.hyp} against baseline {args.baseline_hyp} "
              f"({resamples} resamples, seed {args.seed}):")
        for metric in METRICS:
            test = paired_bootstrap(baseline, hyps, refs, metric, resamples, args.seed)
            result["paired_bootstrap"][metric] = test
            a, b, d = test["a"], test["b"], test["diff"]
            print(f"  {metric:5s} baseline {a['score']:6.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]  "
                  f"hyp {b['score']:6.2f} [{b['ci'][0]:.2f}, {b['ci'][1]:.2f}]  "
                  f"diff {d['score']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]  p = {test['p_value']:.4f}")
        sacre = paired_significance(baseline, hyps, refs, resamples)
        result["sacrebleu_paired_tests"] = sacre
        print(f"sacreBLEU's paired tests ({resamples} bootstrap resamples, 10000 randomization trials):")
        for metric in METRICS:
            print(f"  {metric:5s} p (paired bootstrap) = {sacre[metric]['p_bs']:.4f}  "
                  f"p (approximate randomization) = {sacre[metric]['p_ar']:.4f}")
    elif args.bootstrap:
        result["bootstrap"] = {}
        print(f"bootstrap ({args.bootstrap} resamples, seed {args.seed}):")
        for metric in METRICS:
            ci = bootstrap_ci(hyps, refs, metric, args.bootstrap, args.seed)
            result["bootstrap"][metric] = ci
            print(f"  {metric:5s} {ci['score']:6.2f}, 95% interval [{ci['ci'][0]:.2f}, {ci['ci'][1]:.2f}]")

    if args.json:
        from ..io import atomic_write_json

        atomic_write_json(Path(args.json), result)
