"""Distilled-data builder: CTranslate2 against PyTorch `generate`, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_distilled_data.py --teacher runs/converged/teacher/model \
        --source data/train.de --references data/train.en --sentences 500

The same teacher translates the same first N training sources, beam 4, with: PyTorch `generate`
(1-best), CTranslate2 float32 (1-best), CTranslate2 int8 (1-best), and CTranslate2 float32 keeping
the 4-best and choosing by chrF against the reference (Bergamot's practice). Printed per setting:
sentences/s, the ratio to `generate`, and BLEU / chrF of the targets against the references (how
close the student's training targets are to the human ones). Threads: CTranslate2 gets `--threads`
intra-op threads, PyTorch `torch.get_num_threads()` (set both with OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher model folder")
    parser.add_argument("--source", required=True)
    parser.add_argument("--references", required=True)
    parser.add_argument("--sentences", type=int, default=500, help="first N lines of --source")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 intra-op threads")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import sacrebleu
    import torch

    from tiekd.inference.distilled_data import DistillationOptions, build_distilled_data
    from tiekd.io import read_lines

    sources, references = read_lines(args.source)[:args.sentences], read_lines(args.references)[:args.sentences]
    settings = [
        ("pytorch generate, 1-best", DistillationOptions(engine="pytorch")),
        ("ctranslate2 float32, 1-best", DistillationOptions(threads=args.threads)),
        ("ctranslate2 int8, 1-best", DistillationOptions(threads=args.threads, compute_type="int8")),
        ("ctranslate2 float32, 4-best chrF", DistillationOptions(threads=args.threads, nbest=4, select="chrf")),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
        (tmp / "ref").write_text("".join(r + "\n" for r in references), encoding="utf-8")
        # one CTranslate2 export shared by every CTranslate2 setting, made before any clock starts
        from tiekd.inference.export import export_ctranslate2

        export_ctranslate2(args.teacher, tmp / "ct2", quantization="float32")
        for name, options in settings:
            teacher = args.teacher if options.engine == "pytorch" else tmp / "ct2"
            report = build_distilled_data(teacher, tmp / "src", tmp / f"{len(rows)}.hyp", tmp / "ref",
                                          work_dir=tmp / f"work{len(rows)}", options=options, quiet=True)
            targets = read_lines(tmp / f"{len(rows)}.hyp")
            rows.append({"setting": name, "sentences_per_s": report["sentences_per_s"],
                         "bleu": sacrebleu.corpus_bleu(targets, [references]).score,
                         "chrf": sacrebleu.corpus_chrf(targets, [references]).score,
                         "not_1best": report["not_1best"], "empty": report["empty"], "runaway": report["runaway"]})
    base = rows[0]["sentences_per_s"]
    print(f"{args.sentences} sentences, beam 4; PyTorch threads {torch.get_num_threads()}, "
          f"CTranslate2 threads {args.threads}")
    print(f"{'setting':34} {'sent/s':>8} {'vs generate':>11} {'BLEU':>6} {'chrF':>6} {'not 1-best':>10}")
    for row in rows:
        print(f"{row['setting']:34} {row['sentences_per_s']:8.1f} {row['sentences_per_s'] / base:11.2f} "
              f"{row['bleu']:6.2f} {row['chrf']:6.2f} {row['not_1best']:10d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
