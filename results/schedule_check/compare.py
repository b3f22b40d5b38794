"""Issue 10 item 2: does a 5,400-update schedule beat the table's 3,600-update one?

Reads the validation records (``metrics.jsonl``) of each method's 3,600-update table row and of its
5,400-update rerun (``longer_schedule.sh``) and prints, per schedule:

* the issue's convergence test, late gain = BLEU(end) - BLEU(end - 25% of updates), on single
  checkpoints and on the mean of the last three validations against the three ending at the 75% point;
* validation nll at the same two points;
* the best and final greedy validation BLEU.

It also draws validation BLEU and nll against the share of the schedule done (``curves.png``), since both
schedules decay the learning rate linearly to zero at their own end and so are comparable by share, not
by update number. Each rerun's paired test against its own 3,600-update row is ``<row>-5400/scores.txt``
(written by the script); this script adds the test view across methods: test BLEU per method and schedule
(mean ± sample std over the seeds finished at 5,400, each against the same seeds at 3,600) and TIE-KD
against Word-KD at each schedule: per seed with sacreBLEU's paired approximate-randomization p (which
measures only the test sentences' sampling noise for two given models), and over seeds with the paired
t-test (which also carries the training runs' seed noise, the question "is the method better").

Last, the equal-compute view of the finished seeds (issue 10 item 4): each method and schedule priced in
CPU core-hours with the per-update costs measured side by side (``update_costs_2026-12-04.json`` of the
table, via ``tiekd.experiment.compute_view``), printed and drawn as test BLEU against core-hours
(``test_bleu_by_core_hours.png``, every seed a dot, the teacher a line).

    python results/schedule_check/compare.py [--table <runs>/converged/students] [--check <runs>/schedule_check]
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from tiekd.experiment.compute_view import quarter_mark, validation_records

HERE = Path(__file__).resolve().parent
DEFAULT_ROWS = ["no-kd-tiny-seed1", "word-kd-tiny-seed1"]
TEST_REF = HERE.parents[2] / "shared" / "data" / "multi30k" / "test_2016_flickr.en"
HYP = "test_2016_flickr.hyp"
TABLE = HERE.parent / "converged"
UPDATE_COSTS = TABLE / "update_costs_2026-12-04.json"
TEACHER_HYP = TABLE / "teacher" / "eval" / HYP
SCHEDULES = ("3600", "5400")
TEST_SETS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
TEACHER_OTHER_SETS = HERE / "teacher"  # other_test_sets.sh's outputs of the teacher


def mean_up_to(records: list[dict], end_step: int, key: str, count: int = 3) -> float:
    """Mean of ``key`` over the ``count`` validations that end at ``end_step``."""
    chosen = [r[key] for r in records if r["step"] <= end_step][-count:]
    return sum(chosen) / len(chosen)


def late_view(records: list[dict]) -> dict | None:
    """The issue's test (what the last 25% of updates add, from ``tiekd.experiment.compute_view.quarter_mark`` to the
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
    parser.add_argument("--table", type=Path, default=TABLE / "students",
                        help="folder of the table's student rows (each <row>/run/metrics.jsonl)")
    parser.add_argument("--check", type=Path, default=HERE,
                        help="folder of the reruns (each <row>-5400/metrics.jsonl or run/metrics.jsonl)")
    parser.add_argument("--plot", type=Path, default=HERE / "curves.png")
    parser.add_argument("--compute-plot", type=Path, default=HERE / "test_bleu_by_core_hours.png")
    parser.add_argument("--costs", type=Path, default=UPDATE_COSTS,
                        help="bench_train_step.py --json output: CPU seconds per update of each objective")
    parser.add_argument("--ref", type=Path, default=TEST_REF, help="test_2016_flickr.en of Multi30k")
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
    if args.ref.exists():
        print()
        test_bleu = test_view(rows, args.table, args.check, args.ref)
        if test_bleu:
            compute_view(test_bleu, args.table, args.check, args.ref, args.costs, args.compute_plot)
            other_sets_view(rows, args.check, args.ref.parent)
    else:
        print(f"(no test view: references {args.ref} not found; pass --ref)")


