"""The capacity-gap table of issue 36: the `capacity` experiment's finished rows, plus tiny's rows from
results/schedule_check, through the experiment report's own size view (tiekd.experiment.size_view).

    python results/capacity/tools/capacity_table.py --experiment RUNS/capacity2 \\
        --tiny-rows results/schedule_check --out results/capacity/table.md --plot results/capacity/gain_by_size.png \\
        --plot-vs-word results/capacity/gain_over_word_kd.png \\
        --switched tie-kd-mini-seed1=1538 --switched tie-kd-nano-seed1=1781

Why a tool and not the report: tiny's No-KD, Word-KD and TIE-KD rows were trained by the schedule check
(5,400 updates at lr 2e-3, the same released teacher and data), not by this experiment, and their weights
were not kept. What they have is enough for the table: translations of the four test sets (pooled BLEU,
chrF, paired approximate randomization against the same seed's baselines) and the run's metrics
(core-hours, the convergence test). Top-1 agreement needs the weights, so tiny's is left empty ("–").
Run it from the root of a checkout (the experiment file names its teacher relative to it); it reads only
finished rows (those with a stage.json), so it gives the table so far while the experiment runs.

Besides the size view's columns, each row is tested against the teacher (sacreBLEU's paired approximate
randomization of its pooled translations against the teacher's: at which size a student stops reaching
it), and `--switched ROW=UPDATE` names rows that ran the live teacher up to UPDATE and read the
teacher-logit cache after it (their run config, saved at the start, cannot say so).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

# schedule_check's folder prefix -> (row name, baseline label): the capacity preset's names
TINY_ROWS = {"no-kd": ("No-KD", "none", "No-KD"), "word-kd": ("Word-KD", "word-kd", "Word-KD"),
             "tie-kd": ("TIE-KD", "tie-kd", None)}


def experiment_rows(experiment: Path, config) -> list[dict]:
    """The experiment's finished student rows, as its report builds them."""
    from tiekd.experiment.stages import row_slug

    rows = []
    for spec, size, seed in config.student_runs():
        folder = experiment / "students" / row_slug(spec.name, size, seed)
        stage = folder / "stage.json"
        if stage.is_file():
            result = json.loads(stage.read_text())["result"]
            rows.append({"name": spec.name, "method": spec.method, "baseline": spec.baseline_label, "size": size,
                         "seed": seed, "folder": str(folder), **result})
    return rows


def tiny_rows(source: Path, config, tokenizer, staging: Path) -> list[dict]:
    """schedule_check's 5,400-update tiny rows, staged as the size view reads a row folder: the
    translations, run/metrics.jsonl and run/config.yaml, and a model/config.json for the parameter count."""
    from tiekd.models import build_model

    model_config = staging / "tiny-model"
    build_model("tiny", tokenizer).config.save_pretrained(model_config)
    rows = []
    for folder in sorted(source.glob("*-tiny-seed*-5400")):
        match = re.fullmatch(r"(.+)-tiny-seed(\d+)-5400", folder.name)
        if match is None or match.group(1) not in TINY_ROWS:
            continue
        name, method, baseline = TINY_ROWS[match.group(1)]
        staged = staging / folder.name
        (staged / "run").mkdir(parents=True)
        (staged / "model").mkdir()
        shutil.copy(model_config / "config.json", staged / "model" / "config.json")
        for test in config.test_sets:
            shutil.copy(folder / f"{test}.hyp", staged / f"{test}.hyp")
        for name_ in ("metrics.jsonl", "config.yaml"):
            shutil.copy(folder / name_, staged / "run" / name_)
        rows.append({"name": name, "method": method, "baseline": baseline, "size": "tiny",
                     "seed": int(match.group(2)), "folder": str(staged), "scores": {},
                     "analysis": {"top1_agreement": None}})
    return rows


