"""The equal-compute view of an experiment: validation BLEU against training CPU core-hours.

A KD method that costs more per update (TIE-KD runs the teacher and the student's decoder N times)
can win at equal updates and lose at equal compute. Each student's `metrics.jsonl` holds its
validation records with `train_core_seconds` (tiekd.training.trainer: CPU time of the training updates,
validation excluded, summed over resumes); this module turns them into curves, a plot, and the BLEU
each row reaches within given budgets of core-hours.

Those CPU seconds are only comparable between runs made on one machine under one load. A table that
runs for days is trained on several machines (ours differ by up to 2x in speed), so an experiment
folder may hold `update_costs.json`: the CPU seconds per update of each objective, measured side by
side in one run (`benchmarks/bench_train_step.py --json update_costs.json`). With it, a run's compute
at update u is the sum of its updates' measured costs,

    compute(u) = sum_{i=1..u} cost(objective of update i)        (CPU seconds on the benchmark's machine)

where TIE-KD's updates before `iterative_start_update` cost one pass, and sequence-level KD's updates
cost a No-KD update (the teacher's decoding of the training set, done once, is not counted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from ..errors import TiekdError
from ..writes import save_figure

UPDATE_COSTS_FILE = "update_costs.json"


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


def validation_curve(run_folder: Path, update_costs: UpdateCosts | None = None,
                     settings: dict | None = None) -> list[tuple[float, float]]:
    """[(core-hours, validation BLEU)] of one run, in update order; [] when it logged no compute, or
    when `update_costs` (load_update_costs) cannot price it. With them, the core-hours are the measured
    costs of its updates instead of the CPU time it logged; `settings` are the run's (run_settings),
    read from its folder when not given."""
    records = validation_records(run_folder)
    if update_costs is not None:
        settings = run_settings(run_folder) if settings is None else settings
        if update_costs.problem(settings) is not None:
            return []
        return [(updates_cost(settings, r["step"], update_costs) / 3600, r["bleu"]) for r in records]
    return [(r["train_core_seconds"] / 3600, r["bleu"]) for r in records if "train_core_seconds" in r]


@dataclasses.dataclass
class UpdateCosts:
    """CPU seconds per update of each objective, and the student and batch size they were measured with:
    a run of another size or batch is not priced with them (it would cost something else per update)."""

    per_update: dict[str, float]
    student: str
    max_tokens: int

    def problem(self, settings: dict) -> str | None:
        """Why a run cannot be priced with these costs, or None."""
        if settings.get("model") != self.student or settings.get("max_tokens") != self.max_tokens:
            return (f"measured for `{self.student}` students with {self.max_tokens}-token batches, the run is "
                    f"`{settings.get('model')}` with {settings.get('max_tokens')}")
        if settings.get("update_freq", 1) != 1:
            return f"measured at one batch per update, the run accumulates {settings['update_freq']}"
        missing = [key for key in cost_keys(settings) if key not in self.per_update]
        if missing:
            return f"no measured cost for {', '.join(missing)} (bench_train_step.py --methods ...,{missing[0]})"
        return None


def load_update_costs(path: Path) -> UpdateCosts | None:
    """The costs in bench_train_step.py's JSON; None when the file is absent.

    Objectives are named as the benchmark names them: a method ("none", "word-kd", "jsd", ...), and
    TIE-KD with its passes ("tie-kd:1", "tie-kd:3"; a bare "tie-kd" is one pass)."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = "Fix: write it with benchmarks/bench_train_step.py --json, or remove it to plot logged CPU time"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        costs = {}
        for row in report["results"]:
            name = row["method"]
            costs[f"{name}:1" if name == "tie-kd" else name] = float(row["cpu_s_per_update"])
        student, max_tokens = str(report["args"]["student"]), int(report["args"]["max_tokens"])
    except (ValueError, KeyError, TypeError) as error:
        raise TiekdError(f"{path}: not a bench_train_step result with cpu_s_per_update ({error!r}). {fix}") from error
    return UpdateCosts(costs, student, max_tokens)


def run_settings(run_folder: Path) -> dict:
    """The run's config.yaml, over RunConfig's defaults (for settings an older run did not write)."""
    import yaml

    from ..config import RunConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)
                if f.default is not dataclasses.MISSING}
    path = Path(run_folder) / "config.yaml"
    written = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {**defaults, **(written or {})}