def split_row(row: str) -> tuple[str, int]:
    """'word-kd-tiny-seed2' -> ('word-kd', 2)."""
    method, seed = row.rsplit("-seed", 1)
    return method.removesuffix("-tiny"), int(seed)


def test_view(rows: list[str], table: Path, check: Path, ref: Path) -> dict[tuple[str, int, str], float]:
    """Test BLEU per method and schedule over the seeds finished at 5,400 (against the same seeds at
    3,600), and TIE-KD against Word-KD per seed at each schedule over the seeds both have there (at 3,600
    every table seed: the table's comparison) with sacreBLEU's paired approximate randomization (10,000
    trials). Returns the test BLEU of each (method, seed, updates) found."""
    from tiekd.evaluation.evaluate import score
    from tiekd.io import read_lines

    refs = read_lines(ref)
    hyps: dict[tuple[str, int, str], list[str]] = {}
    for row in rows:
        finished = check / f"{row}-5400"
        if (finished / "scores.txt").exists():  # the script's mark of a finished row
            method, seed = split_row(row)
            if not (table / row / HYP).exists():
                print(f"(skipped {row}: its 3,600-update row has no {table / row / HYP})")
                continue
            hyps[method, seed, "5400"] = read_lines(finished / HYP)
    # every table seed of the rerun methods at 3,600, finished at 5,400 or not: the table's own comparison
    for method in {split_row(row)[0] for row in rows}:
        for folder in sorted(table.glob(f"{method}-tiny-seed*")):
            if (folder / HYP).exists():
                hyps[method, split_row(folder.name)[1], "3600"] = read_lines(folder / HYP)
    bleu = {key: score(lines, refs)["bleu"] for key, lines in hyps.items()}
    print(f"{'method':<10} {'seeds at 5,400':<14} {'test BLEU 3,600':>16} {'test BLEU 5,400':>16} {'change':>7}"
          f"   {'3,600, every table seed':>24}")
    for method in sorted({key[0] for key in hyps}):
        every = [bleu[key] for key in sorted(hyps) if key[0] == method and key[2] == "3600"]
        seeds = sorted(seed for m, seed, updates in hyps if m == method and updates == "5400")
        if not seeds:
            print(f"{method:<10} {'none yet':<14} {'':>16} {'':>16} {'':>7}   {mean_std(every):>24}")
            continue
        short, long = ([bleu[method, seed, updates] for seed in seeds] for updates in SCHEDULES)
        print(f"{method:<10} {','.join(map(str, seeds)):<14} {mean_std(short):>16} {mean_std(long):>16} "
              f"{statistics.mean(long) - statistics.mean(short):>+7.2f}   {mean_std(every):>24}")
    for updates in SCHEDULES:
        seeds = [seed for seed in sorted({seed for _, seed, _ in hyps})
                 if ("word-kd", seed, updates) in hyps and ("tie-kd", seed, updates) in hyps]
        if not seeds:
            continue
        tie_against_word(f"TIE-KD - Word-KD at {updates} updates:", seeds, refs,
                         lambda method, seed: hyps[method, seed, updates],
                         lambda method, seed: bleu[method, seed, updates])
    return bleu


def tie_against_word(title: str, seeds: list[int], refs: list[str], lines, bleu) -> None:
    """Print TIE-KD minus Word-KD per seed with sacreBLEU's paired approximate-randomization p (10,000
    trials; test-sentence noise only), then over seeds (seed_test). ``lines(method, seed)`` gives a
    system's outputs, ``bleu(method, seed)`` its BLEU on ``refs``."""
    from tiekd.evaluation.evaluate import paired_significance

    print(title)
    differences = []
    for seed in seeds:
        tie, word = bleu("tie-kd", seed), bleu("word-kd", seed)
        differences.append(tie - word)
        p_ar = paired_significance(lines("word-kd", seed), lines("tie-kd", seed), refs)["bleu"]["p_ar"]
        print(f"  seed {seed}: {tie - word:+.2f} ({tie:.2f} against {word:.2f}; AR p = {p_ar:.3f}, "
              "test-sentence noise only)")
    print(f"  over seeds {','.join(map(str, seeds))}: {seed_test(differences)}")


