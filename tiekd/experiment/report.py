"""Results of `tiekd experiment`: significance tests, a Markdown and a CSV table, and plots.

Rows are (method, student size); over seeds we report the mean and the sample standard deviation.
Significance compares each row's translations of the main test set with those of every baseline (the
rows an experiment marks `baseline:`, e.g. No-KD and Word-KD) of the same size and seed, with
sacreBLEU's own paired tests (`tiekd.evaluation.evaluate.paired_significance`: approximate randomization p,
sacreBLEU's default, in the table; paired bootstrap p beside it in results.csv) and our bootstrap
interval of the difference; with several seeds the table gives the mean difference and every seed's
difference and p-value, because one seed can reverse a mean (docs/RESULTS.md).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path

from ..writes import atomic_write_json, atomic_write_text, save_figure


def baseline_key(name: str) -> str:
    """The significance key of the baseline row `name`: "No-KD" -> "vs_no_kd"."""
    return "vs_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def baseline_names(rows: list[dict]) -> list[str]:
    """Labels of the baselines (rows marked `baseline:` in the experiment), in the table's order."""
    return list(dict.fromkeys(row["baseline"] for row in rows if row.get("baseline")))


POOLED = "pooled"  # the main view with several test sets: every sentence of every test set together


def main_view(config) -> str:
    """What rows are compared on: the one test set, or with several all of them pooled, since a single
    test set of a few thousand sentences can rank two close rows either way (docs/RESULTS.md)."""
    return POOLED if len(config.test_sets) > 1 else config.test_sets[0]


def view_hyps(folder: str | Path, config, view: str) -> list[str]:
    """A row's translations of `view` (a test set, or every test set in order for the pooled view)."""
    from ..io import read_lines

    tests = config.test_sets if view == POOLED else [view]
    return [line for test in tests for line in read_lines(Path(folder) / f"{test}.hyp")]


def view_refs(data: str | Path, config, view: str) -> list[str]:
    """The references of `view`, each test set cut to `test_max_sentences` as its translations are."""
    from ..data.prepare import load_prepared
    from ..io import read_lines

    splits = load_prepared(data).splits
    tests = config.test_sets if view == POOLED else [view]
    return [line for test in tests for line in read_lines(splits[test][1])[: config.test_max_sentences or None]]


def add_pooled_scores(table: dict, config) -> None:
    """With several test sets, score the teacher and every row on all of them pooled (`scores["pooled"]`)."""
    from ..evaluation.evaluate import score

    if main_view(config) != POOLED:
        return
    refs = view_refs(table["data"], config, POOLED)
    for row in [table["teacher"], *table["students"]]:
        result = score(view_hyps(row["folder"], config, POOLED), refs, tokenized_bleu=True, lang=config.tgt_lang)
        row["scores"][POOLED] = {key: result[key] for key in ("bleu", "chrf", "tokenized_bleu", "bleu_signature",
                                                              "chrf_signature")}


