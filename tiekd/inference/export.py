"""Export to CTranslate2 (OpenNMT's inference engine) for fast CPU/GPU inference, and translate with it.

`export_ctranslate2` runs CTranslate2's `TransformersConverter` on a model folder and saves the
tokenizer beside the converted weights, so the folder alone is enough to translate.

Parity with Hugging Face decoding: CTranslate2's Marian loader drops `<pad>` (our last id) from the
vocabulary and starts the decoder from a zero embedding, which equals our models' decoder start because
`tiekd.models` keeps the `<pad>` embedding row at zero. Both libraries rank beam hypotheses by
log-probability / length**length_penalty, and CTranslate2's default patience 1 is `generate`'s
`early_stopping=True`. Greedy translations match `model.generate` exactly (tests/test_export.py); beam
translations match up to near-ties, because CTranslate2 normalises its probabilities without `<pad>`
while `generate` masks `<pad>` after the softmax, which moves a hypothesis's score by up to ~0.04 (one
test sentence in 200 got another beam output here). Two defaults differ as well:
- CTranslate2 forbids an empty translation unless `min_decoding_length=0`; `generate` allows it, so
  `CTranslate2Translator.translate` passes 0 by default (`min_length`).
- `generate` with `forced_eos_token_id` (set by `tiekd.models`) turns the last token allowed by
  `max_new_tokens` into `</s>`; CTranslate2 stops after `max_decoding_length` tokens without one. Only
  translations cut at the length limit differ (by that one last token).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import typing
import warnings
from pathlib import Path

from .. import writes
from ..data.tokenizer import load_tokenizer  # (importing it also silences MarianTokenizer's sacremoses advice)
from ..errors import TiekdError
from .decode_limits import MAX_DECODE_LENGTH
from .shortlist import ShortlistOptions

if typing.TYPE_CHECKING:  # the command line builds its parser from this module without waiting for torch
    import torch

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float32", "float16", "bfloat16")


def export_ctranslate2(model_dir: str | Path, out_dir: str | Path, quantization: str = "int8",
                       overwrite: bool = False, vocabulary_map: str | Path | None = None) -> Path:
    """Convert the model folder `model_dir` into a self-contained CTranslate2 folder `out_dir`.

    `vocabulary_map`: a lexical shortlist (`vmap.txt`, tiekd/inference/shortlist.py) stored with the model;
    CTranslate2Translator then decodes over each batch's candidate tokens only.

    The folder is built in a temporary sibling and renamed into place at the end, so `out_dir` is
    either complete or untouched. Returns `out_dir`.
    """
    import ctranslate2
    import transformers

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if quantization not in QUANTIZATIONS:
        raise TiekdError(f"unknown quantization {quantization!r}. Fix: use one of {', '.join(QUANTIZATIONS)}")
    if not (model_dir / "config.json").is_file():
        raise TiekdError(f"{model_dir}: not a model folder (no config.json). Fix: pass a folder written by "
                         "`tiekd train`, `tiekd distill` or `tiekd average`, or any Hugging Face seq2seq folder")
    if out_dir.resolve() in (model_dir.resolve(), *model_dir.resolve().parents):
        raise TiekdError(f"{out_dir}: is the model folder or contains it. Fix: choose another --out folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise TiekdError(f"{out_dir}: exists and is not a folder. Fix: choose another --out path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise TiekdError(f"{out_dir}: folder exists and is not empty. Fix: pass --overwrite to replace it, "
                         "or choose another --out folder")

    with writes.staged_folder(out_dir) as tmp_dir:
        from ctranslate2.converters import TransformersConverter
        from transformers import AutoConfig

        converter = TransformersConverter(str(model_dir))
        try:
            # force: `convert` refuses existing folders, and ours is the empty temporary one
            writes.call(tmp_dir / "model.bin", converter.convert, str(tmp_dir),
                        vmap=str(vocabulary_map) if vocabulary_map else None, quantization=quantization, force=True)
        except (ValueError, RuntimeError, NotImplementedError, OSError) as exc:  # a full disk is WriteFailed
            raise TiekdError(f"{model_dir}: CTranslate2 could not convert the model ({type(exc).__name__}: "
                             f"{exc}). Fix: check that the folder holds a complete Marian/seq2seq model "
                             "whose vocabulary size matches its tokenizer") from exc
        config = AutoConfig.from_pretrained(str(model_dir))
        _warn_if_start_embedding_not_zero(model_dir, config)
        writes.call(tmp_dir / "tokenizer_config.json", load_tokenizer(model_dir).save_pretrained, str(tmp_dir))
        writes.atomic_write_text(tmp_dir / "tiekd_export.json", json.dumps({
            "source_model": str(model_dir.resolve()), "quantization": quantization,
            "vocabulary_map": bool(vocabulary_map),
            "max_source_positions": getattr(config, "max_position_embeddings", None),
            "ctranslate2": ctranslate2.__version__, "transformers": transformers.__version__,
        }, indent=2) + "\n")
    return out_dir


def _start_embedding_row(model_dir: Path, config) -> torch.Tensor:
    """The decoder start token's row of the shared embedding. From a safetensors file only that row is
    read (the converter has just loaded the whole model once); other folders load the model."""
    start_id = config.decoder_start_token_id
    weights = model_dir / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as tensors:
            for key in ("model.shared.weight", "model.decoder.embed_tokens.weight", "model.encoder.embed_tokens.weight"):
                if key in tensors.keys():
                    return tensors.get_slice(key)[start_id:start_id + 1][0]
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).get_input_embeddings().weight[start_id].detach()


def _warn_if_start_embedding_not_zero(model_dir: Path, config) -> None:
    # CTranslate2 starts Marian decoders from a zero vector; HF starts from the `<pad>` embedding.
    if getattr(config, "model_type", None) != "marian":
        return
    start_id = config.decoder_start_token_id
    if _start_embedding_row(model_dir, config).abs().max().item() != 0.0:
        warnings.warn(f"{model_dir}: the decoder start (<pad>, id {start_id}) embedding is not zero, so "
                      "CTranslate2 (which starts from a zero embedding) will translate differently from "
                      "Hugging Face. Train with tiekd.models.keep_pad_embedding_zero to avoid this", stacklevel=3)


class CTranslate2Translator:
    """Translate with an exported folder: its tokenizer in, CTranslate2 beam search, tokenizer out."""

    def __init__(self, folder: str | Path, device: str = "cpu", inter_threads: int = 1, intra_threads: int = 0,
                 compute_type: str = "default", use_shortlist: bool | None = None):
        """`use_shortlist`: decode over the vocabulary map's candidates (tiekd/inference/shortlist.py); None uses
        it whenever the folder has one (`vmap.txt`)."""
        import ctranslate2

        self.folder = Path(folder)
        if not (self.folder / "model.bin").is_file():
            raise TiekdError(f"{self.folder}: not a CTranslate2 folder (no model.bin). "
                             "Fix: create one with `tiekd export MODEL_DIR --out FOLDER`")
        has_map = (self.folder / "vmap.txt").is_file()
        if use_shortlist and not has_map:
            raise TiekdError(f"{self.folder}: no vocabulary map (vmap.txt) to shortlist with. Fix: export with "
                             "--shortlist SOURCE TARGET, or translate without the shortlist")
        self.use_shortlist = has_map if use_shortlist is None else use_shortlist
        try:
            self.translator = ctranslate2.Translator(str(self.folder), device=device, compute_type=compute_type,
                                                     inter_threads=inter_threads, intra_threads=intra_threads)
        except (ValueError, RuntimeError) as exc:
            raise TiekdError(f"{self.folder}: CTranslate2 could not load the model on {device} "
                             f"({exc}). Fix: check the device (cpu, cuda) and compute type") from exc
        self.tokenizer = load_tokenizer(self.folder)
        info = self.folder / "tiekd_export.json"
        self.max_source_positions = json.loads(info.read_text(encoding="utf-8")).get("max_source_positions") \
            if info.is_file() else None

    def translate(self, sentences: list[str], beam_size: int = 4, length_penalty: float = 0.6,
                  max_length: int = MAX_DECODE_LENGTH, batch_size: int = 64, min_length: int = 0) -> list[str]:
        """Translate detokenized sentences. `length_penalty` is the exponent of score / length**lp (as
        in `generate`); `max_length` bounds the generated tokens (`</s>` not counted); `min_length` 0
        allows an empty translation as `generate` does."""
        nbest = self.translate_tokens(sentences, beam_size, length_penalty, max_length, batch_size, min_length)
        # decode through ids, exactly as Hugging Face outputs are decoded (skip_special_tokens)
        return [self.tokenizer.decode(self.tokenizer.convert_tokens_to_ids(hyps[0]), skip_special_tokens=True)
                for hyps in nbest]

    def translate_tokens(self, sentences: list[str], beam_size: int = 4, length_penalty: float = 0.6,
                         max_length: int = MAX_DECODE_LENGTH, batch_size: int = 64, min_length: int = 0,
                         num_hypotheses: int = 1) -> list[list[list[str]]]:
        """The `num_hypotheses` best output token lists of each sentence, best first (options as `translate`)."""
        if not sentences:
            return []
        source_ids = self.tokenizer(sentences).input_ids
        limit, eos = self.max_source_positions, self.tokenizer.eos_token_id
        if limit:  # the model has no positions beyond this: cut, keeping </s> (as tiekd.inference.translate does)
            source_ids = [ids[:limit - 1] + [eos] if len(ids) > limit else ids for ids in source_ids]
        source_tokens = [self.tokenizer.convert_ids_to_tokens(ids) for ids in source_ids]
        results = self.translator.translate_batch(
            source_tokens, max_batch_size=batch_size, beam_size=beam_size, length_penalty=length_penalty,
            max_decoding_length=max_length, min_decoding_length=min_length, max_input_length=0 if limit else 1024,
            num_hypotheses=num_hypotheses, use_vmap=self.use_shortlist,
        )
        return [result.hypotheses for result in results]


# ---------------------------------------------------------------------------------------------------
# command line: tiekd export


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (config.json, weights, tokenizer)")
    parser.add_argument("--out", required=True, help="CTranslate2 folder to write (weights and tokenizer)")
    parser.add_argument("--quantization", default="int8", choices=QUANTIZATIONS,
                        help="weight type (default int8: smallest and fastest on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    defaults = ShortlistOptions()
    parser.add_argument("--shortlist", nargs=2, metavar=("SOURCE", "TARGET"),
                        help="build a lexical shortlist from this parallel text (e.g. the training data) and store it "
                             "with the model: CTranslate2 then decodes over each batch's candidate tokens only")
    parser.add_argument("--shortlist-per-token", type=int, default=defaults.per_token,
                        help="candidate target tokens per source token")
    parser.add_argument("--shortlist-frequent", type=int, default=defaults.frequent,
                        help="most frequent target tokens, candidates for every sentence")


def run_export(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vocabulary_map = None
        if args.shortlist:
            from .shortlist import write_vocabulary_map

            options = ShortlistOptions(per_token=args.shortlist_per_token, frequent=args.shortlist_frequent)
            vocabulary_map = Path(tmp) / "vmap.txt"
            report = write_vocabulary_map(load_tokenizer(args.model_dir), *args.shortlist, vocabulary_map, options)
            print(f"shortlist: {report['source_tokens_with_rules']} source tokens with on average "
                  f"{report['mean_candidates_per_rule']:.0f} candidates, {report['always']} always")
        out_dir = export_ctranslate2(args.model_dir, args.out, args.quantization, args.overwrite, vocabulary_map)
    size = sum(path.stat().st_size for path in out_dir.iterdir() if path.is_file())
    print(f"wrote {out_dir} ({args.quantization}, {size / 2**20:.1f} MiB)")