def other_sets_view(rows: list[str], check: Path, data: Path) -> None:
    """The 5,400-update rows and the teacher on Multi30k's four test sets (other_test_sets.sh), and TIE-KD
    against Word-KD per seed on all of them pooled (3,532 sentences: corpus BLEU of the concatenation,
    with sacreBLEU's paired approximate randomization), then over seeds (paired t)."""
    from tiekd.evaluation.evaluate import score
    from tiekd.io import read_lines

    refs = {name: read_lines(data / f"{name}.en") for name in TEST_SETS if (data / f"{name}.en").exists()}
    if len(refs) < len(TEST_SETS):
        print(f"(no view over the four test sets: their references are not all in {data})")
        return
    outputs: dict[tuple[str, int], dict[str, list[str]]] = {}
    for row in rows:
        folder = check / f"{row}-5400"
        if (folder / "scores.txt").exists() and all((folder / f"{name}.hyp").exists() for name in TEST_SETS):
            outputs[split_row(row)] = {name: read_lines(folder / f"{name}.hyp") for name in TEST_SETS}
    teacher = {TEST_SETS[0]: TEACHER_HYP, **{name: TEACHER_OTHER_SETS / f"{name}.hyp" for name in TEST_SETS[1:]}}
    if all(path.exists() for path in teacher.values()):
        outputs["teacher", 0] = {name: read_lines(path) for name, path in teacher.items()}
    if len(outputs) < 2:
        print(f"\n(no view over the four test sets: fewer than two systems have their outputs in {check}"
              " and the teacher's in results/schedule_check/teacher; run other_test_sets.sh)")
        return

    def pooled(hyps: dict[str, list[str]]) -> list[str]:
        return [line for name in TEST_SETS for line in hyps[name]]

    all_refs = pooled(refs)
    bleu = {(key, name): score(hyps[name], refs[name])["bleu"] for key, hyps in outputs.items() for name in TEST_SETS}
    bleu.update({(key, "all"): score(pooled(hyps), all_refs)["bleu"] for key, hyps in outputs.items()})
    columns = [*TEST_SETS, "all"]
    print()
    print(f"Test BLEU on Multi30k's four test sets, 5,400-update rows (all: the {len(all_refs):,} sentences pooled):")
    print(f"{'method':<10} {'seeds':<6} " + " ".join(f"{name.removeprefix('test_'):>14}" for name in columns))
    order = {"no-kd": 0, "word-kd": 1, "tie-kd": 2, "teacher": 3}  # any other method after these, by name
    for method in sorted({method for method, _ in outputs}, key=lambda m: (order.get(m, len(order)), m)):
        seeds = sorted(seed for m, seed in outputs if m == method)
        cells = [mean_std([bleu[(method, seed), name] for seed in seeds]) for name in columns]
        shown = "" if method == "teacher" else ",".join(map(str, seeds))
        print(f"{method:<10} {shown:<6} " + " ".join(f"{cell:>14}" for cell in cells))
    seeds = sorted(seed for method, seed in outputs if method == "tie-kd" and ("word-kd", seed) in outputs)
    if not seeds:
        return
    tie_against_word(f"TIE-KD - Word-KD at 5400 updates, all {len(all_refs):,} sentences:", seeds, all_refs,
                     lambda method, seed: pooled(outputs[method, seed]),
                     lambda method, seed: bleu[(method, seed), "all"])


def row_name(method: str, seed: int) -> str:
    """('word-kd', 2) -> 'word-kd-tiny-seed2', the inverse of split_row."""
    return f"{method}-tiny-seed{seed}"


