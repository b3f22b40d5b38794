"""Inference speed and quality: PyTorch (transformers `generate`) vs CTranslate2 float32 and int8.

    python benchmarks/bench_ct2.py --model runs/quick/students/tie-kd-tiny-seed1/model \
        --source ../shared/data/multi30k/test_2016_flickr.de --reference ../shared/data/multi30k/test_2016_flickr.en

All engines translate the same sentences with the same beam size and length penalty, one after the
other in one run, on the same threads; printed: sentences/s, the speed-up over PyTorch, and sacreBLEU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lenpen", type=float, default=0.6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.evaluation.evaluate import read_lines, score
    from tiekd.inference.export import CTranslate2Translator, export_ctranslate2
    from tiekd.inference.translate import DecodeOptions, translate_sentences
    from tiekd.models import load_model

    torch.set_num_threads(args.threads)
    sources, references = read_lines(args.source), read_lines(args.reference)
    rows = []

    def record(engine: str, seconds: float, hyps: list[str]) -> None:
        result = score(hyps, references)
        rows.append({"engine": engine, "seconds": seconds, "sentences_per_s": len(sources) / seconds,
                     "bleu": result["bleu"], "chrf": result["chrf"]})

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    options = DecodeOptions(beam=args.beam, length_penalty=args.lenpen, batch_sentences=args.batch_size,
                            progress=False)
    translate_sentences(model, tokenizer, sources[:16], options)  # warm-up
    started = time.perf_counter()
    hyps = translate_sentences(model, tokenizer, sources, options)
    record("pytorch fp32", time.perf_counter() - started, hyps)
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in ("float32", "int8"):
            folder = export_ctranslate2(args.model, Path(tmp) / quantization, quantization=quantization)
            translator = CTranslate2Translator(folder, device="cpu", intra_threads=args.threads)
            translator.translate(sources[:16], beam_size=args.beam, length_penalty=args.lenpen)
            started = time.perf_counter()
            hyps = translator.translate(sources, beam_size=args.beam, length_penalty=args.lenpen,
                                        batch_size=args.batch_size)
            record(f"ctranslate2 {quantization}", time.perf_counter() - started, hyps)
    base = rows[0]
    print(f"{len(sources)} sentences, beam {args.beam}, length penalty {args.lenpen}, {args.threads} threads, "
          f"batch {args.batch_size}")
    print(f"{'engine':20} {'sent/s':>8} {'speed-up':>9} {'BLEU':>6} {'ΔBLEU':>6} {'chrF':>6}")
    for row in rows:
        print(f"{row['engine']:20} {row['sentences_per_s']:8.1f} {row['sentences_per_s'] / base['sentences_per_s']:8.2f}x "
              f"{row['bleu']:6.2f} {row['bleu'] - base['bleu']:+6.2f} {row['chrf']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
