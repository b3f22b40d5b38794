"""The equal-compute view of an experiment: validation BLEU against training CPU core-hours.

A KD method that costs more per update (TIE-KD runs the teacher and the student's decoder N times)
can win at equal updates and lose at equal compute. Each student's `metrics.jsonl` holds its
validation records with `train_core_seconds` (tiekd.trainer: CPU time of the training updates,
validation excluded, summed over resumes); this module turns them into curves, a plot, and the BLEU
each row reaches within given budgets of core-hours.
"""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

from .io import atomic_write_bytes


def validation_records(run_folder: Path) -> list[dict]:
    """The validation records (with BLEU) of one run's metrics.jsonl, in update order."""
    path = Path(run_folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a crash
            continue
        if record.get("kind") == "valid" and "bleu" in record:
            records.append(record)
    return records


def validation_curve(run_folder: Path) -> list[tuple[float, float]]:
    """[(core-hours, validation BLEU)] of one run, in update order; [] when it logged no compute."""
    return [(r["train_core_seconds"] / 3600, r["bleu"]) for r in validation_records(run_folder)
            if "train_core_seconds" in r]


def late_gain(run_folder: Path) -> float | None:
    """Validation BLEU gained over the last 25% of a run's updates: BLEU at the last validation minus
    BLEU at the last validation at or before 75% of its updates (the convergence test of issue 10:
    a converged run gains less than 0.3). None without two such validations."""
    records = validation_records(run_folder)
    if len(records) < 2:
        return None
    last = records[-1]
    earlier = [r for r in records[:-1] if r["step"] <= 0.75 * last["step"]]
    return last["bleu"] - earlier[-1]["bleu"] if earlier else None


def bleu_within(curve: list[tuple[float, float]], budget: float) -> float | None:
    """BLEU of the last validation at or below `budget` core-hours (None if none was that cheap)."""
    reached = [bleu for hours, bleu in curve if hours <= budget]
    return reached[-1] if reached else None


def run_curves(rows: list[dict]) -> list[tuple[dict, list[tuple[float, float]]]]:
    """(row, validation curve) for each experiment row whose run logged its compute."""
    curves = [(row, validation_curve(Path(row["folder"]) / "run")) for row in rows]
    return [(row, curve) for row, curve in curves if curve]


def equal_compute_rows(curves: list[tuple[dict, list]], budgets: list[float] | None = None) -> list[dict]:
    """One line per (name, size): mean over seeds of the BLEU within each budget (default:
    `default_budgets` of the rows' own totals), and total core-hours."""
    groups: dict[tuple[str, str], list[list[tuple[float, float]]]] = {}
    for row, curve in curves:
        groups.setdefault((row["name"], row["size"]), []).append(curve)
    lines = [{"name": name, "size": size, "seeds": len(group),
              "core_hours": statistics.fmean(c[-1][0] for c in group),
              "final_bleu": statistics.fmean(c[-1][1] for c in group), "curves": group}
             for (name, size), group in groups.items()]
    budgets = default_budgets(lines) if budgets is None else budgets
    for line in lines:
        group = line.pop("curves")
        values = {b: [bleu_within(c, b) for c in group] for b in budgets}
        line["within"] = {b: statistics.fmean(v) if all(x is not None for x in v) else None
                          for b, v in values.items()}
    return lines


def default_budgets(lines: list[dict]) -> list[float]:
    """The mean total core-hours of each row with a distinct cost, cheapest first (at most 4)."""
    totals = sorted({round(line["core_hours"], 2) for line in lines})
    if len(totals) > 4:
        totals = [totals[round(i * (len(totals) - 1) / 3)] for i in range(4)]
    return totals


def markdown_table(lines: list[dict], budgets: list[float]) -> list[str]:
    header = ["Student", "size", "seeds", "core-hours", "valid BLEU at end"] + [f"≤ {b:.2f} h" for b in budgets]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [line["name"], line["size"], str(line["seeds"]), f"{line['core_hours']:.2f}", f"{line['final_bleu']:.2f}"]
        cells += ["–" if line["within"][b] is None else f"{line['within'][b]:.2f}" for b in budgets]
        out.append("| " + " | ".join(cells) + " |")
    return out


def plot_curves(curves: list[tuple[dict, list]], path: Path) -> None:
    """Validation BLEU against core-hours, one line per run, one colour per row name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(f"{row['name']} ({row['size']})" for row, _ in curves))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 5))
    labelled = set()
    for row, curve in curves:
        label = f"{row['name']} ({row['size']})"
        ax.plot([h for h, _ in curve], [b for _, b in curve], marker=".", color=colours(names.index(label) % 10),
                label=None if label in labelled else label, alpha=0.8)
        labelled.add(label)
    ax.set_xlabel("training compute (CPU core-hours, validation excluded)")
    ax.set_ylabel("validation BLEU (greedy)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()  # written whole: another worker may be writing the same report
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(Path(path), image.getvalue())