def add_significance(table: dict, out: Path, config) -> None:
    """Attach `significance` to each student row: against each baseline row (marked `baseline: true` in
    the experiment) of the same size and seed, on the main view (`main_view`)."""
    from ..evaluation.evaluate import paired_bootstrap, paired_significance

    main_test = main_view(config)
    refs = view_refs(table.get("data", Path(out) / "data"), config, main_test)
    rows = table["students"]

    def baseline(name: str, row: dict) -> dict | None:
        for other in rows:
            if other.get("baseline") == name and other["size"] == row["size"] \
                    and other["seed"] == row["seed"]:
                return other
        return None

    for row in rows:
        row["significance"] = {}
        hyps = view_hyps(row["folder"], config, main_test)
        for name in baseline_names(rows):
            base = baseline(name, row)
            if base is None or base is row:
                continue
            base_hyps = view_hyps(base["folder"], config, main_test)
            interval = paired_bootstrap(base_hyps, hyps, refs, resamples=config.bootstrap_resamples)
            tests = paired_significance(base_hyps, hyps, refs, resamples=config.bootstrap_resamples,
                                        trials=config.randomization_trials)
            row["significance"][baseline_key(name)] = {
                "diff": interval["diff"]["score"], "ci": interval["diff"]["ci"],
                "p_value": tests["bleu"]["p_ar"], "p_bs": tests["bleu"]["p_bs"]}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    if not values:
        return float("nan"), None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(table: dict, config) -> list[dict]:
    """One line per (name, size): mean/std over seeds of the scores, analysis from all seeds, and the
    largest validation-BLEU gain of a seed over its last 25% of updates (`late_gain`; < 0.3: converged)."""
    from .compute_view import late_gain

    main_test = main_view(config)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in table["students"]:
        groups.setdefault((row["name"], row["size"]), []).append(row)
    lines = []
    for (name, size), rows in groups.items():
        line = {"name": name, "method": rows[0]["method"], "size": size, "seeds": len(rows)}
        for test in report_tests(config):
            for metric in ("bleu", "chrf", "tokenized_bleu"):
                line[f"{test}:{metric}"] = _mean_std([r["scores"][test][metric] for r in rows])
        line["top1_agreement"] = _mean_std([r["analysis"]["top1_agreement"] for r in rows])
        line["per_seed"] = {"main": [r["scores"][main_test]["bleu"] for r in rows],
                            "top1_agreement": [r["analysis"]["top1_agreement"] for r in rows]}
        line["teacher_gold_overlap"] = rows[0]["analysis"]["teacher_gold_overlap"]
        line["significance"] = _over_seeds(sorted(rows, key=lambda r: r["seed"]))
        line["main"] = line[f"{main_test}:bleu"]
        gains = [late_gain(Path(r["folder"]) / "run") for r in rows]
        line["late_gain"] = max(gains) if gains and all(g is not None for g in gains) else None
        lines.append(line)
    return lines


def _over_seeds(rows: list[dict]) -> dict:
    """Per baseline: mean difference over the seeds that have one, and each seed's (diff, p)."""
    summary = {}
    keys = dict.fromkeys(key for r in rows for key in r.get("significance", {}))
    for key in keys:
        tests = [(r["seed"], r["significance"][key]) for r in rows if key in r.get("significance", {})]
        if tests:
            summary[key] = {"diff": statistics.fmean(t["diff"] for _, t in tests),
                            "per_seed": [{"seed": seed, "diff": t["diff"], "p_value": t["p_value"],
                                          "p_bs": t.get("p_bs")} for seed, t in tests]}
    return summary


def _fmt(pair: tuple[float, float | None], scale: float = 1.0, digits: int = 2) -> str:
    mean, std = pair
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _p_value(p: float) -> str:
    """p=0.012, or p<0.001 below what three decimals show (approximate randomization reaches 1e-4)."""
    return "p<0.001" if p < 0.0005 else f"p={p:.3f}"


def _p(sig: dict, key: str) -> str:
    if key not in sig:
        return "–"
    item = sig[key]
    if len(item["per_seed"]) == 1:
        return f"{item['diff']:+.2f} ({_p_value(item['per_seed'][0]['p_value'])})"
    seeds = "; ".join(f"{t['diff']:+.2f} {_p_value(t['p_value'])}" for t in item["per_seed"])
    return f"{item['diff']:+.2f} mean (seeds: {seeds})"


def report_tests(config) -> list[str]:
    """The table's test-set columns: each test set, then the pooled view when there are several."""
    return [*config.test_sets, POOLED] if main_view(config) == POOLED else list(config.test_sets)


