"""The `prepare` job: parallel text in, a prepared-data folder out.

    OUT/tokenizer/            joint SentencePiece model as a Marian tokenizer (tiekd.data.tokenizer)
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
import contextlib
import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .. import __version__
from ..errors import TiekdError, input_error
from ..io import count_lines
from .. import writes
from .tokenizer import TOKENIZER_FILES, train_joint_sentencepiece
from . import multi30k
from .encoding import encode_flat
from .corpus import SplitCounts, check_text_file, iter_split

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
    tokenizer_sample: int = 400_000,
) -> Path:
    """Prepare Multi30k (the default; from `multi30k_dir`, a default location, or downloaded) or the user's
    files (`train` or `tsv_train`, plus `valid` and optional `tests`) into `out_dir`. Returns `out_dir`.

    If `out_dir` already holds a preparation of the same inputs (by content) and options, it is kept and
    reported; a different one is refused unless `overwrite`. A folder that is not a preparation is never
    replaced.
    With `tokenizer` (a Marian model or tokenizer folder, e.g. the teacher's own, OPUS-MT layout included)
    its tokenizer is copied unchanged instead of training one, and `vocab_size` is its vocabulary's.
    A trained tokenizer learns from at most `tokenizer_sample` training sentences (both sides; pairs drawn
    at random with a fixed seed when the corpus has more).

    The input is streamed: read, cleaned and filtered a line at a time, its ids encoded in chunks by
    SentencePiece's threads (tiekd.data.batching.encode_flat) and written beside the text as memory-mappable
    files (tiekd.data.binarized), so memory does not grow with the corpus."""
    log = print if verbose else (lambda *_: None)
    out_dir = Path(out_dir)
    options = _check_options(src_lang, tgt_lang, vocab_size, max_tokens, max_len_ratio, max_chars, empty)
    source_info, split_files = _resolve_inputs(
        src_lang, tgt_lang, multi30k_dir, download, multi30k_url, train, valid, tests, tsv_train, log,
    )
    if isinstance(tokenizer_sample, bool) or not isinstance(tokenizer_sample, int) or tokenizer_sample < 2:
        raise TiekdError(f"--tokenizer-sample {tokenizer_sample!r} is out of range. Fix: use a whole number of "
                         "sentences of at least 2 (default 400,000)")
    for files in split_files.values():  # the cheap checks of every input before any is read in full
        for path in (files,) if isinstance(files, Path) else files:
            check_text_file(path)
    meta = {
        "format": FORMAT, "tiekd_version": __version__, "src_lang": src_lang, "tgt_lang": tgt_lang,
        "vocab_size": vocab_size, "options": options, "tokenizer": TOKENIZER_DIR,
        "inputs": {**source_info, "splits": {}},
    }
    if tokenizer_sample != DEFAULT_TOKENIZER_SAMPLE:  # recorded (and fingerprinted) only when not the default
        meta["tokenizer_sample"] = tokenizer_sample
    if tokenizer is not None:
        from .tokenizer import load_tokenizer, vocab_fingerprint

        size, digest = vocab_fingerprint(load_tokenizer(tokenizer))
        meta["vocab_size"] = size
        meta["tokenizer_from"] = {"path": str(Path(tokenizer).resolve()), "vocab_sha256": digest}
    if (out_dir / META_NAME).is_file():  # hash the inputs (one streamed read) to see whether it is done
        meta["inputs"]["splits"] = {name: _hashed(files) for name, files in split_files.items()}
    if _already_prepared(out_dir, meta, overwrite):
        existing = json.loads((out_dir / META_NAME).read_text(encoding="utf-8"))
        log(f"{out_dir}: already prepared from the same inputs and options; nothing to do")
        log(format_report(existing, out_dir))
        return out_dir

    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    try:
        with _only_writer(out_dir), writes.staged_folder(out_dir, role="building") as build:
            _build(build, split_files, meta, log, empty, tokenizer_sample)
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
        # a tokenizer sample other than the default (absent otherwise: older folders still match)
        **({"tokenizer_sample": meta["tokenizer_sample"]} if "tokenizer_sample" in meta else {}),
    }))


DEFAULT_TOKENIZER_SAMPLE = 400_000  # sentences; SentencePiece holds them all: about 2.8 KB each (docs/RESULTS.md)
CHUNK = 10_000  # pairs encoded and written at a time


def _hashed(files) -> dict:
    """The meta.json input records of one split (path, SHA-256, bytes), from a streamed read."""
    from ..io import sha256_file

    sides = {"tsv": files} if isinstance(files, Path) else dict(zip(("source", "target"), files))
    return {side: {"path": str(Path(p).resolve()), "sha256": sha256_file(p), "bytes": Path(p).stat().st_size}
            for side, p in sides.items()}


@contextlib.contextmanager
def _only_writer(out_dir: Path):
    """Refuse a second `prepare` into a folder another one is writing at this moment (an flock beside it).

    Only the holder removes the lock file, while it still holds it. A process that opened the file just
    before its holder removed it would lock a file no longer under that name, so the lock counts only if
    the name still leads to the locked file; otherwise it is taken again on the file now there."""
    import fcntl
    import os

    lock = out_dir.parent / f".{out_dir.name}.lock"
    while True:
        with writes.guarded(lock):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # refused: the lock file is the holder's, left in place
            raise TiekdError(f"{out_dir}: another `tiekd prepare` is writing this folder right now. Fix: wait for it "
                             "to finish (a rerun of the same preparation is then a no-op), or choose another --out") \
                from None
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # locked a file its holder had just removed: take the lock on the new one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def _build(build: Path, split_files: dict, meta: dict, log, empty: str, sample_size: int) -> None:
    """Fill `build`: pass 1 streams each split's input, checks and cleans it (training pairs with a side
    over max_chars characters dropped) into text files; the tokenizer is then trained on a sample of the
    training text (or copied); pass 2 encodes the training pairs in chunks, drops those over max_tokens
    pieces or max_len_ratio, and writes the text and ids that remain; the other splits get their ids."""
    src_lang, tgt_lang, options = meta["src_lang"], meta["tgt_lang"], meta["options"]
    clock = time.perf_counter()
    seconds = meta["seconds"] = {}  # per phase, for benchmarks/bench_data_scale.py (not fingerprinted)
    counts = {}
    for name, files in split_files.items():
        counts[name] = SplitCounts(name)
        stage = "." + name if name == "train" else name  # training text is filtered again in pass 2
        too_long = options["max_chars"] if name == "train" else None
        _clean(build, stage, iter_split(files, counts[name], empty=empty), counts[name], src_lang, tgt_lang, too_long)
        meta["inputs"]["splits"][name] = counts[name].inputs
    tokenizer_dir = build / TOKENIZER_DIR
    staged = (build / f".train.{src_lang}", build / f".train.{tgt_lang}")
    seconds["read_and_clean"], clock = round(time.perf_counter() - clock, 2), time.perf_counter()
    if "tokenizer_from" in meta:
        _copy_tokenizer(meta, tokenizer_dir, log)
    else:
        _train_tokenizer(build, staged, counts["train"], meta, tokenizer_dir, log, sample_size)
    seconds["tokenizer"], clock = round(time.perf_counter() - clock, 2), time.perf_counter()

    from .tokenizer import load_tokenizer
    from .binarized import IdsWriter

    tokenizer = load_tokenizer(tokenizer_dir)
    meta["binarized"] = {}
    for name in split_files:
        sources = build / f"{name}.{src_lang}"
        targets = build / f"{name}.{tgt_lang}"
        writers = (IdsWriter(sources, len(tokenizer)), IdsWriter(targets, len(tokenizer)))
        if name == "train":
            _encode_and_filter(staged, (sources, targets), writers, tokenizer, options, counts[name])
            for path in staged:
                path.unlink()
        else:
            for chunk_sources, chunk_targets in _chunks(sources, targets):
                for writer, lines, target in zip(writers, (chunk_sources, chunk_targets), (False, True)):
                    writer.add(*encode_flat(tokenizer, lines, target=target))
        for path, writer in zip((sources, targets), writers):
            meta["binarized"][path.name] = writer.close()
    seconds["encode_filter_write"] = round(time.perf_counter() - clock, 2)
    if not counts["train"].kept:
        raise TiekdError(
            "every training pair was filtered as too long. Fix: check the training files, or raise "
            "--max-tokens / --max-len-ratio / --max-chars"
        )
    meta["splits"] = {}
    for name, split in counts.items():
        meta["splits"][name] = {
            "source": f"{name}.{src_lang}", "target": f"{name}.{tgt_lang}",
            "bytes": {side: (build / f"{name}.{lang}").stat().st_size
                      for side, lang in (("source", src_lang), ("target", tgt_lang))},
            "pairs": split.kept, "read": split.read, "skipped_empty": split.skipped_empty,
            "filtered_long": sum(split.filtered.values()), "crlf_lines": split.crlf_lines,
            "line_breaks_replaced": split.line_breaks_replaced,
        }
        if name == "train":
            meta["splits"][name]["filtered_by"] = {
                reason: split.filtered.get(reason, 0) for reason in ("chars", "tokens", "ratio")}
    writes.atomic_write_json(build / META_NAME, meta)


def _clean(build: Path, stem: str, pairs, counts: SplitCounts, src_lang: str, tgt_lang: str,
           max_chars: int | None) -> None:
    """Write the checked, stripped pairs of one split as `<stem>.<lang>` text files, streamed."""
    paths = (build / f"{stem}.{src_lang}", build / f"{stem}.{tgt_lang}")
    with writes.guarded(paths[0]):
        writes.write_point(paths[0])
        with open(paths[0], "w", encoding="utf-8", newline="\n") as sources, \
                open(paths[1], "w", encoding="utf-8", newline="\n") as targets:
            kept_sources, kept_targets = [], []
            for _, s, t in pairs:
                # very long raw lines go before the tokenizer sees them (SentencePiece would skip them anyway)
                if max_chars is not None and (len(s) > max_chars or len(t) > max_chars):
                    counts.filtered["chars"] = counts.filtered.get("chars", 0) + 1
                    counts.kept -= 1
                    continue
                kept_sources.append(s)
                kept_targets.append(t)
                if len(kept_sources) == CHUNK:  # one write a chunk: a write a line was a third of this pass
                    _write_lines(sources, kept_sources)
                    _write_lines(targets, kept_targets)
            _write_lines(sources, kept_sources)
            _write_lines(targets, kept_targets)


def _write_lines(handle, lines: list[str]) -> None:
    """Write `lines` one a line and empty the list."""
    if lines:
        handle.write("\n".join(lines) + "\n")
        lines.clear()


def _chunks(sources: Path, targets: Path, size: int = CHUNK):
    """Aligned chunks of `size` lines of two text files written by `_clean`."""
    with open(sources, encoding="utf-8", newline="\n") as src, open(targets, encoding="utf-8", newline="\n") as tgt:
        while True:
            chunk_sources = [line[:-1] for line in itertools.islice(src, size)]
            if not chunk_sources:
                return
            yield chunk_sources, [line[:-1] for line in itertools.islice(tgt, size)]


def _encode_and_filter(staged: tuple[Path, Path], final: tuple[Path, Path], writers, tokenizer, options: dict,
                       counts: SplitCounts) -> None:
    """Pass 2 over the training pairs: ids in chunks, the token-length and ratio filters on SentencePiece's
    piece counts (</s> not counted), then the kept text and ids."""
    with writes.guarded(final[0]):
        writes.write_point(final[0])
        with open(final[0], "w", encoding="utf-8", newline="\n") as sources, \
                open(final[1], "w", encoding="utf-8", newline="\n") as targets:
            for chunk_sources, chunk_targets in _chunks(*staged):
                src_ids, src_lengths, src_pieces = encode_flat(tokenizer, chunk_sources, with_pieces=True)
                tgt_ids, tgt_lengths, tgt_pieces = encode_flat(tokenizer, chunk_targets, target=True, with_pieces=True)
                longer, shorter = np.maximum(src_pieces, tgt_pieces), np.maximum(1, np.minimum(src_pieces, tgt_pieces))
                too_many = longer > options["max_tokens"]
                skewed = ~too_many & (longer > options["max_len_ratio"] * shorter)
                for reason, mask in (("tokens", too_many), ("ratio", skewed)):
                    if mask.any():
                        counts.filtered[reason] = counts.filtered.get(reason, 0) + int(mask.sum())
                keep = ~(too_many | skewed)
                counts.kept -= int((~keep).sum())
                kept = np.flatnonzero(keep).tolist()
                sources.write("".join(chunk_sources[k] + "\n" for k in kept))
                targets.write("".join(chunk_targets[k] + "\n" for k in kept))
                for writer, ids, lengths in ((writers[0], src_ids, src_lengths), (writers[1], tgt_ids, tgt_lengths)):
                    writer.add(ids[np.repeat(keep, lengths)], lengths[keep])


def _copy_tokenizer(meta: dict, tokenizer_dir: Path, log) -> None:
    from .tokenizer import copy_existing_tokenizer, vocab_fingerprint

    source = meta["tokenizer_from"]["path"]
    log(f"using the tokenizer of {source} ({meta['vocab_size']:,} tokens) instead of training one")
    copied = writes.call(tokenizer_dir, copy_existing_tokenizer, source, tokenizer_dir)
    if vocab_fingerprint(copied)[1] != meta["tokenizer_from"]["vocab_sha256"]:
        raise TiekdError(f"{source}: its vocabulary changed while it was being copied. Fix: run prepare again")


def _train_tokenizer(build: Path, staged: tuple[Path, Path], counts: SplitCounts, meta: dict,
                     tokenizer_dir: Path, log, sample_size: int) -> None:
    """Train the joint SentencePiece model on the cleaned training text: all of it when it has at most
    `sample_size` sentences (both sides), else on a seeded random sample of pairs of that many sentences,
    written once (never a second copy of the whole corpus)."""
    pairs = counts.kept
    inputs = list(staged)
    if 2 * pairs > sample_size:
        rng = np.random.default_rng(1)
        chosen = np.sort(rng.choice(pairs, size=sample_size // 2, replace=False))
        sample = build / ".tokenizer-sample.txt"
        with open(sample, "w", encoding="utf-8", newline="\n") as sink:
            for side in staged:
                with open(side, encoding="utf-8", newline="\n") as lines:
                    wanted = iter(chosen.tolist())
                    next_index = next(wanted, None)
                    for index, line in enumerate(lines):
                        if index == next_index:
                            sink.write(line)
                            next_index = next(wanted, None)
        inputs = [sample]
        log(f"training a {meta['vocab_size']}-piece SentencePiece tokenizer on {sample_size // 2:,} of "
            f"{pairs:,} training pairs (--tokenizer-sample {sample_size:,} sentences)")
    else:
        log(f"training a {meta['vocab_size']}-piece SentencePiece tokenizer on {pairs:,} training pairs")
    try:
        writes.call(tokenizer_dir, train_joint_sentencepiece, inputs, tokenizer_dir, vocab_size=meta["vocab_size"],
                    max_sentences=sample_size)
    except RuntimeError as exc:  # SentencePiece reports e.g. a vocabulary too large for the text this way
        # its limit excludes the <pad> that the Marian layout adds, hence + 1
        limit = re.search(r"value <= (\d+)", str(exc))
        hint = f"use --vocab-size {int(limit.group(1)) + 1} or less" if limit else "lower --vocab-size"
        raise TiekdError(
            f"{next(iter(counts.inputs.values()))['path']}: SentencePiece could not train a "
            f"{meta['vocab_size']}-piece vocabulary on the training text ({exc}). Fix: {hint}, or give more "
            "training text"
        ) from exc
    finally:
        (build / ".tokenizer-sample.txt").unlink(missing_ok=True)


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
        for side, file in zip(("source", "target"), files):
            if not file.is_file():
                missing.append(file)
            elif "bytes" in info:  # constant time: the size meta.json recorded
                if file.stat().st_size != info["bytes"][side]:
                    raise input_error(file, f"damaged: {file.stat().st_size:,} bytes, meta.json says "
                                            f"{info['bytes'][side]:,}", rebuild)
            elif count_lines(file) != info["pairs"]:  # folders from before sizes were recorded: streamed
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
    parser.add_argument("--tokenizer-sample", type=int, default=DEFAULT_TOKENIZER_SAMPLE, metavar="N",
                        help="train the tokenizer on at most N training sentences, both sides (pairs drawn at random "
                             "when the corpus has more; default 400,000: SentencePiece holds them in memory)")
    parser.add_argument("--verify", action="store_true",
                        help="check the token-id files of the prepared folder --out against their checksums (e.g. "
                             "after an interrupted copy), then exit")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Run `tiekd prepare` from parsed arguments; returns the exit status (0)."""
    if args.verify:
        print(verify_prepared(args.out))
        return 0
    prepare_data(
        args.out, src_lang=args.src_lang, tgt_lang=args.tgt_lang, multi30k_dir=args.multi30k,
        download=args.download, train=args.train, valid=args.valid, tests=args.test, tsv_train=args.tsv_train,
        vocab_size=args.vocab_size, max_tokens=args.max_tokens, max_len_ratio=args.max_len_ratio,
        max_chars=args.max_chars, empty=args.empty, overwrite=args.overwrite, tokenizer=args.tokenizer,
        tokenizer_sample=args.tokenizer_sample,
    )
    return 0


def verify_prepared(path: str | Path) -> str:
    """Check every token-id file of a prepared folder against the SHA-256 in its meta.json (a full read;
    opening a folder checks only sizes and headers). Returns a summary; raises on the first mismatch."""
    from .binarized import verify

    prepared = load_prepared(path)
    records = prepared.meta.get("binarized", {})
    if not records:
        return f"{prepared.path}: holds no token-id files (prepared before binarizing); its text was checked"
    for name, record in records.items():
        problem = verify(prepared.path / name, record)
        if problem is not None:
            raise TiekdError(f"{problem}. Fix: rebuild the folder with `tiekd prepare --out {prepared.path} "
                             "--overwrite` and its options, or copy it again")
    return f"{prepared.path}: {len(records)} token-id files match their checksums"