def cost_keys(settings: dict, updates: int | None = None) -> dict[str, int]:
    """{objective: how many of the run's first `updates` updates (all when None) it trains with}.

    TIE-KD's update i runs its N passes once i - 1 >= iterative_start_update (tiekd.kd.objectives: passes
    start when `updates_done` reaches it), one pass before; its ranking terms cost too little to price
    apart (1 pass with ranking: 1.73 CPU s per update, Word-KD 1.76; docs/RESULTS.md), so the "iterative
    only" ablation is priced as N passes. Seq-KD trains on stored targets: a No-KD update."""
    if updates is None:  # a run bounded by epochs alone may reach any update
        updates = settings.get("max_updates") or 10 ** 12
    method = settings["method"]
    if method != "tie-kd":
        return {"none" if method == "seq-kd" else method: updates}
    early = min(updates, settings["iterative_start_update"])
    counts: dict[str, int] = {}
    for key, count in (("tie-kd:1", early), (f"tie-kd:{settings['iterative_passes']}", updates - early)):
        counts[key] = counts.get(key, 0) + count  # one key twice when N is 1
    return {key: count for key, count in counts.items() if count}


def updates_cost(settings: dict, updates: int, costs: UpdateCosts) -> float:
    """CPU seconds of a run's first `updates` updates at the measured per-update costs."""
    return sum(count * costs.per_update[key] for key, count in cost_keys(settings, updates).items())


def quarter_mark(records: list[dict]) -> dict | None:
    """The last validation record at or before 75% of the last one's updates: where the last 25% of a
    run starts (None without two such validations)."""
    earlier = [r for r in records[:-1] if r["step"] <= 0.75 * records[-1]["step"]] if records else []
    return earlier[-1] if earlier else None


def late_gain(run_folder: Path) -> float | None:
    """Validation BLEU gained over the last 25% of a run's updates: BLEU at the last validation minus
    BLEU at `quarter_mark` (the convergence test of issue 10: a converged run gains less than 0.3).
    None without two such validations."""
    records = validation_records(run_folder)
    mark = quarter_mark(records)
    return None if mark is None else records[-1]["bleu"] - mark["bleu"]


def bleu_within(curve: list[tuple[float, float]], budget: float) -> float | None:
    """BLEU of the last validation at or below `budget` core-hours (None if none was that cheap)."""
    reached = [bleu for hours, bleu in curve if hours <= budget]
    return reached[-1] if reached else None


def run_curves(rows: list[dict], update_costs: UpdateCosts | None = None) -> tuple[list[tuple[dict, list]], list[str]]:
    """(row, validation curve) for each experiment row whose run logged its compute (or whose
    updates have measured costs), and 'name (size) seed N: why' for each row that the measured costs
    cannot price (left out of the view). Each run's config and metrics are read once."""
    curves, left_out = [], []
    for row in rows:
        folder = Path(row["folder"]) / "run"
        settings = None
        if update_costs is not None:
            settings = run_settings(folder)
            problem = update_costs.problem(settings)
            if problem is not None:
                left_out.append(f"{row['name']} ({row['size']}) seed {row.get('seed', '?')}: {problem}")
                continue
        curve = validation_curve(folder, update_costs, settings)
        if curve:
            curves.append((row, curve))
    return curves, left_out


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
    """The mean total core-hours of each row with a distinct cost, cheapest first (at most 4), rounded
    up to the hundredth shown in the table: rounded down, a budget would fall just short of the very
    runs it is the cost of and leave out their last validation."""
    totals = sorted({math.ceil(line["core_hours"] * 100 - 1e-9) / 100 for line in lines})
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


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = (".", "x", "+", "^")


def line_style(index: int) -> tuple[int, str, str]:
    """(tab10 colour index, line style, marker) of the index-th row: ten colours, then the next line
    style and marker, so that rows 1 and 11 (the converged table has 11 methods) do not look alike.
    Distinct for the first 40 rows."""
    shape = (index // 10) % len(LINESTYLES)
    return index % 10, LINESTYLES[shape], MARKERS[shape]


def plot_curves(curves: list[tuple[dict, list]], path: Path,
                xlabel: str = "training compute (CPU core-hours, validation excluded)") -> None:
    """Validation BLEU against core-hours, one line per run, one colour and line style per row name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(f"{row['name']} ({row['size']})" for row, _ in curves))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 5))
    labelled = set()
    for row, curve in curves:
        label = f"{row['name']} ({row['size']})"
        colour_index, linestyle, marker = line_style(names.index(label))
        ax.plot([h for h, _ in curve], [b for _, b in curve], marker=marker, linestyle=linestyle,
                color=colours(colour_index), label=None if label in labelled else label, alpha=0.8)
        labelled.add(label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation BLEU (greedy)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
