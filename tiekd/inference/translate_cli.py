"""`tiekd translate`: file or stdin to file or stdout, with the PyTorch or CTranslate2 engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    from .decode_limits import MAX_DECODE_LENGTH

    parser.add_argument("--model", required=True, help="model folder (or a CTranslate2 export with --engine ctranslate2)")
    parser.add_argument("--input", "-i", default="-", help="source file, one sentence a line (default: stdin)")
    parser.add_argument("--output", "-o", default="-", help="output file (default: stdout)")
    parser.add_argument("--beam", type=int, default=4, help="beam size (default 4, the paper's)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (same as --beam 1)")
    parser.add_argument("--lenpen", type=float, default=0.6, help="length penalty exponent (default 0.6)")
    parser.add_argument("--max-length", type=int, default=MAX_DECODE_LENGTH, help="maximum generated tokens")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument("--engine", choices=("pytorch", "ctranslate2"), default="pytorch")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-shortlist", action="store_true",
                        help="with --engine ctranslate2: decode over the whole vocabulary even where the export "
                             "has a lexical shortlist (vmap.txt)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _read_input(name: str) -> list[str]:
    if name == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    from ..io import read_lines  # errors name the file and line of any invalid UTF-8

    return read_lines(Path(name))


def run_translate(args: argparse.Namespace) -> int:
    sentences = _read_input(args.input)
    beam = 1 if args.greedy else args.beam
    if args.engine == "ctranslate2":
        from .export import CTranslate2Translator

        device = "cuda" if args.device in ("auto", "cuda") and _has_cuda() else "cpu"
        translator = CTranslate2Translator(args.model, device=device, use_shortlist=False if args.no_shortlist else None)
        hyps = translator.translate(sentences, beam_size=beam, length_penalty=args.lenpen,
                                    max_length=args.max_length, batch_size=args.batch_size)
    else:
        from ..data.tokenizer import load_tokenizer
        from ..models import load_model
        from ..training.trainer import pick_device
        from .translate import DecodeOptions, translate_sentences

        device = pick_device(args.device)
        model = load_model(args.model, device)
        tokenizer = load_tokenizer(args.model)
        options = DecodeOptions(beam=beam, length_penalty=args.lenpen, max_length=args.max_length,
                                batch_sentences=args.batch_size, progress=False if args.quiet else None)
        hyps = translate_sentences(model, tokenizer, sentences, options, device)
    text = "".join(h + "\n" for h in hyps)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from ..io import atomic_write_text

        atomic_write_text(Path(args.output), text)
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
