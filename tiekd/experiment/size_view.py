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
excluded; only comparable between runs of one machine), and the convergence test: the validation BLEU
gained over the last 25% of updates on means of 3 validations (converged: below 0.3). A plot draws the
gain over the No-KD baseline against student parameters (log scale), one line per method, every seed a dot.
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
    return result


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


def size_lines(table: dict, main: str) -> list[dict]:
    """One line per (size, method row): see the module docstring. `main` is the report's main view."""
    from .report import baseline_key, baseline_names

    rows = table["students"]
    params = {}
    for row in rows:
        if row["size"] not in params:
            params[row["size"]] = parameter_count(Path(row["folder"]) / "model")
    teacher_params = parameter_count(table["teacher"]["model"])
    lines = []
    for size in sorted(params, key=params.get, reverse=True):
        groups: dict[str, list[dict]] = {}
        for row in rows:
            if row["size"] == size:
                groups.setdefault(row["name"], []).append(row)
        for name, group in groups.items():
            group = sorted(group, key=lambda r: r["seed"])
            line = {"size": size, "name": name, "method": group[0]["method"], "params": params[size],
                    "share": params[size] / teacher_params, "seeds": [r["seed"] for r in group],
                    "bleu": [r["scores"][main]["bleu"] for r in group],
                    "chrf": [r["scores"][main]["chrf"] for r in group],
                    "agreement": [r["analysis"]["top1_agreement"] for r in group],
                    "core_hours": [core_hours(Path(r["folder"]) / "run") for r in group],
                    "late_gain": [late_gain_3(Path(r["folder"]) / "run") for r in group], "against": {}}
            for base in baseline_names(rows):
                key = baseline_key(base)
                tests = [r["significance"][key] for r in group if key in r.get("significance", {})]
                if tests:
                    line["against"][base] = {"per_seed": [(t["diff"], t["p_value"]) for t in tests],
                                             **paired_over_seeds([t["diff"] for t in tests])}
            lines.append(line)
    return lines


def _mean_std(values: list[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _against(item: dict | None) -> str:
    if item is None:
        return "–"
    seeds = ", ".join(f"{d:+.2f} (p={p:.3f})" for d, p in item["per_seed"])
    over = f"; t-test p={item['p']:.2f}" if item["p"] is not None else ""
    return f"{item['mean']:+.2f}{over} [{seeds}]"


def markdown(lines: list[dict], baselines: list[str], where: str, plot: str) -> list[str]:
    """The results.md section."""
    header = ["size", "params (of teacher)", "method", "seeds", f"BLEU {where}", f"chrF {where}",
              *[f"Δ vs {b}" for b in baselines], "top-1 agr. %", "core-hours", "last-25% gain (3-val. means)"]
    out = ["## By student size (the capacity gap)", "",
           f"BLEU and chrF on {where}, mean ± std over seeds. Δ: mean same-seed difference, the paired t-test "
           "over seeds, and in brackets each seed's difference with sacreBLEU's paired approximate-randomization "
           f"p. Core-hours: training CPU time each run logged (validation excluded). Last-25% gain below "
           f"{CONVERGED_BELOW}: converged; a row above it is marked \"not converged\".", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        gains = [g for g in line["late_gain"] if g is not None]
        gain = "–" if not gains else f"{max(gains):+.2f}" + (" not converged" if max(gains) >= CONVERGED_BELOW else "")
        out.append("| " + " | ".join([
            line["size"], f"{line['params'] / 1e6:.2f}M ({100 * line['share']:.1f}%)", line["name"],
            str(len(line["seeds"])), _mean_std(line["bleu"]), _mean_std(line["chrf"]),
            *[_against(line["against"].get(b)) for b in baselines], _mean_std(line["agreement"], 100),
            _mean_std(line["core_hours"]), gain]) + " |")
    return out + ["", *([f"![BLEU gain over the baseline by student size]({plot})", ""] if plot else [])]


def plot_gains(lines: list[dict], baseline: str, path: Path, where: str) -> Path | None:
    """Gain over `baseline` (same size and seed) against parameters, log x; a line per method, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, list[tuple[int, list[float]]]] = {}
    for line in lines:
        item = line["against"].get(baseline)
        if item is not None and line["name"] != baseline:
            methods.setdefault(line["name"], []).append((line["params"], [d for d, _ in item["per_seed"]]))
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (name, points) in enumerate(methods.items()):
        points.sort()
        color = f"C{index}"
        ax.plot([p for p, _ in points], [statistics.fmean(d) for _, d in points], "-o", color=color, label=name)
        for params, diffs in points:
            ax.scatter([params] * len(diffs), diffs, color=color, s=14, alpha=0.6, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters (log scale)")
    ax.set_ylabel(f"BLEU gain over {baseline}")
    ax.set_title(where, fontsize=9)  # the test sets; too long for the y axis, where it was cut off
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
