"""The capacity-gap view of an experiment with several student sizes (preset `capacity`).

The paper claims TIE-KD generalises better than other KD techniques across teacher-student capacity
gaps. For each student size (its parameter count, and its share of the teacher's) and each method this
view gives the BLEU on the experiment's main view (all test sets pooled when there are several), the
difference to each baseline row of the same size and seed, and two tests of it:

- per seed, sacreBLEU's paired approximate randomization p (test-sentence noise, from the report's
  significance), and
- over seeds, the paired t-test of the same-seed differences d_1..d_n, the test of the method rather
  than of one training run:  t = mean(d) / (std(d) / sqrt(n)),  n - 1 degrees of freedom, two-sided p
  from Student's t distribution (`t_test_p`).

Beside them: top-1 agreement with the teacher, the training CPU core-hours each run logged (validation
excluded; only comparable between runs of one machine), where the teacher's gold-prefix logits came from
(live, or a teacher-logit cache, which lowers the core-hours of a KD row) and the convergence test: the
validation BLEU gained over the last 25% of updates on means of 3 validations (converged: below 0.3),
each seed's. Rows whose significance holds a "vs_teacher" test also get a difference to the teacher.

Across sizes (`trend`): each method's same-seed difference to a baseline per size with its 95% interval
over seeds (mean ± t_{0.975, n-1} s / sqrt(n)), and Welch's t-test between the largest and the smallest
size, on Welch-Satterthwaite's degrees of freedom rounded down (the conservative side). A plot draws
the gain over a baseline against student parameters (log scale), one line per method, every seed a dot.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..writes import save_figure

CONVERGED_BELOW = 0.3  # BLEU over the last 25% of updates, 3-validation means


def t_test_p(t: float, dof: int) -> float:
    """Two-sided p-value of Student's t with a whole number of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-26.7.4): with theta = atan(|t| / sqrt(dof)),
        A(t|dof) = 2 theta/pi + 2/pi sin(theta) cos(theta) (1 + 2/3 cos^2 + ... + (2*4*..*(dof-3))/(1*3*..*(dof-2)) cos^(dof-3))
                                                                                  (dof odd; the sum is empty for 1)
        A(t|dof) = sin(theta) (1 + 1/2 cos^2 + ... + (1*3*..*(dof-3))/(2*4*..*(dof-2)) cos^(dof-2))   (dof even)
    and p = 1 - A. For dof 1 this is the Cauchy's p = 1 - (2/pi) atan|t|; for dof 2, 1 - |t| / sqrt(2 + t^2)."""
    if dof < 1:
        raise ValueError("a t-test needs at least 1 degree of freedom")
    theta = math.atan(abs(t) / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2:
        term, total = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(3, dof - 1, 2):  # coefficients (k-1)/k: 2/3, 2*4/(3*5), ...
            term *= (k - 1) / k * cos2
            total += term
        area = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:
        term = total = 1.0
        for k in range(2, dof - 1, 2):  # coefficients (k-1)/k: 1/2, 1*3/(2*4), ...
            term *= (k - 1) / k * cos2
            total += term
        area = math.sin(theta) * total
    return max(0.0, 1.0 - area)


def paired_over_seeds(differences: list[float]) -> dict:
    """Mean and sample std of same-seed differences, with the paired t-test over seeds (n >= 2)."""
    count = len(differences)
    result = {"n": count, "mean": statistics.fmean(differences) if differences else float("nan"),
              "std": statistics.stdev(differences) if count > 1 else None, "t": None, "p": None}
    if count > 1 and result["std"]:
        result["t"] = result["mean"] / (result["std"] / math.sqrt(count))
        result["p"] = t_test_p(result["t"], count - 1)
    result["no_spread"] = count > 1 and not result["std"]  # equal differences: no test, no interval
    return result


def t_quantile(dof: int, p: float = 0.05) -> float:
    """The t with two-sided p-value `p` at `dof` degrees of freedom (t_test_p inverted by bisection)."""
    low, high = 0.0, 1.0
    while t_test_p(high, dof) > p:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_test_p(middle, dof) > p else (low, middle)
    return (low + high) / 2


def welch(first: list[float], second: list[float]) -> dict | None:
    """Welch's t-test of mean(first) - mean(second) (two samples of 2 or more each):
        t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2),
        dof = (s1^2/n1 + s2^2/n2)^2 / ((s1^2/n1)^2/(n1 - 1) + (s2^2/n2)^2/(n2 - 1)), rounded down, at least 1."""
    if len(first) < 2 or len(second) < 2:
        return None
    a, b = statistics.variance(first) / len(first), statistics.variance(second) / len(second)
    difference = statistics.fmean(first) - statistics.fmean(second)
    if a + b == 0:
        return None
    # rounded down, but not below a whole number that rounding error put just under it (3.9999999 is 4)
    dof = max(1, math.floor((a + b) ** 2 / (a * a / (len(first) - 1) + b * b / (len(second) - 1)) + 1e-9))
    t = difference / math.sqrt(a + b)
    return {"difference": difference, "t": t, "dof": dof, "p": t_test_p(t, dof)}


def parameter_count(model_dir: str | Path) -> int:
    """Parameters of the model in `model_dir` (tied weights once), built on the meta device from its
    config: nothing is loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from ..models import parameter_count as count

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
    return count(model)


def late_gain_3(run_folder: Path) -> float | None:
    """Validation BLEU gained over a run's last 25% of updates, each end a mean of 3 validations: the
    last 3, against the 3 ending at the last validation at or before 75% of the updates."""
    from .compute_view import quarter_mark, validation_records

    records = validation_records(run_folder)
    mark = quarter_mark(records)
    if mark is None:
        return None
    at = records.index(mark)
    if at < 2 or len(records) < 3:
        return None
    late = statistics.fmean(r["bleu"] for r in records[-3:])
    early = statistics.fmean(r["bleu"] for r in records[at - 2:at + 1])
    return late - early


def core_hours(run_folder: Path) -> float | None:
    """The training CPU core-hours the run logged at its last validation (validation excluded)."""
    from .compute_view import validation_records

    logged = [r["train_core_seconds"] for r in validation_records(run_folder) if "train_core_seconds" in r]
    return logged[-1] / 3600 if logged else None


def teacher_source(run_folder: Path, method: str) -> str:
    """Where the run's teacher logits on gold prefixes came from: "cached" (its config names a teacher
    cache), "live", "–" for a method that runs no teacher inside its updates, or "?" where the run's
    config cannot be read."""
    import yaml

    from ..errors import TiekdError
    from ..kd.methods import get_method, runs_teacher_on_gold

    try:
        if not runs_teacher_on_gold(get_method(method)):
            return "–"
        saved = yaml.safe_load((Path(run_folder) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError, TiekdError):  # no run config, or a method this tiekd does not know
        return "?"
    # a run resumed with a cache keeps the config it started with: name such rows where the table is made
    return "cached" if saved.get("teacher_cache") else "live"


def size_lines(table: dict, main: str) -> list[dict]:
    """One line per (size, method row): see the module docstring. `main` is the report's main view.
    Within a size, methods keep the order of their first row in the table, so that every size (and the
    plot's colours) lists them alike. A row may carry `teacher_source` (what `teacher_source` would say,
    e.g. for a run whose cache began part-way)."""
    from .report import baseline_key, baseline_names

    rows = table["students"]
    params = {}
    for row in rows:
        if row["size"] not in params:
            params[row["size"]] = parameter_count(Path(row["folder"]) / "model")
    teacher_params = parameter_count(table["teacher"]["model"])
    order = list(dict.fromkeys(row["name"] for row in rows))
    lines = []
    for size in sorted(params, key=params.get, reverse=True):
        groups: dict[str, list[dict]] = {name: [] for name in order}
        for row in rows:
            if row["size"] == size:
                groups[row["name"]].append(row)
        for name, group in groups.items():
            if not group:
                continue
            group = sorted(group, key=lambda r: r["seed"])
            line = {"size": size, "name": name, "method": group[0]["method"], "params": params[size],
                    "share": params[size] / teacher_params, "seeds": [r["seed"] for r in group],
                    "bleu": [r["scores"][main]["bleu"] for r in group],
                    "chrf": [r["scores"][main]["chrf"] for r in group],
                    "agreement": [r["analysis"]["top1_agreement"] for r in group],
                    "core_hours": [core_hours(Path(r["folder"]) / "run") for r in group],
                    "late_gain": [late_gain_3(Path(r["folder"]) / "run") for r in group],
                    "teacher_source": [r.get("teacher_source") or teacher_source(Path(r["folder"]) / "run", r["method"])
                                       for r in group], "against": {}}
            for base in [*baseline_names(rows), "Teacher"]:
                key = baseline_key(base)
                tests = [(r["seed"], r["significance"][key]) for r in group if key in r.get("significance", {})]
                if tests:
                    line["against"][base] = {"per_seed": [(seed, t["diff"], t["p_value"]) for seed, t in tests],
                                             **paired_over_seeds([t["diff"] for _, t in tests])}
            lines.append(line)
    return lines


def trend(lines: list[dict], method: str, baseline: str) -> dict | None:
    """`method`'s difference to `baseline` at each size (largest first), with its 95% interval over
    seeds, and Welch's test between the largest and the smallest size that have 2 seeds or more."""
    sizes = []
    for line in lines:
        item = line["against"].get(baseline)
        if line["name"] != method or item is None:
            continue
        # mean, std and no_spread are paired_over_seeds' own, over these same per-seed differences
        diffs = [d for _, d, _ in item["per_seed"]]
        half = t_quantile(item["n"] - 1) * item["std"] / math.sqrt(item["n"]) if item["std"] else None
        sizes.append({"size": line["size"], "params": line["params"], "diffs": diffs, "mean": item["mean"],
                      "half_width": half, "no_spread": item["no_spread"]})
    if not sizes:
        return None
    tested = [entry for entry in sizes if len(entry["diffs"]) > 1]
    ends = welch(tested[0]["diffs"], tested[-1]["diffs"]) if len(tested) > 1 else None
    return {"method": method, "baseline": baseline, "sizes": sizes,
            "ends": ends and {**ends, "larger": tested[0]["size"], "smaller": tested[-1]["size"]}}


