"""Speed report: teacher against students, PyTorch against CTranslate2 float32 / int8, 1 and 2 threads,
greedy and beam 4, side by side in one run.

    python benchmarks/bench_speed.py --model teacher=runs/converged/teacher/model \
        --model no-kd=runs/converged/students/no-kd-tiny-seed1/model \
        --source ../shared/data/multi30k/test_2016_flickr.de --reference ../shared/data/multi30k/test_2016_flickr.en

For every model, engine, thread count and beam, the same sentences are translated once after a short
warm-up. Printed: output words/s (whitespace-separated words of the translations per second of
decoding), the speed ratio to the first model (the teacher) in the same setting, model size on disk
in MB, and sacreBLEU BLEU / chrF of those translations. PyTorch decoding is slow on CPU, so
`--pytorch-sentences` (default 300) limits its share; CTranslate2 translates all `--sentences`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def folder_mb(path: Path, names: tuple[str, ...]) -> float:
    return sum((path / name).stat().st_size for name in names if (path / name).is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a model folder with its label; the first is the reference for the ratios")
    parser.add_argument("--source", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--sentences", type=int, default=1000, help="first N test sentences (CTranslate2)")
    parser.add_argument("--pytorch-sentences", type=int, default=300, help="first N sentences for PyTorch")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--engines", default="pytorch,ct2-float32,ct2-int8")
    parser.add_argument("--lenpen", type=float, default=0.6)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    import sacrebleu
    import torch

    from tiekd.export import CTranslate2Translator, export_ctranslate2
    from tiekd.io import read_lines
    from tiekd.models import load_model
    from tiekd.tokenizer import load_tokenizer
    from tiekd.translate import DecodeOptions, translate_sentences

    models = [spec.split("=", 1) for spec in args.model]
    sources, references = read_lines(args.source)[:args.sentences], read_lines(args.reference)[:args.sentences]
    threads = [int(t) for t in args.threads.split(",")]
    beams = [int(b) for b in args.beams.split(",")]
    engines = args.engines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exports = {}
        for name, folder in models:  # every export before any clock starts
            for quantization in ("float32", "int8"):
                if f"ct2-{quantization}" in engines:
                    exports[name, quantization] = export_ctranslate2(folder, Path(tmp) / name / quantization,
                                                                     quantization=quantization)
        for engine in engines:
            for thread_count in threads:
                for beam in beams:
                    for name, folder in models:
                        if engine == "pytorch":
                            torch.set_num_threads(thread_count)
                            model, tokenizer = load_model(folder), load_tokenizer(folder)
                            options = DecodeOptions(beam=beam, length_penalty=args.lenpen, batch_sentences=32,
                                                    progress=False)
                            count = min(args.pytorch_sentences, len(sources))
                            translate = lambda text: translate_sentences(model, tokenizer, text, options)
                            size = folder_mb(Path(folder), ("model.safetensors",))
                        else:
                            count = len(sources)
                            export = exports[name, engine.removeprefix("ct2-")]
                            translator = CTranslate2Translator(export, intra_threads=thread_count)
                            translate = lambda text, t=translator: t.translate(text, beam_size=beam,
                                                                               length_penalty=args.lenpen,
                                                                               batch_size=32)
                            size = folder_mb(export, ("model.bin",))
                        translate(sources[:16])  # warm-up
                        started = time.perf_counter()
                        hyps = translate(sources[:count])
                        seconds = time.perf_counter() - started
                        refs = references[:count]
                        rows.append({"model": name, "engine": engine, "threads": thread_count, "beam": beam,
                                     "sentences": count, "words_per_s": sum(len(h.split()) for h in hyps) / seconds,
                                     "size_mb": size, "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                                     "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score})
    reference_model = models[0][0]
    base = {(r["engine"], r["threads"], r["beam"]): r["words_per_s"] for r in rows if r["model"] == reference_model}
    print(f"{'model':14} {'engine':12} {'thr':>3} {'beam':>4} {'sent':>5} {'words/s':>9} "
          f"{'vs ' + reference_model:>12} {'MB':>6} {'BLEU':>6} {'chrF':>6}")
    for r in rows:
        ratio = r["words_per_s"] / base[r["engine"], r["threads"], r["beam"]]
        print(f"{r['model']:14} {r['engine']:12} {r['threads']:3d} {r['beam']:4d} {r['sentences']:5d} "
              f"{r['words_per_s']:9.0f} {ratio:12.2f} {r['size_mb']:6.1f} {r['bleu']:6.2f} {r['chrf']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
