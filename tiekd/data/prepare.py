"""The `prepare` job: parallel text in, a prepared-data folder out.

    OUT/tokenizer/            joint SentencePiece model as a Marian tokenizer (tiekd.tokenizer)
    OUT/<split>.<src_lang>    cleaned text, UTF-8, LF, one sentence a line; splits: train, valid, tests
    OUT/<split>.<tgt_lang>
    OUT/meta.json             languages, vocabulary size, options, inputs (paths + SHA-256) and per-split counts

Cleaning: pairs with an empty side are skipped (or an error with empty="error"); in the training split only,
pairs are filtered when a side is over `max_chars` characters (before training the tokenizer, which is
trained on what is left), over `max_tokens` SentencePiece pieces (</s> not counted), or when the longer
side has more than `max_len_ratio` times the pieces of the shorter (the ratio rule of Moses'
clean-corpus-n.perl, used by fairseq's examples). Valid and test splits are never filtered: evaluation
sees every reference.

The folder is built in a hidden temporary sibling and renamed into place at the end, so a failure or an
interruption never leaves a partial folder under the output name.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .. import __version__
from ..errors import TiekdError, input_error
from .. import writes
from ..tokenizer import TOKENIZER_FILES, train_joint_sentencepiece
from . import multi30k
from .corpus import ParallelText, read_parallel, read_tsv

META_NAME = "meta.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "tiekd-prepared/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class PreparedData:
    """A checked prepared-data folder (see `load_prepared`)."""

    path: Path
    tokenizer_dir: Path
    splits: dict[str, tuple[Path, Path]]  # split name -> (source file, target file)
    meta: dict

    @property
    def src_lang(self) -> str:
        return self.meta["src_lang"]

    @property
    def tgt_lang(self) -> str:
        return self.meta["tgt_lang"]


def prepare_data(
    out_dir: str | Path, *, src_lang: str = "de", tgt_lang: str = "en",
    multi30k_dir: str | Path | None = None, download: bool = False, multi30k_url: str | None = None,
    train: tuple[str | Path, str | Path] | None = None, valid: tuple[str | Path, str | Path] | str | Path | None = None,
    tests: Mapping[str, tuple[str | Path, str | Path] | str | Path] | Iterable[tuple[str, str | Path, str | Path]] | None = None,
    tsv_train: str | Path | None = None,
    vocab_size: int = 8000, max_tokens: int = 250, max_len_ratio: float = 9.0, max_chars: int = 10_000,
    empty: str = "skip", overwrite: bool = False, verbose: bool = True, tokenizer: str | Path | None = None,
) -> Path:
    """Prepare Multi30k (the default; from `multi30k_dir`, a default location, or downloaded) or the user's
    files (`train` or `tsv_train`, plus `valid` and optional `tests`) into `out_dir`. Returns `out_dir`.

    If `out_dir` already holds a preparation of the same inputs (by content) and options, it is kept and
    reported; a different one is refused unless `overwrite`. A folder that is not a preparation is never
    replaced.
    With `tokenizer` (a Marian model or tokenizer folder, e.g. the teacher's own, OPUS-MT layout included)
    its tokenizer is copied unchanged instead of training one, and `vocab_size` is its vocabulary's."""
    log = print if verbose else (lambda *_: None)
    out_dir = Path(out_dir)
    options = _check_options(src_lang, tgt_lang, vocab_size, max_tokens, max_len_ratio, max_chars, empty)
    source_info, split_files = _resolve_inputs(
        src_lang, tgt_lang, multi30k_dir, download, multi30k_url, train, valid, tests, tsv_train, log,
    )
    # read and validate everything before anything is written
    splits = [
        read_tsv(files, name=name, empty=empty) if isinstance(files, Path)
        else read_parallel(*files, name=name, empty=empty)
        for name, files in split_files.items()
    ]
    meta = {
        "format": FORMAT, "tiekd_version": __version__, "src_lang": src_lang, "tgt_lang": tgt_lang,
        "vocab_size": vocab_size, "options": options, "tokenizer": TOKENIZER_DIR,
        "inputs": {**source_info, "splits": {s.name: s.inputs for s in splits}},
    }
    if tokenizer is not None:
        from ..tokenizer import load_tokenizer, vocab_fingerprint

        size, digest = vocab_fingerprint(load_tokenizer(tokenizer))
        meta["vocab_size"] = size
        meta["tokenizer_from"] = {"path": str(Path(tokenizer).resolve()), "vocab_sha256": digest}
    if _already_prepared(out_dir, meta, overwrite):
        existing = json.loads((out_dir / META_NAME).read_text(encoding="utf-8"))
        log(f"{out_dir}: already prepared from the same inputs and options; nothing to do")
        log(format_report(existing, out_dir))
        return out_dir

    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    try:
        with writes.staged_folder(out_dir, role="building") as build:
            _build(build, splits, meta, log)
    except Exception:
        for folder in created:  # innermost first; only folders this call made, and only if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    log(format_report(meta, out_dir))
    return out_dir


def _check_options(src_lang, tgt_lang, vocab_size, max_tokens, max_len_ratio, max_chars, empty) -> dict:
    for flag, lang in (("--src-lang", src_lang), ("--tgt-lang", tgt_lang)):
        if not isinstance(lang, str) or not _NAME.match(lang):
            raise TiekdError(f"{flag} {lang!r} is not a language code. Fix: use a code such as de or en")
    if src_lang == tgt_lang:
        raise TiekdError(f"--src-lang and --tgt-lang are both {src_lang!r}. Fix: give two different languages")
    if empty not in ("skip", "error"):
        raise TiekdError(f"--empty {empty!r} is not an option. Fix: use skip or error")
    for flag, value, kind, low in (
        ("--vocab-size", vocab_size, int, 64), ("--max-tokens", max_tokens, int, 1),
        ("--max-chars", max_chars, int, 1), ("--max-len-ratio", max_len_ratio, (int, float), 1),
    ):
        if isinstance(value, bool) or not isinstance(value, kind) or value < low:
            what = "a whole number" if kind is int else "a number"
            raise TiekdError(f"{flag} {value!r} is out of range. Fix: use {what} of at least {low}")
    return {"max_tokens": int(max_tokens), "max_len_ratio": float(max_len_ratio), "max_chars": int(max_chars),
            "empty": empty}


def _resolve_inputs(src_lang, tgt_lang, multi30k_dir, download, multi30k_url, train, valid, tests, tsv_train, log):
    """Return (what meta.json records about the source, {split name: (src, tgt) paths or a TSV path})."""
    if train is not None or tsv_train is not None:
        if train is not None and tsv_train is not None:
            raise TiekdError("both --train and --tsv-train were given. Fix: give the training data once")
        if multi30k_dir is not None or download:
            raise TiekdError("--multi30k/--download and your own files were both given. Fix: choose one source")
        if valid is None:
            raise TiekdError("no validation split. Fix: pass --valid SRC TGT (training needs it to pick checkpoints)")
        files = {"train": Path(tsv_train) if tsv_train is not None else _pair("train", train)}
        files["valid"] = _pair_or_tsv("valid", valid)
        for name, split in _test_splits(tests):
            if not _NAME.match(name) or name in files:
                raise TiekdError(f"--test name {name!r} is not usable. Fix: use a new name of letters, digits, "
                                 "'_', '-' or '.', other than train and valid")
            files[name] = _pair_or_tsv(name, split)
        return {"kind": "files"}, files
    if valid is not None or tests:
        raise TiekdError("--valid/--test were given without --train or --tsv-train. Fix: pass your training "
                         "files too, or drop --valid/--test to use Multi30k's own splits")
    if download:
        folder = Path(multi30k_dir) if multi30k_dir is not None else multi30k.default_cache_dir()
        multi30k.download_multi30k(folder, (src_lang, tgt_lang), base_url=multi30k_url, log=log)
    else:
        folder = multi30k.find_multi30k(multi30k_dir)
    return ({"kind": "multi30k", "folder": str(folder.resolve()), "downloaded": bool(download)},
            multi30k.multi30k_files(folder, src_lang, tgt_lang))


def _pair(name: str, files) -> tuple[Path, Path]:
    if isinstance(files, (str, Path)) or len(files) != 2:
        raise TiekdError(f"the {name} split needs two files, source and target; got {files!r}. "
                         "Fix: pass (SRC, TGT)")
    return Path(files[0]), Path(files[1])


def _pair_or_tsv(name: str, files) -> tuple[Path, Path] | Path:
    """A split given as one TSV file or as (source, target) files."""
    return Path(files) if isinstance(files, (str, Path)) else _pair(name, files)


def _test_splits(tests) -> list[tuple[str, tuple | str | Path]]:
    """(name, files) of each test set: from a mapping name -> (SRC, TGT) or TSV, or NAME SRC TGT triples."""
    if not tests:
        return []
    if isinstance(tests, Mapping):
        return list(tests.items())
    triples = [tuple(t) for t in tests]
    for t in triples:
        if len(t) != 3:
            raise TiekdError(f"a test set needs NAME SRC TGT; got {t!r}. Fix: pass --test NAME SRC TGT")
    return [(name, (src, tgt)) for name, src, tgt in triples]


def _already_prepared(out_dir: Path, meta: dict, overwrite: bool) -> bool:
    """True if `out_dir` holds this very preparation; an error if it holds something we may not replace."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise TiekdError(f"{out_dir}: exists and is not a folder. Fix: choose another --out")
    if not any(out_dir.iterdir()):
        return False
    try:
        existing = json.loads((out_dir / META_NAME).read_text(encoding="utf-8"))
        if existing.get("format") != FORMAT:
            raise ValueError(existing.get("format"))
    except (OSError, ValueError, AttributeError):
        raise TiekdError(
            f"{out_dir}: exists and is not a tiekd prepared-data folder (no valid {META_NAME}), so it is left "
            "alone. Fix: choose another --out, or remove that folder yourself"
        ) from None
    old, new = _fingerprint(existing), _fingerprint(meta)
    if old == new:
        try:
            load_prepared(out_dir)
            return True
        except TiekdError:
            if not overwrite:  # its message already says to rebuild with --overwrite
                raise
            return False
    if not overwrite:
        changed = ", ".join(key if key != "inputs" else "inputs (" + ", ".join(
            sorted(k for k in old[key].keys() | new[key].keys() if old[key].get(k) != new[key].get(k))) + ")"
            for key in new if old.get(key) != new[key])
        raise TiekdError(
            f"{out_dir}: already holds a different preparation (differs in {changed}). "
            "Fix: pass --overwrite to replace it, or choose another --out"
        )
    return False


def _fingerprint(meta: dict) -> dict:
    """What makes two preparations the same: languages, vocabulary, options, and the input contents
    (by SHA-256, so the same files at another path count as the same input)."""
    splits = meta.get("inputs", {}).get("splits", {})
    return json.loads(json.dumps({
        "src_lang": meta.get("src_lang"), "tgt_lang": meta.get("tgt_lang"), "vocab_size": meta.get("vocab_size"),
        "options": meta.get("options"),
        "inputs": {name: {side: rec.get("sha256") for side, rec in files.items()} for name, files in splits.items()},
        # a reused tokenizer by its vocabulary, not its path (absent for a trained one: old folders still match)
        **({"tokenizer": meta["tokenizer_from"]["vocab_sha256"]} if "tokenizer_from" in meta else {}),
    }))


def _build(build: Path, splits: list[ParallelText], meta: dict, log) -> None:
    import sentencepiece as spm

    src_lang, tgt_lang, options = meta["src_lang"], meta["tgt_lang"], meta["options"]
    train = splits[0]
    # very long raw lines go before the tokenizer sees them (SentencePiece would skip them anyway)
    _drop(train, ["chars" if max(len(s), len(t)) > options["max_chars"] else None
                  for s, t in zip(train.sources, train.targets)])
    _write_split(build, train, src_lang, tgt_lang)
    tokenizer_dir = build / TOKENIZER_DIR
    if "tokenizer_from" in meta:
        _copy_tokenizer(meta, tokenizer_dir, log)
    else:
        _train_tokenizer(build, train, meta, tokenizer_dir, log)
    source_model = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "source.spm"))
    target_model = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "target.spm"))
    source_len = [len(ids) for ids in source_model.encode(train.sources)]  # pieces, </s> not counted
    target_len = [len(ids) for ids in target_model.encode(train.targets)]
    _drop(train, ["tokens" if max(ls, lt) > options["max_tokens"]
                  else "ratio" if max(ls, lt) > options["max_len_ratio"] * max(1, min(ls, lt)) else None
                  for ls, lt in zip(source_len, target_len)])
    if not train.sources:
        raise TiekdError(
            "every training pair was filtered as too long. Fix: check the training files, or raise "
            "--max-tokens / --max-len-ratio / --max-chars"
        )

    meta["splits"] = {}
    for split in splits:
        _write_split(build, split, src_lang, tgt_lang)
        meta["splits"][split.name] = {
            "source": f"{split.name}.{src_lang}", "target": f"{split.name}.{tgt_lang}",
            "pairs": len(split.sources), "read": split.read, "skipped_empty": split.skipped_empty,
            "filtered_long": sum(split.filtered.values()), "crlf_lines": split.crlf_lines,
            "line_breaks_replaced": split.line_breaks_replaced,
        }
        if split is train:
            meta["splits"][split.name]["filtered_by"] = {
                reason: train.filtered.get(reason, 0) for reason in ("chars", "tokens", "ratio")}
    writes.atomic_write_json(build / META_NAME, meta)


def _copy_tokenizer(meta: dict, tokenizer_dir: Path, log) -> None:
    from ..tokenizer import copy_existing_tokenizer, vocab_fingerprint

    source = meta["tokenizer_from"]["path"]
    log(f"using the tokenizer of {source} ({meta['vocab_size']:,} tokens) instead of training one")
    copied = writes.call(tokenizer_dir, copy_existing_tokenizer, source, tokenizer_dir)
    if vocab_fingerprint(copied)[1] != meta["tokenizer_from"]["vocab_sha256"]:
        raise TiekdError(f"{source}: its vocabulary changed while it was being copied. Fix: run prepare again")


def _train_tokenizer(build: Path, train: ParallelText, meta: dict, tokenizer_dir: Path, log) -> None:
    src_lang, tgt_lang = meta["src_lang"], meta["tgt_lang"]
    log(f"training a {meta['vocab_size']}-piece SentencePiece tokenizer on {len(train.sources):,} training pairs")
    try:
        writes.call(tokenizer_dir, train_joint_sentencepiece,
                    [build / f"train.{src_lang}", build / f"train.{tgt_lang}"], tokenizer_dir,
                    vocab_size=meta["vocab_size"])
    except RuntimeError as exc:  # SentencePiece reports e.g. a vocabulary too large for the text this way
        # its limit excludes the <pad> that the Marian layout adds, hence + 1
        limit = re.search(r"value <= (\d+)", str(exc))
        hint = f"use --vocab-size {int(limit.group(1)) + 1} or less" if limit else "lower --vocab-size"
        raise TiekdError(
            f"{train.inputs.get('source', train.inputs.get('tsv'))['path']}: SentencePiece could not train a "
            f"{meta['vocab_size']}-piece vocabulary on the training text ({exc}). Fix: {hint}, or give more "
            "training text"
        ) from exc


def _drop(split: ParallelText, reasons: list[str | None]) -> None:
    """Remove the pairs whose reason is not None, counting them by reason."""
    for reason in filter(None, reasons):
        split.filtered[reason] = split.filtered.get(reason, 0) + 1
    keep = [reason is None for reason in reasons]
    split.sources = [x for x, k in zip(split.sources, keep) if k]
    split.targets = [x for x, k in zip(split.targets, keep) if k]
    split.line_numbers = [x for x, k in zip(split.line_numbers, keep) if k]


def _write_split(folder: Path, split: ParallelText, src_lang: str, tgt_lang: str) -> None:
    for lang, lines in ((src_lang, split.sources), (tgt_lang, split.targets)):
        writes.call(folder / f"{split.name}.{lang}", _write_lines, folder / f"{split.name}.{lang}", lines)


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def load_prepared(path: str | Path) -> PreparedData:
    """Check a folder written by `prepare_data` and return its paths and meta."""
    path = Path(path)
    run_it = f"run `tiekd prepare --out {path}` first, or pass the folder it wrote"
    if not path.is_dir():
        raise input_error(path, "no such folder", run_it)
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise input_error(path, f"not a prepared-data folder: {META_NAME} is missing", run_it)
    rebuild = f"rebuild it with `tiekd prepare --out {path} --overwrite` and the same options"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        splits_meta = meta["splits"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise input_error(meta_path, f"not a readable prepared-data meta file ({exc})", rebuild) from None
    tokenizer_dir = path / meta.get("tokenizer", TOKENIZER_DIR)
    missing = [tokenizer_dir / name for name in TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    splits = {}
    for name, info in splits_meta.items():
        files = (path / info["source"], path / info["target"])
        for file in files:
            if not file.is_file():
                missing.append(file)
            elif file.read_bytes().count(b"\n") != info["pairs"]:
                raise input_error(file, f"damaged: meta.json says {info['pairs']} lines", rebuild)
        splits[name] = files
    if missing:
        raise input_error(path, "incomplete prepared-data folder, missing " + ", ".join(map(str, missing)), rebuild)
    if "train" not in splits or "valid" not in splits:
        raise input_error(meta_path, "no train or valid split", rebuild)
    return PreparedData(path, tokenizer_dir, splits, meta)


def format_report(meta: dict, out_dir: Path) -> str:
    """A short table of what was kept, skipped and filtered per split."""
    lines = [f"prepared {meta['src_lang']}->{meta['tgt_lang']} data in {out_dir} "
             f"(vocabulary {meta['vocab_size']}, tokenizer in {out_dir / meta['tokenizer']})",
             f"  {'split':<20}{'pairs':>9}{'skipped_empty':>15}{'filtered_long':>15}{'crlf_lines':>12}"]
    for name, s in meta["splits"].items():
        lines.append(f"  {name:<20}{s['pairs']:>9,}{s['skipped_empty']:>15,}{s['filtered_long']:>15,}"
                     f"{s['crlf_lines']:>12,}")
    train, opt = meta["splits"]["train"], meta["options"]
    by = train.get("filtered_by", {})
    lines.append(f"  training pairs filtered: {by.get('chars', 0):,} with a side over {opt['max_chars']:,} characters, "
                 f"{by.get('tokens', 0):,} over {opt['max_tokens']} tokens, "
                 f"{by.get('ratio', 0):,} with length ratio over {opt['max_len_ratio']:g}")
    replaced = sum(s.get("line_breaks_replaced", 0) for s in meta["splits"].values())
    if replaced:
        lines.append(f"  {replaced:,} lines held stray line-break characters (\\r, U+2028, ...), replaced by spaces")
    return "\n".join(lines)


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tiekd prepare`."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (built aside, renamed into place)")
    group = parser.add_argument_group("input (default: Multi30k from ../shared/data/multi30k or $TIEKD_MULTI30K_DIR)")
    group.add_argument("--multi30k", metavar="DIR", type=Path, help="folder holding Multi30k train.de, val.en, ...")
    group.add_argument("--download", action="store_true",
                       help="download Multi30k (into --multi30k DIR, else ~/.cache/tiekd/multi30k), "
                            "checked by SHA-256; base URL from $TIEKD_MULTI30K_URL if set")
    group.add_argument("--train", nargs=2, metavar=("SRC", "TGT"), type=Path, help="your training files")
    group.add_argument("--tsv-train", metavar="FILE", type=Path, help="your training pairs, source<TAB>target")
    group.add_argument("--valid", nargs=2, metavar=("SRC", "TGT"), type=Path, help="your validation files")
    group.add_argument("--test", nargs=3, metavar=("NAME", "SRC", "TGT"), action="append", default=[],
                       help="a test set (repeatable)")
    parser.add_argument("--src-lang", default="de", help="source language code (default: de)")
    parser.add_argument("--tgt-lang", default="en", help="target language code (default: en)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint vocabulary size, <pad> included")
    parser.add_argument("--tokenizer", metavar="DIR", type=Path,
                        help="use this model's (or tokenizer folder's) Marian tokenizer instead of training one, "
                             "e.g. the OPUS-MT teacher you will distill (its source.spm, target.spm, vocab.json)")
    parser.add_argument("--max-tokens", type=int, default=250, help="filter training pairs with a longer side")
    parser.add_argument("--max-len-ratio", type=float, default=9.0, help="filter training pairs with a larger "
                                                                          "token length ratio")
    parser.add_argument("--max-chars", type=int, default=10_000, help="filter training lines with more characters "
                                                                      "before training the tokenizer")
    parser.add_argument("--empty", choices=("skip", "error"), default="skip",
                        help="pairs with an empty side: skip and count them, or stop with an error")
    parser.add_argument("--overwrite", action="store_true", help="replace a different earlier preparation in --out")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Run `tiekd prepare` from parsed arguments; returns the exit status (0)."""
    prepare_data(
        args.out, src_lang=args.src_lang, tgt_lang=args.tgt_lang, multi30k_dir=args.multi30k,
        download=args.download, train=args.train, valid=args.valid, tests=args.test, tsv_train=args.tsv_train,
        vocab_size=args.vocab_size, max_tokens=args.max_tokens, max_len_ratio=args.max_len_ratio,
        max_chars=args.max_chars, empty=args.empty, overwrite=args.overwrite, tokenizer=args.tokenizer,
    )
    return 0
