"""Issue 10 item 2: does a 5,400-update schedule beat the table's 3,600-update one?

Reads the validation records (``metrics.jsonl``) of each method's 3,600-update table row and of its
5,400-update rerun (``longer_schedule.sh``) and prints, per schedule:

* the issue's convergence test, late gain = BLEU(end) - BLEU(end - 25% of updates), on single
  checkpoints and on the mean of the last three validations against the three ending at the 75% point;
* validation nll at the same two points;
* the best and final greedy validation BLEU.

It also draws validation BLEU and nll against the share of the schedule done (``curves.png``), since both
schedules decay the learning rate linearly to zero at their own end and so are comparable by share, not
by update number. The paired test-set comparison is ``<row>-5400/scores.txt`` (written by the script).

    python results/schedule_check/compare.py [--table /work/bg/runs/converged] [--check /work/bg/runs/schedule_check]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tiekd.compute_view import quarter_mark, validation_records

HERE = Path(__file__).resolve().parent
DEFAULT_ROWS = ["no-kd-tiny-seed1", "word-kd-tiny-seed1"]


def mean_up_to(records: list[dict], end_step: int, key: str, count: int = 3) -> float:
    """Mean of ``key`` over the ``count`` validations that end at ``end_step``."""
    chosen = [r[key] for r in records if r["step"] <= end_step][-count:]
    return sum(chosen) / len(chosen)


def late_view(records: list[dict]) -> dict | None:
    """The issue's test (what the last 25% of updates add, from ``tiekd.compute_view.quarter_mark`` to the
    end, as in ``late_gain``), also on 3-validation means, with validation nll at the same two points and
    the best and final BLEU. None without two such validations."""
    at_75 = quarter_mark(records)
    if at_75 is None:
        return None
    end = records[-1]
    return {
        "end": end["step"],
        "bleu_gain": end["bleu"] - at_75["bleu"],
        "bleu_gain_mean3": mean_up_to(records, end["step"], "bleu") - mean_up_to(records, at_75["step"], "bleu"),
        "nll_drop": at_75["nll"] - end["nll"],
        "best_bleu": max(r["bleu"] for r in records),
        "final_bleu": end["bleu"], "final_nll": end["nll"],
    }


def run_folder(folder: Path) -> Path | None:
    """The folder holding a row's metrics.jsonl: ``run/`` while it trains, the row folder once copied."""
    for candidate in (folder / "run", folder):
        if (candidate / "metrics.jsonl").exists():
            return candidate
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=HERE.parent / "converged" / "students",
                        help="folder of the table's student rows (each <row>/run/metrics.jsonl)")
    parser.add_argument("--check", type=Path, default=HERE,
                        help="folder of the reruns (each <row>-5400/metrics.jsonl or run/metrics.jsonl)")
    parser.add_argument("--plot", type=Path, default=HERE / "curves.png")
    args = parser.parse_args()
    # every rerun found in --check (running ones too), else the first pair measured
    rows = sorted({p.name[:-len("-5400")] for p in args.check.glob("*-5400") if p.is_dir()}) or DEFAULT_ROWS

    curves = {}
    print(f"{'row':<22} {'updates':>7} {'valid BLEU end':>14} {'best':>6} {'gain last 25%':>13} "
          f"{'gain (3-val means)':>18} {'nll end':>8} {'nll drop last 25%':>17}")
    for row in rows:
        label = row.replace("-tiny", "")
        for updates, folder in (("3600", args.table / row), ("5400", args.check / f"{row}-5400")):
            found = run_folder(folder)
            records = validation_records(found) if found else []
            gain = late_view(records)
            if gain is None:
                print(f"{label:<22} {updates:>7}  (fewer than two validations in {folder})")
                continue
            partial = "" if gain["end"] >= int(updates) else f"  (partial: at update {gain['end']})"
            print(f"{label:<22} {updates:>7} {gain['final_bleu']:>14.2f} {gain['best_bleu']:>6.2f} "
                  f"{gain['bleu_gain']:>+13.2f} {gain['bleu_gain_mean3']:>+18.2f} {gain['final_nll']:>8.3f} "
                  f"{gain['nll_drop']:>17.3f}{partial}")
            curves[(label, updates)] = (records, int(updates))
    if curves:
        draw(curves, args.plot)
        print(f"curves: {args.plot}")


def draw(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bleu_axis, nll_axis) = plt.subplots(1, 2, figsize=(11, 4))
    labels = sorted({label for label, _ in curves})
    colours = {label: f"C{index % 10}" for index, label in enumerate(labels)}
    styles = {"3600": "--", "5400": "-"}
    for (label, updates), (records, total) in curves.items():
        share = [r["step"] / total for r in records]
        for axis, key in ((bleu_axis, "bleu"), (nll_axis, "nll")):
            axis.plot(share, [r[key] for r in records], styles[updates], color=colours[label],
                      label=f"{label}, {updates} updates")
    bleu_axis.set(xlabel="share of the schedule done", ylabel="validation BLEU (greedy)", ylim=(30, None))
    nll_axis.set(xlabel="share of the schedule done", ylabel="validation nll", ylim=(None, 2.2))
    for axis in (bleu_axis, nll_axis):
        axis.axvline(0.75, color="black", linewidth=0.5)
        axis.grid(alpha=0.3)
    bleu_axis.legend(fontsize=8)
    figure.suptitle("3,600 against 5,400 updates (linear decay to zero at each schedule's end)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
