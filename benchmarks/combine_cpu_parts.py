"""Merge the results of `tiekd experiment` runs that split one preset's rows over processes
(benchmarks/cpu_part_*.yaml) into one Markdown table, with paired bootstrap tests of every row against
the No-KD and Word-KD rows wherever they ran.

    python benchmarks/combine_cpu_parts.py runs/cpu-a runs/cpu-b --test test_2016_flickr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="experiment folders (each with results.json, or stage.json files)")
    parser.add_argument("--test", default="test_2016_flickr")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    from tiekd.data.prepare import load_prepared
    from tiekd.evaluate import paired_bootstrap, read_lines

    rows, teacher = [], None
    for folder in map(Path, args.folders):
        teacher = teacher or json.loads((folder / "teacher" / "eval" / "stage.json").read_text())["result"]
        for stage in sorted((folder / "students").glob("*/stage.json")):
            result = json.loads(stage.read_text())
            rows.append({"slug": stage.parent.name, "folder": stage.parent, "method": result["settings"]["student"]["method"],
                         "settings": result["settings"]["student"], **result["result"]})
    refs = read_lines(load_prepared(Path(args.folders[0]) / "data").splits[args.test][1])
    hyps = {row["slug"]: read_lines(row["folder"] / f"{args.test}.hyp") for row in rows}
    baselines = {label: next((r for r in rows if r["method"] == method and r["settings"]["model"] == "tiny"), None)
                 for label, method in (("No-KD", "none"), ("Word-KD", "word-kd"))}
    print("| student | size | BLEU | chrF | Δ vs No-KD (p) | Δ vs Word-KD (p) | top-1 agreement | student = gold | valid ppl |")
    print("|---|---|---|---|---|---|---|---|---|")
    t = teacher[args.test]
    print(f"| Teacher | small | {t['bleu']:.2f} | {t['chrf']:.2f} | – | – | – | – | – |")
    for row in rows:
        cells = []
        for label, base in baselines.items():
            if base is None or base is row:
                cells.append("–")
                continue
            test = paired_bootstrap(hyps[base["slug"]], hyps[row["slug"]], refs, resamples=args.resamples)
            cells.append(f"{test['diff']['score']:+.2f} (p={test['p_value']:.3f})")
        metrics = [json.loads(l) for l in (row["folder"] / "run" / "metrics.jsonl").read_text().splitlines()]
        ppl = [m["ppl"] for m in metrics if m["kind"] == "valid"][-1]
        score, analysis = row["scores"][args.test], row["analysis"]
        print(f"| {row['slug']} | {row['settings']['model']} | {score['bleu']:.2f} | {score['chrf']:.2f} | {cells[0]} | "
              f"{cells[1]} | {100 * analysis['top1_agreement']:.1f}% | {100 * analysis['student_gold_accuracy']:.1f}% | {ppl:.1f} |")
    print(f"\nTeacher top-1 = gold on validation (teacher-forced): {100 * rows[0]['analysis']['teacher_gold_overlap']:.1f}%;"
          " by teacher confidence: " + "; ".join(
              f"{b['bin']}: {100 * b['share_of_tokens']:.0f}% of tokens, overlap {100 * (b['teacher_gold_overlap'] or 0):.1f}%"
              for b in rows[0]["analysis"]["by_teacher_confidence"]))


if __name__ == "__main__":
    main()