def add_teacher_tests(table: dict, config, refs: list[str], teacher: Path) -> None:
    """Each row's pooled translations against the teacher's: significance["vs_teacher"], as a baseline's."""
    from tiekd.evaluation.evaluate import paired_significance
    from tiekd.experiment.report import POOLED, view_hyps

    teacher_hyps = view_hyps(teacher, config, POOLED)
    for row in table["students"]:
        hyps = view_hyps(row["folder"], config, POOLED)
        tests = paired_significance(teacher_hyps, hyps, refs, resamples=config.bootstrap_resamples,
                                    trials=config.randomization_trials)
        difference = row["scores"][POOLED]["bleu"] - table["teacher"]["scores"][POOLED]["bleu"]
        row["significance"]["vs_teacher"] = {"diff": difference, "p_value": tests["bleu"]["p_ar"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, required=True, help="the capacity experiment's folder")
    parser.add_argument("--tiny-rows", type=Path, help="results/schedule_check (tiny's No-KD, Word-KD, TIE-KD rows)")
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--plot", type=Path, help="the gain-by-size plot to write")
    parser.add_argument("--plot-vs-word", type=Path, help="the gain over Word-KD by size, a second plot")
    parser.add_argument("--switched", action="append", default=[], metavar="ROW=UPDATE",
                        help="a row that read the teacher-logit cache from UPDATE on (the live teacher before)")
    parser.add_argument("--json", type=Path, help="the table's lines as JSON")
    parser.add_argument("--teacher-model", type=Path,
                        help="the teacher's model folder, where the experiment's own path (relative to the checkout "
                             "it ran from) is not valid from here")
    args = parser.parse_args()

    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.experiment import size_view
    from tiekd.experiment.pipeline import load_experiment_config
    from tiekd.experiment.report import POOLED, add_pooled_scores, add_significance, baseline_names, view_hyps, \
        view_refs

    config = load_experiment_config(None, str(args.experiment / "experiment.yaml"), check_data=False)
    data = args.experiment / "data"
    teacher = args.experiment / "teacher" / "eval"
    teacher_model = args.teacher_model or ROOT / config.teacher_model
    if not (teacher_model / "config.json").is_file():
        raise SystemExit(f"{teacher_model}: no model folder. Fix: name the teacher with --teacher-model")
    table = {"teacher": {"model": str(teacher_model), "folder": str(teacher),
                         "scores": json.loads((teacher / "stage.json").read_text())["result"]},
             "students": experiment_rows(args.experiment, config), "data": str(data)}
    with tempfile.TemporaryDirectory() as staging:
        if args.tiny_rows:
            table["students"] += tiny_rows(args.tiny_rows, config, load_tokenizer(data / "tokenizer"), Path(staging))
        refs = view_refs(data, config, POOLED)
        for row in table["students"]:
            if len(view_hyps(row["folder"], config, POOLED)) != len(refs):
                raise SystemExit(f"{row['folder']}: its translations do not line up with {data}'s test sets")
        add_pooled_scores(table, config)
        add_significance(table, args.experiment, config)
        add_teacher_tests(table, config, refs, teacher)
        switched = {}
        for item in args.switched:
            name, _, update = item.partition("=")
            if not update.isdigit():
                raise SystemExit(f"--switched {item!r}: write ROW=UPDATE, e.g. tie-kd-mini-seed1=1538")
            switched[name] = int(update)
        unknown = sorted(name for name in switched if not (args.experiment / "students" / name).is_dir())
        if unknown:
            raise SystemExit(f"--switched names no row: {', '.join(unknown)}. Fix: use a folder name under "
                             f"{args.experiment / 'students'}")
        for row in table["students"]:  # a row still training is named too: it shows once it has finished
            if Path(row["folder"]).name in switched:
                row["teacher_source"] = f"live to {switched[Path(row['folder']).name]:,}, then cached"
        # one method order (and plot colour) whatever finished first: the experiment's own
        order = list(dict.fromkeys(spec.name for spec in config.students))
        table["students"].sort(key=lambda row: order.index(row["name"]) if row["name"] in order else len(order))
        lines = size_view.size_lines(table, POOLED)
    where = "all four test sets pooled (3,532 sentences)"
    plot = ""
    baselines = baseline_names(table["students"])
    if args.plot and baselines and size_view.plot_gains(lines, baselines[0], args.plot, where, baselines) is not None:
        plot = args.plot.name
    plots = {}
    if args.plot_vs_word and size_view.plot_gains(lines, "Word-KD", args.plot_vs_word, where, baselines) is not None:
        plots["BLEU gain over Word-KD by student size"] = args.plot_vs_word.name
    teacher_pooled = table["teacher"]["scores"][POOLED]
    md = [f"Teacher: {teacher_pooled['bleu']:.2f} BLEU, {teacher_pooled['chrf']:.2f} chrF on {where}.", "",
          *size_view.markdown(lines, baselines, where, plot, plots)]
    args.out.write_text("\n".join(md) + "\n")
    if args.json:
        args.json.write_text(json.dumps(lines, indent=1, default=str) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