def compute_view(bleu: dict[tuple[str, int, str], float], table: Path, check: Path, ref: Path,
                 costs_path: Path, plot: Path) -> None:
    """Test BLEU against training core-hours for each method and schedule.

    core-hours(run) = sum over its updates of the measured CPU seconds per update of its objective
    (tiekd.experiment.compute_view.updates_cost) / 3600: one machine's side-by-side costs, so the runs compare
    although they were trained on several machines. Validation, checkpoint averaging and the teacher's
    own training are not counted. A method's means are over its paired seeds (those finished at 5,400,
    at both schedules; every table seed while none has finished), so a mean moves only by the schedule.
    """
    from tiekd.evaluation.evaluate import score
    from tiekd.io import read_lines
    from tiekd.experiment.compute_view import load_update_costs, run_settings, updates_cost

    costs = load_update_costs(costs_path)
    if costs is None:
        print(f"(no equal-compute view: {costs_path} not found; pass --costs)")
        return
    points: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}  # {(method, updates): {seed: (h, BLEU)}}
    for (method, seed, updates), value in bleu.items():
        folder = run_folder(table / row_name(method, seed) if updates == "3600"
                            else check / f"{row_name(method, seed)}-5400")
        if folder is None or not (folder / "config.yaml").is_file():
            print(f"(not priced: {method} seed {seed}, {updates} updates: no run folder with config.yaml)")
            continue
        settings = run_settings(folder)
        problem = costs.problem(settings)
        if problem:
            print(f"(not priced: {method} seed {seed}, {updates} updates: {problem})")
            continue
        points.setdefault((method, updates), {})[seed] = (updates_cost(settings, int(updates), costs) / 3600, value)
    paired = {method: sorted(points.get((method, "5400"), {})) or sorted(points.get((method, "3600"), {}))
              for method, _ in points}
    print()
    print(f"Equal compute (core-hours at the costs of {costs_path.name}; means over the paired seeds):")
    print(f"{'method':<10} {'updates':>7} {'core-h per seed':>15} {'seeds':>6} {'test BLEU':>14}")
    for (method, updates), found in sorted(points.items(), key=lambda item: mean_of(item[1], 0)):
        chosen = {seed: found[seed] for seed in paired[method] if seed in found}
        if chosen:
            print(f"{method:<10} {updates:>7} {mean_of(chosen, 0):>15.2f} {','.join(map(str, chosen)):>6} "
                  f"{mean_std([point[1] for point in chosen.values()]):>14}")
    teacher = score(read_lines(TEACHER_HYP), read_lines(ref))["bleu"] if TEACHER_HYP.exists() else None
    draw_compute(points, paired, teacher, plot)
    print(f"plot: {plot}")


def mean_of(found: dict[int, tuple[float, float]], index: int) -> float:
    """Mean of element `index` (0 core-hours, 1 BLEU) over the seeds' points."""
    return statistics.mean(point[index] for point in found.values())


