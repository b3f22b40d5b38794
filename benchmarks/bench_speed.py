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

Every measurement runs in a fresh process: PyTorch's OpenMP threads and CTranslate2's, left in one
process, slowed CTranslate2 at 2 threads to 0.43x its 1-thread speed here, where alone it runs 1.45x
faster. Each setting takes the fastest of `--repeats` timed runs (the machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fresh_process import measure_in_fresh_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def folder_mb(path: Path, names: tuple[str, ...]) -> float:
    return sum((path / name).stat().st_size for name in names if (path / name).is_file()) / 1e6


def measure(spec: dict) -> dict:
    """Translate the first sentences with one model, engine, thread count and beam; return its row."""
    import sacrebleu

    from tiekd.io import read_lines

    count, beam = spec["sentences"], spec["beam"]
    sources, references = read_lines(spec["source"])[:count], read_lines(spec["reference"])[:count]
    if spec["engine"] == "pytorch":  # (imported here only: CTranslate2's processes run without PyTorch's threads)
        import torch

        from tiekd.data.tokenizer import load_tokenizer
        from tiekd.inference.translate import DecodeOptions, translate_sentences
        from tiekd.models import load_model

        torch.set_num_threads(spec["threads"])
        model, tokenizer = load_model(spec["folder"]), load_tokenizer(spec["folder"])
        options = DecodeOptions(beam=beam, length_penalty=spec["lenpen"], batch_sentences=32, progress=False)
        translate = lambda text: translate_sentences(model, tokenizer, text, options)
        size = folder_mb(Path(spec["folder"]), ("model.safetensors",))
    else:
        from tiekd.inference.export import CTranslate2Translator

        translator = CTranslate2Translator(spec["export"], intra_threads=spec["threads"])
        translate = lambda text: translator.translate(text, beam_size=beam, length_penalty=spec["lenpen"],
                                                      batch_size=32)
        size = folder_mb(Path(spec["export"]), ("model.bin",))
    translate(sources[:16])  # warm-up
    fastest = float("inf")
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        hyps = translate(sources)
        fastest = min(fastest, time.perf_counter() - started)
    return {key: spec[key] for key in ("model", "engine", "threads", "beam", "sentences")} | {
        "words_per_s": sum(len(h.split()) for h in hyps) / fastest, "size_mb": size,
        "bleu": sacrebleu.corpus_bleu(hyps, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [references]).score}


def in_fresh_process(spec: dict) -> dict:
    arguments = ["--source", spec["source"], "--reference", spec["reference"], "--measure", json.dumps(spec)]
    return measure_in_fresh_process(__file__, arguments, what=f"{spec['model']} {spec['engine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", metavar="NAME=DIR",
                        help="a model folder with its label; the first is the reference for the ratios")
    parser.add_argument("--source", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--sentences", type=int, default=1000, help="first N test sentences (CTranslate2)")
    parser.add_argument("--pytorch-sentences", type=int, default=300, help="first N sentences for PyTorch")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--engines", default="pytorch,ct2-float32,ct2-int8",
                        help="pytorch, ct2-float32, ct2-int8, and ct2-float32-shortlist / ct2-int8-shortlist "
                             "(a lexical shortlist built from --shortlist's parallel text)")
    parser.add_argument("--shortlist", nargs=2, metavar=("SOURCE", "TARGET"),
                        help="parallel text for the -shortlist engines (e.g. the training data)")
    parser.add_argument("--lenpen", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the fastest counts")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one setting, in the fresh process main() starts
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not args.model:
        parser.error("give at least one --model NAME=DIR (the first is the reference for the ratios)")

    from tiekd.inference.export import export_ctranslate2
    from tiekd.io import read_lines

    models = [spec.split("=", 1) for spec in args.model]
    available = len(read_lines(args.source))
    threads = [int(t) for t in args.threads.split(",")]
    beams = [int(b) for b in args.beams.split(",")]
    engines = args.engines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exports = {}
        for name, folder in models:  # every export before any clock starts
            vocabulary_map = None
            if any(engine.endswith("-shortlist") for engine in engines):
                if not args.shortlist:
                    parser.error("the -shortlist engines need --shortlist SOURCE TARGET")
                from tiekd.data.tokenizer import load_tokenizer
                from tiekd.inference.shortlist import write_vocabulary_map

                vocabulary_map = Path(tmp) / name / "vmap.txt"
                vocabulary_map.parent.mkdir(parents=True)
                write_vocabulary_map(load_tokenizer(folder), *args.shortlist, vocabulary_map)
            for engine in engines:
                if engine.startswith("ct2-"):
                    kind = engine.removeprefix("ct2-")
                    exports[name, kind] = export_ctranslate2(
                        folder, Path(tmp) / name / kind, quantization=kind.removesuffix("-shortlist"),
                        vocabulary_map=vocabulary_map if kind.endswith("-shortlist") else None)
        for engine in engines:
            for thread_count in threads:
                for beam in beams:
                    for name, folder in models:
                        count = min(args.pytorch_sentences if engine == "pytorch" else args.sentences, available)
                        export = exports.get((name, engine.removeprefix("ct2-")))
                        rows.append(in_fresh_process({
                            "model": name, "folder": folder, "export": str(export) if export else None,
                            "engine": engine, "threads": thread_count, "beam": beam, "sentences": count,
                            "lenpen": args.lenpen, "repeats": args.repeats, "source": args.source,
                            "reference": args.reference}))
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