def write_report(table: dict, out: Path, config) -> None:
    out = Path(out)
    atomic_write_json(out / "results.json", table)
    lines = aggregate(table, config)
    main_test = main_view(config)
    where = f"all {len(config.test_sets)} test sets pooled" if main_test == POOLED else main_test
    teacher = table["teacher"]["scores"]
    header = ["Student", "size", "seeds"]
    for test in report_tests(config):
        header += [f"BLEU {test}", f"chrF {test}"]
    baselines = baseline_names(table["students"])
    header += [f"tok-BLEU {main_test}", *[f"Δ vs {name} (p)" for name in baselines], "top-1 agr. %", "last-25% gain"]
    md = [f"# {config.name}: {table.get('data_name', 'Multi30k')} {config.src_lang}→{config.tgt_lang}", "",
          *([f"> {config.note}", ""] if getattr(config, "note", None) else []),
          f"Beam {config.beam}, length penalty {config.length_penalty}, last {config.average_last} checkpoints "
          f"averaged; sacreBLEU (signature below); mean ± std over seeds; Δ = BLEU difference on {where} "
          f"against the baseline of the same seed, with the p-value of sacreBLEU's paired approximate "
          f"randomization test ({config.randomization_trials:,} trials; its paired bootstrap p, {config.bootstrap_resamples} resamples, in "
          "results.csv); with several seeds, "
          "the mean Δ and each seed's Δ and p. tok-BLEU: multi-bleu.perl convention (Moses-tokenized, "
          "no smoothing). Last-25% gain: the most validation BLEU any seed gained over its last quarter of "
          "updates (below 0.3: converged).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    teacher_cells = ["Teacher", "", ""]
    for test in report_tests(config):
        teacher_cells += [f"{teacher[test]['bleu']:.2f}", f"{teacher[test]['chrf']:.2f}"]
    teacher_cells += [f"{teacher[main_test]['tokenized_bleu']:.2f}", *["–"] * len(baselines), "–", "–"]
    md.append("| " + " | ".join(teacher_cells) + " |")
    csv_rows = []
    for line in lines:
        cells = [line["name"], line["size"], str(line["seeds"])]
        for test in report_tests(config):
            cells += [_fmt(line[f"{test}:bleu"]), _fmt(line[f"{test}:chrf"])]
        cells += [_fmt(line[f"{main_test}:tokenized_bleu"]),
                  *[_p(line["significance"], baseline_key(name)) for name in baselines], _fmt(line["top1_agreement"], 100),
                  "–" if line["late_gain"] is None else f"{line['late_gain']:+.2f}"]
        md.append("| " + " | ".join(cells) + " |")
        flat = {"name": line["name"], "method": line["method"], "size": line["size"], "seeds": line["seeds"]}
        for key, value in line.items():
            if key == "late_gain":
                flat[key] = value
            elif ":" in key or key == "top1_agreement":
                flat[f"{key}:mean"], flat[f"{key}:std"] = value
        for key, item in line["significance"].items():
            flat[f"{key}:diff"] = item["diff"]
            flat[f"{key}:p"] = ";".join(f"{t['p_value']:.4g}" for t in item["per_seed"])
            flat[f"{key}:p_bs"] = ";".join(f"{t['p_bs']:.4g}" if t.get("p_bs") is not None else ""
                                           for t in item["per_seed"])
            flat[f"{key}:diff_per_seed"] = ";".join(f"{t['diff']:.4f}" for t in item["per_seed"])
        csv_rows.append(flat)
    signature = teacher[main_test].get("bleu_signature", "")
    md += ["", f"BLEU signature: `{signature}`", "",
           f"Teacher-gold top-1 overlap on validation (teacher-forced): "
           f"{100 * lines[0]['teacher_gold_overlap']:.1f}%." if lines else "", "",
           "![BLEU by method](bleu_by_method.png)", "", "![top-1 agreement by method](agreement_by_method.png)", ""]
    md += _findings_section(table, out, config)
    if len({row["size"] for row in table["students"]}) > 1:
        md += _size_section(table, out, main_test, where)
    md += _equal_compute_section(table["students"], out)
    atomic_write_text(out / "results.md", "\n".join(md))
    if csv_rows:
        fields = list(dict.fromkeys(k for row in csv_rows for k in row))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_rows)
        atomic_write_text(out / "results.csv", text.getvalue())
    _plots(lines, teacher[main_test]["bleu"], out, main_test)