def draw_compute(points: dict[tuple[str, str], dict[int, tuple[float, float]]], paired: dict[str, list[int]],
                 teacher: float | None, path: Path) -> None:
    """Every seed a dot (hollow: a table seed not yet rerun at 5,400), each method's mean over its paired
    seeds a larger marker, its two schedules joined by a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    methods = sorted({method for method, _ in points})
    fixed = {"no-kd": "C0", "tie-kd": "C1", "word-kd": "C2"}  # the same colour as the rows finish
    for index, method in enumerate(methods):
        colour = fixed.get(method, f"C{(index + 3) % 10}")
        means = []
        for updates in SCHEDULES:
            found = points.get((method, updates), {})
            chosen = {seed: found[seed] for seed in paired[method] if seed in found}
            if not chosen:
                continue
            others = [point for seed, point in found.items() if seed not in chosen]
            axis.scatter([p[0] for p in chosen.values()], [p[1] for p in chosen.values()], color=colour,
                         alpha=0.45, s=18)
            if others:
                axis.scatter([p[0] for p in others], [p[1] for p in others], facecolors="none",
                             edgecolors=colour, alpha=0.6, s=18)
            means.append((mean_of(chosen, 0), mean_of(chosen, 1)))
            axis.annotate(f"{int(updates):,}", means[-1], textcoords="offset points", xytext=(6, -10),
                          fontsize=7, color=colour)
        seeds = ",".join(map(str, paired[method]))
        shown = f"mean of seeds {seeds}" if len(paired[method]) > 1 else f"seed {seeds}"
        axis.plot(*zip(*means), "o-", color=colour, markersize=7, label=f"{method} ({shown})")
    if teacher is not None:
        axis.axhline(teacher, color="black", linewidth=0.8, linestyle=":",
                     label=f"teacher ({teacher:.2f}; its training not counted)")
    axis.set(xlabel="student training CPU core-hours per seed (measured per-update costs)",
             ylabel="test BLEU (test_2016_flickr, beam 4)", xlim=(0, None))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    axis.set_title("Equal compute: 3,600 and 5,400 updates, every seed a dot", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def seed_test(differences: list[float]) -> str:
    """Mean ± sample std of the same-seed differences and the paired t-test over seeds, the test of the
    method rather than of one training run: t = mean / (std / sqrt(n)) with n - 1 degrees of freedom.
    Two-sided p in closed form for the 1 and 2 degrees of freedom that 2 and 3 seeds give (Student t
    with 1 d.o.f. is the Cauchy: p = 1 - (2/pi) atan|t|; with 2: p = 1 - |t| / sqrt(2 + t^2)), so no
    scipy is needed; more seeds print t alone."""
    count = len(differences)
    mean = statistics.mean(differences)
    if count < 2:
        return f"{mean:+.2f} (one seed: no test over seeds)"
    spread = statistics.stdev(differences)
    if spread == 0:
        return f"{mean:+.2f} ± 0.00 (no spread: no test)"
    t = mean / (spread / math.sqrt(count))
    p = {2: 1 - 2 / math.pi * math.atan(abs(t)), 3: 1 - abs(t) / math.sqrt(2 + t * t)}.get(count)
    shown = f", p = {p:.2f}" if p is not None else ""
    return f"{mean:+.2f} ± {spread:.2f} (paired t over seeds: t = {t:.2f}, {count - 1} d.o.f.{shown})"


def mean_std(values: list[float]) -> str:
    """'40.13 ± 0.73' (sample std), or the one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def draw(curves: dict, path: Path) -> None:
    """Validation BLEU (top) and nll (bottom) against the share of the schedule done: one column per
    method, one colour per seed, dashed 3,600 and solid 5,400 updates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({label.rsplit("-seed", 1)[0] for label, _ in curves})
    figure, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 6.5), squeeze=False,
                                sharey="row")
    styles = {"3600": "--", "5400": "-"}
    for (label, updates), (records, total) in sorted(curves.items()):
        method, seed = label.rsplit("-seed", 1)
        column = methods.index(method)
        share = [r["step"] / total for r in records]
        for row, key in enumerate(("bleu", "nll")):
            axes[row][column].plot(share, [r[key] for r in records], styles[updates], color=f"C{int(seed) - 1}",
                                   linewidth=1.1, label=f"seed {seed}, {int(updates):,} updates")
    for column, method in enumerate(methods):
        axes[0][column].set_title(method)
        axes[0][column].legend(fontsize=7)
        axes[1][column].set_xlabel("share of the schedule done")
        for row in range(2):
            axes[row][column].axvline(0.75, color="black", linewidth=0.5)
            axes[row][column].grid(alpha=0.3)
    axes[0][0].set(ylabel="validation BLEU (greedy)", ylim=(30, None))
    axes[1][0].set(ylabel="validation nll", ylim=(None, 2.2))
    figure.suptitle("3,600 against 5,400 updates (linear decay to zero at each schedule's end)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