def trend_markdown(found: dict) -> str:
    """One line: the difference per size with its interval, then the test between the end sizes."""
    parts = []
    for entry in found["sizes"]:
        interval = (f" [{entry['mean'] - entry['half_width']:+.2f}, {entry['mean'] + entry['half_width']:+.2f}]"
                    if entry["half_width"] is not None
                    else " (no spread over the seeds: no interval)" if entry["no_spread"] else "")
        parts.append(f"{entry['size']} {entry['mean']:+.2f}{interval} (n={len(entry['diffs'])})")
    line = f"- {found['method']} − {found['baseline']}: " + "; ".join(parts)
    ends = found["ends"]
    if ends:
        from .report import _p_value

        line += (f". {ends['larger']} against {ends['smaller']}: {ends['difference']:+.2f}, Welch's t {ends['t']:.2f} "
                 f"on {ends['dof']} dof, {_p_value(ends['p'])}")
    return line + "."


def _mean_std(values: list[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _against(item: dict | None) -> str:
    from .report import _p_value

    if item is None:
        return "–"
    seeds = ", ".join(f"s{seed} {d:+.2f} ({_p_value(p)})" for seed, d, p in item["per_seed"])
    over = (f"; t-test n={item['n']} {_p_value(item['p'])}" if item["p"] is not None
            else f"; no spread over {item['n']} seeds: no t-test" if item.get("no_spread") else "")
    return f"{item['mean']:+.2f}{over} [{seeds}]"


def _convergence(line: dict) -> str:
    """Each seed's late gain, and whether all are below the bar."""
    gains = [(seed, g) for seed, g in zip(line["seeds"], line["late_gain"]) if g is not None]
    if not gains:
        return "–"
    above = sum(g >= CONVERGED_BELOW for _, g in gains)
    verdict = "converged" if not above else f"not converged ({above} of {len(gains)})"
    return ", ".join(f"s{seed} {g:+.2f}" for seed, g in gains) + f": {verdict}"


def markdown(lines: list[dict], baselines: list[str], where: str, plot: str, plots: dict | None = None) -> list[str]:
    """The results.md section; `plots` adds more figures ({caption: file})."""
    extra = ["Teacher"] if any("Teacher" in line["against"] for line in lines) else []
    sourced = any("cached" in source for line in lines for source in line.get("teacher_source", []))
    header = ["size", "params (of teacher)", "method", "seeds", f"BLEU {where}", f"chrF {where}",
              *[f"Δ vs {b}" for b in [*baselines, *extra]], "top-1 agr. %", "core-hours",
              *(["teacher logits"] if sourced else []), "last-25% gain (3-val. means)"]
    out = ["## By student size (the capacity gap)", "",
           f"BLEU and chrF on {where}, mean ± std over seeds. Δ: mean same-seed difference, the paired t-test "
           "over seeds (n: the seeds with both rows), and in brackets each seed's difference with sacreBLEU's paired "
           "approximate-randomization p" + ("; against the Teacher, one fixed run, the t-test is of the students' "
           "differences to its score, without the teacher's own run-to-run spread" if extra else "")
           + ". Core-hours: training CPU time each run logged (validation excluded)"
           + ("; a KD row that read its teacher's gold-prefix logits from a cache (\"cached\") logs fewer" if sourced
              else "") + f". Last-25% gain: each seed's; all below {CONVERGED_BELOW}: converged.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        sources = sorted(set(line.get("teacher_source", [])))
        out.append("| " + " | ".join([
            line["size"], f"{line['params'] / 1e6:.2f}M ({100 * line['share']:.1f}%)", line["name"],
            str(len(line["seeds"])), _mean_std(line["bleu"]), _mean_std(line["chrf"]),
            *[_against(line["against"].get(b)) for b in [*baselines, *extra]], _mean_std(line["agreement"], 100),
            _mean_std(line["core_hours"]), *([", ".join(sources) or "–"] if sourced else []),
            _convergence(line)]) + " |")
    def shown(name: str, base: str) -> bool:  # a baseline against an earlier one only: no mirrored pairs
        return name != base and not (name in baselines and baselines.index(name) < baselines.index(base))

    trends = [found for base in baselines for name in dict.fromkeys(line["name"] for line in lines)
              if shown(name, base) and (found := trend(lines, name, base)) is not None and len(found["sizes"]) > 1]
    if trends:
        out += ["", "Across sizes, the same-seed difference per size with its 95% interval over seeds, and Welch's "
                "t-test between the largest and the smallest size with two seeds or more:", "",
                *[trend_markdown(found) for found in trends]]
    figures = {**({"BLEU gain over the baseline by student size": plot} if plot else {}), **(plots or {})}
    return out + ["", *[item for caption, file in figures.items() for item in (f"![{caption}]({file})", "")]]


def plot_gains(lines: list[dict], baseline: str, path: Path, where: str, baselines: list[str] = ()) -> Path | None:
    """Gain over `baseline` (same size and seed) against parameters, log x; a line per method, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(dict.fromkeys(line["name"] for line in lines))  # a colour per method, the same in every plot
    methods: dict[str, list[tuple[int, list[float]]]] = {}
    sizes = {}
    # a baseline listed before `baseline` would only mirror that baseline's own gain over it
    earlier = set(baselines[:list(baselines).index(baseline)]) if baseline in baselines else set()
    for line in lines:
        sizes[line["params"]] = f"{line['size']}\n{line['params'] / 1e6:.2f}M ({100 * line['share']:.1f}%)"
        item = line["against"].get(baseline)
        if item is not None and line["name"] != baseline and line["name"] not in earlier:
            methods.setdefault(line["name"], []).append((line["params"], [d for _, d, _ in item["per_seed"]]))
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in methods.items():
        points.sort()
        index = order.index(name)
        color = f"C{index}"
        shift = 1 + 0.025 * (index - (len(order) - 1) / 2)  # a small offset per method keeps seeds apart
        ax.plot([p * shift for p, _ in points], [statistics.fmean(d) for _, d in points], "-o", color=color,
                label=name)
        for params, diffs in points:
            ax.scatter([params * shift] * len(diffs), diffs, color=color, s=14, alpha=0.6, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(list(sizes), list(sizes.values()), fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("student parameters (log scale; share of the teacher's)")
    ax.set_ylabel(f"BLEU gain over {baseline}")
    ax.set_title(where, fontsize=9)  # the test sets; too long for the y axis, where it was cut off
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