def _plots(lines: list[dict], teacher_bleu: float, out: Path, main_test: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not lines:
        return
    import textwrap

    # long row names ("Analysis (b): without correlation") wrapped so that neighbouring labels never overlap
    labels = ["\n".join(textwrap.wrap(l["name"], 14)) + f"\n({l['size']})" for l in lines]
    for key, ylabel, filename, scale, ref in (
        ("main", f"BLEU ({main_test})", "bleu_by_method.png", 1.0, teacher_bleu),
        ("top1_agreement", "student-teacher top-1 agreement (%)", "agreement_by_method.png", 100.0, None),
    ):
        means = [l[key][0] * scale for l in lines]
        errors = [(l[key][1] or 0.0) * scale for l in lines]
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(lines)), 4.4))
        ax.bar(range(len(lines)), means, yerr=errors, capsize=4, color="#4c72b0", label="mean ± std over seeds")
        # every seed as a dot, so a spread (or one failed seed) is visible, not only the mean
        seeds_x = [i for i, l in enumerate(lines) for _ in l["per_seed"][key]]
        seeds_y = [v * scale for l in lines for v in l["per_seed"][key]]
        ax.scatter(seeds_x, seeds_y, color="black", s=12, zorder=3, label="one seed")
        if ref is not None:
            ax.axhline(ref, color="#c44e52", linestyle="--", label=f"teacher {ref:.2f}")
        ax.legend(fontsize=8)
        # the axis starts at 0: a cut axis makes small differences look large
        ax.set_ylim(0, 1.08 * max(means + seeds_y + ([ref] if ref else [])))
        ax.set_xticks(range(len(lines)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        save_figure(fig, out / filename)
        plt.close(fig)


def _size_section(table: dict, out: Path, main_test: str, where: str) -> list[str]:
    """The capacity-gap view (tiekd.experiment.size_view) when the table has students of several sizes."""
    from . import size_view

    baselines = baseline_names(table["students"])
    lines = size_view.size_lines(table, main_test)
    plot = "gain_by_size.png"
    if not baselines or size_view.plot_gains(lines, baselines[0], out / plot, where, baselines) is None:
        plot = ""
    return size_view.markdown(lines, baselines, where, plot)


def _equal_compute_section(rows: list[dict], out: Path) -> list[str]:
    """Validation BLEU against core-hours (tiekd.experiment.compute_view), when the runs logged their compute; at
    the measured cost of each update when the experiment folder holds update_costs.json."""
    from .compute_view import (UPDATE_COSTS_FILE, equal_compute_rows, load_update_costs, markdown_table,
                               plot_curves, run_curves)

    update_costs = load_update_costs(out / UPDATE_COSTS_FILE)
    curves, left_out = run_curves(rows, update_costs)  # each run is read once, for the table and the plot
    if not curves:
        return []
    lines = equal_compute_rows(curves)
    budgets = list(lines[0]["within"])
    if update_costs is None:
        unit = "training CPU core-hours (validation excluded; as each run logged them)"
        xlabel = "training compute (CPU core-hours, validation excluded)"
    else:
        unit = (f"training CPU core-hours at the costs per update measured side by side in `{UPDATE_COSTS_FILE}` "
                "(the same machine for every row; sequence-level KD's one-time decoding of the training set "
                "not counted)")
        xlabel = f"training compute (CPU core-hours at the costs in {UPDATE_COSTS_FILE})"
    plot_curves(curves, out / "bleu_by_core_hours.png", xlabel)
    if left_out:
        left_out = ["Left out, since the measured costs do not fit them:", "",
                    *[f"- {line}" for line in left_out], ""]
    return ["## Equal compute", "",
            f"Validation BLEU (greedy, the validation split) each row reaches within a budget of {unit} "
            "(mean over seeds, the last validation within the budget; – : no validation that cheap).", "",
            *markdown_table(lines, budgets), "", *left_out,
            "![validation BLEU by core-hours](bleu_by_core_hours.png)", ""]


def _findings_section(table: dict, out: Path, config) -> list[str]:
    """The paper's findings checked on the main student size (tiekd.experiment.findings), with the paired tests
    the table already ran where a finding compares a row with its baseline, new ones otherwise."""
    from ..evaluation.evaluate import paired_significance
    from . import findings

    students, main_test = table["students"], main_view(config)
    if not students:
        return []
    size = config.student_sizes[0] if getattr(config, "student_sizes", None) else students[0]["size"]
    refs: list[str] = []

    def paired(x: dict, y: dict) -> tuple[float, float]:
        diff = x["scores"][main_test]["bleu"] - y["scores"][main_test]["bleu"]
        done = x.get("significance", {}).get(baseline_key(y["baseline"])) if y.get("baseline") == y["name"] else None
        if done is not None:
            return done["diff"], done["p_value"]
        if not refs:
            refs.extend(view_refs(table.get("data", out / "data"), config, main_test))
        hyps = [view_hyps(row["folder"], config, main_test) for row in (y, x)]
        return diff, paired_significance(*hyps, refs, resamples=config.bootstrap_resamples,
                                         trials=config.randomization_trials)["bleu"]["p_ar"]

    checked = findings.check(students, size, main_test, paired)
    return findings.markdown(checked, table["teacher"]["scores"][main_test]["bleu"], students, size, main_test)
